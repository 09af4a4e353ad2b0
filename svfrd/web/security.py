"""Who may use the web page, and which requests are refused before any endpoint runs (README, "Web page").

- **Token.** On a loopback address the page is open to the machine's own users, unless `[web] token` is set.
  Any other address requires a token: `[web] token`, or one generated once into `STATE_DIR/web-token` (0600)
  and printed when it is made. It is accepted as `Authorization: Bearer TOKEN` (API clients) or as the
  `svfrd_token` cookie, which `GET /login?token=TOKEN` sets (HttpOnly, SameSite=Strict) for a browser.
- **Host.** Without a token, the Host header must name loopback: a page on another site whose name is made
  to resolve to 127.0.0.1 (DNS rebinding) is refused, as it would otherwise be "same origin".
- **CSRF.** A state-changing request (POST) from another site is refused: browsers send `Origin` and
  `Sec-Fetch-Site` on such requests, and either one naming another site is enough. The cookie is
  SameSite=Strict, so another site's form never carries it either. Non-browser clients send neither header.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import secrets
import stat
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

from svfrd.config import Config, parse_listen_address

TOKEN_FILE = "web-token"
COOKIE = "svfrd_token"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine's loopback."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def required_token(config: Config, listen: str) -> tuple[str | None, bool]:
    """(the token requests need or None, whether it was generated just now and must be shown once)."""
    if config.web.token:
        return config.web.token, False
    host, _port = parse_listen_address(listen)
    if is_loopback(host):
        return None, False
    return stored_token(config.service.state_dir)


def stored_token(state_dir: Path) -> tuple[str, bool]:
    """The token in `STATE_DIR/web-token`, made (0600, created new) when there is none. The file is read and
    made without following a link, so one planted in its place can neither supply a token nor receive ours."""
    path = state_dir / TOKEN_FILE
    token = _read_token_file(path)
    if token is not None:
        return token, False
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another `svfrd web` made it just now: use that one
        token = _read_token_file(path)
        if token is None:
            raise OSError(errno.ENOENT, f"{path} came and went while svfrd made it; start the page again") from None
        return token, False
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token, True


def _read_token_file(path: Path) -> str | None:
    """The token in `path`, None when there is no file. Anything but a private, non-empty plain file of ours is
    an error saying what to do (OSError: `svfrd` prints it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(err.errno, f"{path} is a symbolic link; the web token is only read from a plain file. "
                                     "Remove the link (a new token is then made and shown once)") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise OSError(errno.EPERM, f"{path} must be a plain file of this user that only it can read "
                                       f"(chmod 600 {path}); remove it to have a new token made")
        token = f.read(4096).decode("ascii", "replace").strip()
    if not token:
        raise OSError(errno.EINVAL, f"{path} is empty; remove it to have a new token made, or set [web] token")
    return token


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _host_name(host_header: str) -> str:
    return urlsplit(f"//{host_header}").hostname or ""


def presented_token(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is just no token
        return None
    return cookie[COOKIE].value if COOKIE in cookie else None


def cross_site_problem(method: str, headers: dict[str, str]) -> str | None:
    """Why a state-changing request looks like it came from another site, or None."""
    if method in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the browser says this {method} came from another site (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            return f"this {method} came from the page of another site ({origin})"
    elif origin == "null":
        return f"this {method} came from a page without an origin (a sandbox or a file)"
    return None


class Guard:
    """ASGI middleware: the Host, token and CSRF rules of the module docstring, before any endpoint."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            return await _send_refusal(send, status, message, wants_html=_wants_html(headers))
        if scope["path"] == "/login" and self.token is not None:
            return await self._login(scope, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if self.token is None and not is_loopback(_host_name(headers.get("host", ""))):
            return 421, ("this page is served for loopback only (http://127.0.0.1:PORT/); to reach it by another "
                         "name or address, listen there ([web] listen) with a token")
        problem = cross_site_problem(scope["method"], headers)
        if problem is not None:
            return 403, f"refused: {problem}. Use the svfrd page itself, or an API client without a browser"
        if self.token is None or scope["path"] == "/login" or scope["path"].startswith("/static/"):
            return None
        given = presented_token(headers)
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, ("a token is needed: send `Authorization: Bearer TOKEN`, or open /login?token=TOKEN once "
                         "in the browser. The token is [web] token in config.toml, or the one in "
                         "STATE_DIR/web-token (printed when it was made)")
        return None

    async def _login(self, scope, send) -> None:
        """`/login?token=T`: a right token becomes the cookie and the browser goes to the queue."""
        from urllib.parse import parse_qs

        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if not given:
            return await _send_html(send, 200, LOGIN_PAGE)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return await _send_refusal(send, 401, "that token is not the right one", wants_html=True)
        cookie = f"{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode("latin-1")),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>svfrd: token</title>
<link rel="stylesheet" href="/static/app.css"></head><body><main class="narrow"><h1>svfrd</h1>
<form method="get" action="/login"><label>Token <input name="token" type="password" autocomplete="current-password"
autofocus></label> <button>Open</button></form>
<p>The token is <code>[web] token</code> in config.toml, or the one in <code>STATE_DIR/web-token</code>.</p>
</main></body></html>"""


def _wants_html(headers: dict[str, str]) -> bool:
    return "text/html" in headers.get("accept", "")


async def _send_refusal(send, status: int, message: str, wants_html: bool) -> None:
    if wants_html:
        from html import escape

        link = '<p><a href="/login">Give the token</a></p>' if status == 401 else ""
        page = (f'<!doctype html><html><head><meta charset="utf-8"><title>svfrd</title></head><body>'
                f"<p>{escape(message)}</p>{link}</body></html>")
        return await _send_html(send, status, page)
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_html(send, status: int, page: str) -> None:
    body = page.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
