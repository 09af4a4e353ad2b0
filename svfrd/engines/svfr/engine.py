"""The SVFR engine: two-pass, streaming restoration of a video's face crops with the SVFR model.

What one job does (svfr-spec.md 3.1, minus the reference's memory use):
1. vae encode: read the crops once, prepare each for the tasks (gray for colorization, white under the mask for
   inpainting) and VAE-encode them in chunks; only latents are kept for the whole video (or segment).
2. pass 1: denoise the first <= 16 frames without reference or ID (no CFG: both halves would be identical)
   and take the last frame as the reference. A user-supplied reference picture replaces this pass.
3. ID tokens: ArcFace on the reference face, aligned to the 5-point template, through id_linear.
4. pass 2: denoise the whole video with the reference latent and the ID tokens.
5. vae decode: VAE-decode in chunks and yield the crops as they come.

Very long videos are cut into overlapping segments of `segment_frames`; each is denoised on its own (with the
same reference and ID) and the overlap is cross-faded in latent space, so memory stays bounded whatever the
length. Modes: "reference" follows the original code (circular windows, its ArcFace crop, pass 1 decoded as a
16-frame chunk, output truncated to uint8); "improved" clamps windows at the video's ends, uses the corrected
ArcFace crop, decodes only the pass-1 frame it keeps, and rounds the output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from svfrd.config import EngineConfig, SvfrConfig
from svfrd.domain import CROP_SIZE, SVFR, Task, option_problem, options_owned_by
from svfrd.engines.interface import CropStream, FaceCrop, ProgressReporter, RestoreRequest
from svfrd.engines.svfr.identity import IdentityModels, align_face, id_tokens_for_face, load_identity_models
from svfrd.engines.svfr.loading import (
    ID_LINEAR_WEIGHTS,
    LAYOUT_HINT,
    UNET_CONFIG,
    DiffusionModels,
    WeightsError,
    load_diffusion_models,
)
from svfrd.engines.svfr.sampler import SamplerSettings, denoise_latents
from svfrd.engines.svfr.vae_io import decode_latents, encode_frames
from svfrd.engines.svfr.windows import WindowSchedule
from svfrd.errors import BadInputError, ConfigError, TransientError
from svfrd.media.crop import CropBox, crop_face, face_crop_box
from svfrd.media.faces import DetectedFace, FaceFinder
from svfrd.media.masks import prepare_svfr_input

log = logging.getLogger(__name__)

OPTION_NAMES = options_owned_by(SVFR)  # the table in svfrd.domain
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FACE_MODEL_FILE = "face_landmarker.task"
WINDOW = 16
OVERLAP = 3
#: Frames two consecutive segments share; their latents are cross-faded there.
SEGMENT_OVERLAP = 16


@dataclass(frozen=True)
class RunSettings:
    """The settings of one job: the config's, overridden by the job's options."""

    steps: int
    pass1_steps: int
    guidance_scale: float
    mode: str  # "reference" | "improved"

    @property
    def windows(self) -> str:
        return "circular" if self.mode == "reference" else "clamped"

    @property
    def arcface_crop(self) -> str:
        return "reference" if self.mode == "reference" else "corrected"


def run_settings(cfg: SvfrConfig, options: Mapping[str, Any]) -> RunSettings:
    for name, value in options.items():
        problem = option_problem(name, value, OPTION_NAMES)
        if problem:
            raise BadInputError(f"the SVFR engine cannot use the option {name} = {value!r}: {problem}")
    return RunSettings(
        steps=int(options.get("steps", cfg.steps)),
        pass1_steps=int(options.get("pass1_steps", cfg.pass1_steps)),
        guidance_scale=float(options.get("guidance_scale", cfg.guidance_scale)),
        mode=str(options.get("mode", cfg.mode)),
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


def task_vector(tasks: frozenset[Task]) -> torch.Tensor:
    """The multi-hot [BFR, colorization, inpainting] that conditions the UNet."""
    return torch.tensor([1.0 if task in tasks else 0.0 for task in Task])


def segment_bounds(total: int, segment_frames: int) -> list[tuple[int, int]]:
    """[start, end) of each segment; consecutive segments share `segment_overlap(segment_frames)` frames."""
    overlap = segment_overlap(segment_frames)
    bounds, start = [], 0
    while True:
        end = min(start + segment_frames, total)
        bounds.append((start, end))
        if end == total:
            return bounds
        start = end - overlap


def segment_overlap(segment_frames: int) -> int:
    return min(SEGMENT_OVERLAP, segment_frames // 2)


def to_model_pixels(image: np.ndarray, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, r, r) fp32 in [-1, 1]."""
    if image.shape[0] != resolution:
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


