"""The noise schedule of SVD-xt / SVFR: Euler, Karras sigmas, v-prediction, continuous timesteps (docs/svfr.md §5).

diffusers' `EulerDiscreteScheduler` computes the sigmas and the timesteps the UNet sees (0.25·ln σ). The
sampler does the Euler update itself (`euler_step`) because it steps every window from the same σ, which the
stateful scheduler object only allows by resetting a private step counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler


@dataclass(frozen=True)
class NoiseSchedule:
    """sigmas: (S+1,) fp32 on the CPU, from σ_max down to σ_min, then 0.
    timesteps: (S,) fp32, the conditioning value the UNet gets at each step."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def sigmas_and_timesteps(scheduler_config: Mapping[str, Any], steps: int) -> NoiseSchedule:
    """The Karras schedule for `steps` denoising steps, from the scheduler's own config."""
    if steps < 1:
        raise ValueError(f"the number of denoising steps must be at least 1, not {steps}")
    scheduler = EulerDiscreteScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(steps)
    # strength 1.0 in the reference keeps every timestep (t_start = 0).
    return NoiseSchedule(sigmas=scheduler.sigmas.to(torch.float32).cpu(), timesteps=scheduler.timesteps.float().cpu())


def scale_model_input(sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The UNet sees x / sqrt(σ² + 1) (the scheduler's `scale_model_input`)."""
    return sample / ((sigma**2 + 1) ** 0.5)


def euler_step(sample: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One deterministic Euler step (no churn) for a v-prediction model, in fp32.

    Same arithmetic, in the same order, as diffusers' `EulerDiscreteScheduler.step` with gamma 0, so the
    reference is reproduced to the last bits on fp32; `sigma` and `sigma_next` are 0-d fp32 tensors."""
    sample = sample.to(torch.float32)
    v = v.to(torch.float32)
    x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    derivative = (sample - x0) / sigma
    return sample + derivative * (sigma_next - sigma)
