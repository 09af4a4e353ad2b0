"""How fast SVFR runs on this machine and in how much GPU memory: one table, no weights needed.

    scripts/gpu-check [--tiny] [--budget 480] [--steps N --pass1-steps N] [--json PATH]

Steps (docs/svfr.md §9 says what the tiers and switches do):
1. the CUDA tests (pytest, the tests that need a GPU; skipped without one);
2. a model folder of the real layout with random weights: the full-size architecture on a GPU, the test
   suite's tiny models on a CPU (or with --tiny);
3. a real clip (the astronaut photo filmed by a panning, zooming virtual camera, encoded to H.264 and decoded
   again, the face found by MediaPipe and cropped) through the engine's pipeline at fp16 and bf16 in each
   memory tier ("high", "balanced", "low"), and once in a reference-style configuration: pass 1 with
   classifier-free guidance, one window per UNet call, diffusers' stock attention processor;
4. a short clip on the GPU in fp16 against the CPU in fp32 (reference mode both), as PSNR.

The table: frames/s of the clip, UNet calls/s, TFLOP/s (FlopCounterMode on each call shape, on the meta
device) and their share of the GPU's dense fp16/bf16 peak (data-sheet figures by device name, "unknown"
otherwise), peak VRAM allocated (with the tier's estimate beside it), and the ratio of frames/s to the
reference-style row. Rows that would overrun --budget seconds are skipped and say so. Exit status 1 when the
CUDA tests fail.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also runnable as `python bench/gpu_check.py`

import av  # noqa: E402 - after the sys.path line above
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import UNetSpatioTemporalConditionModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.svfr_models import write_full_svfr_models, write_tiny_svfr_models  # noqa: E402
from svfrd.domain import Task  # noqa: E402
from svfrd.engines.interface import FaceCrop  # noqa: E402
from svfrd.engines.svfr.attention import install_clip_id_attention  # noqa: E402
from svfrd.engines.svfr.engine import build_pipeline  # noqa: E402
from svfrd.engines.svfr.loading import SVFR_UNET_IN_CHANNELS, UNET_CONFIG  # noqa: E402
from svfrd.engines.svfr.memory import TIER_NAMES, estimate_peak_vram_gib  # noqa: E402
from svfrd.engines.svfr.pipeline import SVFRPipeline, SVFRSettings  # noqa: E402
from svfrd.engines.svfr.speedups import Speedups  # noqa: E402
from svfrd.media.crop import crop_face, face_crop_box  # noqa: E402
from svfrd.media.faces import FaceFinder  # noqa: E402

FACE_MODEL = ROOT / "models" / "face_landmarker.task"
#: The GPU tests of the suite (each skips itself without CUDA).
CUDA_TESTS = ("tests/engines/svfr/test_sampler_paths.py::test_gpu_paths_stay_close_to_the_cpu_reference_path",)
#: Dense fp16/bf16 tensor-core peak with fp32 accumulation (TFLOP/s, vendors' data sheets, no sparsity).
#: First match of the name wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("A40", 150.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0), ("RTX 4090", 165.0), ("RTX 4080", 97.0), ("RTX 3090", 71.0), ("RTX 3080", 59.5),
    ("V100", 125.0), ("T4", 65.0),
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TASKS = frozenset({Task.BFR})
SEED = 77
TERA = 1e12
GIB = 1024**3


@dataclass(frozen=True)
class Size:
    """What one run of the check works on: full-size models on a GPU, tiny ones on a CPU."""

    name: str
    resolution: int
    clip_frames: int
    clip_width: int
    clip_height: int
    steps: int
    pass1_steps: int
    psnr_frames: int
    psnr_resolution: int
    psnr_steps: int


FULL = Size("full", resolution=512, clip_frames=250, clip_width=640, clip_height=360, steps=10, pass1_steps=10,
            psnr_frames=4, psnr_resolution=256, psnr_steps=2)
TINY = Size("tiny", resolution=64, clip_frames=6, clip_width=240, clip_height=180, steps=2, pass1_steps=2,
            psnr_frames=3, psnr_resolution=64, psnr_steps=1)
CLIP_FPS = 25


@dataclass
class Row:
    config: str
    dtype: str
    frames: int = 0
    seconds: float = 0.0
    unet_calls: int = 0
    flops: float = 0.0
    peak_vram_gib: float | None = None
    estimate_gib: float | None = None
    skipped: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds

    @property
    def calls_per_second(self) -> float:
        return self.unet_calls / self.seconds

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / TERA


# ------------------------------------------------------------------------------------------------------------
# The clip


def panning_face_frames(frames: int, width: int, height: int) -> list[np.ndarray]:
    """A virtual camera that pans and zooms slowly over scikit-image's astronaut photo (a real face)."""
    from skimage import data

    photo = data.astronaut()
    result = []
    for i in range(frames):
        ease = 0.5 - 0.5 * math.cos(math.pi * i / max(frames - 1, 1))
        view_h = 380.0 * (1.0 - 0.25 * ease)
        scale = height / view_h
        cx, cy = 205.0 + 60.0 * (ease - 0.5), 150.0
        matrix = np.array([[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]])
        result.append(cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT))
    return result


