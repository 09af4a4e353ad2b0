"""The SVFR sampler: windowed Euler sampling of the 12-channel SVD UNet with classifier-free guidance
(docs/svfr.md §3, §5).

Reads top to bottom like a diffusers pipeline:
1. conditioning: per-frame LQ latents, the reference latent, ID tokens and the task vector;
2. initial latents: the LQ latents noised to σ_max (SDEdit at full strength, as the reference);
3. per step: denoise every window of the `WindowSchedule` (CFG, Euler step), fuse overlapping windows with
   triangular weights;
4. (in `sample`) decode.

Shapes: N frames, C latent channels, h×w latent size (all from the models' configs, never assumed).
The latent state is kept in fp32 whatever the UNet's dtype: it is small (C·h·w floats per frame) and the
weighted fusion would otherwise round in half precision every step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from svfrd.domain import DEFAULT_SEED
from svfrd.engines.svfr.loading import DiffusionModels
from svfrd.engines.svfr.schedule import NoiseSchedule, euler_step, scale_model_input, sigmas_and_timesteps
from svfrd.engines.svfr.vae_io import decode_latents, encode_frames
from svfrd.engines.svfr.windows import WindowMode, WindowSchedule, fusion_weights

log = logging.getLogger(__name__)

#: ArcFace's 7×7 layer-4 map gives 49 identity tokens.
ID_TOKEN_COUNT = 49
#: Seed for the initial noise when the caller gives neither noise nor a generator (the reference's default).

#: Called after every UNet call with (windows done, windows in the whole run); may raise to cancel.
SamplerProgress = Callable[[int, int], None]
#: Called after every denoising step with (steps done, the latents (N, C, h, w) fp32 then): a checkpoint.
StepDone = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class SamplerState:
    """Where an interrupted denoising stood (docs/architecture.md, "Resume"): the latents (N, C, h, w) fp32
    after `step` steps. Nothing random happens after the initial noise, so going on from here gives exactly
    the latents of an uninterrupted run."""

    step: int
    latents: torch.Tensor


@dataclass(frozen=True)
class SamplerSettings:
    """num_inference_steps: Euler steps (50 in the reference's pass 1, 30 in pass 2).
    window / overlap: frames per UNet call, and the overlap of the first steps (also the per-step shift).
    windows: "circular" (reference) or "clamped" (no wrap-around), see `svfrd.engines.svfr.windows`.
    use_cfg: False runs only the conditional half; identical to CFG when both halves get the same input
             (pass 1: no reference, no ID), at half the cost.
    windows_per_batch: windows denoised by one UNet call (same result, fewer and larger calls)."""

    num_inference_steps: int
    window: int = 16
    overlap: int = 3
    guidance_scale: float = 2.0
    windows: WindowMode = "circular"
    use_cfg: bool = True
    windows_per_batch: int = 1

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1 or self.windows_per_batch < 1:
            raise ValueError(
                "num_inference_steps and windows_per_batch must be at least 1 "
                f"(got {self.num_inference_steps}, {self.windows_per_batch})"
            )


@dataclass(frozen=True)
class Conditioning:
    """Everything the UNet sees besides the noisy latents, on the UNet's device and dtype.

    With CFG the batch is [uncond, cond]. The uncond half keeps the LQ latents and the task but has a zero
    reference latent and zero ID tokens, as the reference."""

    lq_latents: torch.Tensor  # (N, C, h, w), unscaled VAE means
    ref_latent: torch.Tensor  # (C, h, w), zeros without a reference frame
    context: torch.Tensor  # (halves, T, D) ID tokens per half
    added_time_ids: torch.Tensor  # (halves, 3) task multi-hot per half
    use_cfg: bool

    @property
    def halves(self) -> int:
        return 2 if self.use_cfg else 1


def sample(
    models: DiffusionModels,
    lq_frames: torch.Tensor,
    reference_frame: torch.Tensor | None,
    id_tokens: torch.Tensor | None,
    task_vector: torch.Tensor,
    settings: SamplerSettings,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: SamplerProgress | None = None,
    vae_chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole sampler on prepared frames in [-1, 1]: lq_frames (N, 3, H, W), reference_frame (3, H, W).

    Returns the final latents (1, N, C, h, w) (scaled, as the UNet produces them) and the decoded frames
    (N, 3, H, W) fp32. Holds every frame in memory: the streaming engine calls the parts instead."""
    lq_latents = encode_frames(models.vae, lq_frames, vae_chunk).unsqueeze(0)
    ref_latent = None if reference_frame is None else encode_frames(models.vae, reference_frame.unsqueeze(0))[0]
    latents = denoise_latents(
        models, lq_latents, ref_latent, id_tokens, task_vector, settings, noise, generator, progress
    )
    return latents, decode_latents(models.vae, latents[0], vae_chunk)


@torch.no_grad()
def denoise_latents(
    models: DiffusionModels,
    lq_latents: torch.Tensor,
    ref_latent: torch.Tensor | None,
    id_tokens: torch.Tensor | None,
    task_vector: torch.Tensor,
    settings: SamplerSettings,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: SamplerProgress | None = None,
    fallback: UNetFallback | None = None,
    resume_from: SamplerState | None = None,
    on_step: StepDone | None = None,
) -> torch.Tensor:
    """Denoise a clip from its LQ latents (1, N, C, h, w) (unscaled VAE means) to final latents (1, N, C, h, w).

    ref_latent (C, h, w) and id_tokens (1, T, D) may be None (pass 1: zeros, as the reference).
    noise (1, N, C, h, w) is the initial noise; without it, it is drawn from `generator` (seeded with
    DEFAULT_SEED when that is None too) on the CPU, so a seed gives the same noise on every device.
    fallback: how UNet calls shrink when they run out of GPU memory (without it, the error propagates).
    resume_from: the state after some steps (no initial noise is drawn then); on_step hears each step's end."""
    check_latent_shape(models, lq_latents)
    num_frames = lq_latents.shape[1]
    schedule = sigmas_and_timesteps(models.scheduler_config, settings.num_inference_steps)
    windows = WindowSchedule(num_frames, settings.window, settings.overlap, settings.windows)
    conditioning = prepare_conditioning(models, lq_latents[0], ref_latent, id_tokens, task_vector, settings.use_cfg)
    first_step = 0 if resume_from is None else resume_from.step
    if resume_from is None:
        latents = initial_latents(models, lq_latents[0], noise, generator, schedule)
    else:
        latents = resume_from.latents.to(device=models.device, dtype=torch.float32)

    weights = fusion_weights(windows.frames_per_window).to(models.device)
    total_windows = windows.unet_calls(schedule.num_steps)
    done_windows = sum(len(windows.windows_for_step(step)) for step in range(first_step))
    for step in range(first_step, schedule.num_steps):
        sigma, sigma_next = schedule.sigmas[step], schedule.sigmas[step + 1]
        timestep = schedule.timesteps[step].to(models.device)
        fused = torch.zeros_like(latents)
        weight_sum = torch.zeros(num_frames, 1, 1, 1, device=models.device)
        # Every window's frame indices (windows, W), moved to the device once per step, not per UNet call.
        step_windows = torch.tensor(windows.windows_for_step(step), device=models.device)
        for first in range(0, len(step_windows), settings.windows_per_batch):
            frame_index = step_windows[first : first + settings.windows_per_batch]
            window_latents = latents[frame_index]  # (k, W, C, h, w)
            velocity = predict_velocity_fitting(
                models, window_latents, frame_index, sigma, timestep, conditioning, settings.guidance_scale, fallback
            )
            denoised = euler_step(window_latents, velocity, sigma, sigma_next)
            accumulate_windows(fused, weight_sum, denoised, frame_index, weights)
            done_windows += len(frame_index)
            if progress is not None:
                progress(done_windows, total_windows)
        latents = fused / weight_sum
        if on_step is not None:
            on_step(step + 1, latents)
    return latents.unsqueeze(0)


def check_latent_shape(models: DiffusionModels, lq_latents: torch.Tensor) -> None:
    channels = models.unet.config.out_channels
    if lq_latents.dim() != 5 or lq_latents.shape[0] != 1 or lq_latents.shape[2] != channels:
        raise ValueError(f"LQ latents must be (1, N, {channels}, h, w), not {tuple(lq_latents.shape)}")


def prepare_conditioning(
    models: DiffusionModels,
    lq_latents: torch.Tensor,
    ref_latent: torch.Tensor | None,
    id_tokens: torch.Tensor | None,
    task_vector: torch.Tensor,
    use_cfg: bool,
) -> Conditioning:
    unet, device, dtype = models.unet, models.device, models.dtype
    if ref_latent is None:
        ref_latent = torch.zeros_like(lq_latents[0])
    if id_tokens is None:
        id_tokens = torch.zeros(1, ID_TOKEN_COUNT, unet.config.cross_attention_dim)
    check_task_vector(unet, task_vector)
    id_tokens = id_tokens.to(device=device, dtype=dtype).reshape(1, *id_tokens.shape[-2:])
    task = task_vector.to(device=device, dtype=dtype).reshape(1, -1)
    if use_cfg:
        context = torch.cat([torch.zeros_like(id_tokens), id_tokens])
        task = task.repeat(2, 1)
    else:
        context = id_tokens
    return Conditioning(
        lq_latents=lq_latents.to(device=device, dtype=dtype),
        ref_latent=ref_latent.to(device=device, dtype=dtype),
        context=context,
        added_time_ids=task,
        use_cfg=use_cfg,
    )


def check_task_vector(unet: torch.nn.Module, task_vector: torch.Tensor) -> None:
    """The task multi-hot replaces SVD's added time ids: one embedding of `addition_time_embed_dim` each."""
    expected = unet.config.projection_class_embeddings_input_dim // unet.config.addition_time_embed_dim
    if task_vector.numel() != expected:
        raise ValueError(
            f"the task vector needs {expected} entries (BFR, colorization, inpainting), not {task_vector.numel()}"
        )


def initial_latents(
    models: DiffusionModels,
    lq_latents: torch.Tensor,
    noise: torch.Tensor | None,
    generator: torch.Generator | None,
    schedule: NoiseSchedule,
) -> torch.Tensor:
    """The scaled LQ latents plus noise at σ_max (the scheduler's `add_noise` at the first timestep), fp32."""
    clean = lq_latents.to(device=models.device, dtype=torch.float32) * models.vae.config.scaling_factor
    if noise is None:
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_SEED)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=torch.float32)
    noise = noise.reshape(clean.shape).to(device=models.device, dtype=torch.float32)
    return clean + noise * schedule.sigmas[0]


