"""Running out of GPU memory on a CPU: wrappers that make a real module raise CUDA's out-of-memory error when
its input is too large, as a GPU with little memory would. The module still computes when the input fits."""

from __future__ import annotations

from collections.abc import Callable

import torch

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"


def fail_above(module: torch.nn.Module, method: str, max_batch: int, calls: list[int] | None = None) -> None:
    """`module.method` raises for a first argument of more than `max_batch` rows (frames, or clips for the
    UNet); every call's batch size is appended to `calls`."""
    _limit(module, method, lambda tensor: len(tensor), max_batch, calls)


def fail_above_rows(module: torch.nn.Module, max_rows: int, calls: list[int] | None = None) -> None:
    """`module.forward` raises when its input holds more than `max_rows` vectors (all dimensions but the last):
    a transformer feed-forward, which diffusers' forward chunking feeds a slice at a time."""
    _limit(module, "forward", lambda tensor: tensor.numel() // tensor.shape[-1], max_rows, calls)


def lift(module: torch.nn.Module, method: str) -> None:
    """The GPU has room again: `module.method` is the real one once more."""
    delattr(module, method)


def _limit(
    module: torch.nn.Module, method: str, size: Callable[[torch.Tensor], int], limit: int, calls: list[int] | None
) -> None:
    real = getattr(module, method)

    def limited(tensor: torch.Tensor, *args, **kwargs):
        if calls is not None:
            calls.append(size(tensor))
        if size(tensor) > limit:
            raise torch.OutOfMemoryError(OOM_MESSAGE)
        return real(tensor, *args, **kwargs)

    setattr(module, method, limited)
