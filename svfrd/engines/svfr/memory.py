"""GPU memory: the memory tiers, their peak estimates, and what happens when the GPU runs out anyway.

Tiers (`[engine.svfr] memory`, docs/svfr.md §9):
- "high" (80 GB class): several windows per UNet call;
- "balanced" (24 GB): one window per call, both CFG halves in it, the reference's decode chunk of 16;
- "low" (8-16 GB): CFG halves as two calls, encode one frame at a time, ArcFace and the VAE kept off the GPU
  between uses and the UNet off it while the VAE works, attention in batch slices.
Every tier keeps the reference's decode chunk of 16, the one setting that changes what comes out (the
temporal decoder mixes the frames of a call, docs/svfr.md §7): on the tiny test models a chunk of 8 moved
pixels by up to 169 levels. The other differences are the same arithmetic in other batches. "auto" picks the largest tier whose
estimated peak fits the free GPU memory at job start.

`ServiceMemory` is the engine's `MemoryPolicy` (see `svfrd.engines.svfr.pipeline`): VAE calls that run out
of memory are retried in smaller chunks, UNet calls shrink as `UNetFallback` says (for the rest of the job:
each job starts from its tier again, `start_job`), and what still does not fit ends the job with a message: retried when other programs hold GPU memory (it may be free later), not
retried when this job alone filled the GPU (it would run out again).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from svfrd.engines.svfr.attention import slice_attention, unslice_attention
from svfrd.engines.svfr.sampler import UNetFallback
from svfrd.errors import ResourceError, TransientError

log = logging.getLogger(__name__)

GIB = 1024**3
TIER_NAMES = ("high", "balanced", "low")
#: The reference decodes 16 frames per VAE call (docs/svfr.md §7); fewer changes the output a little.
REFERENCE_DECODE_CHUNK = 16

# Estimates at 512x512 (64x64 latents), from the shapes of one UNet call traced on the meta device
# (docs/svfr.md §9). Activations are per clip of 16 frames in one UNet call, fp16.
UNET_WEIGHTS_GIB_FP16 = 2.84
UNET_ACTIVATIONS_GIB_PER_CLIP = 2.25
VAE_ENCODE_GIB_PER_FRAME = 0.63  # the encoder runs in fp32
VAE_DECODE_GIB_PER_FRAME = 0.5
VAE_WEIGHTS_GIB = 0.2
ARCFACE_GIB = 0.3  # iresnet100 and id_linear weights with one face's activations
#: Room left for the CUDA context, the allocator's fragments and the latents of a long segment.
OVERHEAD_GIB = 0.8
#: An OOM with at most this much GPU memory held by other programs would recur: the job alone filled the GPU.
OTHERS_NEGLIGIBLE_GIB = 1.0


@dataclass(frozen=True)
class MemoryTier:
    name: str
    windows_per_call: int
    split_cfg: bool
    encode_chunk: int
    decode_chunk: int
    offload: bool  # ArcFace and the VAE live in CPU memory and visit the GPU only while they work, and the
    # UNet leaves it meanwhile
    attention_slice: int | None  # batch rows per attention call; None: all at once


TIERS = {
    "high": MemoryTier("high", windows_per_call=4, split_cfg=False, encode_chunk=8, decode_chunk=16,
                       offload=False, attention_slice=None),
    "balanced": MemoryTier("balanced", windows_per_call=1, split_cfg=False, encode_chunk=4, decode_chunk=16,
                           offload=False, attention_slice=None),
    "low": MemoryTier("low", windows_per_call=1, split_cfg=True, encode_chunk=1, decode_chunk=16,
                      offload=True, attention_slice=8),
}


def estimate_peak_vram_gib(tier: str | MemoryTier, resolution: int = 512, dtype_bytes: int = 2) -> float:
    """The estimated peak GPU memory (GiB) of a job in `tier` at `resolution` with a UNet of `dtype_bytes`
    per weight (2: fp16/bf16, 4: fp32). The largest of: a UNet call, a VAE encode call, a VAE decode call,
    each on top of what stays resident. Unmeasured until a GPU check confirms it (docs/svfr.md §9)."""
    tier = TIERS[tier] if isinstance(tier, str) else tier
    area = (resolution / 512) ** 2
    width = dtype_bytes / 2
    unet_weights = UNET_WEIGHTS_GIB_FP16 * width
    helpers = VAE_WEIGHTS_GIB * width + ARCFACE_GIB
    vae_weights = VAE_WEIGHTS_GIB * width
    clips = tier.windows_per_call * (1 if tier.split_cfg else 2)
    unet_call = unet_weights + clips * UNET_ACTIVATIONS_GIB_PER_CLIP * area * width
    encode = tier.encode_chunk * VAE_ENCODE_GIB_PER_FRAME * area
    decode = tier.decode_chunk * VAE_DECODE_GIB_PER_FRAME * area * width
    if tier.offload:  # only the working module is on the GPU
        peak = max(unet_call, vae_weights + max(encode, decode))
    else:
        peak = unet_weights + helpers + max(unet_call - unet_weights, encode, decode)
    return round(peak + OVERHEAD_GIB, 2)


def choose_tier(free_bytes: int | None, resolution: int = 512, dtype_bytes: int = 2) -> MemoryTier:
    """The largest tier whose estimated peak fits in `free_bytes` of free GPU memory (with a tenth to spare);
    "low" when none does, "balanced" when there is no GPU to ask (the CPU: memory is not the limit there)."""
    if free_bytes is None:
        return TIERS["balanced"]
    for name in TIER_NAMES:
        if estimate_peak_vram_gib(name, resolution, dtype_bytes) * GIB <= 0.9 * free_bytes:
            return TIERS[name]
    return TIERS["low"]


def cuda_free_bytes(device: torch.device) -> int | None:
    """Free memory on `device` as the driver reports it (other programs' use included); None off CUDA."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def held_by_others_bytes(device: torch.device) -> int:
    """GPU memory in use but not by this process's allocator: other programs (and the CUDA context)."""
    if device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    return max(0, int(total - free - torch.cuda.memory_reserved(device)))


def release_gpu_memory() -> None:
    """Hand cached GPU memory back to the driver: between jobs the GPU is the owner's (docs/architecture.md)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class ServiceMemory:
    """The service's `MemoryPolicy` for one tier.

    VAE: encode calls of `encode_chunk` frames (the encoder works frame by frame, so only its memory peak
    depends on it), decode calls of `decode_chunk`; a call that runs out of memory is retried with half the
    chunk, and the rest of the job keeps the size that fitted. A smaller decode chunk changes reference-mode output,
    so `warn` says so (the engine puts it in the job's report).
    UNet: `fallback` (see `UNetFallback`). What does not fit at the smallest size is `out_of_memory_error`."""

    def __init__(
        self,
        tier: MemoryTier,
        device: torch.device,
        *,
        encode_chunk: int | None = None,
        decode_chunk: int | None = None,
        held_by_others: Callable[[torch.device], int] = held_by_others_bytes,
    ) -> None:
        self.tier = tier
        self.device = device
        self.encode_chunk = min(encode_chunk or tier.encode_chunk, tier.encode_chunk)
        self.decode_chunk = min(decode_chunk or tier.decode_chunk, tier.decode_chunk)
        self._start_chunks = (self.encode_chunk, self.decode_chunk)
        self.fallback = UNetFallback(windows_per_call=tier.windows_per_call, split_cfg=tier.split_cfg)
        self.held_by_others = held_by_others
        self.warn: Callable[[str], None] = lambda message: None
        #: Modules that leave the GPU while an offloaded module works on it (the UNet, set by the builder).
        self.evict: tuple[torch.nn.Module, ...] = ()

    @property
    def vae_chunk(self) -> int:
        """The decode chunk (the `MemoryPolicy` name of the chunk that shapes the output)."""
        return self.decode_chunk

    def prepare(self, unet: torch.nn.Module) -> None:
        """Put the UNet in this tier's state: attention slices, and the fallback's feed-forward chunking."""
        if self.tier.attention_slice:
            slice_attention(unet, self.tier.attention_slice)
        else:
            unslice_attention(unet)
        self.fallback.apply(unet)

    def start_job(self, unet: torch.nn.Module) -> None:
        """Back to the tier's own chunks and UNet calls. What an out-of-memory error lowered holds for the rest
        of its job only: the error may have come from another program's passing use of the GPU, and kept, it
        would slow every later job (and a smaller decode chunk changes the output, docs/svfr.md §7). A job that
        does not fit shrinks again, at the cost of a few failed calls."""
        self.encode_chunk, self.decode_chunk = self._start_chunks
        if self.fallback.chunk_feed_forward:
            self.fallback.chunk_feed_forward = False
            self.fallback.apply(unet)
        self.fallback.windows_per_call = self.tier.windows_per_call
        self.fallback.split_cfg = self.tier.split_cfg

    def vae(self, work: Callable[[int], torch.Tensor], chunk: int | None = None, kind: str = "decode") -> torch.Tensor:
        limit = self.encode_chunk if kind == "encode" else self.decode_chunk
        chunk = min(chunk or limit, limit)
        while True:
            try:
                return work(chunk)
            except torch.OutOfMemoryError as err:
                release_gpu_memory()
                if chunk == 1:
                    raise self.out_of_memory_error(f"the VAE {kind} even one frame at a time", err) from err
                chunk = max(1, chunk // 2)
                self._lower_chunk(kind, chunk)

    def _lower_chunk(self, kind: str, chunk: int) -> None:
        """Later calls of the job start from the size that fitted, rather than failing once per chunk again."""
        if kind == "encode":
            self.encode_chunk = min(self.encode_chunk, chunk)
            log.warning("GPU out of memory in the VAE encoder; retrying with chunks of %d frames", chunk)
            return
        self.decode_chunk = min(self.decode_chunk, chunk)
        self.warn(decode_chunk_note(chunk, "the GPU ran out of memory"))

    def denoise(self, work: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            return work()
        except torch.OutOfMemoryError as err:
            release_gpu_memory()
            raise self.out_of_memory_error(f"the UNet ({self.fallback.describe()})", err) from err

    @contextlib.contextmanager
    def borrow(self, *modules: torch.nn.Module) -> Iterator[None]:
        """`modules` on the GPU for the duration; with offloading they go back to CPU memory afterwards."""
        if not self.tier.offload or self.device.type == "cpu":
            yield
            return
        for module in self.evict:
            module.to("cpu")
        release_gpu_memory()
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            release_gpu_memory()
            for module in self.evict:
                module.to(self.device)

    def offload_now(self, *modules: torch.nn.Module) -> None:
        """Move offloaded modules to CPU memory until they are borrowed."""
        if self.tier.offload and self.device.type != "cpu":
            for module in modules:
                module.to("cpu")
            release_gpu_memory()

    def out_of_memory_error(self, where: str, err: BaseException) -> Exception:
        """Retried when other programs hold GPU memory that may be free later; not retried when this job
        alone filled the GPU at its smallest calls: it would run out again, and each retry costs hours."""
        others = self.held_by_others(self.device)
        if others > OTHERS_NEGLIGIBLE_GIB * GIB:
            return TransientError(
                f"the GPU ran out of memory in {where} ({err}); other programs hold {others / GIB:.1f} GiB of GPU "
                f"memory, so the job will be retried later. If this recurs: {self._what_to_do()}"
            )
        return OutOfGpuMemory(
            f"the GPU ran out of memory in {where} ({err}) with no other program holding GPU memory, so running "
            "the job again as it is would fail the same way: it is not retried. The video itself is fine. "
            f"{self._what_to_do()}; then run `svfrd retry JOB` (JOB: this job's number, in `svfrd status`)"
        )

    def _what_to_do(self) -> str:
        """The advice of an out-of-memory message: a smaller tier when there is one, else a bigger GPU."""
        needs = f"about {estimate_peak_vram_gib(self.tier):.1f} GiB at 512x512 in fp16"
        close = "close other programs that use the GPU (`nvidia-smi` lists them)"
        if self.tier.name != "low":
            return (f'the "{self.tier.name}" memory tier needs {needs}: set [engine.svfr] memory = "low" (about '
                    f'{estimate_peak_vram_gib("low"):.1f} GiB) in the service\'s config.toml and restart the '
                    f"service, or {close}")
        return f'even the "low" memory tier needs {needs}: {close}, or use a GPU with more memory'


class OutOfGpuMemory(ResourceError):
    """The job does not fit this GPU even at the smallest calls: never retried (it would fail the same way).
    A `ResourceError`: failed for good like bad input, but recorded as `resource`; the message says that the
    video is fine and what to change."""


def decode_chunk_note(chunk: int, why: str) -> str:
    """For the job report: the decode chunk shapes the output (docs/svfr.md §7)."""
    return (
        f"the VAE decoded {chunk} frames per call instead of the reference's {REFERENCE_DECODE_CHUNK} because "
        f"{why}; the temporal decoder mixes the frames of a call, so the output differs slightly from reference "
        "mode"
    )
