"""Which process listens on a TCP port (for `svfrd doctor`'s check of the web page's address), read from
/proc: the listening socket's inode in /proc/net/tcp{,6}, then the process holding a descriptor to it. A
process of another user is named only where /proc lets us see it."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

TCP_LISTEN = "0A"


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == TCP_LISTEN and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def port_holders(port: int, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of each process we may see that listens on `port`."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    holders = []
    for entry in proc.iterdir() if wanted else ():
        if not entry.name.isdigit():
            continue
        if _links(entry / "fd") & wanted:
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                command = "?"
            holders.append((int(entry.name), command))
    return holders


def _links(fd_folder: Path) -> set[str]:
    """What the descriptors in /proc/PID/fd point at; one closed meanwhile (the listing's own) is skipped."""
    links = set()
    try:
        descriptors = list(fd_folder.iterdir())
    except OSError:  # another user's process, or gone
        return links
    for fd in descriptors:
        try:
            links.add(os.readlink(fd))
        except OSError:
            pass
    return links


def bind_problem(host: str, port: int) -> OSError | None:
    """None if a server could listen on host:port now, else the error binding gave."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


def in_use(err: OSError) -> bool:
    return err.errno == errno.EADDRINUSE
