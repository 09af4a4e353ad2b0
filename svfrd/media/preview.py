"""Before/after previews, made while the output is written (no extra decode).

- a short MP4: the original on the left, the result on the right, downscaled, the first few seconds;
- a PNG contact sheet: a few frames spread over the video, each as a before/after pair, followed by the
  face crop before/after (in a wide shot the face is too small to judge in the whole frame).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from svfrd.files.atomic import create_temp
from svfrd.media.video_io import VideoInfo, VideoWriter, guard_disk

PREVIEW_SECONDS = 5.0
PREVIEW_HEIGHT = 270
PREVIEW_CRF = 23
SHEET_FRAMES = 4
SHEET_HEIGHT = 200


def _scaled(image: np.ndarray, height: int) -> np.ndarray:
    """Downscale to `height` (never up), with even dimensions for yuv420p."""
    h, w = image.shape[:2]
    height = min(height, h)
    width = max(2, int(round(w * height / h)) // 2 * 2)
    height = max(2, height // 2 * 2)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(*images: np.ndarray, height: int) -> np.ndarray:
    """Images scaled to one height (at most `height`, never enlarged), left to right, white gaps between."""
    height = min([height] + [image.shape[0] for image in images])
    scaled = [_scaled(image, height) for image in images]
    gap = np.full((scaled[0].shape[0], 4, 3), 255, np.uint8)
    parts = [part for image in scaled for part in (image, gap)][:-1]
    return np.concatenate(parts, axis=1)


def _save_png(image: Image.Image, path: Path) -> None:
    """Into a file created new (a temporary name in the outbox may have had a symlink planted on it)."""
    with create_temp(path) as f:
        image.save(f, format="PNG")


class PreviewMaker:
    """Feed it every (before, after) frame pair in order; it keeps only what the previews need."""

    def __init__(self, video_path: Path | None, sheet_path: Path | None, total_frames: int, info: VideoInfo):
        self.video_path, self.sheet_path = video_path, sheet_path
        self._info = info  # the source's frame rate and time base, which the preview keeps
        self._writer: VideoWriter | None = None
        self._size: tuple[int, int] | None = None  # the preview's width and height, set by its first frame
        self._first_pts: int | None = None
        count = min(SHEET_FRAMES, total_frames)
        self._sheet_indices = sorted({int(round(i * (total_frames - 1) / max(count - 1, 1))) for i in range(count)})
        self._sheet_pairs: list[np.ndarray] = []

    def wants_sheet_frame(self, index: int) -> bool:
        return self.sheet_path is not None and index in self._sheet_indices

    def add(
        self, index: int, pts: int, before: np.ndarray, after: np.ndarray,
        faces: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """`faces`: the (before, after) face crops, for the contact sheet rows (see `wants_sheet_frame`)."""
        if self.wants_sheet_frame(index):
            self._sheet_pairs.append(side_by_side(before, after, *(faces or ()), height=SHEET_HEIGHT))
        if self.video_path is not None:
            if self._first_pts is None:
                self._first_pts = pts
            if float((pts - self._first_pts) * self._info.time_base) < PREVIEW_SECONDS:
                self._write_video_frame(side_by_side(before, after, height=PREVIEW_HEIGHT), pts - self._first_pts)

    def _write_video_frame(self, image: np.ndarray, pts: int) -> None:
        height, width = image.shape[:2]
        if self._writer is None:  # the side-by-side is upright, hence no rotation
            self._size = (width, height)
            self._writer = VideoWriter(
                self.video_path, self._info, crf=PREVIEW_CRF, size=self._size, rotation=0, preset="fast"
            )
        if (width, height) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image, pts)

    def close(self) -> list[Path]:
        """Finish the files; returns the paths written."""
        written = []
        if self._writer is not None:
            self._writer.close()
            written.append(self.video_path)
        if self.sheet_path is not None and self._sheet_pairs:
            width = max(p.shape[1] for p in self._sheet_pairs)
            rows = [
                np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
                for row in self._sheet_pairs
            ]
            sheet = Image.fromarray(np.concatenate(rows, axis=0))
            guard_disk(self.sheet_path, lambda: _save_png(sheet, self.sheet_path))
            written.append(self.sheet_path)
        return written

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
