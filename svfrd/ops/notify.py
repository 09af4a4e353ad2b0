"""Talking to the service manager (systemd's sd_notify protocol).

Each message is one datagram of newline-separated `KEY=value` lines sent to the Unix socket named by
`$NOTIFY_SOCKET`. Without that variable (run by hand, in tests) every call is a silent no-op. Nothing here
raises: a service manager that went away must never take the daemon down with it.
"""

from __future__ import annotations

import logging
import os
import socket

from svfrd.ops.printable import printable

log = logging.getLogger(__name__)


def _socket_address(name: str) -> str | bytes:
    """`@name` is an abstract socket (a leading NUL byte on the wire); anything else is a path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(*lines: str) -> bool:
    """Send `lines` as one message; True when it was delivered, False when there is no manager or it failed."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name or not lines:
        return False
    message = "\n".join(lines).encode("utf-8", errors="replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_socket_address(name))
            sock.sendall(message)
        return True
    except OSError as err:
        # Debug only: the watchdog would otherwise log every few seconds while the manager is gone.
        log.debug("could not notify the service manager at %s: %s", name, err)
        return False


def ready() -> bool:
    """Start-up is complete (lock taken, database migrated, first inbox scan done)."""
    return notify("READY=1")


def status(text: str) -> bool:
    """A one-line state shown by `systemctl status`: a newline would end the STATUS field early (and could add
    a field of its own, such as `READY=1`), so lines are joined and other control characters escaped. Callers
    escape the file names they put in it (`svfrd.ops.printable`); this is the safety net."""
    return notify("STATUS=" + printable(" ".join(text.splitlines())))


def watchdog() -> bool:
    """Keep-alive from the main loop; without it systemd restarts the service after `WatchdogSec`."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more time from now to finish starting or stopping (e.g. while a job winds down)."""
    return notify(_extend_timeout_line(seconds))


def still_busy(seconds: float = 60.0) -> bool:
    """Long work on the main loop (hashing a large video): feed the watchdog and, before READY, ask for more
    start-up time, so systemd does not kill a daemon that is working, not hung."""
    return notify("WATCHDOG=1", _extend_timeout_line(seconds))


def _extend_timeout_line(seconds: float) -> str:
    return f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}"


def stopping() -> bool:
    """The service begins shutting down."""
    return notify("STOPPING=1")


def watchdog_interval() -> float | None:
    """Seconds between keep-alives (half of `$WATCHDOG_USEC`, as systemd advises), or None when not watched.

    `$WATCHDOG_PID`, when set, names the process meant to send them; a child process must not act on it.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000
