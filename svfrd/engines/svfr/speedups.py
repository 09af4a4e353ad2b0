"""Speed-ups behind `[engine.svfr]` switches, each off until measured on a GPU (docs/svfr.md §9).

- `compile`: torch.compile of the UNet (inductor), its cache in the state folder so a restart reuses it;
- `channels_last`: the UNet's convolution weights in NHWC, which tensor cores prefer;
- `cuda_graphs`: the compiled UNet replayed as CUDA graphs (inductor's "reduce-overhead"); a pass-2 window
  always has the same shape, so one graph serves every call (CUDA only);
- `tf32`: TF32 matmuls and convolutions for the fp32 parts (the VAE encoder) on Ampere and later (CUDA only).
`compile` and `channels_last` are checked against reference mode on the CPU; `cuda_graphs` and `tf32` only
act on a GPU and are unmeasured until a GPU check runs them.

Always on, because the shapes are fixed: cudnn.benchmark (cuDNN picks its fastest convolution per shape once).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from svfrd.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speedups:
    compile: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    tf32: bool = False

    def names(self) -> list[str]:
        return [name for name in ("compile", "channels_last", "cuda_graphs", "tf32") if getattr(self, name)]


def check_speedups(speedups: Speedups, device: torch.device) -> None:
    if speedups.cuda_graphs and device.type != "cuda":
        raise ConfigError(
            f"[engine.svfr] cuda_graphs = true needs a CUDA GPU, but the engine runs on {device}; "
            "set cuda_graphs = false"
        )


def configure_backends(device: torch.device, speedups: Speedups) -> None:
    """Process-wide backend flags for the worker (it runs one engine)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if speedups.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def apply_speedups(
    unet: torch.nn.Module,
    speedups: Speedups,
    device: torch.device,
    cache_dir: Path | None = None,
    backend: str = "inductor",
) -> None:
    """Apply the model-side switches to `unet` in place. `backend` is torch.compile's (tests use a cheaper
    one than inductor; the service always uses inductor)."""
    check_speedups(speedups, device)
    configure_backends(device, speedups)
    if speedups.channels_last:
        to_channels_last(unet)
    if speedups.compile or speedups.cuda_graphs:
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            # Read by inductor when it first compiles; an explicit setting by the owner wins.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
        mode = "reduce-overhead" if speedups.cuda_graphs else None
        unet.compile(backend=backend, mode=mode, dynamic=False)
        log.info("the UNet will be compiled (%s%s) on its first call; cache in %s", backend,
                 ", CUDA graphs" if mode else "", cache_dir or "torch's default folder")


def to_channels_last(module: torch.nn.Module) -> None:
    """NHWC convolution weights (`Module.to(memory_format=...)` refuses the UNet's 5-D temporal convs)."""
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
