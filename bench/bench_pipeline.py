"""Benchmark of the video pipeline around the engine: how close a whole job comes to a bare decode + encode.

    .venv/bin/python bench/bench_pipeline.py [--frames 250] [--width 1280 --height 720] [--repeat 3]
                                             [--factor 0] [--classical] [--preview]

On a synthesized clip (the astronaut's real face panning and zooming over the textured photo, 25 fps, AAC
audio) it runs, each in a fresh process (so peak RSS is its own):
- `floor`:    a bare PyAV decode + libx264 encode of the same file at the same crf and preset (the least any
              pipeline must spend);
- `pipeline`: restore_video with an identity engine (every crop returned unchanged): probe, face pass, crop,
              paste-back, encode; no model;
- `classical` (with --classical): restore_video with the classical CPU engine.
It prints the ratio floor seconds / pipeline seconds (1.0: the pipeline costs nothing beyond decode + encode;
the goal is 0.7 or more, see bench/README.md), using the best of --repeat runs of each, interleaved (timings
on a shared machine are noisy: the best run is the one least disturbed), the same ratio in CPU seconds (all
threads; what the wall-clock ratio tends to when the machine has no spare core), and the per-stage breakdown of the fastest
pipeline run: wall seconds per phase and, for the overlapped restore phase, the seconds each stage's thread
was busy. With --factor N it also runs a clip N times longer, to show peak RSS does not grow with length.
Peak RSS varies from run to run because glibc gives each decoder/encoder thread its own malloc arena;
`MALLOC_ARENA_MAX=2` in the environment makes it steady.
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

    start = time.perf_counter()
    info = probe(source)
    frames = 0
    with VideoWriter(output, info, crf=crf, audio_source=source) as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
            frames += 1
    return {"frames": frames, "seconds": time.perf_counter() - start}


def run_pipeline(source: Path, output: Path, crf: int, engine_name: str, preview: bool) -> dict:
    from svfrd.config import FacesConfig, OutputConfig
    from svfrd.domain import Task
    from svfrd.engines.classical import ClassicalEngine
    from svfrd.media.pipeline import PipelineJob, restore_video

    folder = output.parent
    job = PipelineJob(
        source=source, output=output, tasks=frozenset({Task.BFR}), seed=0, mask_path=None, reference_path=None,
        options={}, faces=FacesConfig(crop="tracked", model=ROOT / "models" / "face_landmarker.task"),
        output_cfg=OutputConfig(outbox=folder, done=folder, failed=folder, mode="full_frame", crf=crf,
                                preview=preview),
        preview_video=folder / "preview.mp4" if preview else None,
        contact_sheet=folder / "sheet.png" if preview else None,
    )
    engine = ClassicalEngine() if engine_name == "classical" else IdentityEngine()
    start = time.perf_counter()
    result = restore_video(job, engine, lambda *a: None)
    return {"frames": result.frames, "seconds": time.perf_counter() - start, "timings": result.timings,
            "busy": getattr(result, "stage_busy_s", {})}


def child(mode: str, source: Path, output: Path, crf: int, preview: bool) -> None:
    import cv2

    cv2.setNumThreads(1)  # as the worker's engines set it
    result = run_floor(source, output, crf) if mode == "floor" else run_pipeline(source, output, crf, mode, preview)
    result["peak_rss_mib"] = peak_rss_mib()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # all threads: steadier than wall time on a busy machine
    print(json.dumps(result))


def measure(mode: str, source: Path, output: Path, crf: int, preview: bool) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(source), str(output), "--crf", str(crf)]
    out = subprocess.run(command + (["--preview"] if preview else []), capture_output=True, text=True, check=True,
                         cwd=ROOT)
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


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def report_runs(frames: int, mode: str, runs: list[dict]) -> None:
    seconds = sorted(r["seconds"] for r in runs)
    peaks = sorted(r["peak_rss_mib"] for r in runs)
    cpu = min(r["cpu_s"] for r in runs)
    print(f"{frames:>7} {mode:>10} {seconds[0]:>7.2f} {seconds[-1]:>7.2f} {frames / seconds[0]:>9.1f} {cpu:>7.1f} "
          f"{peaks[0]:>7.0f}-{peaks[-1]:<6.0f}", flush=True)


def report_stages(run: dict) -> None:
    phases = " ".join(f"{k}={v}" for k, v in run.get("timings", {}).items())
    print(f"  phases (wall s): {phases}")
    if run.get("busy"):
        busy = " ".join(f"{k}={v}" for k, v in run["busy"].items())
        print(f"  busy per stage (s, overlapping): {busy}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--factor", type=int, default=0, help="also run a clip this many times longer (memory)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode and length; the best counts")
    parser.add_argument("--classical", action="store_true", help="also run the classical engine")
    parser.add_argument("--preview", action="store_true", help="make the preview video and contact sheet too")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, source, output = args.child
        child(mode, Path(source), Path(output), args.crf, args.preview)
        return 0

    modes = ["floor", "pipeline"] + (["classical"] if args.classical else [])
    lengths = [args.frames] + ([args.frames * args.factor] if args.factor > 1 else [])
    print(f"{args.width}x{args.height}, 25 fps, AAC audio, crf {args.crf}, preview {'on' if args.preview else 'off'}; "
          f"one process per run, best of {args.repeat}")
    print(f"{'frames':>7} {'mode':>10} {'best s':>7} {'worst s':>7} {'frames/s':>9} {'CPU s':>7} {'peak RSS MiB':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for frames in lengths:
            source = Path(tmp) / f"clip{frames}.mp4"
            make_clip(source, frames, args.width, args.height)
            results: dict[str, list[dict]] = {mode: [] for mode in modes}
            for _ in range(args.repeat):
                for mode in modes:  # interleaved, so a burst of load elsewhere hits every mode alike
                    output = Path(tmp) / f"out-{mode}-{frames}.mp4"
                    results[mode].append(measure(mode, source, output, args.crf, args.preview))
            for mode in modes:
                report_runs(frames, mode, results[mode])
            floor = best(results["floor"])
            for mode in modes[1:]:
                fastest = best(results[mode])
                cpu = min(r["cpu_s"] for r in results[mode])
                print(f"  ratio floor / {mode} = {floor['seconds']:.2f} s / {fastest['seconds']:.2f} s = "
                      f"{floor['seconds'] / fastest['seconds']:.2f} (goal: 0.7 or more); in CPU seconds "
                      f"{min(r['cpu_s'] for r in results['floor']) / cpu:.2f}")
                report_stages(fastest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
