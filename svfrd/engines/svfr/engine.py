"""The SVFR engine: `svfrd.engines.interface.Engine` as a thin adapter over `SVFRPipeline`.

The pipeline (`svfrd.engines.svfr.pipeline`) does the restoration. This module adds what the service needs
around it: the job's options read over the configuration (`run_settings`), the device and dtype from the
config, and the memory policy (`ShrinkOnOutOfMemory`): on CUDA out-of-memory the VAE retries with smaller
chunks, and what still does not fit becomes a `TransientError`, so the job is retried later instead of failing.
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
from svfrd.engines.svfr.pipeline import SVFRPipeline, SVFRSettings
from svfrd.errors import BadInputError, ConfigError, TransientError

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


class ShrinkOnOutOfMemory:
    """The service's `MemoryPolicy`: a VAE call that runs out of GPU memory is retried with half the chunk
    (and later jobs start from the size that fitted); anything that still does not fit is a `TransientError`."""

    def __init__(self, vae_chunk: int) -> None:
        self.vae_chunk = vae_chunk

    def vae(self, work: Callable[[int], torch.Tensor], chunk: int | None = None) -> torch.Tensor:
        chunk = min(chunk or self.vae_chunk, self.vae_chunk)
        while True:
            try:
                return work(chunk)
            except torch.OutOfMemoryError as err:
                torch.cuda.empty_cache()
                if chunk == 1:
                    raise TransientError(
                        f"the GPU ran out of memory in the VAE even one frame at a time ({err}); the job will be "
                        "retried: free GPU memory (other programs) or use a GPU with more memory"
                    ) from err
                chunk = max(1, chunk // 2)
                # Later jobs start from the size that fitted, rather than failing once per chunk again.
                self.vae_chunk = min(self.vae_chunk, chunk)
                log.warning("GPU out of memory in the VAE; retrying with chunks of %d frames", chunk)

    def denoise(self, work: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            return work()
        except torch.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise TransientError(
                f"the GPU ran out of memory while denoising ({err}); the job will be retried: free GPU memory "
                "(other programs), use fp16, or a GPU with more memory"
            ) from err


class SvfrEngine:
    """`svfrd.engines.interface.Engine` for SVFR. Models load once, in the constructor, and stay resident.

    resolution: the model's working size (see `SVFRPipeline`); below 512 only for fast tests on tiny models.
    face_model: the MediaPipe face landmarker used to find the face in the reference frame; the service
    passes `[faces] model` (without it: `<models_dir>/face_landmarker.task`)."""

    name = "svfr"
    option_names = OPTION_NAMES

    def __init__(self, cfg: EngineConfig, resolution: int = CROP_SIZE, face_model: Path | None = None) -> None:
        if cfg.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
        self.cfg = cfg
        self.memory = ShrinkOnOutOfMemory(cfg.svfr.vae_chunk)
        self.pipeline = SVFRPipeline.from_folder(
            cfg.svfr.models_dir,
            resolve_device(cfg.device),
            DTYPES[cfg.dtype],
            face_model=Path(face_model) if face_model else cfg.svfr.models_dir / FACE_MODEL_FILE,
            resolution=resolution,
            segment_frames=cfg.svfr.segment_frames,
            memory=self.memory,
        )
        self._warnings: list[str] = []
        log.info("SVFR models loaded from %s on %s (%s)", cfg.svfr.models_dir, self.pipeline.models.device, cfg.dtype)

    @property
    def vae_chunk(self) -> int:
        """Frames per VAE call now (lowered for good after an out-of-memory retry)."""
        return self.memory.vae_chunk

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
        return self.pipeline(
            crops,
            request.tasks,
            seed=request.seed,
            settings=run_settings(self.cfg.svfr, request.options),
            reference_face=request.reference_face,
            progress=progress,
            warn=self._warn,
        )

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self._warnings.append(message)
