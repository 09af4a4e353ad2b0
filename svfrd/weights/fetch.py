"""`svfrd fetch-models`: download what the SVFR engine needs into the model folder (files listed in
svfrd.weights.files), verify each file, and record it in the lock.

Every file goes to a hidden staging name beside its target (`.unet.pth.download`), is checked (its size and
checksum against what the source declares, its structure against the network it is for: svfrd.weights.verify)
and only then renamed to its final name, so a half or wrong file never sits where the engine looks. A transfer
that breaks off is resumed from the staged bytes, within the run and by the next run. Files already present
and verified are skipped.

Sources: the Hugging Face Hub through `huggingface_hub` (its endpoint, token and error types), the SVFR authors'
Google Drive folder through `gdown` (which knows Drive's confirmation pages), or `--from` a mirror: a local folder
or an http(s)/file URL holding the model folder's layout (and, if it has one, its manifest.lock.json, whose
sizes and sha256 are then checked too).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from svfrd.files.atomic import fsync_folder
from svfrd.weights.files import (
    DRIVE_FOLDER_ID,
    DRIVE_FOLDER_PAGE,
    HUB_PAGE,
    HUB_REPO,
    HUB_REVISION,
    MODEL_FILES,
    ModelFile,
    drive_endpoint,
    human_size,
)
from svfrd.weights.lock import LOCK_NAME, file_stamp, now_text, read_lock, unchanged, write_lock

STAGING_SUFFIX = ".download"
CHUNK = 1 << 20
ATTEMPTS = 3  # transfers broken off mid-file are resumed this often within one run
TIMEOUT_S = 60
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
#: Called with (bytes so far, total or None).
ProgressCallback = Callable[[int, int | None], None]


class FetchError(Exception):
    """A file could not be fetched; the message names it and says what to do."""


class SourceRefused(FetchError):
    """The source refuses every file of its kind (no licence, Drive's quota): no use asking for the others."""


@dataclass
class Remote:
    """What a source says about one file before sending it."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # the Hub's etag of a file kept in git rather than LFS


# --------------------------------------------------------------------------------------------------------------
# The whole folder.


def fetch_models(models_dir: Path, token: str | None = None, mirror: str | None = None,
                 console: Console | None = None, hub_endpoint: str | None = None) -> bool:
    """Fetch every missing or bad file; True when the folder ends complete and verified."""
    from svfrd.weights.verify import Architecture

    console = console or Console(highlight=False)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = read_lock(models_dir) or {}
    architecture = Architecture(models_dir)
    sources = sources_for(mirror, token, hub_endpoint)
    refused: dict[str, str] = {}
    failures = 0
    for file in MODEL_FILES:
        source = sources[file.source]
        if unchanged(models_dir, file.path, entries.get(file.path)):
            console.print(f"[green]✓[/] {file.path}: verified earlier, unchanged")
            continue
        if present_and_good(architecture, file, entries, console):
            write_lock(models_dir, entries)
            continue
        if source.name in refused:
            failures += 1
            console.print(f"[red]✗[/] {file.path}: not fetched ({escape(source.name)} refused, see above)")
            continue
        try:
            entry = fetch_file(architecture, file, source, console)
        except SourceRefused as err:
            refused[source.name] = str(err)
            failures += 1
            console.print(f"[red]✗[/] {escape(str(err))}")
            continue
        except FetchError as err:
            failures += 1
            console.print(f"[red]✗[/] {escape(str(err))}")
            continue
        entries[file.path] = entry
        write_lock(models_dir, entries)  # after each file: an interrupted run keeps what it verified
        console.print(f"[green]✓[/] {file.path}: {human_size(entry['size'])}, verified")
    for source_name, message in refused.items():
        console.print(manual_steps(source_name, models_dir))
    if failures:
        console.print(f"[bold red]{failures} file(s) missing or bad in {escape(str(models_dir))}[/]; run "
                      "`svfrd fetch-models` again to resume, or follow the steps above")
        return False
    console.print(f"[bold green]all SVFR weights in {escape(str(models_dir))} are verified[/] ({LOCK_NAME} written)")
    return True


def present_and_good(architecture, file: ModelFile, entries: dict[str, Any], console: Console) -> bool:
    """A file already there (copied by hand, or by an older svfrd) is kept when it verifies."""
    from svfrd.weights.verify import verify_file

    if not (architecture.models_dir / file.path).is_file():
        return False
    finding = verify_file(architecture, file.path, None, rehash=True)
    if finding.ok:
        entries[file.path] = {**file_stamp(architecture.models_dir / file.path), "sha256": finding.sha256,
                              "checked": finding.checked, "verified_at": now_text()}
        console.print(f"[green]✓[/] {file.path}: present and verified")
        return True
    console.print(f"[yellow]![/] {escape(finding.problem or '')}; fetching it again")
    return False


def fetch_file(architecture, file: ModelFile, source: "Source", console: Console) -> dict[str, Any]:
    """Download `file` to its staging name, check it, rename it into place; returns its lock entry."""
    from svfrd.weights.verify import CannotCheck, FileProblem, check_structure, check_zip_records, file_sha256

    target = architecture.models_dir / file.path
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(target)
    remote = source.describe(file)
    with transfer_progress(console) as progress:
        task = progress.add_task(file.name, total=remote.size)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total or remote.size)

        source.download(file, remote, staged, report, console)
    size = staged.stat().st_size
    if remote.size is not None and size != remote.size:
        raise FetchError(f"{file.path}: the transfer ended at {human_size(size)} of {human_size(remote.size)}; "
                         "run `svfrd fetch-models` again to resume it")
    try:
        sha256 = file_sha256(staged)
        check_checksums(file, staged, remote, sha256)
        check_zip_records(file.path, staged)
        checked = check_structure(architecture, file.path, staged)
    except CannotCheck as err:  # the download may well be good: keep it for the next run, which checks it
        raise FetchError(f"{file.path}: {err}; the download is kept as {staged.name} and checked by the next "
                         "`svfrd fetch-models`") from None
    except FileProblem as err:
        staged.unlink(missing_ok=True)  # a wrong file is not worth resuming
        raise FetchError(f"{err} (from {source.name}; the download was deleted)") from None
    os.replace(staged, target)
    fsync_folder(target.parent)
    return {**file_stamp(target), "sha256": sha256, "checked": f"{checked}; checksum from {source.name}"
            if remote.sha256 or remote.git_sha1 else checked, "verified_at": now_text()}


def check_checksums(file: ModelFile, staged: Path, remote: Remote, sha256: str) -> None:
    from svfrd.weights.verify import FileProblem

    if remote.sha256 and remote.sha256 != sha256:
        raise FileProblem(f"{file.path}: checksum mismatch: the source declares sha256 {remote.sha256}, the "
                          f"downloaded file has {sha256}")
    if remote.git_sha1:
        data = staged.read_bytes()  # only files kept in git (configs, a few KB) have a git hash
        actual = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if actual != remote.git_sha1:
            raise FileProblem(f"{file.path}: checksum mismatch: the source declares git hash {remote.git_sha1}, "
                              f"the downloaded file has {actual}")


def staging_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{STAGING_SUFFIX}")


def transfer_progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def manual_steps(source_name: str, models_dir: Path) -> str:
    if source_name == "the Hugging Face Hub":
        return (f"To fetch the SVD-xt files by hand: accept the licence at {HUB_PAGE} while logged in, then\n"
                f"  hf download {HUB_REPO} unet/config.json scheduler/scheduler_config.json vae/config.json "
                f"vae/diffusion_pytorch_model.fp16.safetensors --local-dir {models_dir}/stable-video-diffusion-img2vid-xt\n"
                "and run `svfrd verify-models`.")
    if source_name == "Google Drive":
        return (f"To fetch the SVFR checkpoints by hand: open {DRIVE_FOLDER_PAGE} in a browser (signed in to "
                "Google helps when Drive's download quota is exceeded; waiting a day also does), download "
                "unet.pth, id_linear.pth and insightface_glint360k.pth from face_restoration/ into "
                f"{models_dir}/face_restoration/, then run `svfrd verify-models {models_dir}`.")
    return f"Check that the mirror holds the layout of models/README.md, or copy the files into {models_dir} by hand."


# --------------------------------------------------------------------------------------------------------------
# Sources.


class Source:
    name = "a source"

    def describe(self, file: ModelFile) -> Remote:
        raise NotImplementedError

    def download(self, file: ModelFile, remote: Remote, staged: Path, report: ProgressCallback,
                 console: Console) -> None:
        http_download(file, remote, staged, report, console)


def sources_for(mirror: str | None, token: str | None, hub_endpoint: str | None) -> dict[str, Source]:
    if mirror is not None:
        source = MirrorSource(mirror)
        return {"hub": source, "drive": source}
    return {"hub": HubSource(token, hub_endpoint), "drive": DriveSource(drive_endpoint())}


class HubSource(Source):
    """The SVD-xt files through huggingface_hub: its endpoint (HF_ENDPOINT), token (--token, HF_TOKEN or the
    stored login) and error types. The bytes come from the URL the Hub redirects to, without the token when
    that is another host (the CDN)."""

    name = "the Hugging Face Hub"

    def __init__(self, token: str | None, endpoint: str | None) -> None:
        from huggingface_hub import constants, get_token

        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token or get_token()

    def describe(self, file: ModelFile) -> Remote:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(HUB_REPO, file.remote_name, revision=HUB_REVISION, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint)
        except Exception as err:  # huggingface_hub's errors, httpx's network errors
            raise self.explain(file, err) from None
        headers = {"Accept-Encoding": "identity"}
        if same_host(meta.location, self.endpoint):
            headers.update(build_hf_headers(token=self.token or False))
        etag = (meta.etag or "").lower()
        return Remote(url=meta.location, headers=headers, size=meta.size,
                      sha256=etag if SHA256.match(etag) else None, git_sha1=etag if GIT_SHA1.match(etag) else None)

    def explain(self, file: ModelFile, err: Exception) -> FetchError:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
        )

        said = server_said(err)
        if isinstance(err, GatedRepoError):
            if not self.token:
                return SourceRefused(
                    f"{file.path}: {HUB_REPO} is gated and no Hugging Face token was given. Accept its licence at "
                    f"{HUB_PAGE} while logged in, create a read token at https://huggingface.co/settings/tokens, "
                    f"then run `svfrd fetch-models --token hf_…` (or set HF_TOKEN, or run `hf auth login`).{said}")
            return SourceRefused(
                f"{file.path}: {HUB_REPO} is gated and the account of this token has not accepted its licence (or "
                f"the token may not read gated repositories). Accept the licence at {HUB_PAGE} with that account, "
                f"or give a token of an account that did, then run `svfrd fetch-models` again.{said}")
        if isinstance(err, RepositoryNotFoundError):
            return SourceRefused(f"{file.path}: the Hub does not show {HUB_REPO} to this token: check the token "
                                 f"(--token, HF_TOKEN or `hf auth login`).{said}")
        if isinstance(err, EntryNotFoundError):
            return FetchError(f"{file.path}: {HUB_REPO} has no file {file.remote_name} any more.{said}")
        if isinstance(err, HfHubHTTPError):
            return FetchError(f"{file.path}: the Hub answered {err}; try again later.")
        return SourceRefused(f"{file.path}: cannot reach the Hub at {self.endpoint} ({type(err).__name__}: {err}); "
                             "check the network, or fetch from a mirror with --from")


def server_said(err: Exception) -> str:
    message = getattr(err, "server_message", None)
    return f" The Hub said: {message}" if message else ""


class DriveSource(Source):
    """The SVFR checkpoints from the authors' Drive folder. The folder is listed from its public embedded view
    (the page gdown also reads); each file goes through gdown, which follows Drive's confirmation page for
    large files and resumes from its own partial file."""

    name = "Google Drive"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._listing: dict[str, str] | None = None

    def describe(self, file: ModelFile) -> Remote:
        file_id = self.listing().get(file.remote_name)
        if file_id is None:
            raise SourceRefused(f"{file.path}: the Drive folder {DRIVE_FOLDER_PAGE} does not list "
                                f"{file.remote_name} (Drive showed a different page, or the folder changed)")
        return Remote(url=f"{self.endpoint}/uc?id={file_id}")

    def listing(self) -> dict[str, str]:
        """File name -> Drive file id, over the folder and its subfolders."""
        if self._listing is None:
            self._listing = {}
            self._list_folder(DRIVE_FOLDER_ID, depth=0)
        return self._listing

    def _list_folder(self, folder_id: str, depth: int) -> None:
        url = f"{self.endpoint}/embeddedfolderview?id={urllib.parse.quote(folder_id)}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "svfrd"}),
                                        timeout=TIMEOUT_S) as response:
                page = response.read(4 * 2**20).decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            raise SourceRefused(f"Google Drive refused to list the SVFR folder (HTTP {err.code} {err.reason}): "
                                "its download quota may be exceeded or the folder moved") from None
        except (urllib.error.URLError, OSError) as err:
            raise SourceRefused(f"cannot reach Google Drive at {self.endpoint} ({err})") from None
        for link, text in re.findall(r'<a[^>]+href="([^"]+)"[^>]*>(.*?)</a>', page, flags=re.S):
            name = re.sub(r"<[^>]+>", "", text).strip()
            if m := re.search(r"/file/d/([-\w]{10,})", link):
                self._listing.setdefault(name, m.group(1))
            elif (m := re.search(r"/folders/([-\w]{10,})", link)) and depth < 2:
                self._list_folder(m.group(1), depth + 1)

    def download(self, file: ModelFile, remote: Remote, staged: Path, report: ProgressCallback,
                 console: Console) -> None:
        import gdown

        try:
            gdown.download(url=remote.url, output=str(staged), quiet=True, resume=True, progress=report,
                           retries=ATTEMPTS - 1)
        except Exception as err:  # gdown's FileURLRetrievalError (quota, permission), requests' errors
            raise SourceRefused(f"{file.path}: Google Drive did not send the file ({type(err).__name__}: "
                                f"{first_line(err)})") from None
        from svfrd.weights.verify import looks_like_a_web_page

        if staged.is_file() and looks_like_a_web_page(staged):
            staged.unlink()
            raise SourceRefused(f"{file.path}: Google Drive sent a web page instead of the file (its download "
                                "quota is exceeded, or it asks to sign in)")


def first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3])


class MirrorSource(Source):
    """A folder or URL with the model folder's layout: `--from /srv/models`, `--from https://host/models`."""

    def __init__(self, where: str) -> None:
        parsed = urllib.parse.urlparse(where)
        if parsed.scheme in ("http", "https"):
            self.base = where.rstrip("/")
            self.local: Path | None = None
        elif parsed.scheme == "file":
            self.base, self.local = where, Path(urllib.request.url2pathname(parsed.path))
        elif parsed.scheme == "":
            self.base, self.local = where, Path(where)
        else:
            raise FetchError(f"--from {where}: give a folder, or an http(s):// or file:// URL")
        if self.local is not None and not self.local.is_dir():
            raise FetchError(f"--from {where}: {self.local} is not a folder")
        self.name = f"the mirror {where}"
        self._lock: dict[str, Any] | None = None

    def describe(self, file: ModelFile) -> Remote:
        entry = self.lock().get(file.path, {})
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if self.local is not None:
            path = self.local / file.path
            if not path.is_file():
                raise FetchError(f"{file.path}: the mirror {self.base} has no {file.path}")
            return Remote(url=str(path), size=path.stat().st_size, sha256=sha256)
        return Remote(url=f"{self.base}/{urllib.parse.quote(file.path)}", size=size, sha256=sha256)

    def lock(self) -> dict[str, Any]:
        """The mirror's own manifest.lock.json, if it has one: its sizes and sha256 are checked as well."""
        if self._lock is None:
            try:
                if self.local is not None:
                    data = json.loads((self.local / LOCK_NAME).read_text(encoding="utf-8"))
                else:
                    with urllib.request.urlopen(f"{self.base}/{LOCK_NAME}", timeout=TIMEOUT_S) as response:
                        data = json.loads(response.read(2**20))
                self._lock = data.get("files", {}) if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._lock = {}
        return self._lock

    def download(self, file: ModelFile, remote: Remote, staged: Path, report: ProgressCallback,
                 console: Console) -> None:
        if self.local is not None:
            local_copy(Path(remote.url), staged, report)
        else:
            http_download(file, remote, staged, report, console)


# --------------------------------------------------------------------------------------------------------------
# Transfers that resume.


def http_download(file: ModelFile, remote: Remote, staged: Path, report: ProgressCallback,
                  console: Console) -> None:
    """GET `remote.url` into `staged`, asking only for the bytes not yet there (`Range`). A transfer that breaks
    off is resumed at once, up to ATTEMPTS times; what arrived stays staged for the next run."""
    for attempt in range(1, ATTEMPTS + 1):
        have = staged.stat().st_size if staged.is_file() else 0
        if remote.size is not None and have > remote.size:  # left by another version of the file: no use
            staged.unlink()
            have = 0
        if remote.size is not None and have == remote.size:
            return
        if have:
            console.print(f"  {file.name}: resuming at {human_size(have)}")
        try:
            if transfer(remote, staged, have, report):
                return
        except urllib.error.HTTPError as err:
            raise FetchError(f"{file.path}: {remote_host(remote.url)} answered HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == ATTEMPTS:
                raise FetchError(f"{file.path}: cannot reach {remote_host(remote.url)} ({err}); run "
                                 "`svfrd fetch-models` again to resume") from None
    got = staged.stat().st_size if staged.is_file() else 0
    total = f" of {human_size(remote.size)}" if remote.size else ""
    raise FetchError(f"{file.path}: the transfer broke off {ATTEMPTS} times, at {human_size(got)}{total}; run "
                     "`svfrd fetch-models` again to resume it")


class CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib, which carries every header along, except the token (and cookies) to
    another host: a redirect from the Hub to its CDN must not hand the CDN the user's token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and not same_host(newurl, req.full_url):
            for name in ("Authorization", "Cookie"):
                new.remove_header(name)
        return new


OPENER = urllib.request.build_opener(CredentialsStayHome)


def transfer(remote: Remote, staged: Path, have: int, report: ProgressCallback) -> bool:
    """One request; True when the body arrived whole."""
    headers = dict(remote.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        response = OPENER.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing past what we have: the staged file is whole
            return True
        raise
    with response:
        resumed = have and response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = (have if resumed else 0) + expected if expected is not None else remote.size
        done = have if resumed else 0
        received = 0
        with open(staged, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    report(done + received, total)
            except (OSError, http.client.HTTPException):  # the connection dropped mid-body
                return False
    return expected is None or received == expected


def local_copy(source: Path, staged: Path, report: ProgressCallback) -> None:
    """Copy from a mirror folder, continuing a staged partial copy."""
    total = source.stat().st_size
    have = staged.stat().st_size if staged.is_file() else 0
    if have > total:
        staged.unlink()
        have = 0
    with open(source, "rb") as src, open(staged, "ab") as out:
        src.seek(have)
        while chunk := src.read(CHUNK):
            out.write(chunk)
            have += len(chunk)
            report(have, total)


def same_host(url: str, endpoint: str) -> bool:
    return urllib.parse.urlparse(url).netloc == urllib.parse.urlparse(endpoint).netloc


def remote_host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url