def write_clip(path: Path, frames: list[np.ndarray], fps: int = CLIP_FPS) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def read_clip(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as source:
        return [frame.to_ndarray(format="rgb24") for frame in source.decode(video=0)]


def face_crops(frames: list[np.ndarray], face_model: Path) -> list[FaceCrop]:
    """One crop square around the face of the first frame, for every frame (the clip moves little)."""
    with FaceFinder(face_model) as finder:
        faces = finder.find(frames[0], 0)
    if not faces:
        raise SystemExit("gpu-check: MediaPipe found no face in the synthetic clip; is the face model damaged? "
                         f"Delete {face_model} and run scripts/ensure-env to fetch it again")
    box = face_crop_box(faces[0].box)
    return [FaceCrop(image=crop_face(frame, box)) for frame in frames]


# ------------------------------------------------------------------------------------------------------------
# Counting UNet calls and their FLOPs


class UNetMeter:
    """Counts the UNet calls of a pipeline (a forward pre-hook) and the FLOPs of each call shape, counted once
    per shape on a meta-device copy of the UNet with the same attention processors."""

    def __init__(self, models_dir: Path, clip_id_attention: bool) -> None:
        self.models_dir = models_dir
        self.clip_id_attention = clip_id_attention
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self._flops: dict[tuple, float] = {}

    def attach(self, unet: torch.nn.Module) -> Callable[[], None]:
        def record(_module, args, kwargs) -> None:
            sample = args[0] if args else kwargs["sample"]
            self.shapes.append((tuple(sample.shape), tuple(kwargs["encoder_hidden_states"].shape)))

        handle = unet.register_forward_pre_hook(record, with_kwargs=True)
        return handle.remove

    def reset(self) -> None:
        self.shapes = []

    @property
    def calls(self) -> int:
        return len(self.shapes)

    def total_flops(self) -> float:
        return sum(self.flops_of(*shape) for shape in self.shapes)

    def flops_of(self, sample: tuple[int, ...], context: tuple[int, ...]) -> float:
        if (sample, context) not in self._flops:
            self._flops[(sample, context)] = self._count(sample, context)
        return self._flops[(sample, context)]

    def _count(self, sample: tuple[int, ...], context: tuple[int, ...]) -> float:
        config = json.loads((self.models_dir / UNET_CONFIG).read_text())
        config["in_channels"] = SVFR_UNET_IN_CHANNELS
        with torch.device("meta"):
            unet = UNetSpatioTemporalConditionModel.from_config(config)
        unet = unet.eval().to("meta")  # AlphaBlender's parameter ignores the device context
        if self.clip_id_attention:
            install_clip_id_attention(unet)
        tasks = unet.config.projection_class_embeddings_input_dim // unet.config.addition_time_embed_dim
        with torch.device("meta"):
            inputs = torch.empty(sample), torch.empty(()), torch.empty(context), torch.empty(sample[0], tasks)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], added_time_ids=inputs[3])
        return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Config:
    name: str
    dtype: str
    tier: str
    clip_id_attention: bool
    pass1_cfg: bool
    speedups: Speedups = Speedups()


#: How much longer a tier's row takes than the row before it, for the budget's guess: "low" streams the weights
#: to the GPU for every call (5.4 times "balanced" on an H200, bench/README.md).
SLOWDOWN = {"low": 6.0}


def configurations(speedups: Speedups) -> list[Config]:
    """Reference-style first (every ratio needs it), then the tiers at fp16 and bf16, the slow "low" tier last,
    so that a tight budget drops it before the others."""
    configs = [Config("reference-style", "fp16", "balanced", clip_id_attention=False, pass1_cfg=True)]
    tiers = sorted(TIER_NAMES, key=lambda tier: tier == "low")
    for tier in tiers:
        for dtype in ("fp16", "bf16"):
            configs.append(Config(tier, dtype, tier, clip_id_attention=True, pass1_cfg=False, speedups=speedups))
    return configs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load(config: Config, models_dir: Path, device: torch.device, resolution: int, dtype: str | None = None,
         ) -> SVFRPipeline:
    return build_pipeline(
        models_dir, device=device, dtype=DTYPES[dtype or config.dtype], face_model=FACE_MODEL,
        memory=config.tier, speedups=config.speedups,
        id_attention="once" if config.clip_id_attention else "stock", resolution=resolution,
    )


