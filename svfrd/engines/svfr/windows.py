"""Which frames each UNet call denoises together, per step, and how overlapping results are fused (docs/svfr.md §5).

SVFR denoises a long video in windows of `window` (16) frames. For the first `overlapped_steps` (3) steps
the windows start every `window - overlap` frames, afterwards every `window` frames; every step all windows
are also shifted back by `overlap` more frames (mod `window`), so window borders move from step to step and
no frame stays at a border. Results of overlapping windows are averaged with triangular weights.

Two ways to treat the video's ends:
- "circular" (the reference): frame indices wrap modulo N, so a window may hold the last and the first frames
  of the video together, and a clip shorter than a window is repeated to fill it.
- "clamped" (improved): every window lies inside [0, N); a shifted window that would cross an end is moved
  inside, and one that then duplicates another is dropped. A clip shorter than a window is denoised as a
  single window of N frames (the UNet handles any frame count), so no frame is fed twice.

Fusion is the same in both modes: each window's result weighted by `fusion_weights`, divided by the summed
weights per frame. With clamped windows a frame near an end that only one window covers simply takes that
window's result; no weight is ever zero, so every covered frame is well defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

WindowMode = Literal["circular", "clamped"]


@dataclass(frozen=True)
class WindowSchedule:
    num_frames: int
    window: int = 16
    overlap: int = 3
    mode: WindowMode = "circular"
    overlapped_steps: int = 3

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"a window schedule needs at least one frame, not {self.num_frames}")
        if self.window < 1 or self.overlap < 0:
            raise ValueError(f"window must be >= 1 and overlap >= 0 (got {self.window}, {self.overlap})")
        if self.mode not in ("circular", "clamped"):
            raise ValueError(f'window mode must be "circular" or "clamped", not {self.mode!r}')

    @property
    def frames_per_window(self) -> int:
        """Frames in each window: `window`, except clamped windows on a shorter clip."""
        if self.mode == "clamped":
            return min(self.window, self.num_frames)
        return self.window

    def stride(self, step: int) -> int:
        # The reference's stride is window - overlap; for window <= overlap (a clip of at most 3 frames in
        # pass 1) it crashes or divides 0 by 0. One frame is the smallest stride that still covers the clip.
        overlapped = self.overlap if step < self.overlapped_steps else 0
        return max(1, self.frames_per_window - overlapped)

    def shift(self, step: int) -> int:
        """How far every window start moves back at this step: overlap more per step, modulo the window."""
        return (self.overlap * step) % self.frames_per_window

    def windows_for_step(self, step: int) -> list[list[int]]:
        """The frame indices of every window at `step`, in the order the windows are denoised."""
        if self.mode == "circular":
            return self._circular_windows(step)
        return self._clamped_windows(step)

    def _circular_windows(self, step: int) -> list[list[int]]:
        n, size = self.num_frames, self.window
        starts = [s - self.shift(step) for s in range(0, n, self.stride(step))]
        return [[(start + j) % n for j in range(size)] for start in starts]

    def _clamped_windows(self, step: int) -> list[list[int]]:
        n, size = self.num_frames, self.frames_per_window
        stride, shift = self.stride(step), self.shift(step)
        starts: list[int] = []
        # Start at the first shifted window touching frame 0 and go on while windows start inside the clip:
        # consecutive starts differ by at most `stride` <= size, and the last one is at least n - stride,
        # so after clamping every frame is covered.
        start = -shift
        while start < n:
            clamped = min(max(start, 0), n - size)
            if not starts or starts[-1] != clamped:
                starts.append(clamped)
            start += stride
        return [list(range(s, s + size)) for s in starts]

    def unet_calls(self, num_steps: int) -> int:
        """Windows denoised over `num_steps` steps (UNet calls at one window per call)."""
        return sum(len(self.windows_for_step(i)) for i in range(num_steps))


def fusion_weights(window: int) -> torch.Tensor:
    """Triangular weights min(j + 1, W - j) for window position j: 1, 2, ..., 2, 1. A frame near a window's
    border, where the UNet sees little temporal context, counts less than one in the middle."""
    return torch.tensor([float(min(j + 1, window - j)) for j in range(window)])

