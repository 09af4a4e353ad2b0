"""The SVFR engine: `svfrd.engines.interface.Engine` as a thin adapter over `SVFRPipeline`.

The pipeline (`svfrd.engines.svfr.pipeline`) does the restoration. This module adds what the service needs
around it: the job's options read over the configuration (`run_settings`), the device and dtype from the
config (refusing combinations that would crawl or emulate), the memory tier chosen at job start
(`svfrd.engines.svfr.memory`), the speed-up switches (`svfrd.engines.svfr.speedups`), and the GPU's cache
handed back after every job. `build_pipeline` builds the same pipeline for a script (a GPU check) without
the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svfrd.config import EngineConfig, SvfrConfig
from svfrd.domain import CROP_SIZE, SVFR, option_problem, options_owned_by
from svfrd.engines.interface import CropStream, ProgressReporter, RestoreRequest
from svfrd.engines.svfr.attention import install_clip_id_attention
from svfrd.engines.svfr.memory import (
    REFERENCE_DECODE_CHUNK,
    TIERS,
    MemoryTier,
    ServiceMemory,
    choose_tier,
    cuda_free_bytes,
    decode_chunk_note,
    release_gpu_memory,
)
from svfrd.engines.svfr.pipeline import SVFRPipeline, SVFRSettings
from svfrd.engines.svfr.resume import SamplerCheckpoints
from svfrd.engines.svfr.speedups import Speedups, apply_speedups
from svfrd.errors import BadInputError, ConfigError

log = logging.getLogger(__name__)

OPTION_NAMES = options_owned_by(SVFR)  # the table in svfrd.domain
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FACE_MODEL_FILE = "face_landmarker.task"


def run_settings(cfg: SvfrConfig, options: Mapping[str, Any]) -> SVFRSettings:
    """The settings of one job: the config's, overridden by the job's options (refused when invalid)."""
    for name, value in options.items():
        problem = option_problem(name, value, OPTION_NAMES)
        if problem:
            raise BadInputError(f"the SVFR engine cannot use the option {name} = {value!r}: {problem}")
    return SVFRSettings(
        steps=int(options.get("steps", cfg.steps)),
        pass1_steps=int(options.get("pass1_steps", cfg.pass1_steps)),
        guidance_scale=float(options.get("guidance_scale", cfg.guidance_scale)),
        mode=str(options.get("mode", cfg.mode)),  # type: ignore[arg-type]
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f'[engine] device = "{name}", but torch sees no CUDA GPU; check the driver (nvidia-smi) and that '
            'the CUDA build of torch is installed, or set device = "auto"'
        )
    return device


def check_cpu_explicit(cfg: EngineConfig, device: torch.device) -> None:
    """SVFR on a CPU takes days per video; in fp16 it also emulates half precision. Only an explicit
    device = "cpu" with dtype = "fp32" runs it there (tests, or a user who means it)."""
    if device.type != "cpu" or (cfg.device == "cpu" and cfg.dtype == "fp32"):
        return
    if cfg.device == "auto":
        raise ConfigError(
            '[engine] name = "svfr" with device = "auto", but torch sees no CUDA GPU, and SVFR on a CPU takes days '
            "per video. Check the driver (nvidia-smi) and that the CUDA build of torch is installed; or set "
            'name = "classical"; or, to run SVFR on the CPU anyway, set device = "cpu" and dtype = "fp32"'
        )
    raise ConfigError(
        f'[engine] device = "cpu" with dtype = "{cfg.dtype}": SVFR on a CPU needs dtype = "fp32" (half '
        "precision is emulated there and slower still)"
    )


def check_bf16_native(
    device: torch.device, dtype: str, capability: Callable[[torch.device], tuple[int, int]] | None = None
) -> None:
    """bf16 needs compute capability 8.0 (Ampere) or later; before it, attention falls back to the unfused
    kernel (about 5 GiB per layer) and the maths is emulated (docs/svfr.md §9)."""
    if dtype != "bf16" or device.type != "cuda":
        return
    major, minor = (capability or torch.cuda.get_device_capability)(device)
    if (major, minor) < (8, 0):
        raise ConfigError(
            f'[engine] dtype = "bf16", but this GPU (compute capability {major}.{minor}) has no native bf16: '
            'SVFR would emulate it and need far more memory. Set dtype = "fp16"'
        )


def identity_dtype(dtype: torch.dtype) -> torch.dtype:
    """ArcFace and id_linear run in fp16 or fp32 whatever the engine's dtype: bf16's 8-bit mantissa would blur
    the identity features, and the branch runs once per video (docs/svfr.md §4)."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def build_pipeline(
    models_dir: Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    face_model: Path,
    memory: str | MemoryTier = "balanced",
    speedups: Speedups = Speedups(),
    id_attention: str = "once",
    resolution: int = CROP_SIZE,
    segment_frames: int = 2000,
    encode_chunk: int | None = None,
    decode_chunk: int | None = None,
    compile_cache: Path | None = None,
    compile_backend: str = "inductor",
) -> SVFRPipeline:
    """An `SVFRPipeline` on `models_dir` in one memory tier ("high", "balanced", "low") with the given
    speed-ups: what the engine runs, for scripts that measure tiers and switches. Its memory policy is a
    `ServiceMemory` (`pipeline.memory`)."""
    device = torch.device(device)
    tier = TIERS[memory] if isinstance(memory, str) else memory
    policy = ServiceMemory(tier, device, encode_chunk=encode_chunk, decode_chunk=decode_chunk)
    pipeline = SVFRPipeline.from_folder(
        models_dir, device, dtype, face_model=face_model, resolution=resolution, segment_frames=segment_frames,
        memory=policy, identity_dtype=identity_dtype(dtype),
    )
    unet = pipeline.models.unet
    if id_attention == "once":
        install_clip_id_attention(unet)
    use_memory_policy(pipeline, policy)
    apply_speedups(unet, speedups, device, compile_cache, backend=compile_backend)
    return pipeline


