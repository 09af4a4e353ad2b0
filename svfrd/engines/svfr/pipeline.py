"""`SVFRPipeline`: SVFR's two-pass restoration of a video's face crops, as one object with a `__call__`.

Like a diffusers pipeline, it holds the loaded modules (UNet, VAE, scheduler config, ArcFace and id_linear,
the face landmarker file) and `__call__` reads top to bottom (docs/svfr.md §6, without the reference's memory
use):
1. prepare inputs: each crop as the model sees it (gray for colorization, white under the mask for
   inpainting), at the model's working resolution;
2. encode: VAE-encode the crops in chunks; only latents are kept for the whole video (or segment);
3. pass 1: denoise the first <= 16 frames without reference or ID tokens (no CFG: both halves would be
   identical) and take the last frame as the reference; a user-supplied reference picture replaces this pass.
   ID tokens: ArcFace on the reference face, aligned to the 5-point template, through id_linear;
4. pass 2: windowed sampling of the whole video with the reference latent and the ID tokens;
5. decode: VAE-decode in chunks and yield the 512x512 crops as they come.

Very long videos are cut into overlapping segments of `segment_frames`; each is denoised on its own (with the
same reference and ID) and the overlap is cross-faded in latent space, so memory stays bounded whatever the
length. Modes (docs/svfr.md §8): "reference" follows the original code (circular windows, its ArcFace crop,
pass 1 decoded as a 16-frame chunk, output truncated to uint8); "improved" clamps windows at the video's ends,
uses the corrected ArcFace crop, decodes only the pass-1 frame it keeps, and rounds the output.

The pipeline knows nothing of the service: job options, devices from the config and what an out-of-memory
error means for a job are the engine's business (`svfrd.engines.svfr.engine`), which hands in a `MemoryPolicy`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import torch

from svfrd.domain import CROP_SIZE, DEFAULT_SEED, Task
from svfrd.engines.interface import CropStream, FaceCrop
from svfrd.engines.svfr.identity import (
    IdentityModels,
    align_face,
    id_tokens_for_face,
    load_identity_models,
)
from svfrd.engines.svfr.loading import (
    ID_LINEAR_WEIGHTS,
    LAYOUT_HINT,
    UNET_CONFIG,
    DiffusionModels,
    WeightsError,
    load_diffusion_models,
)
from svfrd.engines.svfr.resume import SamplerCheckpoints
from svfrd.engines.svfr.sampler import SamplerSettings, UNetFallback, denoise_latents
from svfrd.engines.svfr.vae_io import decode_latents, encode_frames
from svfrd.engines.svfr.windows import WindowSchedule
from svfrd.errors import BadInputError
from svfrd.media.crop import CropBox, crop_face, face_crop_box
from svfrd.media.faces import DetectedFace, FaceFinder
from svfrd.media.masks import prepare_svfr_input

log = logging.getLogger(__name__)

#: Frames per UNet call in pass 2, and the most frames pass 1 denoises (docs/svfr.md §5).
WINDOW = 16
#: Overlap of consecutive windows in the first steps, and the per-step shift (docs/svfr.md §5).
OVERLAP = 3
#: Frames two consecutive segments share; their latents are cross-faded there.
SEGMENT_OVERLAP = 16

Mode = Literal["reference", "improved"]
#: (reference latent (C, h, w) or None, ID tokens (1, T, D) or None): what pass 2 is conditioned on.
Reference = tuple[torch.Tensor | None, torch.Tensor | None]
#: Called with (stage, done, total) as work advances; may raise to cancel (see `ProgressReporter`).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SVFRSettings:
    """The sampling settings of one call (the engine fills them from the config and the job's options)."""

    steps: int = 30
    pass1_steps: int = 50
    guidance_scale: float = 2.0
    mode: Mode = "reference"
    #: Pass 1 with guidance, as the reference runs it: both halves get the same input, so the result is the
    #: same at twice the UNet work (docs/svfr.md §8, item 6). Only for measuring the reference's cost
    #: (`scripts/gpu-check`); the service never sets it.
    pass1_cfg: bool = False

    @property
    def windows(self) -> str:
        return "circular" if self.mode == "reference" else "clamped"

    @property
    def arcface_crop(self) -> str:
        return "reference" if self.mode == "reference" else "corrected"

    @property
    def rounding(self) -> bool:
        """The reference truncates its output to uint8 (docs/svfr.md §7); rounding is fairer."""
        return self.mode != "reference"


class MemoryPolicy(Protocol):
    """How the pipeline runs its memory-hungry parts (the service's is `svfrd.engines.svfr.memory`).

    `vae_chunk` is the frames per VAE decode call; `vae` runs `work(chunk)` with a chunk of at most `chunk`
    (or the policy's chunk for `kind`, "encode" or "decode"); `denoise` runs a sampler call; `fallback` says
    how UNet calls shrink on out-of-memory (None: they do not); `borrow` holds modules on the GPU while
    they work (a policy may keep them elsewhere in between)."""

    vae_chunk: int
    fallback: UNetFallback | None

    def vae(
        self, work: Callable[[int], torch.Tensor], chunk: int | None = None, kind: str = "decode"
    ) -> torch.Tensor: ...

    def denoise(self, work: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def borrow(self, *modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]: ...


class FixedChunks:
    """The plain policy: VAE calls of `vae_chunk` frames (encode and decode alike), no retries, one window
    per UNet call, every module resident: the reference's way (docs/svfr.md §6)."""

    fallback: UNetFallback | None = None

    def __init__(self, vae_chunk: int = WINDOW, encode_chunk: int | None = None) -> None:
        self.vae_chunk = vae_chunk
        self.encode_chunk = encode_chunk or vae_chunk

    def vae(
        self, work: Callable[[int], torch.Tensor], chunk: int | None = None, kind: str = "decode"
    ) -> torch.Tensor:
        limit = self.encode_chunk if kind == "encode" else self.vae_chunk
        return work(min(chunk or limit, limit))

    def denoise(self, work: Callable[[], torch.Tensor]) -> torch.Tensor:
        return work()

    def borrow(self, *modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def ignore_progress(stage: str, done: int, total: int) -> None:
    """The default `progress`."""


def log_warning(message: str) -> None:
    """The default `warn`."""
    log.warning("%s", message)


@dataclass
class CallState:
    """What lives only as long as one `__call__`: its settings, its random generator, its counters."""

    tasks: frozenset[Task]
    settings: SVFRSettings
    generator: torch.Generator
    progress: Progress
    warn: Callable[[str], None]
    total: int
    encoded: int = 0
    decoded: int = 0
    #: Where the sampler's state is saved and resumed from (svfrd.engines.svfr.resume); None: not resumable.
    checkpoints: SamplerCheckpoints | None = None

    @property
    def task_vector(self) -> torch.Tensor:
        return task_vector(self.tasks)


@dataclass(frozen=True)
class Overlap:
    """The end of one segment that the next segment starts with: its LQ latents and its final latents."""

    lq: torch.Tensor
    latents: torch.Tensor


class SVFRPipeline:
    """SVFR on the face crops of one video. Build it with `from_folder`; modules stay resident between calls.

    resolution: the model's working size; SVFR is trained at 512 (the crop size). Smaller sizes exist for fast
    tests on tiny models; crops are resized to it and back.
    face_model: the MediaPipe face landmarker that finds the face in the reference frame."""

    def __init__(
        self,
        models: DiffusionModels,
        identity: IdentityModels,
        face_model: Path,
        *,
        resolution: int = CROP_SIZE,
        segment_frames: int = 2000,
        memory: MemoryPolicy | None = None,
    ) -> None:
        self.models = models
        self.identity = identity
        self.face_model = Path(face_model)
        self.resolution = resolution
        self.segment_frames = segment_frames
        self.memory: MemoryPolicy = memory or FixedChunks()

    @classmethod
    def from_folder(
        cls,
        models_dir: Path,
        device: torch.device,
        dtype: torch.dtype,
        face_model: Path,
        *,
        resolution: int = CROP_SIZE,
        segment_frames: int = 2000,
        memory: MemoryPolicy | None = None,
        identity_dtype: torch.dtype | None = None,
    ) -> SVFRPipeline:
        """Load every module from a model folder (layout in `svfrd.engines.svfr.model_folder`); a missing or
        mismatching file is a `WeightsError` naming it. `identity_dtype`: ArcFace's and id_linear's, when
        it is not `dtype`."""
        models = load_diffusion_models(models_dir, device, dtype)
        identity = load_identity_models(models_dir, device, identity_dtype or dtype)
        check_token_width(identity, models, models_dir)
        return cls(models, identity, face_model, resolution=resolution, segment_frames=segment_frames, memory=memory)

    # -- the whole call, top to bottom ----------------------------------------------------------------

    def __call__(
        self,
        crops: CropStream,
        tasks: frozenset[Task],
        *,
        seed: int = DEFAULT_SEED,
        settings: SVFRSettings = SVFRSettings(),
        reference_face: np.ndarray | None = None,
        progress: Progress = ignore_progress,
        warn: Callable[[str], None] = log_warning,
        checkpoints: SamplerCheckpoints | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield one restored (512, 512, 3) uint8 crop per input crop, in order, reading `crops` once.

        reference_face: an RGB picture of the subject that replaces pass 1 (its face gives the reference
        latent and the ID tokens). checkpoints: the sampler's state is saved there after every few steps,
        and a call that finds it goes on from it (the same result, bit for bit)."""
        # One CPU generator for every random draw of the call: a seed gives the same video on any device.
        call = CallState(
            tasks, settings, torch.Generator().manual_seed(int(seed)), progress, warn, total=len(crops),
            checkpoints=checkpoints,
        )
        if call.total == 0:
            return
        pixels = self.prepare_inputs(crops, call)  # 1. (lazily, as the crops are read)
        segments = segment_bounds(call.total, self.segment_frames)
        reference: Reference | None = None
        carried: Overlap | None = None
        for index, (start, end) in enumerate(segments):
            lq = self.encode_segment(pixels, carried, end - start, call)  # 2.
            if reference is None:  # 3. once per video, from the first segment
                reference = self.reference_conditioning(lq, reference_face, call)
            latents = self.pass_two(lq, reference, call, segment_label(index, len(segments)), f"pass2-{index}")
            if carried is not None:
                latents[: len(carried.latents)] = crossfade(carried.latents, latents[: len(carried.latents)])
            # 5. Frames the next segment shares are decoded there, after the cross-fade.
            keep = 0 if index == len(segments) - 1 else end - segments[index + 1][0]
            yield from self.decode(latents[: len(latents) - keep], call)
            carried = Overlap(lq[len(lq) - keep :], latents[len(latents) - keep :]) if keep else None
        if call.decoded != call.total:
            raise RuntimeError(f"restored {call.decoded} crops for {call.total} input crops")

    # -- 1. prepare inputs ----------------------------------------------------------------------------

    def prepare_inputs(self, crops: Iterable[FaceCrop], call: CallState) -> Iterator[torch.Tensor]:
        """Each crop as the model sees it: (3, r, r) fp32 in [-1, 1], read lazily (docs/svfr.md §7)."""
        for crop in crops:
            yield to_model_pixels(prepare_svfr_input(crop, call.tasks), self.resolution)

    # -- 2. encode ------------------------------------------------------------------------------------

    def encode_segment(
        self, pixels: Iterator[torch.Tensor], carried: Overlap | None, frames: int, call: CallState
    ) -> torch.Tensor:
        """The LQ latents of a segment of `frames` frames: the carried overlap, then fresh crops."""
        if carried is None:
            return self.encode_next(pixels, frames, call)
        return torch.cat([carried.lq, self.encode_next(pixels, frames - len(carried.lq), call)])

    def encode_next(self, pixels: Iterator[torch.Tensor], count: int, call: CallState) -> torch.Tensor:
        """The LQ latents of the next `count` crops, encoded `vae_chunk` at a time as they are read."""
        latents = []
        while count > 0:
            # Reported before the work too: the worker charges the time until the next report to this stage.
            call.progress("vae encode", call.encoded, call.total)
            take = min(count, WINDOW)  # frames read at a time; the policy sets the frames per encoder call
            chunk = []
            for _ in range(take):
                frame = next(pixels, None)
                if frame is None:
                    raise BadInputError(
                        f"the video gave fewer frames ({call.encoded + len(chunk)}) than it announced ({call.total})"
                    )
                chunk.append(frame)
            latents.append(self.encode(torch.stack(chunk)))
            call.encoded += take
            count -= take
            call.progress("vae encode", call.encoded, call.total)
        return torch.cat(latents)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE means (n, C, h, w) fp32, in chunks the memory policy allows."""
        with self.memory.borrow(self.models.vae):
            return self.memory.vae(lambda chunk: encode_frames(self.models.vae, pixels, chunk), kind="encode")

    # -- 3. pass 1 (or the user's picture) and the ID tokens -------------------------------------------

    def reference_conditioning(
        self, lq: torch.Tensor, reference_face: np.ndarray | None, call: CallState
    ) -> Reference:
        """(reference latent, ID tokens) for pass 2: from the user's picture, else from pass 1."""
        if reference_face is not None:
            if self.face_model.is_file():
                return self.user_reference(reference_face, call)
            call.warn(f"the reference image was not used: the face landmark model {self.face_model} is missing")
        saved = call.checkpoints.reference(call.generator) if call.checkpoints is not None else None
        if saved is not None:
            return saved
        reference = self.pass_one_reference(lq[:WINDOW], call)
        if call.checkpoints is not None:
            call.checkpoints.save_reference(reference, call.generator)
        return reference

    def user_reference(self, picture: np.ndarray, call: CallState) -> Reference:
        face, box = self.find_reference_face(picture, call.warn)
        framed = to_model_pixels(crop_face(picture, box), self.resolution)
        ref_latent = self.encode(framed[None])[0]
        return ref_latent, self.id_tokens(picture, face, call.settings.arcface_crop)

    def pass_one_reference(self, lq: torch.Tensor, call: CallState) -> Reference:
        """Pass 1 on the first <= 16 frames; its last frame is the reference (docs/svfr.md §6)."""
        settings, frames = call.settings, len(lq)
        sampler = SamplerSettings(
            num_inference_steps=settings.pass1_steps,
            window=frames,
            overlap=OVERLAP,
            guidance_scale=settings.guidance_scale,
            windows=settings.windows,
            # Both CFG halves get the same input in pass 1, so the guided result is the unguided one.
            use_cfg=settings.pass1_cfg,
        )
        total_calls = WindowSchedule(frames, frames, OVERLAP, settings.windows).unet_calls(settings.pass1_steps)
        call.progress("pass 1", 0, total_calls)
        latents = self.denoise(
            lq, None, None, call, sampler, lambda done, total: call.progress("pass 1", done, total), "pass1"
        )
        if settings.mode == "reference":
            # The temporal decoder mixes the frames of a chunk: decode the clip as the reference does (unless
            # vae_chunk is set lower to save memory).
            reference_frame = self.decode_frames(latents, chunk=WINDOW)[-1]
        else:
            reference_frame = self.decode_frames(latents[-1:], chunk=1)[0]
        ref_latent = self.encode(reference_frame[None])[0]
        picture = to_crop_size(to_uint8_crops(reference_frame[None], rounding=False)[0])
        face = self.find_face(picture, call.warn)
        if face is None:
            call.warn("no face found in the pass-1 reference frame; ID tokens disabled")
            return ref_latent, None
        return ref_latent, self.id_tokens(picture, face, settings.arcface_crop)

    def find_face(self, image: np.ndarray, warn: Callable[[str], None] = log_warning) -> DetectedFace | None:
        """The largest face in one picture, or None (also when the face model is missing, with a warning)."""
        if not self.face_model.is_file():
            warn(f"the face landmark model {self.face_model} is missing, so ID tokens are disabled")
            return None
        # A fresh finder per picture: MediaPipe's video mode would track across unrelated pictures.
        with FaceFinder(self.face_model) as finder:
            faces = finder.find(image, 0)
        return faces[0] if faces else None

    def find_reference_face(
        self, picture: np.ndarray, warn: Callable[[str], None] = log_warning
    ) -> tuple[DetectedFace, CropBox]:
        """The face in a user-supplied reference picture, and a crop square framed like the video's crops."""
        if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
            raise BadInputError("the reference image must be an RGB picture; use a PNG or JPEG of the subject")
        face = self.find_face(picture, warn)
        if face is None:
            raise BadInputError(
                "no face was found in the reference image; supply a clear, front-facing photo of the subject, "
                "or leave `reference` out so SVFR picks its own reference frame"
            )
        return face, face_crop_box(face.box)

    def id_tokens(self, picture: np.ndarray, face: DetectedFace, crop: str) -> torch.Tensor:
        """ArcFace on the aligned face, through id_linear (docs/svfr.md §4)."""
        with self.memory.borrow(self.identity.arcface, self.identity.id_projection):
            return id_tokens_for_face(self.identity, align_face(picture, face.points5), crop)

    # -- 4. pass 2 ------------------------------------------------------------------------------------

    def pass_two(self, lq: torch.Tensor, reference: Reference, call: CallState, label: str,
                 name: str = "pass2-0") -> torch.Tensor:
        """The whole segment through the window sampler, conditioned on the reference (docs/svfr.md §5)."""
        settings = call.settings
        steps = settings.steps
        sampler = SamplerSettings(
            num_inference_steps=steps,
            window=WINDOW,
            overlap=OVERLAP,
            guidance_scale=settings.guidance_scale,
            windows=settings.windows,
            windows_per_batch=self.windows_per_call(),
        )
        schedule = WindowSchedule(len(lq), WINDOW, OVERLAP, settings.windows)
        calls_per_step = [len(schedule.windows_for_step(step)) for step in range(steps)]
        call_ends = np.cumsum(calls_per_step)

        def report(done: int, _total: int) -> None:
            # Windows done within the current step: each step is its own stage, so its time estimate holds.
            step = min(int(np.searchsorted(call_ends, done, side="left")), steps - 1)
            done_before = int(call_ends[step - 1]) if step else 0
            call.progress(f"pass 2 step {step + 1}/{steps}{label}", done - done_before, calls_per_step[step])

        report(0, int(call_ends[-1]))
        ref_latent, id_tokens = reference
        return self.denoise(lq, ref_latent, id_tokens, call, sampler, report, name)

    def denoise(
        self,
        lq: torch.Tensor,
        ref_latent: torch.Tensor | None,
        id_tokens: torch.Tensor | None,
        call: CallState,
        sampler: SamplerSettings,
        report: Callable[[int, int], None],
        name: str = "pass2-0",
    ) -> torch.Tensor:
        """Final latents (N, C, h, w) of one clip from its LQ latents (N, C, h, w). With checkpoints, run `name`
        goes on from its saved state and saves its state as it goes."""
        resume_from, on_step = None, None
        if call.checkpoints is not None:
            resume_from = call.checkpoints.resume(name, call.generator)
            on_step = call.checkpoints.saver(name, call.generator, sampler.num_inference_steps)
        return self.memory.denoise(
            lambda: denoise_latents(
                self.models, lq[None], ref_latent, id_tokens, call.task_vector, sampler,
                generator=call.generator, progress=report, fallback=self.memory.fallback,
                resume_from=resume_from, on_step=on_step,
            )
        )[0]

    def windows_per_call(self) -> int:
        """Pass-2 windows per UNet call: the memory policy's (several in the "high" tier), else one."""
        fallback = self.memory.fallback
        return fallback.windows_per_call or 1 if fallback is not None else 1

    # -- 5. decode ------------------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, call: CallState) -> Iterator[np.ndarray]:
        """The restored 512x512 uint8 crops of `latents`, decoded `vae_chunk` at a time."""
        chunk = self.memory.vae_chunk
        for start in range(0, len(latents), chunk):
            call.progress("vae decode", call.decoded, call.total)
            frames = self.decode_frames(latents[start : start + chunk])
            for crop in to_uint8_crops(frames, call.settings.rounding):
                call.decoded += 1
                yield to_crop_size(crop)
            call.progress("vae decode", call.decoded, call.total)

    def decode_frames(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Frames (n, 3, H, W) fp32 from scaled latents, in chunks the memory policy allows."""
        with self.memory.borrow(self.models.vae):
            return self.memory.vae(lambda c: decode_latents(self.models.vae, latents, c), chunk, kind="decode")


# ------------------------------------------------------------------------------------------------------------
# Pieces without state


def task_vector(tasks: frozenset[Task]) -> torch.Tensor:
    """The multi-hot [BFR, colorization, inpainting] that conditions the UNet (docs/svfr.md §3)."""
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


def segment_label(index: int, count: int) -> str:
    """The progress stage's suffix: which segment, when there are several."""
    return f" (segment {index + 1}/{count})" if count > 1 else ""


def crossfade(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Linear cross-fade over the overlap of two segments: the earlier segment fades out frame by frame."""
    count = len(previous)
    weight = torch.arange(1, count + 1, dtype=torch.float32, device=current.device) / (count + 1)
    weight = weight.reshape(-1, *([1] * (current.dim() - 1)))
    return previous * (1 - weight) + current * weight


def to_model_pixels(image: np.ndarray, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, r, r) fp32 in [-1, 1]."""
    if image.shape[0] != resolution:
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


def to_uint8_crops(frames: torch.Tensor, rounding: bool) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> (n, H, W, 3) uint8, truncated as the reference does or rounded."""
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
