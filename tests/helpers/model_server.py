"""A loopback HTTP server standing in for the hosts `svfrd fetch-models` talks to, bound to 127.0.0.1.

- The Hugging Face Hub's file API as huggingface_hub calls it: `HEAD /{repo}/resolve/{revision}/{path}` answers
  with the file's metadata (a git-hash ETag for configs; for LFS files a redirect to a "CDN" path with
  X-Linked-Etag/X-Linked-Size), or 401/403 with `X-Error-Code: GatedRepo` when gated.
- The CDN: `GET /cdn/{path}`, honouring `Range`, able to cut a transfer off mid-file.
- Google Drive: the folder's embedded view (`/embeddedfolderview?id=`) and file downloads (`/uc?id=`), able
  to refuse with a status or a quota page.
- A mirror: `GET /mirror/{path}` serves a model folder.

Files are served from a model folder in the real layout (tests.helpers.tiny_svfr). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from svfrd.weights.files import BASE_MODEL_DIR, DRIVE_FOLDER_ID, HUB_REPO, VAE_FP16_WEIGHTS, VAE_FULL_WEIGHTS

SUBFOLDER_ID = "1subfolderfacerestoration0"
QUOTA_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
              b"<p class='uc-error-subcaption'>Too many users have viewed or downloaded this file recently.</p>"
              b"</body></html>")
GATED_MESSAGE = ("Access to model stabilityai/stable-video-diffusion-img2vid-xt is restricted. You must have access "
                 "to it and be authenticated to access it. Please log in.")


def drive_id(name: str) -> str:
    return "1" + hashlib.sha1(name.encode()).hexdigest()[:27]


@dataclass
class Behaviour:
    gated: bool = False
    cut_transfers: int = 0  # the first N CDN/Drive/mirror GETs from offset 0 stop halfway
    wrong_sha256_for: str | None = None  # a Hub path whose declared sha256 is not its content's
    drive_listing_status: int = 200
    drive_sends_quota_page: bool = False
    redirect_git_gets: bool = False  # a GET of a config (not its HEAD) is sent on to the CDN host


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class ModelServer:
    folder: Path  # the model folder whose files are served
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def hub_bytes(self, repo_path: str) -> bytes | None:
        """The Hub serves the fp16 VAE name; the tiny folder holds the full-precision file."""
        local = f"{BASE_MODEL_DIR}/{repo_path}"
        if local == VAE_FP16_WEIGHTS and not (self.folder / local).is_file():
            local = VAE_FULL_WEIGHTS
        path = self.folder / local
        return path.read_bytes() if path.is_file() else None

    def drive_files(self) -> dict[str, Path]:
        return {drive_id(p.name): p for p in (self.folder / "face_restoration").glob("*.pth")}

    def gets(self, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(prefix)]


class _Handler(BaseHTTPRequestHandler):
    server_version = "loopback"
    model: ModelServer  # set on the subclass per server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def _route(self, method: str) -> None:
        self.model.requests.append(Request(method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        parsed = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(parsed.path)
        hub_prefix = f"/{HUB_REPO}/resolve/"
        if path.startswith(hub_prefix):
            return self._hub(path[len(hub_prefix):].split("/", 1)[1], method)
        if path.startswith("/cdn/"):
            return self._send_bytes(self.model.hub_bytes(path[len("/cdn/"):]), method)
        if path == "/embeddedfolderview":
            return self._drive_listing(urllib.parse.parse_qs(parsed.query).get("id", [""])[0])
        if path == "/uc":
            return self._drive_file(urllib.parse.parse_qs(parsed.query).get("id", [""])[0], method)
        if path.startswith("/mirror/"):
            file = self.model.folder / path[len("/mirror/"):]
            return self._send_bytes(file.read_bytes() if file.is_file() else None, method)
        self._status(404)

    def _hub(self, repo_path: str, method: str) -> None:
        behaviour = self.model.behaviour
        if behaviour.gated:
            code = 403 if self.headers.get("Authorization") else 401
            self.send_response(code)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", GATED_MESSAGE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.model.hub_bytes(repo_path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if repo_path.endswith(".safetensors"):  # an LFS file: metadata here, bytes on the CDN
            sha256 = hashlib.sha256(data).hexdigest()
            if behaviour.wrong_sha256_for == repo_path:
                sha256 = hashlib.sha256(data + b"!").hexdigest()
            self.send_response(302)
            # Another host name, as the Hub's CDN is: huggingface_hub does not follow it, the token stays home.
            self.send_header("Location", f"{self.model.url.replace('127.0.0.1', 'localhost')}/cdn/{repo_path}")
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if method == "GET" and behaviour.redirect_git_gets:
            return self._redirect_to_cdn(repo_path)
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self._send_bytes(data, method, {"ETag": f'"{git_sha1}"', "X-Repo-Commit": "0" * 40})

    def _redirect_to_cdn(self, repo_path: str) -> None:
        self.send_response(302)
        self.send_header("Location", f"{self.model.url.replace('127.0.0.1', 'localhost')}/cdn/{repo_path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _drive_listing(self, folder_id: str) -> None:
        status = self.model.behaviour.drive_listing_status
        if status != 200:
            return self._status(status, b"<html><body>Too many requests</body></html>")
        if folder_id == DRIVE_FOLDER_ID:
            links = [f'<a href="https://drive.google.com/drive/folders/{SUBFOLDER_ID}">face_restoration</a>']
        elif folder_id == SUBFOLDER_ID:
            links = [f'<a href="https://drive.google.com/file/d/{fid}/view?usp=drive_web">{p.name}</a>'
                     for fid, p in self.model.drive_files().items()]
        else:
            return self._status(404)
        page = f"<html><head><title>folder</title></head><body>{''.join(links)}</body></html>".encode()
        self._send_bytes(page, "GET", {"Content-Type": "text/html"})

    def _drive_file(self, file_id: str, method: str) -> None:
        if self.model.behaviour.drive_sends_quota_page:
            return self._send_bytes(QUOTA_PAGE, method, {"Content-Type": "text/html"})
        path = self.model.drive_files().get(file_id)
        self._send_bytes(path.read_bytes() if path else None, method,
                         {"Content-Disposition": f'attachment; filename="{path.name if path else ""}"'})

    def _send_bytes(self, data: bytes | None, method: str, headers: dict[str, str] | None = None) -> None:
        if data is None:
            return self._status(404)
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[len("bytes="):-1])
            if start >= len(data):
                return self._status(416)
        body = data[start:]
        cut = method == "GET" and start == 0 and self.model.behaviour.cut_transfers > 0
        if cut:
            self.model.behaviour.cut_transfers -= 1
        self.send_response(206 if start else 200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", (headers or {}).get("Content-Type", "application/octet-stream"))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body[: len(body) // 2] if cut else body)
            self.wfile.flush()
        if cut:
            self.close_connection = True

    def _status(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class running_model_server:
    """`with running_model_server(folder) as server:` a ModelServer answering at `server.url`."""

    def __init__(self, folder: Path, behaviour: Behaviour | None = None) -> None:
        self.model = ModelServer(Path(folder), behaviour or Behaviour())

    def __enter__(self) -> ModelServer:
        handler = type("Handler", (_Handler,), {"model": self.model})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.model.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.model

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
