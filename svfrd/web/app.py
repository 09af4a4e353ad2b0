"""The web page's application and server: `svfrd web`, or a child process of `svfrd run` with `[web] enabled`.

A second door to the same service: it reads and changes jobs through the store (svfrd.jobs.store) on the same
database, and new videos enter the inbox like any other (svfrd.web.uploads). It holds no state of its own, so
the daemon and the page can be restarted apart.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from svfrd.config import Config, parse_listen_address
from svfrd.web.api import Api
from svfrd.web.pages import Pages
from svfrd.web.security import Guard, is_loopback, required_token

log = logging.getLogger("svfrd.web")
STATIC = Path(__file__).parent / "static"


def create_app(config: Config, db, token: str | None):
    """The ASGI application on the job database `db`; `token` None: open (loopback only)."""
    api, pages = Api(config, db), Pages(config, db, token_required=token is not None)
    routes = [
        Route("/", pages.queue),
        Route("/jobs/{job_id:int}", pages.job),
        Route("/submit", pages.submit),
        Route("/settings", pages.settings),
        Route("/api/jobs", api.list, methods=["GET"]),
        Route("/api/jobs", api.create, methods=["POST"]),
        Route("/api/jobs/{job_id:int}", api.one),
        Route("/api/jobs/{job_id:int}/cancel", api.cancel, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/retry", api.retry, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/{kind:str}", api.file),
        Route("/api/events", api.events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Guard(Starlette(routes=routes), token)


def bind(listen: str) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: any free one); bound here, before the server starts, so the
    address is known and taken at once."""
    host, port = parse_listen_address(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {listen}: {err.strerror}; `svfrd doctor` says who holds the "
                                 "port, or choose another with --listen HOST:PORT or [web] listen") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app, sock: socket.socket):
    import uvicorn

    # Open event streams would hold a plain shutdown for ever; two seconds is enough for uploads to be refused.
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                                         lifespan="off", proxy_headers=False, access_log=False))


def serve(config: Config, listen: str | None = None) -> int:
    """Run the page until SIGTERM/SIGINT. Returns the exit code."""
    from svfrd.jobs.database import open_database

    listen = listen or config.web.listen
    token, generated = required_token(config, listen)
    sock = bind(listen)
    _die_with_parent()
    db = open_database(config.service.database_url)
    try:
        where = url_of(sock)
        if generated:
            print(f"svfrd web: generated a token (kept in {config.service.state_dir}/web-token, shown only now): "
                  f"{token}\n  open {where}login?token={token} once in the browser", file=sys.stderr, flush=True)
        mode = "with a token" if token else "open to this machine's users (loopback, no token)"
        log.info("svfrd web is serving %s %s", where, mode)
        make_server(create_app(config, db, token), sock).run(sockets=[sock])
        return 0
    finally:
        db.dispose()
        sock.close()


def _die_with_parent() -> None:
    """As a child of `svfrd run`, end when it ends (even by SIGKILL): Linux's parent-death signal."""
    parent = os.environ.get("SVFRD_WEB_PARENT")
    if not parent:
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != parent:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def loopback_listen(listen: str) -> bool:
    return is_loopback(parse_listen_address(listen)[0])
