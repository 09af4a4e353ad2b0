"""`scripts/gpu-check` on the CPU: the same table as on a GPU, with the tiny models (bench/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import FACE_MODEL, REPO_ROOT

COLUMNS = ["config", "dtype", "frames/s", "UNet calls/s", "TFLOP/s", "% of peak", "peak VRAM GiB", "estimate GiB",
           "ratio"]
ROWS = {("reference-style", "fp16")} | {(tier, dtype) for tier in ("high", "balanced", "low")
                                        for dtype in ("fp16", "bf16")}


def split_row(line: str) -> list[str]:
    # Columns are separated by two or more spaces; some headers hold single spaces.
    return [cell for cell in line.split("  ") if cell.strip()]


@pytest.mark.skipif(not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env")
def test_gpu_check_prints_the_table_with_tiny_models_on_the_cpu():
    env = {**os.environ, "SVFRD_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}

    done = subprocess.run([str(REPO_ROOT / "scripts" / "gpu-check"), "--tiny"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "CUDA tests: skipped (no CUDA GPU here)" in lines
    header = next(n for n, line in enumerate(lines) if line.startswith("config "))
    assert [cell.strip() for cell in split_row(lines[header])] == COLUMNS
    rows = [[cell.strip() for cell in split_row(line)] for line in lines[header + 1 : header + 1 + len(ROWS)]]
    assert {(row[0], row[1]) for row in rows} == ROWS
    for row in rows:
        frames, calls, tflops, share, vram, estimate, ratio = row[2:]
        assert float(frames) > 0 and float(calls) > 0 and float(tflops) >= 0 and float(ratio) > 0
        assert (share, vram, estimate) == ("unknown", "-", "-")  # no GPU peak, no VRAM on the CPU
    reference = next(row for row in rows if row[0] == "reference-style")
    assert float(reference[-1]) == 1.0
    psnr = next(line for line in lines if line.startswith("PSNR"))
    assert float(psnr.rsplit(": ", 1)[1].removesuffix(" dB")) > 0