def to_uint8_crops(frames: torch.Tensor, rounding: bool) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> (n, H, W, 3) uint8. The reference truncates (spec 4.6); rounding is fairer."""
    scaled = (frames.to(torch.float32) * 0.5 + 0.5).clamp(0, 1) * 255
    if rounding:
        scaled = scaled.round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_crop_size(image: np.ndarray) -> np.ndarray:
    if image.shape[0] == CROP_SIZE:
        return image
    return cv2.resize(image, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_CUBIC)


def check_token_width(identity: IdentityModels, models: DiffusionModels, models_dir: Path) -> None:
    """id_linear's tokens are the UNet's cross-attention context: their widths must agree."""
    unet_width = models.unet.config.cross_attention_dim
    if identity.token_width != unet_width:
        raise WeightsError(
            f"{Path(models_dir) / ID_LINEAR_WEIGHTS} makes {identity.token_width}-wide ID tokens, but the UNet "
            f"({Path(models_dir) / UNET_CONFIG}) attends to {unet_width}-wide ones: the files do not belong "
            f"together; {LAYOUT_HINT}"
        )


class SvfrEngine:
    """`svfrd.engines.interface.Engine` for SVFR. Models load once, in the constructor, and stay resident.

    resolution: the model's working size; SVFR is trained at 512 (the crop size). Smaller sizes exist for
    fast tests on tiny models; crops are resized to it and back.
    face_model: the MediaPipe face landmarker used to find the face in the reference frame; the service
    passes `[faces] model` (without it: `<models_dir>/face_landmarker.task`)."""

    name = "svfr"
    option_names = OPTION_NAMES

    def __init__(self, cfg: EngineConfig, resolution: int = CROP_SIZE, face_model: Path | None = None) -> None:
        if cfg.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {cfg.dtype!r}; allowed: {', '.join(DTYPES)}")
        self.cfg = cfg
        self.resolution = resolution
        self.face_model = Path(face_model) if face_model else cfg.svfr.models_dir / FACE_MODEL_FILE
        self.device = resolve_device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        self.models: DiffusionModels = load_diffusion_models(cfg.svfr.models_dir, self.device, self.dtype)
        self.identity: IdentityModels = load_identity_models(cfg.svfr.models_dir, self.device, self.dtype)
        check_token_width(self.identity, self.models, cfg.svfr.models_dir)
        self.vae_chunk = cfg.svfr.vae_chunk
        self._warnings: list[str] = []
        log.info("SVFR models loaded from %s on %s (%s)", cfg.svfr.models_dir, self.device, cfg.dtype)

    # -- Engine protocol ------------------------------------------------------------------------------

    def check(self, request: RestoreRequest) -> None:
        """Every task combination works; only invalid options or an unusable reference picture are refused."""
        run_settings(self.cfg.svfr, request.options)
        if request.reference_face is not None and self.face_model.is_file():
            self.reference_face_box(request.reference_face)

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        self._warnings = []
        settings = run_settings(self.cfg.svfr, request.options)
        job = SvfrJob(self, request, settings, crops, progress)
        return job.run()

    # -- Pieces the job uses --------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self._warnings.append(message)

    def find_face(self, image: np.ndarray) -> DetectedFace | None:
        """The largest face in one picture, or None (also when the face model is missing, with a warning)."""
        if not self.face_model.is_file():
            self.warn(f"the face landmark model {self.face_model} is missing, so ID tokens are disabled")
            return None
        # A fresh finder per picture: MediaPipe's video mode would track across unrelated pictures.
        with FaceFinder(self.face_model) as finder:
            faces = finder.find(image, 0)
        return faces[0] if faces else None

    def reference_face_box(self, picture: np.ndarray) -> tuple[DetectedFace, CropBox]:
        """The face in a user-supplied reference picture, and a crop square framed like the video's crops."""
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise BadInputError("the reference image must be an RGB picture; use a PNG or JPEG of the subject")
        face = self.find_face(picture)
        if face is None:
            raise BadInputError(
                "no face was found in the reference image; supply a clear, front-facing photo of the subject, "
                "or leave `reference` out so SVFR picks its own reference frame"
            )
        return face, face_crop_box(face.box)

    def id_tokens(self, picture: np.ndarray, face: DetectedFace, crop: str) -> torch.Tensor:
        return id_tokens_for_face(self.identity, align_face(picture, face.points5), crop)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE means (n, C, h, w) fp32; on CUDA out-of-memory the chunk is halved and tried again."""
        return self._with_smaller_chunks_on_oom(lambda chunk: encode_frames(self.models.vae, pixels, chunk))

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Frames (n, 3, H, W) fp32 from scaled latents; same out-of-memory fallback as `encode`."""
        return self._with_smaller_chunks_on_oom(lambda c: decode_latents(self.models.vae, latents, c), chunk)

    def _with_smaller_chunks_on_oom(
        self, work: Callable[[int], torch.Tensor], chunk: int | None = None
    ) -> torch.Tensor:
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

    def denoise(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            return denoise_latents(self.models, *args, **kwargs)
        except torch.OutOfMemoryError as err:
            torch.cuda.empty_cache()
            raise TransientError(
                f"the GPU ran out of memory while denoising ({err}); the job will be retried: free GPU memory "
                "(other programs), use fp16, or a GPU with more memory"
            ) from err


class SvfrJob:
    """One `restore` call: state that lives only as long as the job."""

    def __init__(
        self,
        engine: SvfrEngine,
        request: RestoreRequest,
        settings: RunSettings,
        crops: CropStream,
        progress: ProgressReporter,
    ) -> None:
        self.engine = engine
        self.request = request
        self.settings = settings
        self.crops = crops
        self.progress = progress
        self.total = len(crops)
        self.tasks = request.tasks
        self.task_vector = task_vector(request.tasks)
        # One CPU generator for every random draw of the job: a seed gives the same video on any device.
        self.generator = torch.Generator().manual_seed(int(request.seed))
        self.encoded = 0
        self.decoded = 0

    def run(self) -> Iterator[np.ndarray]:
        if self.total == 0:
            return
        source = iter(self.crops)
        segments = segment_bounds(self.total, self.engine.cfg.svfr.segment_frames)
        carried_lq: torch.Tensor | None = None  # LQ latents of the overlap with the next segment
        carried_latents: torch.Tensor | None = None  # final latents of that overlap
        reference: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        for index, (start, end) in enumerate(segments):
            fresh_from = start if carried_lq is None else start + len(carried_lq)
            new_lq = self.encode_crops(source, end - fresh_from)
            lq = new_lq if carried_lq is None else torch.cat([carried_lq, new_lq])
            if reference is None:
                reference = self.reference_conditioning(lq)
            ref_latent, id_tokens = reference
            latents = self.pass_two(lq, ref_latent, id_tokens, index, len(segments))
            if carried_latents is not None:
                latents[: len(carried_latents)] = crossfade(carried_latents, latents[: len(carried_latents)])
            is_last = index == len(segments) - 1
            keep = 0 if is_last else end - segments[index + 1][0]
            yield from self.decode_and_emit(latents[: len(latents) - keep])
            carried_lq = lq[len(lq) - keep :] if keep else None
            carried_latents = latents[len(latents) - keep :] if keep else None
        if self.decoded != self.total:
            raise RuntimeError(f"restored {self.decoded} crops for {self.total} input crops")

    # -- encode ---------------------------------------------------------------------------------------

    def encode_crops(self, source: Iterator[FaceCrop], count: int) -> torch.Tensor:
        """The LQ latents of the next `count` crops, encoded `vae_chunk` at a time as they are read."""
        latents = []
        while count > 0:
            # Reported before the work too: the worker charges the time until the next report to this stage.
            self.progress("vae encode", self.encoded, self.total)
            take = min(count, self.engine.vae_chunk)
            pixels = []
            for _ in range(take):
                crop = next(source, None)
                if crop is None:
                    raise BadInputError(
                        f"the video gave fewer frames ({self.encoded + len(pixels)}) than it announced ({self.total})"
                    )
                pixels.append(to_model_pixels(prepare_svfr_input(crop, self.tasks), self.engine.resolution))
            latents.append(self.engine.encode(torch.stack(pixels)))
            self.encoded += take
            count -= take
            self.progress("vae encode", self.encoded, self.total)
        return torch.cat(latents)

    # -- reference and identity -----------------------------------------------------------------------

    def reference_conditioning(self, lq: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(reference latent, ID tokens) for pass 2: from the user's picture, else from pass 1."""
        if self.request.reference_face is not None:
            if self.engine.face_model.is_file():
                return self.user_reference()
            self.engine.warn(
                f"the reference image was not used: the face landmark model {self.engine.face_model} is missing"
            )
        return self.pass_one_reference(lq[:WINDOW])

    def user_reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        picture = self.request.reference_face
        face, box = self.engine.reference_face_box(picture)
        framed = to_model_pixels(crop_face(picture, box), self.engine.resolution)
        ref_latent = self.engine.encode(framed[None])[0]
        return ref_latent, self.engine.id_tokens(picture, face, self.settings.arcface_crop)

    def pass_one_reference(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pass 1 on the first <= 16 frames; its last frame is the reference (spec 3.1)."""
        frames = len(lq)
        sampler = SamplerSettings(
            num_inference_steps=self.settings.pass1_steps,
            window=frames,
            overlap=OVERLAP,
            guidance_scale=self.settings.guidance_scale,
            windows=self.settings.windows,
            use_cfg=False,  # both CFG halves get the same input in pass 1, so the guided result is uncond
        )
        total_calls = WindowSchedule(frames, frames, OVERLAP, self.settings.windows).unet_calls(
            self.settings.pass1_steps
        )
        self.progress("pass 1", 0, total_calls)
        latents = self.engine.denoise(
            lq[None], None, None, self.task_vector, sampler, generator=self.generator,
            progress=lambda done, total: self.progress("pass 1", done, total),
        )[0]
        if self.settings.mode == "reference":
            # The temporal decoder mixes the frames of a chunk: decode the clip as the reference does (unless
            # vae_chunk is set lower to save memory).
            reference_frame = self.engine.decode(latents, chunk=WINDOW)[-1]
        else:
            reference_frame = self.engine.decode(latents[-1:], chunk=1)[0]
        ref_latent = self.engine.encode(reference_frame[None])[0]
        picture = to_crop_size(to_uint8_crops(reference_frame[None], rounding=False)[0])
        face = self.engine.find_face(picture)
        if face is None:
            self.engine.warn("no face found in the pass-1 reference frame; ID tokens disabled")
            return ref_latent, None
        return ref_latent, self.engine.id_tokens(picture, face, self.settings.arcface_crop)

    # -- pass 2 and decode ----------------------------------------------------------------------------

    def pass_two(
        self, lq: torch.Tensor, ref_latent: torch.Tensor | None, id_tokens: torch.Tensor | None,
        segment: int, segments: int,
    ) -> torch.Tensor:
        steps = self.settings.steps
        sampler = SamplerSettings(
            num_inference_steps=steps,
            window=WINDOW,
            overlap=OVERLAP,
            guidance_scale=self.settings.guidance_scale,
            windows=self.settings.windows,
        )
        schedule = WindowSchedule(len(lq), WINDOW, OVERLAP, self.settings.windows)
        calls_per_step = [len(schedule.windows_for_step(step)) for step in range(steps)]
        call_ends = np.cumsum(calls_per_step)
        suffix = f" (segment {segment + 1}/{segments})" if segments > 1 else ""

        def report(done: int, _total: int) -> None:
            # Windows done within the current step: each step is its own stage, so its time estimate holds.
            step = min(int(np.searchsorted(call_ends, done, side="left")), steps - 1)
            done_before = int(call_ends[step - 1]) if step else 0
            self.progress(f"pass 2 step {step + 1}/{steps}{suffix}", done - done_before, calls_per_step[step])

        report(0, int(call_ends[-1]))
        return self.engine.denoise(
            lq[None], ref_latent, id_tokens, self.task_vector, sampler, generator=self.generator, progress=report
        )[0]

    def decode_and_emit(self, latents: torch.Tensor) -> Iterator[np.ndarray]:
        rounding = self.settings.mode != "reference"
        chunk = self.engine.vae_chunk
        for start in range(0, len(latents), chunk):
            self.progress("vae decode", self.decoded, self.total)
            frames = self.engine.decode(latents[start : start + chunk])
            for crop in to_uint8_crops(frames, rounding):
                self.decoded += 1
                yield to_crop_size(crop)
            self.progress("vae decode", self.decoded, self.total)


def crossfade(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Linear cross-fade over the overlap of two segments: the earlier segment fades out frame by frame."""
    count = len(previous)
    weight = torch.arange(1, count + 1, dtype=torch.float32, device=current.device) / (count + 1)
    weight = weight.reshape(-1, *([1] * (current.dim() - 1)))
    return previous * (1 - weight) + current * weight