def restore(pipeline: SVFRPipeline, crops: list[FaceCrop], settings: SVFRSettings, warnings: list[str]) -> np.ndarray:
    out = list(pipeline(crops, TASKS, seed=SEED, settings=settings, warn=warnings.append))
    synchronize(pipeline.models.device)
    return np.stack(out)


def settings_for(config: Config, steps: int, pass1_steps: int) -> SVFRSettings:
    return SVFRSettings(steps=steps, pass1_steps=pass1_steps, mode="reference", pass1_cfg=config.pass1_cfg)


def measure(config: Config, models_dir: Path, device: torch.device, size: Size, crops: list[FaceCrop],
            args: argparse.Namespace) -> Row:
    """Build the pipeline, warm it up on the first frames (kernels, cuDNN's choices), then time the clip."""
    row = Row(config.name, config.dtype)
    if device.type == "cuda":
        row.estimate_gib = estimate_peak_vram_gib(config.tier, size.resolution, dtype_bytes=2)
    pipeline = load(config, models_dir, device, size.resolution)
    meter = UNetMeter(models_dir, config.clip_id_attention)
    detach = meter.attach(pipeline.models.unet)
    try:
        restore(pipeline, crops[:48], settings_for(config, 1, 1), [])
        meter.reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        restore(pipeline, crops, settings_for(config, args.steps, args.pass1_steps), row.warnings)
        row.seconds = time.perf_counter() - started
        if device.type == "cuda":
            row.peak_vram_gib = torch.cuda.max_memory_allocated(device) / GIB
    finally:
        detach()
        del pipeline
        free_device_memory()
    row.frames, row.unet_calls, row.flops = len(crops), meter.calls, meter.total_flops()
    return row


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare_with_cpu_fp32(models_dir: Path, device: torch.device, size: Size, crops: list[FaceCrop]) -> float:
    """PSNR (dB) of `device` in fp16 against the CPU in fp32, both in reference mode, "balanced" tier."""
    config = Config("balanced", "fp16", "balanced", clip_id_attention=True, pass1_cfg=False)
    settings = SVFRSettings(steps=size.psnr_steps, pass1_steps=size.psnr_steps, mode="reference")
    short = crops[: size.psnr_frames]
    outputs = []
    for where, dtype in ((device, "fp16"), (torch.device("cpu"), "fp32")):
        pipeline = load(config, models_dir, where, size.psnr_resolution, dtype)
        outputs.append(restore(pipeline, short, settings, []))
        del pipeline
        free_device_memory()
    return psnr(*outputs)


# ------------------------------------------------------------------------------------------------------------
# Reporting


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_TFLOPS if key.lower() in name.lower()), None)


COLUMNS = ("config", "dtype", "frames/s", "UNet calls/s", "TFLOP/s", "% of peak", "peak VRAM GiB",
           "estimate GiB", "ratio")


def table_cells(row: Row, peak: float | None, reference_fps: float | None) -> list[str]:
    if row.skipped:
        return [row.config, row.dtype, row.skipped] + [""] * (len(COLUMNS) - 3)
    share = f"{100 * row.tflops / peak:.1f}" if peak else "unknown"
    ratio = f"{row.frames_per_second / reference_fps:.2f}" if reference_fps else "-"
    return [
        row.config, row.dtype, f"{row.frames_per_second:.3f}", f"{row.calls_per_second:.2f}", f"{row.tflops:.3f}",
        share, "-" if row.peak_vram_gib is None else f"{row.peak_vram_gib:.2f}",
        "-" if row.estimate_gib is None else f"{row.estimate_gib:.2f}", ratio,
    ]


def format_table(rows: list[Row], peak: float | None) -> str:
    reference = next((r for r in rows if r.config == "reference-style" and not r.skipped), None)
    reference_fps = reference.frames_per_second if reference else None
    lines = [list(COLUMNS)] + [table_cells(row, peak, reference_fps) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(line, widths))).rstrip() for line in lines)


def run_cuda_tests(device: torch.device, remaining: float) -> tuple[str, bool]:
    """(one line for the report, whether they passed)."""
    if device.type != "cuda":
        return "CUDA tests: skipped (no CUDA GPU here)", True
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS], cwd=ROOT,
            capture_output=True, text=True, timeout=max(30.0, min(240.0, remaining / 3)),
        )
    except subprocess.TimeoutExpired:
        return "CUDA tests: stopped, they ran past their share of the time budget", False
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    return f"CUDA tests: {summary}", done.returncode == 0


# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny test models on the CPU (automatic when torch sees no CUDA GPU)")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds the whole check may take; rows that would overrun it are skipped (480)")
    parser.add_argument("--steps", type=int, help="pass-2 steps (default 10 full-size, 2 tiny; the service's is 30)")
    parser.add_argument("--pass1-steps", type=int, help="pass-1 steps (default as --steps; the service's is 50)")
    parser.add_argument("--seconds", type=float, help="clip length (default 10 full-size, 0.24 tiny)")
    parser.add_argument("--speedups", default="", help="comma-separated switches for the tier rows: "
                        "compile, channels_last, cuda_graphs, tf32 (default none; reference-style never has them)")
    parser.add_argument("--no-psnr", action="store_true", help="skip the GPU fp16 vs CPU fp32 comparison")
    parser.add_argument("--skip-tests", action="store_true", help="skip the CUDA tests")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    size = TINY if tiny else FULL
    device = torch.device("cuda" if cuda and not args.tiny else "cpu")
    if tiny:
        # The tiny models gain nothing from threads, and on a busy machine spinning threads slow them many-fold.
        torch.set_num_threads(1)
    args.steps = args.steps or size.steps
    args.pass1_steps = args.pass1_steps or args.steps
    frames = round(args.seconds * CLIP_FPS) if args.seconds else size.clip_frames
    speedups = Speedups(**{name.strip(): True for name in args.speedups.split(",") if name.strip()})
    remaining = lambda: args.budget - (time.monotonic() - started)  # noqa: E731 - read at each step

    device_name, peak = peak_tflops(device)
    print(f"gpu-check: {device_name}, torch {torch.__version__}, {size.name} models at {size.resolution}px, "
          f"a {frames / CLIP_FPS:g} s clip ({frames} frames at {CLIP_FPS} fps), pass 2 {args.steps} steps, "
          f"pass 1 {args.pass1_steps} steps, budget {args.budget:g} s", flush=True)
    tests_line, tests_ok = ("CUDA tests: skipped (--skip-tests)", True)
    if not args.skip_tests:
        tests_line, tests_ok = run_cuda_tests(device, remaining())
    print(tests_line, flush=True)

    rows: list[Row] = []
    psnr_line = "PSNR: skipped (--no-psnr)"
    with tempfile.TemporaryDirectory(prefix="svfrd-gpu-check-") as scratch:
        folder = Path(scratch)
        began = time.monotonic()
        if tiny:
            models_dir = write_tiny_svfr_models(folder / "models")
        else:
            models_dir = write_full_svfr_models(folder / "models", device=device)
        clip = write_clip(folder / "clip.mp4", panning_face_frames(frames, size.clip_width, size.clip_height))
        crops = face_crops(read_clip(clip), FACE_MODEL)
        print(f"models written and clip made in {time.monotonic() - began:.1f} s", flush=True)

        last_run = 0.0
        for config in configurations(speedups):
            if last_run * SLOWDOWN.get(config.tier, 1.0) > remaining():
                rows.append(Row(config.name, config.dtype, skipped="skipped (time budget)"))
                continue
            began = time.monotonic()
            rows.append(measure(config, models_dir, device, size, crops, args))
            last_run = time.monotonic() - began
            print(f"  {config.name} {config.dtype}: {last_run:.1f} s", flush=True)
        if not args.no_psnr:
            psnr_line = "PSNR: skipped (time budget)"
            if remaining() > 0:
                value = compare_with_cpu_fp32(models_dir, device, size, crops)
                psnr_line = (f"PSNR {device.type.upper()} fp16 vs CPU fp32, reference mode ({size.psnr_frames} frames at "
                             f"{size.psnr_resolution}px, {size.psnr_steps} steps): {value:.2f} dB")

    print()
    print(format_table(rows, peak))
    print(psnr_line)
    warnings = sorted({w for row in rows for w in row.warnings})
    for warning in warnings:
        print(f"note from the pipeline: {warning}")
    print(f"peak: {'unknown for ' + device_name if peak is None else f'{peak:g} TFLOP/s dense fp16/bf16'}; "
          f"frames/s at {args.steps} pass-2 steps (time scales about with the steps); took "
          f"{time.monotonic() - started:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "peak_tflops": peak, "psnr": psnr_line,
                                         "rows": [asdict(row) for row in rows]}, indent=2))
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
