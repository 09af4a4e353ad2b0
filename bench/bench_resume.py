"""What resuming costs and saves (docs/architecture.md, "Resume"): checkpoint overhead as a share of job time,
checkpoint bytes per minute of video, and the work a crash loses.

    .venv/bin/python bench/bench_resume.py [--frames 250] [--width 640] [--height 360] [--repeat 3]
                                           [--svfr-frames 48] [--device cpu|cuda]

Classical engine (CPU): the same job with and without a checkpoint folder (segmented output + face pass
checkpoint), best of --repeat, interleaved. SVFR: the engine with and without sampler checkpoints, on the tiny
test models at 64x64 on the CPU, or with `--device cuda` on the full-size architecture with random weights at
512x512 (bench/svfr_models.py; needs a GPU and about 3 GB of disk for the weights).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script, the repository root is not on the path: bench and tests are

from bench.bench_pipeline import make_clip  # noqa: E402 - after the sys.path line above
from svfrd.config import FacesConfig, OutputConfig  # noqa: E402
from svfrd.domain import Task  # noqa: E402
from svfrd.jobs.checkpoints import CheckpointFolder  # noqa: E402
from svfrd.media.pipeline import PipelineJob, restore_video  # noqa: E402
from svfrd.media.video_io import probe  # noqa: E402

FACE_MODEL = ROOT / "models" / "face_landmarker.task"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def classical_job(source: Path, work: Path, resumable: bool, segment_seconds: float) -> PipelineJob:
    return PipelineJob(
        source=source, output=work / "out.mp4", tasks=frozenset({Task.BFR}), seed=42, mask_path=None,
        reference_path=None, options={}, faces=FacesConfig(crop="tracked", model=FACE_MODEL),
        output_cfg=OutputConfig(outbox=work, done=work, failed=work, mode="full_frame", crf=18, preview=False,
                                segment_seconds=segment_seconds),
        checkpoints=work / "checkpoints" if resumable else None, identity={"bench": 1},
    )


def run_classical(source: Path, work: Path, resumable: bool, segment_seconds: float) -> tuple[float, int, dict]:
    from svfrd.engines.classical import ClassicalEngine

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    job = classical_job(source, work, resumable, segment_seconds)
    started = time.perf_counter()
    result = restore_video(job, ClassicalEngine(), lambda stage, done, total: None)
    return time.perf_counter() - started, folder_bytes(work / "checkpoints"), result.timings


def bench_classical(args: argparse.Namespace, tmp: Path) -> None:
    source = tmp / "clip.mp4"
    make_clip(source, args.frames, args.width, args.height)
    info = probe(source)
    plain, resumable, size = [], [], 0
    for _ in range(args.repeat):  # interleaved, so load elsewhere hits both alike
        plain.append(run_classical(source, tmp / "plain", False, args.segment_seconds)[0])
        seconds, size, timings = run_classical(source, tmp / "resumable", True, args.segment_seconds)
        resumable.append(seconds)
    best_plain, best_resumable = min(plain), min(resumable)
    minutes = info.duration / 60
    segment_frames = max(1, round(float(info.fps) * args.segment_seconds))
    per_frame = best_resumable / info.frames
    print(f"classical engine, CPU, {args.width}x{args.height}, {info.frames} frames, {info.duration:.1f} s of video, "
          f"best of {args.repeat}")
    print(f"  job time without checkpoints {best_plain:.2f} s, with {best_resumable:.2f} s: overhead "
          f"{(best_resumable - best_plain) / best_resumable:+.1%} of job time")
    print(f"  checkpoint folder at its largest {size / 2**20:.2f} MiB = {size / 2**20 / minutes:.1f} MiB per minute of "
          f"video (the encoded segments, i.e. about the output's own size, plus the crop squares)")
    print(f"  work lost per crash: at most one segment, {segment_frames} frames ({args.segment_seconds:g} s of video), "
          f"plus 4 frames of engine context: about {(segment_frames + 4) * per_frame:.1f} s of job time here")


def svfr_engine(args: argparse.Namespace, tmp: Path):
    import torch

    from bench.svfr_models import write_full_svfr_models, write_tiny_svfr_models
    from svfrd.engines.svfr.engine import SvfrEngine
    from tests.helpers.tiny_svfr import engine_config

    if args.device == "cuda":
        models = write_full_svfr_models(tmp / "svfr-full", device="cuda", dtype=torch.float16)
        config = replace(engine_config(models, steps=args.steps, pass1_steps=args.pass1_steps), device="cuda",
                         dtype="fp16")
        return SvfrEngine(config, face_model=FACE_MODEL), 512
    torch.set_num_threads(1)
    models = write_tiny_svfr_models(tmp / "svfr-tiny")
    return SvfrEngine(engine_config(models, steps=args.steps, pass1_steps=args.pass1_steps), resolution=64,
                      face_model=FACE_MODEL), 64


def bench_svfr(args: argparse.Namespace, tmp: Path) -> None:
    import io

    import torch

    from svfrd.engines.interface import RestoreRequest
    from tests.helpers.tiny_svfr import face_crops

    engine, resolution = svfr_engine(args, tmp)
    crops = face_crops(args.svfr_frames)

    def run(checkpoints: CheckpointFolder | None) -> float:
        request = RestoreRequest(tasks=frozenset({Task.BFR}), seed=42, checkpoints=checkpoints)
        started = time.perf_counter()
        for _ in engine.restore(request, crops, lambda stage, done, total: None):
            pass
        return time.perf_counter() - started

    run(None)  # warm-up: first calls pay for allocations and kernel choices
    plain, saved, size = [], [], 0
    for attempt in range(args.repeat):
        plain.append(run(None))
        folder = CheckpointFolder(tmp / f"svfr-checkpoints-{attempt}", {"bench": attempt}).create()
        saved.append(run(folder))
        size = folder_bytes(folder.folder)
        latents = torch.load(io.BytesIO(folder.load("pass2-0").payload), weights_only=True)["latents"]
        folder.remove()
    best_plain, best_saved = min(plain), min(saved)
    per_frame_step = latents[0].nbytes  # C x h x w fp32
    print(f"SVFR on {args.device} at {resolution}x{resolution}, {args.svfr_frames} frames, {args.steps} steps "
          f"(pass 1: {args.pass1_steps}), checkpoint after every step, best of {args.repeat}")
    print(f"  call time without checkpoints {best_plain:.2f} s, with {best_saved:.2f} s: overhead "
          f"{(best_saved - best_plain) / best_saved:+.1%} of the engine's time")
    print(f"  checkpoint folder at the end {size / 1024:.0f} KiB = {size / args.svfr_frames / 1024:.1f} KiB per frame "
          f"({per_frame_step / 1024:.2f} KiB of latents per frame: a finished run keeps its final state, the "
          f"running one its last two; pass 1 on <= 16 frames)")
    full = 4 * 64 * 64 * 4
    print(f"  at 512x512: {full / 1024:.0f} KiB per frame: {full * 25 * 60 / 2**20:.0f} MiB per minute of 25 fps video, "
          f"plus a second copy of the pass-2 segment in progress")
    print(f"  work lost per crash: at most one denoising step of one pass-2 segment "
          f"(about {best_plain / (args.steps + 1):.2f} s here)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--svfr-frames", type=int, default=48)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pass1-steps", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-classical", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_classical:
            bench_classical(args, Path(tmp))
        bench_svfr(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
