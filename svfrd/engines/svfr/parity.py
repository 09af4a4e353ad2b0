"""`svfrd parity`: does our SVFR sampler compute what the reference sampler computes?

Each case folder holds `inputs.pt` (prepared frames, reference frame, ID tokens, task vector, initial noise,
settings) and `expected.pt` (the reference's final latents and decoded frames) for the tiny weights in a
model folder of the real layout. The sampler runs in reference mode, fp32 on the CPU, through the same
loading code as the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from svfrd.engines.svfr.loading import DiffusionModels, load_diffusion_models
from svfrd.engines.svfr.sampler import SamplerSettings, sample
from svfrd.errors import SvfrdError

#: The reference reaches about 1e-5 on the fixture; anything above this is a behavioural difference.
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityResult:
    case: str
    latents_diff: float
    frames_diff: float

    @property
    def ok(self) -> bool:
        # Written as `<=` so that a NaN difference fails too.
        return self.latents_diff <= PARITY_TOLERANCE and self.frames_diff <= PARITY_TOLERANCE


class ParityCaseError(Exception):
    """A case folder that cannot be run (missing or malformed files)."""


def run_parity(models_dir: Path, case_dirs: Sequence[Path]) -> int:
    """Print one line per case; 0 when every case is within PARITY_TOLERANCE, else 1."""
    try:
        models = load_diffusion_models(Path(models_dir), "cpu", torch.float32)
    except SvfrdError as err:
        print(f"cannot load the models: {err}")
        return 1
    failures = 0
    for case_dir in map(Path, case_dirs):
        try:
            result = compare_case(models, case_dir)
        except (ParityCaseError, ValueError, RuntimeError) as err:
            print(f"{case_dir.name}: FAILED, cannot run the case: {err}")
            failures += 1
            continue
        verdict = "ok" if result.ok else f"FAILED (tolerance {PARITY_TOLERANCE:g})"
        print(f"{result.case}: max |Δ| latents {result.latents_diff:.3g}, frames {result.frames_diff:.3g}: {verdict}")
        failures += not result.ok
    return 1 if failures else 0


def compare_case(models: DiffusionModels, case_dir: Path) -> ParityResult:
    inputs = _load_case_file(case_dir / "inputs.pt")
    expected = _load_case_file(case_dir / "expected.pt")
    settings = SamplerSettings(
        num_inference_steps=int(inputs["num_inference_steps"]),
        window=int(inputs["window"]),
        overlap=int(inputs["overlap"]),
        guidance_scale=float(inputs["guidance_scale"]),
        windows="circular",
        use_cfg=True,
    )
    latents, frames = sample(
        models,
        inputs["lq_frames"],
        inputs["reference_frame"],
        inputs["id_tokens"],
        inputs["task_vector"],
        settings,
        noise=inputs["noise"],
    )
    # The reference returns frames as (1, 3, N, H, W); ours are (N, 3, H, W).
    frames = frames.permute(1, 0, 2, 3).unsqueeze(0)
    return ParityResult(
        case=case_dir.name,
        latents_diff=_max_abs_diff(latents, expected["latents"], "latents"),
        frames_diff=_max_abs_diff(frames, expected["frames"], "frames"),
    )


def _load_case_file(path: Path) -> dict:
    if not path.is_file():
        raise ParityCaseError(f"{path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is a case that cannot run, with the reason
        raise ParityCaseError(f"cannot read {path}: {err}") from err


def _max_abs_diff(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    if actual.shape != expected.shape:
        raise ParityCaseError(f"{what} have shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    return (actual.float().cpu() - expected.float()).abs().max().item()
