"""The web page on a real uvicorn server on loopback, in a thread of the test process.

The socket is bound and listening before the server thread starts, so requests can be sent at once: the
kernel queues the connection until uvicorn accepts it (no waiting for start-up).
"""

from __future__ import annotations

import threading
from pathlib import Path

import requests

from svfrd.config import load_config
from svfrd.jobs.database import open_database, upgrade_database
from svfrd.web.app import bind, create_app, make_server, url_of


class WebServer:
    def __init__(self, config_path: Path, token: str | None = None):
        self.config = load_config(config_path)
        self.token = token

    def __enter__(self) -> "WebServer":
        upgrade_database(self.config.service.database_url)
        self.db = open_database(self.config.service.database_url)
        self.sock = bind("127.0.0.1:0")
        self.url = url_of(self.sock).rstrip("/")
        self.server = make_server(create_app(self.config, self.db, self.token), self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.session = requests.Session()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.session.close()
        self.sock.close()
        self.db.dispose()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.url + path, timeout=60, **kwargs)
