"""Content hashes (svfrd.files.hashing): streamed, and a long hash keeps the systemd watchdog fed."""

import hashlib

from svfrd.files import hashing


def test_hashing_a_large_file_reports_it_is_alive_so_the_watchdog_does_not_fire(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "ALIVE_EVERY", 3 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\x01" * (10 << 20))
    pings = []
    digest = hashing.file_sha256(big, still_alive=lambda: pings.append(1))
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest()
    assert len(pings) == 3  # after 3, 6 and 9 MiB of the 10


def test_a_short_file_hashes_without_calling_back(tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"face")
    assert hashing.file_sha256(small, still_alive=lambda: 1 / 0) == hashlib.sha256(b"face").hexdigest()
