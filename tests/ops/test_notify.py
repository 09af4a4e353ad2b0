"""sd_notify messages reach a real datagram socket, and a missing or dead manager never raises."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from svfrd.ops import notify


@pytest.fixture
def manager_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A datagram socket standing in for systemd's notify socket, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_each_helper_sends_its_systemd_field(manager_socket: socket.socket) -> None:
    assert notify.ready()
    assert receive(manager_socket) == "READY=1"
    assert notify.status("restoring a.mp4 — pass 2, 42%")
    assert receive(manager_socket) == "STATUS=restoring a.mp4 — pass 2, 42%"
    assert notify.watchdog()
    assert receive(manager_socket) == "WATCHDOG=1"
    assert notify.extend_timeout(1.5)
    assert receive(manager_socket) == "EXTEND_TIMEOUT_USEC=1500000"
    assert notify.stopping()
    assert receive(manager_socket) == "STOPPING=1"
    assert notify.still_busy(60)
    assert receive(manager_socket) == "WATCHDOG=1\nEXTEND_TIMEOUT_USEC=60000000"


def test_several_lines_travel_as_one_datagram(manager_socket: socket.socket) -> None:
    assert notify.notify("READY=1", "STATUS=idle")
    assert receive(manager_socket) == "READY=1\nSTATUS=idle"


def test_a_status_with_newlines_stays_one_field(manager_socket: socket.socket) -> None:
    notify.status("line one\nline two")
    assert receive(manager_socket) == "STATUS=line one line two"


def test_a_status_carries_no_terminal_escape(manager_socket: socket.socket) -> None:
    notify.status("restoring \x1b]0;owned\x07a.mp4")
    assert receive(manager_socket) == "STATUS=restoring \\x1b]0;owned\\x07a.mp4"


def test_abstract_socket_names_start_with_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"svfrd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert receive(sock) == "READY=1"


def test_without_a_manager_every_call_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.status("idle") is False
    assert notify.watchdog() is False


def test_a_vanished_manager_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path))  # a folder, not a socket
    assert notify.ready() is False


def test_watchdog_interval_is_half_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 15.0


@pytest.mark.parametrize("usec, pid", [(None, None), ("0", None), ("junk", None), ("30000000", "1")])
def test_no_watchdog_interval_when_not_watched(monkeypatch: pytest.MonkeyPatch, usec, pid) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert notify.watchdog_interval() is None
