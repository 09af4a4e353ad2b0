"""Content hashes of files, streamed so a multi-GB video never sits in memory."""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO, Callable

BLOCK = 1 << 20
#: How often (in bytes read) a long hash calls back, so a caller can show it is alive.
ALIVE_EVERY = 256 << 20


def file_sha256(path: str | Path | BinaryIO, still_alive: Callable[[], object] | None = None) -> str:
    """sha256 of a file, by path or already open (read from where it stands). `still_alive` is called every
    256 MiB: hashing a large video on a slow disk takes longer than the systemd watchdog allows, and the daemon
    must not be killed for doing its work."""
    digest = hashlib.sha256()
    since_alive = 0
    with open(path, "rb") if isinstance(path, (str, Path)) else nullcontext(path) as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
            since_alive += len(block)
            if still_alive is not None and since_alive >= ALIVE_EVERY:
                still_alive()
                since_alive = 0
    return digest.hexdigest()