class UNetFallback:
    """How UNet calls shrink when one runs out of GPU memory; each step gives the same result (within
    floating-point rounding: the maths per clip is unchanged, docs/svfr.md §9), so a job never fails for a
    memory peak that a smaller call avoids. In order:
    1. several windows per call -> one window per call;
    2. both CFG halves in one call -> the two halves as two calls;
    3. diffusers' feed-forward chunking (one frame at a time through each transformer's feed-forward).
    The state is kept: later calls start from what fitted (the service's `ServiceMemory.start_job` resets it
    for each job). `on_shrink` hears each step, in words."""

    def __init__(
        self,
        windows_per_call: int | None = None,
        split_cfg: bool = False,
        chunk_feed_forward: bool = False,
        on_shrink: Callable[[str], None] | None = None,
    ) -> None:
        self.windows_per_call = windows_per_call  # None: as the sampler settings say
        self.split_cfg = split_cfg
        self.chunk_feed_forward = chunk_feed_forward
        self.on_shrink = on_shrink

    def apply(self, unet: torch.nn.Module) -> None:
        """Put the UNet in the state this fallback is at (feed-forward chunking is a setting of the UNet)."""
        if self.chunk_feed_forward:
            # dim 0 chunks the spatial blocks frame by frame; the temporal blocks always chunk along frames.
            unet.enable_forward_chunking(chunk_size=1, dim=0)
        else:
            # diffusers' SVD UNet has no `disable_forward_chunking`: unset each block's chunking.
            for module in unet.modules():
                if hasattr(module, "set_chunk_feed_forward"):
                    module.set_chunk_feed_forward(chunk_size=None, dim=0)

    def shrink(self, unet: torch.nn.Module, windows: int, use_cfg: bool) -> bool:
        """Take the next step after an out-of-memory error in a call of `windows` windows; False when there is
        none left."""
        if windows > 1:
            self.windows_per_call = 1
            step = "one window per UNet call"
        elif use_cfg and not self.split_cfg:
            self.split_cfg = True
            step = "the two classifier-free guidance halves as two UNet calls"
        elif not self.chunk_feed_forward:
            self.chunk_feed_forward = True
            self.apply(unet)
            step = "chunked feed-forward layers in the UNet"
        else:
            return False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("GPU out of memory in the UNet; retrying with %s (same result, slower)", step)
        if self.on_shrink is not None:
            self.on_shrink(step)
        return True

    def describe(self) -> str:
        parts = []
        if self.windows_per_call is not None:
            parts.append(f"{self.windows_per_call} window(s) per call")
        parts.append("CFG halves apart" if self.split_cfg else "CFG halves together")
        if self.chunk_feed_forward:
            parts.append("chunked feed-forward")
        return ", ".join(parts)


