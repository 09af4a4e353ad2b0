"""Benchmark of the video pipeline around the engine: throughput and peak memory for two clip lengths.

    .venv/bin/python bench/bench_pipeline.py [--frames 60] [--factor 10] [--width 640 --height 360] [--repeat 2]
                                             [--classical]

For a short clip and one `factor` times longer it runs, each in a fresh process (so peak RSS is its own):
- `floor`:    plain PyAV decode + H.264 encode of the same file (the least any pipeline must spend);
- `pipeline`: restore_video with an identity engine: decode, face pass, crop, paste-back, encode, no model;
- `classical` (with --classical): restore_video with the classical CPU engine.
It prints frames/s and peak RSS per run (best and worst of --repeat runs). Memory is bounded if the longer
clip's peak RSS is about the same as the short one's. Peak RSS varies from run to run because glibc gives
each decoder/encoder thread its own malloc arena; `MALLOC_ARENA_MAX=2` in the environment makes it steady
(and is a sensible setting for the service too). Within one run RSS stays flat from the first frames on.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class IdentityEngine:
    """Returns each crop unchanged: isolates the pipeline's own cost from any restoration."""

    name = "identity"
    option_names = frozenset()

    def check(self, request):
        pass

    def restore(self, request, crops, progress):
        for crop in crops:
            yield crop.image

    def warnings(self):
        return []


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def run_floor(source: Path, output: Path, crf: int) -> dict:
    from svfrd.media.video_io import VideoWriter, iter_frames, probe

    info = probe(source)
    start = time.perf_counter()
    frames = 0
    with VideoWriter(output, info, crf=crf, audio_source=source) as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
            frames += 1
    return {"frames": frames, "seconds": time.perf_counter() - start}


def run_pipeline(source: Path, output: Path, crf: int, engine_name: str) -> dict:
    from svfrd.config import FacesConfig, OutputConfig
    from svfrd.domain import Task
    from svfrd.engines.classical import ClassicalEngine
    from svfrd.media.pipeline import PipelineJob, restore_video

    folder = output.parent
    job = PipelineJob(
        source=source, output=output, tasks=frozenset({Task.BFR}), seed=0, mask_path=None, reference_path=None,
        options={}, faces=FacesConfig(crop="tracked", model=ROOT / "models" / "face_landmarker.task"),
        output_cfg=OutputConfig(outbox=folder, done=folder, failed=folder, mode="full_frame", crf=crf, preview=False),
    )
    engine = ClassicalEngine() if engine_name == "classical" else IdentityEngine()
    start = time.perf_counter()
    result = restore_video(job, engine, lambda *a: None)
    return {"frames": result.frames, "seconds": time.perf_counter() - start, "timings": result.timings}


def child(mode: str, source: Path, output: Path, crf: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    result = run_floor(source, output, crf) if mode == "floor" else run_pipeline(source, output, crf, mode)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def measure(mode: str, source: Path, output: Path, crf: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(source), str(output), "--crf", str(crf)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """The moving astronaut at 25 fps with audio, written in chunks so even long clips take little memory."""
    from fractions import Fraction

    import av
    import numpy as np

    from tests.helpers.media_clips import AUDIO_RATE, moving_face_frames, sine_audio_frames

    cycle = moving_face_frames(50, width, height)  # one pan/zoom cycle, played forwards and back
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"crf": "20", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for i in range(frames):
            k = i % (2 * len(cycle))
            image = cycle[k] if k < len(cycle) else cycle[2 * len(cycle) - 1 - k]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for chunk in sine_audio_frames(frames / 25):
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode and length")
    parser.add_argument("--classical", action="store_true", help="also run the classical engine")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, source, output = args.child
        child(mode, Path(source), Path(output), args.crf)
        return 0

    modes = ["floor", "pipeline"] + (["classical"] if args.classical else [])
    print(f"{args.width}x{args.height}, 25 fps, AAC audio, crf {args.crf}; one process per run")
    print(f"{'frames':>7} {'mode':>10} {'frames/s':>11} {'peak RSS MiB':>13}  stage seconds (fastest run)")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (args.frames, args.frames * args.factor):
            source = Path(tmp) / f"clip{frames}.mp4"
            make_clip(source, frames, args.width, args.height)
            for mode in modes:
                output = Path(tmp) / f"out-{mode}-{frames}.mp4"
                runs = [measure(mode, source, output, args.crf) for _ in range(args.repeat)]
                rates = sorted(r["frames"] / r["seconds"] for r in runs)
                peaks = sorted(r["peak_rss_mib"] for r in runs)
                fastest = max(runs, key=lambda r: r["frames"] / r["seconds"])
                stages = " ".join(f"{k}={v}" for k, v in fastest.get("timings", {}).items())
                rate_range, peak_range = f"{rates[-1]:>5.1f}/{rates[0]:<5.1f}", f"{peaks[0]:>6.0f}-{peaks[-1]:<6.0f}"
                print(f"{frames:>7} {mode:>10} {rate_range} {peak_range}  {stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
