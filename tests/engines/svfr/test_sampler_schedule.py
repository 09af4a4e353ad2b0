"""The Karras/Euler v-prediction schedule of SVD-xt (docs/svfr.md §5)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from svfrd.engines.svfr.schedule import euler_step, scale_model_input, sigmas_and_timesteps
from tests.helpers.parity_cases import PARITY_MODELS

# The fixture ships SVD-xt's real scheduler config.
SVD_XT_SCHEDULER = json.loads(
    (PARITY_MODELS / "stable-video-diffusion-img2vid-xt" / "scheduler" / "scheduler_config.json").read_text()
)


def test_30_steps_go_from_700_to_0_002_then_0_on_karras_sigmas():
    schedule = sigmas_and_timesteps(SVD_XT_SCHEDULER, 30)

    assert schedule.num_steps == 30
    assert len(schedule.sigmas) == 31
    assert schedule.sigmas[:4].tolist() == pytest.approx([700.0, 570.03, 461.31, 370.88], abs=0.01)
    assert schedule.sigmas[-4:].tolist() == pytest.approx([0.0171, 0.0063, 0.002, 0.0], abs=1e-4)


def test_30_step_timesteps_are_a_quarter_of_log_sigma():
    schedule = sigmas_and_timesteps(SVD_XT_SCHEDULER, 30)

    assert schedule.timesteps[:3].tolist() == pytest.approx([1.6378, 1.5864, 1.5335], abs=1e-4)
    assert schedule.timesteps[-2:].tolist() == pytest.approx([-1.2653, -1.5537], abs=1e-4)
    torch.testing.assert_close(schedule.timesteps, 0.25 * schedule.sigmas[:-1].log())


def test_50_steps_share_the_endpoints():
    schedule = sigmas_and_timesteps(SVD_XT_SCHEDULER, 50)

    assert len(schedule.timesteps) == 50
    assert schedule.timesteps[:2].tolist() == pytest.approx([1.6378, 1.6076], abs=1e-4)
    assert schedule.timesteps[-1].item() == pytest.approx(-1.5537, abs=1e-4)
    assert schedule.sigmas[0].item() == pytest.approx(700.0)
    assert schedule.sigmas[-1].item() == 0.0


def test_zero_steps_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        sigmas_and_timesteps(SVD_XT_SCHEDULER, 0)


@pytest.mark.parametrize("step", [0, 7, 28, 29])
def test_euler_step_is_the_schedulers_step_bit_for_bit(step):
    scheduler = EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER)
    scheduler.set_timesteps(30)
    schedule = sigmas_and_timesteps(SVD_XT_SCHEDULER, 30)
    generator = torch.Generator().manual_seed(step)
    sample = torch.randn(2, 4, 8, 8, generator=generator) * 10
    v = torch.randn(2, 4, 8, 8, generator=generator)

    t = scheduler.timesteps[step]
    scaled = scheduler.scale_model_input(sample, t)
    expected = scheduler.step(v, t, sample).prev_sample
    sigma, sigma_next = schedule.sigmas[step], schedule.sigmas[step + 1]

    assert torch.equal(scale_model_input(sample, sigma), scaled)
    assert torch.equal(euler_step(sample, v, sigma, sigma_next), expected)


def test_the_last_step_lands_on_the_models_clean_estimate():
    # σ_next = 0: x_next = x0 = v·(−σ/√(σ²+1)) + x/(σ²+1)
    sigma, v, x = torch.tensor(0.5), torch.tensor([2.0]), torch.tensor([1.0])

    x_next = euler_step(x, v, sigma, torch.tensor(0.0))

    assert x_next.item() == pytest.approx(2.0 * (-0.5 / 1.25**0.5) + 1.0 / 1.25)
