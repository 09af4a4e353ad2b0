"""A sidecar cannot make the daemon slow, big or crash (issue 16): the size and dot limits hold before TOML is
parsed, nesting too deep and decompression-bomb images are refused like any other mistake in a sidecar."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from svfrd.errors import BadInputError
from svfrd.service.sidecar import MAX_DOTS_PER_LINE, MAX_SIDECAR_BYTES, parse_sidecar, sidecar_toml


def error_of(tmp_path: Path, text: str) -> str:
    sidecar = tmp_path / "clip.toml"
    sidecar.write_text(text)
    with pytest.raises(BadInputError) as info:
        parse_sidecar(sidecar, tmp_path)
    return str(info.value)


def png_header(width: int, height: int) -> bytes:
    """A 65-byte PNG that claims `width` x `height` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_sidecar_over_16_kib_is_refused_before_it_is_parsed(tmp_path):
    padding = "# a comment line\n" * (MAX_SIDECAR_BYTES // 17 + 1)
    assert "larger than 16 KiB" in error_of(tmp_path, 'tasks = ["bfr"]\n' + padding)


def test_a_long_dotted_key_is_refused_before_it_is_parsed_and_the_worst_allowed_sidecar_is_cheap(tmp_path):
    assert f"more than {MAX_DOTS_PER_LINE} dots" in error_of(tmp_path, "a" + ".a" * 8000 + " = 1\n")
    line = "k" + ".a" * MAX_DOTS_PER_LINE + " = 1\n"
    lines = [line.replace("k", f"k{number}", 1) for number in range(MAX_SIDECAR_BYTES // (len(line) + 4))]
    data = "".join(lines).encode()
    assert len(data) <= MAX_SIDECAR_BYTES
    tracemalloc.start()
    try:
        sidecar_toml(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"  # one 16 KiB dotted key took 270 MB


def test_arrays_nested_too_deeply_are_refused(tmp_path):
    assert "nested too deeply" in error_of(tmp_path, "tasks = " + "[" * 600 + "\n")


@pytest.mark.parametrize("side", [14000, 10000], ids=["bomb error", "bomb warning"])
def test_a_mask_claiming_more_pixels_than_pillow_allows_is_refused(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    message = error_of(tmp_path, 'tasks = ["bfr", "inpaint"]\nmask = "bomb.png"\n')
    assert "bomb.png" in message and "pixels" in message


def test_a_mask_over_the_configured_limit_is_refused_with_the_workers_message(tmp_path):
    # 6000x6000 is under Pillow's own limit (about 89 M pixels) but over [limits] max_mask_pixels (33 M): the
    # worker would refuse it when its job starts, so intake refuses it now, with the worker's words.
    (tmp_path / "big.png").write_bytes(png_header(6000, 6000))
    message = error_of(tmp_path, 'tasks = ["bfr", "inpaint"]\nmask = "big.png"\n')
    assert 'mask = "big.png": the mask big.png is 6000x6000 (36,000,000 pixels)' in message
    assert "over the limit of 33,177,600 pixels ([limits] max_mask_pixels" in message


def test_the_mask_limit_is_the_configured_one_lowered_or_raised(tmp_path):
    (tmp_path / "clip.toml").write_text('tasks = ["bfr", "inpaint"]\nmask = "wide.png"\n')
    (tmp_path / "wide.png").write_bytes(png_header(10000, 10000))  # over Pillow's own limit
    assert parse_sidecar(tmp_path / "clip.toml", tmp_path, max_mask_pixels=10000 * 10000).mask_path is not None
    with pytest.raises(BadInputError, match=r"over the limit of 99,999,999 pixels \(\[limits\] max_mask_pixels"):
        parse_sidecar(tmp_path / "clip.toml", tmp_path, max_mask_pixels=10000 * 10000 - 1)
