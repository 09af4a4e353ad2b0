"""The output video in independently encoded segments, so a restarted job reuses what was encoded already
(docs/architecture.md, "Resume").

Frames go to `segment-NNNNNN.mp4` files in the job's checkpoint folder, a fixed number of frames each (a few
seconds); each segment is its own encoder run, so it starts with a keyframe and depends on no other. A finished
segment is renamed into place and then named, with its sha256, in a "segments" checkpoint. At the end the
segments are joined into the output by copying their packets (no re-encoding) beside the source's audio.

On resume the segments the newest usable checkpoint names, whose files still have their sha256, are reused
and restoration goes on at the first frame after them. Encoding a segment depends only on its own frames, and
libx264 is deterministic, so the joined output equals an uninterrupted run's, frame for frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from svfrd.files.hashing import file_sha256
from svfrd.jobs.checkpoints import CheckpointFolder
from svfrd.media.video_io import (
    VideoInfo,
    VideoWriter,
    _AudioTrack,
    _create_output,
    _open_output,
    guard_disk,
)

log = logging.getLogger(__name__)

KIND = "segments"
#: Segments are this long unless the configuration says otherwise ([output] segment_seconds).
DEFAULT_SEGMENT_SECONDS = 2.0


def frames_per_segment(info: VideoInfo, seconds: float) -> int:
    return max(1, int(round(float(info.fps) * seconds)))


def segment_name(number: int) -> str:
    return f"segment-{number:06d}.mp4"


@dataclass(frozen=True)
class Segment:
    number: int
    first: int  # frame index, inclusive
    end: int  # frame index, exclusive
    sha256: str

    def as_meta(self) -> dict:
        return {"number": self.number, "first": self.first, "end": self.end, "sha256": self.sha256}


def reusable_segments(store: CheckpointFolder, frames_each: int) -> list[Segment]:
    """The segments a restarted run may keep: those the newest usable checkpoint names, in order, up to the
    first whose file is gone or changed (a torn rename cannot happen, a damaged disk can)."""
    checkpoint = store.load(KIND)
    if checkpoint is None or checkpoint.meta.get("frames_each") != frames_each:
        return []
    kept = []
    for entry in checkpoint.meta.get("segments", []):
        segment = Segment(int(entry["number"]), int(entry["first"]), int(entry["end"]), str(entry["sha256"]))
        path = store.folder / segment_name(segment.number)
        if segment.number != len(kept) or not path.is_file() or file_sha256(path) != segment.sha256:
            log.warning("segment %s is missing or changed; encoding goes on from frame %d", path, segment.first)
            break
        kept.append(segment)
    return kept


class SegmentedWriter:
    """Encodes frames into segments in `store`, from segment number len(`done`) on; `join` writes the output.
    The interface of `VideoWriter` for one frame at a time (`write`), plus the frame index."""

    def __init__(self, store: CheckpointFolder, info: VideoInfo, frames_each: int, done: list[Segment],
                 total: int, **writer_options):
        self.store, self.info, self.frames_each, self.total = store, info, frames_each, total
        self.done = list(done)
        self.reused = list(done)
        self.writer_options = writer_options
        self._writer: VideoWriter | None = None
        self._first = 0
        #: Upright sizes of the frames given and written, and what changed (VideoWriter's, for the report).
        self.input_size: tuple[int, int] | None = None
        self.size: tuple[int, int] | None = None
        self.adjustment: str | None = None

    @property
    def next_frame(self) -> int:
        """The first frame not in a finished segment."""
        return self.done[-1].end if self.done else 0

    def write(self, index: int, image: np.ndarray, pts: int) -> None:
        if self._writer is None:
            self._open(index)
        self._writer.write(image, pts)
        if index + 1 == min(self._first + self.frames_each, self.total):
            self._finish(index + 1)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer.path.unlink(missing_ok=True)
            self._writer = None

    def _open(self, index: int) -> None:
        if index != self.next_frame:
            raise RuntimeError(f"segment encoding expected frame {self.next_frame}, got {index}")
        number = len(self.done)
        path = self.store.folder / ("." + segment_name(number) + ".part")
        self._first = index
        self._writer = VideoWriter(path, self.info, audio_source=None, **self.writer_options)
        self.input_size, self.size, self.adjustment = self._writer.input_size, self._writer.size, \
            self._writer.adjustment

    def _finish(self, end: int) -> None:
        """Close the segment, put it in place durably, then name it in a checkpoint."""
        writer, self._writer = self._writer, None
        writer.close()
        number = len(self.done)
        digest = self.store.put(writer.path, segment_name(number))
        self.done.append(Segment(number, self._first, end, digest))
        self.store.save(KIND, {"frames_each": self.frames_each, "segments": [s.as_meta() for s in self.done]})

    def join(self, output: Path, audio_source: Path | None, rotation: int) -> None:
        """Copy every segment's packets, in order, into `output`, beside the source's audio tracks."""
        if self.next_frame != self.total:
            raise RuntimeError(f"segments cover {self.next_frame} of {self.total} frames; cannot join")
        join_segments([self.store.folder / segment_name(s.number) for s in self.done], output, self.info,
                      audio_source, rotation)


def join_segments(paths: list[Path], output: Path, info: VideoInfo, audio_source: Path | None,
                  rotation: int) -> None:
    file = guard_disk(output, lambda: _create_output(output))
    try:
        container = _open_output(file, output)
        with av.open(str(paths[0])) as first:
            video = container.add_stream_from_template(first.streams.video[0])
        video.time_base = info.time_base
        if rotation:
            video.set_display_rotation(rotation)
        audio = [_AudioTrack(container, audio_source, a.index) for a in info.audio] if audio_source else []
        for path in paths:
            _copy_packets(path, container, video, audio, output)
        for track in audio:
            guard_disk(output, lambda: track.write_until(None))
            track.close()
        guard_disk(output, container.close)
    finally:
        file.close()


def _copy_packets(path: Path, container, video, audio: list[_AudioTrack], output: Path) -> None:
    with av.open(str(path)) as segment:
        stream = segment.streams.video[0]
        for packet in segment.demux(stream):
            if packet.size == 0:
                continue
            seconds = float(packet.pts * packet.time_base) if packet.pts is not None else None
            packet.stream = video
            guard_disk(output, lambda: container.mux(packet))
            if seconds is not None:
                for track in audio:
                    guard_disk(output, lambda: track.write_until(seconds))