def use_memory_policy(pipeline: SVFRPipeline, policy: ServiceMemory) -> None:
    """Put the pipeline's modules where `policy`'s tier wants them and make it the pipeline's policy."""
    unet = pipeline.models.unet
    helpers = (pipeline.models.vae, pipeline.identity.arcface, pipeline.identity.id_projection)
    policy.prepare(unet)
    policy.evict = (unet,)
    if policy.tier.offload:
        policy.offload_now(*helpers)
    else:
        for module in helpers:
            module.to(policy.device)
    pipeline.memory = policy


def speedups_of(cfg: SvfrConfig) -> Speedups:
    return Speedups(compile=cfg.compile, channels_last=cfg.channels_last, cuda_graphs=cfg.cuda_graphs, tf32=cfg.tf32)


class SvfrEngine:
    """`svfrd.engines.interface.Engine` for SVFR. Models load once, in the constructor, and stay resident.

    resolution: the model's working size (see `SVFRPipeline`); below 512 only for fast tests on tiny models.
    face_model: the MediaPipe face landmarker used to find the face in the reference frame; the service
    passes `[faces] model` (without it: `<models_dir>/face_landmarker.task`)."""

    name = "svfr"
    option_names = OPTION_NAMES

    def __init__(
        self,
        cfg: EngineConfig,
        resolution: int = CROP_SIZE,
        face_model: Path | None = None,
        *,
        free_memory: Callable[[torch.device], int | None] = cuda_free_bytes,
        compile_backend: str = "inductor",
    ) -> None:
        if cfg.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
        self.cfg = cfg
        self.free_memory = free_memory
        self.resolution = resolution
        device = resolve_device(cfg.device)
        check_cpu_explicit(cfg, device)
        check_bf16_native(device, cfg.dtype)
        svfr = cfg.svfr
        first_tier = "balanced" if svfr.memory == "auto" else svfr.memory  # "auto" picks again at each job
        self.pipeline = build_pipeline(
            svfr.models_dir, device=device, dtype=DTYPES[cfg.dtype],
            face_model=Path(face_model) if face_model else svfr.models_dir / FACE_MODEL_FILE,
            memory=first_tier, speedups=speedups_of(svfr), id_attention=svfr.id_attention,
            resolution=resolution, segment_frames=svfr.segment_frames, encode_chunk=svfr.encode_chunk,
            decode_chunk=svfr.vae_chunk, compile_cache=svfr.compile_cache, compile_backend=compile_backend,
        )
        self._warnings: list[str] = []
        log.info("SVFR models loaded from %s on %s (%s)", svfr.models_dir, self.pipeline.models.device, cfg.dtype)

    @property
    def memory(self) -> ServiceMemory:
        return self.pipeline.memory  # type: ignore[return-value]

    @property
    def vae_chunk(self) -> int:
        """Frames per VAE decode call now (lowered for the rest of a job after an out-of-memory retry)."""
        return self.memory.decode_chunk

    @property
    def encode_chunk(self) -> int:
        return self.memory.encode_chunk

    def details(self) -> dict[str, Any]:
        """For the job report: how the last job used the GPU."""
        memory = self.memory
        return {
            "memory_tier": memory.tier.name,
            "memory_setting": self.cfg.svfr.memory,
            "vae_decode_chunk": memory.decode_chunk,
            "unet_calls": memory.fallback.describe(),
            "speedups": speedups_of(self.cfg.svfr).names(),
        }

    def choose_memory_tier(self) -> None:
        """At job start: "auto" takes the largest tier that fits the GPU's free memory now."""
        if self.cfg.svfr.memory != "auto":
            return
        device = self.pipeline.models.device
        dtype_bytes = 4 if self.cfg.dtype == "fp32" else 2
        tier = choose_tier(self.free_memory(device), dtype_bytes=dtype_bytes)
        if tier.name == self.memory.tier.name:
            return
        log.info("memory tier %s for this job (from the free GPU memory)", tier.name)
        policy = ServiceMemory(tier, device, encode_chunk=self.cfg.svfr.encode_chunk, decode_chunk=self.cfg.svfr.vae_chunk)
        use_memory_policy(self.pipeline, policy)

    def check(self, request: RestoreRequest) -> None:
        """Every task combination works; only invalid options or an unusable reference picture are refused."""
        run_settings(self.cfg.svfr, request.options)
        if request.reference_face is not None and self.pipeline.face_model.is_file():
            self.pipeline.find_reference_face(request.reference_face)

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        self._warnings = []
        settings = run_settings(self.cfg.svfr, request.options)
        self.choose_memory_tier()
        self.memory.start_job(self.pipeline.models.unet)
        self.memory.warn = self._warn
        if settings.mode == "reference" and self.memory.decode_chunk < REFERENCE_DECODE_CHUNK:
            why = f"[engine.svfr] vae_chunk = {self.cfg.svfr.vae_chunk}"
            self._warn(decode_chunk_note(self.memory.decode_chunk, why))
        return self._restore_and_release(request, crops, progress, settings)

    def _restore_and_release(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter, settings: SVFRSettings
    ) -> Iterator[np.ndarray]:
        self._checkpoints = SamplerCheckpoints(request.checkpoints) if request.checkpoints is not None else None
        try:
            yield from self.pipeline(
                crops,
                request.tasks,
                seed=request.seed,
                settings=settings,
                reference_face=request.reference_face,
                progress=progress,
                warn=self._warn,
                checkpoints=self._checkpoints,
            )
        finally:
            release_gpu_memory()  # the GPU is its owner's between jobs

    def resume_details(self) -> dict:
        """What the last run reused from an interrupted one's checkpoints (empty: nothing)."""
        checkpoints = getattr(self, "_checkpoints", None)
        if checkpoints is None or not (checkpoints.steps_reused or checkpoints.reference_reused):
            return {}
        return checkpoints.details()

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self._warnings.append(message)