def predict_velocity_fitting(
    models: DiffusionModels,
    window_latents: torch.Tensor,
    frame_index: torch.Tensor,
    sigma: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    fallback: UNetFallback | None,
) -> torch.Tensor:
    """`predict_velocity` in calls that fit: on out-of-memory the `fallback` shrinks them and the same
    windows are predicted again (nothing random happens in a UNet call, so the retry is exact)."""
    if fallback is None:
        return predict_velocity(models, window_latents, frame_index, sigma, timestep, conditioning, guidance_scale)
    while True:
        per_call = fallback.windows_per_call or len(frame_index)
        try:
            return torch.cat([
                predict_velocity(
                    models, window_latents[first : first + per_call], frame_index[first : first + per_call],
                    sigma, timestep, conditioning, guidance_scale, split_cfg=fallback.split_cfg,
                )
                for first in range(0, len(frame_index), per_call)
            ])
        except torch.OutOfMemoryError:
            if not fallback.shrink(models.unet, min(per_call, len(frame_index)), conditioning.use_cfg):
                raise


def predict_velocity(
    models: DiffusionModels,
    window_latents: torch.Tensor,
    frame_index: torch.Tensor,
    sigma: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    split_cfg: bool = False,
) -> torch.Tensor:
    """The guided v-prediction for k windows at once: window_latents (k, W, C, h, w) -> (k, W, C, h, w).

    One UNet call on a batch of halves·k clips of W frames with 12 channels: [noisy, LQ, reference]."""
    k = len(frame_index)
    noisy = scale_model_input(window_latents, sigma).to(models.dtype)
    lq = conditioning.lq_latents[frame_index]
    ref = conditioning.ref_latent.expand_as(lq)
    cond_input = torch.cat([noisy, lq, ref], dim=2)
    if conditioning.use_cfg:
        uncond_input = torch.cat([noisy, lq, torch.zeros_like(ref)], dim=2)
        unet_input = torch.cat([uncond_input, cond_input])
    else:
        unet_input = cond_input
    # Batch order is half-major ([uncond × k, cond × k]) so the output splits back with chunk(2).
    context = conditioning.context.repeat_interleave(k, dim=0)
    added_time_ids = conditioning.added_time_ids.repeat_interleave(k, dim=0)
    if split_cfg and conditioning.use_cfg:
        # The halves never interact inside the UNet: two calls of k clips give what one call of 2k gives.
        output = torch.cat([
            run_unet(models, part, timestep, ctx, ids)
            for part, ctx, ids in zip(unet_input.chunk(2), context.chunk(2), added_time_ids.chunk(2))
        ])
    else:
        output = run_unet(models, unet_input, timestep, context, added_time_ids)
    if not conditioning.use_cfg:
        return output
    uncond, cond = output.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def run_unet(
    models: DiffusionModels,
    unet_input: torch.Tensor,
    timestep: torch.Tensor,
    context: torch.Tensor,
    added_time_ids: torch.Tensor,
) -> torch.Tensor:
    return models.unet(
        unet_input, timestep, encoder_hidden_states=context, added_time_ids=added_time_ids, return_dict=False
    )[0]


def accumulate_windows(
    fused: torch.Tensor,
    weight_sum: torch.Tensor,
    denoised: torch.Tensor,
    frame_index: torch.Tensor,
    weights: torch.Tensor,
) -> None:
    """Add each window's result with its triangular weights; a frame fed twice (circular windows on a short
    clip) counts twice, like in the reference."""
    k = len(frame_index)
    flat_index = frame_index.reshape(-1)
    window_weights = weights.repeat(k)
    fused.index_add_(0, flat_index, denoised.reshape(-1, *denoised.shape[2:]) * window_weights[:, None, None, None])
    weight_sum.index_add_(0, flat_index, window_weights[:, None, None, None])
