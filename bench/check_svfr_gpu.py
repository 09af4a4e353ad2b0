"""Does the SVFR pipeline restore on a CUDA GPU what it restores on the CPU? Tiny random weights, real face crops.

    .venv/bin/python bench/check_svfr_gpu.py [--frames 20] [--resolution 128]

Loads `SVFRPipeline` from a tiny model folder of the real layout (tests/helpers/tiny_svfr.py) once on the CPU
in fp32 (the reference path) and then on the GPU in fp32, fp16 and bf16, restores the same crops with the same
seed, and prints for each: the largest and mean pixel difference to the CPU result (0-255) and the seconds the
call took. Exits 1 when a precision strays beyond its tolerance (MEAN_TOLERANCE), 2 without a GPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script, the repository root is not on the path: tests.helpers is

from svfrd.domain import Task  # noqa: E402 - after the sys.path line above
from svfrd.engines.svfr.pipeline import SVFRPipeline, SVFRSettings  # noqa: E402
from tests.helpers.paths import FACE_MODEL  # noqa: E402
from tests.helpers.tiny_svfr import face_crops, write_tiny_svfr_models  # noqa: E402

#: Mean absolute pixel difference (0-255) each precision may have against the CPU fp32 run.
MEAN_TOLERANCE = {torch.float32: 0.5, torch.float16: 2.0, torch.bfloat16: 6.0}
TASKS = frozenset({Task.BFR, Task.COLORIZE})


def restore(pipeline: SVFRPipeline, frames: int) -> tuple[np.ndarray, float]:
    settings = SVFRSettings(steps=4, pass1_steps=4, mode="reference")
    started = time.perf_counter()
    crops = list(pipeline(face_crops(frames), TASKS, seed=7, settings=settings, progress=lambda *_: None,
                          warn=lambda _: None))
    if pipeline.models.device.type == "cuda":
        torch.cuda.synchronize()
    return np.stack(crops).astype(np.float32), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="crops to restore (20: two overlapping windows)")
    parser.add_argument("--resolution", type=int, default=128, help="working resolution of the tiny models")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: run this on the GPU workstation")
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.frames} crops at "
          f"{args.resolution}px, tasks {sorted(t.label for t in TASKS)}")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        models = write_tiny_svfr_models(Path(folder))

        def load(device: str, dtype: torch.dtype) -> SVFRPipeline:
            return SVFRPipeline.from_folder(models, torch.device(device), dtype, FACE_MODEL,
                                            resolution=args.resolution)

        expected, cpu_seconds = restore(load("cpu", torch.float32), args.frames)
        print(f"  cpu  fp32: {cpu_seconds:6.2f} s (reference)")
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            restore(load("cuda", dtype), 2)  # warm-up: kernels and allocator
            got, seconds = restore(load("cuda", dtype), args.frames)
            diff = np.abs(got - expected)
            within = diff.mean() <= MEAN_TOLERANCE[dtype]
            ok &= bool(within)
            print(f"  cuda {str(dtype).removeprefix('torch.'):9}: {seconds:6.2f} s, max diff {diff.max():5.1f}, "
                  f"mean diff {diff.mean():5.2f} (allowed {MEAN_TOLERANCE[dtype]}) {'ok' if within else 'TOO FAR'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
