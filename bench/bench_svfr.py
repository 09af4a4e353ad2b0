"""What SVFR costs per second of video: UNet calls and FLOPs (anywhere), speed and peak VRAM (on a GPU).

    .venv/bin/python bench/bench_svfr.py [--seconds 60] [--fps 25] [--steps 30] [--pass1-steps 50] [--no-gpu]

Counts come from the real window schedule (`svfrd.engines.svfr.windows`) and FLOPs from `FlopCounterMode` on the full
SVD-xt-sized UNet and VAE built on the `meta` device (no memory, no weights). With a CUDA GPU it also builds
the full-size models with random weights, at fp16 and bf16, and measures a UNet call, VAE encode and decode,
the resulting frames per second of video, and the peak VRAM of a pass-2 run. Compared with the reference
(docs/svfr.md §9): ~48 UNet calls of 2x16 frames per second of 25 fps video, CFG in pass 1 and two VAE
encodes per frame; ~40 GB peak VRAM reported by users.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script, the repository root is not on the path: bench.svfr_models is

from bench.svfr_models import random_models, svfr_unet_config  # noqa: E402 - after the sys.path line above
from bench.svfr_models import read_svd_config as read_config  # noqa: E402
from svfrd.engines.svfr.loading import SVFR_UNET_IN_CHANNELS  # noqa: E402
from svfrd.engines.svfr.sampler import SamplerSettings, denoise_latents  # noqa: E402
from svfrd.engines.svfr.vae_io import decode_latents, encode_frames  # noqa: E402
from svfrd.engines.svfr.windows import WindowSchedule  # noqa: E402

WINDOW, OVERLAP, SIZE, LATENT = 16, 3, 512, 64
TERA = 1e12


# ------------------------------------------------------------------------------------------------------------
# UNet calls


def unet_calls(frames: int, steps: int, windows: str, window: int = WINDOW) -> int:
    return WindowSchedule(frames, window, OVERLAP, windows).unet_calls(steps)


def call_counts(args: argparse.Namespace) -> dict[str, float]:
    """UNet calls and frame-evaluations (frames through the UNet, CFG halves counted) for the whole video."""
    frames = round(args.seconds * args.fps)
    pass1_frames = min(WINDOW, frames)
    pass1_calls = unet_calls(pass1_frames, args.pass1_steps, "circular", pass1_frames)
    counts = {"frames": frames, "pass1_calls": pass1_calls}
    for windows in ("circular", "clamped"):
        counts[f"pass2_calls_{windows}"] = unet_calls(frames, args.steps, windows)
    # A window always holds 16 frames in pass 2 (circular), pass 1 windows hold the first <= 16 frames.
    counts["reference_evals"] = 2 * pass1_frames * pass1_calls + 2 * WINDOW * counts["pass2_calls_circular"]
    counts["svfrd_evals"] = 1 * pass1_frames * pass1_calls + 2 * WINDOW * counts["pass2_calls_circular"]
    return counts


# ------------------------------------------------------------------------------------------------------------
# FLOPs on the meta device


def meta_unet() -> UNetSpatioTemporalConditionModel:
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel.from_config(svfr_unet_config())
    # AlphaBlender makes its parameter with the legacy torch.Tensor constructor, which ignores the device context.
    return unet.eval().to("meta")


def meta_vae() -> AutoencoderKLTemporalDecoder:
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder.from_config(read_config("vae"))
    return vae.eval().to("meta")


def counted_flops(work) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        work()
    return float(counter.get_total_flops())


def flops_per_unit() -> dict[str, float]:
    """FLOPs of one frame-evaluation of the UNet (from a 2x16-frame call) and per frame of VAE work."""
    unet, vae = meta_unet(), meta_vae()
    cross = unet.config.cross_attention_dim
    with torch.device("meta"):
        sample = torch.empty(2, WINDOW, SVFR_UNET_IN_CHANNELS, LATENT, LATENT)
        context, task = torch.empty(2, 49, cross), torch.empty(2, 3)
        timestep = torch.empty(())
        pixels, latents = torch.empty(1, 3, SIZE, SIZE), torch.empty(WINDOW, 4, LATENT, LATENT)
        call = counted_flops(lambda: unet(sample, timestep, encoder_hidden_states=context, added_time_ids=task))
        encode = counted_flops(lambda: vae.encode(pixels).latent_dist.mean)
        decode = counted_flops(lambda: vae.decode(latents, num_frames=WINDOW).sample) / WINDOW
    return {"unet_call_2x16": call, "unet_frame_eval": call / (2 * WINDOW), "vae_encode": encode, "vae_decode": decode}


def report_counts(args: argparse.Namespace) -> None:
    counts = call_counts(args)
    flops = flops_per_unit()
    seconds, frames = args.seconds, counts["frames"]
    per_second = lambda value: value / seconds  # noqa: E731 - a unit conversion, named for the table
    unet_eval = flops["unet_frame_eval"]
    ref_total = counts["reference_evals"] * unet_eval + frames * (2 * flops["vae_encode"] + flops["vae_decode"])
    ref_total += WINDOW * flops["vae_decode"]  # the pass-1 clip decode
    ours_total = counts["svfrd_evals"] * unet_eval + frames * (flops["vae_encode"] + flops["vae_decode"])
    ours_total += WINDOW * flops["vae_decode"] + flops["vae_encode"]  # pass-1 clip decode, reference encode

    print(f"SVFR cost for a {seconds:g} s video at {args.fps:g} fps ({frames} frames), 512x512 crops,")
    print(f"pass 2 {args.steps} steps, pass 1 {args.pass1_steps} steps, windows of {WINDOW}, overlap {OVERLAP}\n")
    print("UNet calls (one call = one 16-frame window, batch 2 with CFG)")
    print(f"  pass 1 (first {min(WINDOW, frames)} frames): {counts['pass1_calls']} calls"
          f" - reference at batch 2 (CFG, identical halves), svfrd at batch 1")
    print(f"  pass 2 circular windows: {counts['pass2_calls_circular']} calls"
          f" = {per_second(counts['pass2_calls_circular']):.1f} per second of video (reference ~48)")
    print(f"  pass 2 clamped windows:  {counts['pass2_calls_clamped']} calls"
          f" = {per_second(counts['pass2_calls_clamped']):.1f} per second of video")
    print("\nFLOPs (FlopCounterMode, full-size UNet and VAE on the meta device)")
    print(f"  UNet call 2x16 frames at 64x64: {flops['unet_call_2x16'] / TERA:.1f} TFLOP"
          f" ({flops['unet_frame_eval'] / TERA:.2f} TFLOP per frame-evaluation)")
    print(f"  VAE encode: {flops['vae_encode'] / TERA:.2f} TFLOP per frame;"
          f" temporal VAE decode: {flops['vae_decode'] / TERA:.2f} TFLOP per frame")
    pass1_ref = 2 * min(WINDOW, frames) * counts["pass1_calls"] * unet_eval
    print(f"  pass 1: reference {pass1_ref / TERA:.0f} TFLOP, svfrd {pass1_ref / 2 / TERA:.0f} TFLOP (no CFG)")
    print(f"  whole video: reference {ref_total / TERA:.0f} TFLOP, svfrd {ours_total / TERA:.0f} TFLOP"
          f" ({100 * (1 - ours_total / ref_total):.1f} % less)")
    print(f"  per second of video: reference {per_second(ref_total) / TERA:.0f} TFLOP,"
          f" svfrd {per_second(ours_total) / TERA:.0f} TFLOP")
    latent_bytes = 4 * LATENT * LATENT * 4
    print(f"\nWhole-video state kept by svfrd: LQ latents, {latent_bytes // 1024} KiB per frame in fp32"
          f" ({frames * latent_bytes / 2**20:.0f} MiB here; bounded by segment_frames for longer videos);"
          f" the reference holds ~10 MiB per frame in RAM and ~10.5 MiB per frame on the GPU.")


# ------------------------------------------------------------------------------------------------------------
# GPU speed and memory


def timed(work, repeats: int) -> float:
    """Seconds per run, after one warm-up run."""
    work()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure_gpu(dtype_name: str, dtype: torch.dtype, args: argparse.Namespace) -> None:
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    models = random_models(device, dtype)
    weights_gib = torch.cuda.memory_allocated() / 2**30
    cross = models.unet.config.cross_attention_dim
    sample = torch.randn(2, WINDOW, SVFR_UNET_IN_CHANNELS, LATENT, LATENT, device=device, dtype=dtype)
    context = torch.randn(2, 49, cross, device=device, dtype=dtype)
    task = torch.tensor([[1.0, 0.0, 0.0]] * 2, device=device, dtype=dtype)
    timestep = torch.tensor(1.0, device=device)
    pixels = torch.rand(WINDOW, 3, SIZE, SIZE, device=device) * 2 - 1

    with torch.no_grad():
        call = timed(lambda: models.unet(sample, timestep, encoder_hidden_states=context, added_time_ids=task), 3)
        encode = timed(lambda: encode_frames(models.vae, pixels, WINDOW), 2) / WINDOW
        latents = encode_frames(models.vae, pixels, WINDOW) * models.vae.config.scaling_factor
        decode = timed(lambda: decode_latents(models.vae, latents, WINDOW), 2) / WINDOW

        # Peak VRAM of a realistic pass-2 run: 3 windows' worth of frames, 2 steps, then a chunked decode.
        torch.cuda.reset_peak_memory_stats()
        frames = 3 * WINDOW
        lq = encode_frames(models.vae, pixels.repeat(3, 1, 1, 1), WINDOW)[None]
        settings = SamplerSettings(num_inference_steps=2)
        out = denoise_latents(models, lq, lq[0, 0], context[:1], task[0], settings)
        decode_latents(models.vae, out[0], WINDOW)
        torch.cuda.synchronize()
        peak_gib = torch.cuda.max_memory_allocated() / 2**30

    calls_per_second = unet_calls(round(args.seconds * args.fps), args.steps, "circular") / args.seconds
    video_seconds_per_second = calls_per_second * call + args.fps * (encode + decode)
    pass1 = unet_calls(WINDOW, args.pass1_steps, "circular") * call / 2  # batch 1 instead of 2 (upper bound)
    print(f"  {dtype_name}: UNet call 2x16 {call * 1000:.0f} ms"
          f" ({2 * WINDOW / call:.0f} frame-evaluations/s); VAE encode {encode * 1000:.1f} ms/frame,"
          f" decode {decode * 1000:.1f} ms/frame")
    print(f"        {args.fps / video_seconds_per_second:.2f} frames/s of video in pass 2 at {args.steps} steps"
          f" ({video_seconds_per_second:.1f} s per second of video) + pass 1 ~{pass1:.0f} s once per video")
    print(f"        weights {weights_gib:.2f} GiB, peak allocated {peak_gib:.2f} GiB"
          f" ({frames} frames, decode chunk {WINDOW})")


def report_gpu(args: argparse.Namespace) -> None:
    print("\nGPU speed and memory (full-size architecture, random weights)")
    if not torch.cuda.is_available():
        print("  skipped: no CUDA GPU here. Run this script on the GPU workstation for frames/s and peak VRAM.")
        return
    print(f"  device: {torch.cuda.get_device_name()}")
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        measure_gpu(name, dtype, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="video length the counts are for")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--steps", type=int, default=30, help="pass-2 steps")
    parser.add_argument("--pass1-steps", type=int, default=50)
    parser.add_argument("--no-gpu", action="store_true", help="only the counts, even with a GPU")
    args = parser.parse_args()
    if args.seconds <= 0 or not math.isfinite(args.seconds):
        parser.error("--seconds must be positive")
    report_counts(args)
    if not args.no_gpu:
        report_gpu(args)


if __name__ == "__main__":
    main()
