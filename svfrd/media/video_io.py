"""Streaming video reading and writing with PyAV.

Frames are handed to the rest of svfrd *upright* (display orientation, rotation metadata applied) as RGB uint8
arrays with their original timestamps; `VideoWriter` turns them back into the coded orientation and stores the
same rotation metadata, so a phone video keeps both its pixels and its orientation flag.

The writer keeps the input's time base and per-frame timestamps (29.97 fps and variable frame rate survive),
its resolution, and its audio: audio packets are copied unchanged when MP4 can hold the codec, else re-encoded
to AAC. Audio is interleaved with the video as it is written, so memory stays bounded.

Output is always yuv420p (H.264 High profile), the format browsers, phones and QuickTime play; they do not play
High 4:4:4. 4:2:0 cannot hold an odd width or height (H.264's own frame cropping works in 2-pixel steps there),
so a picture with an odd dimension loses its last column (right edge) and/or its last row (bottom edge), as
displayed. Cropping rather than padding keeps every kept pixel where it was (face boxes and masks stay aligned)
and invents no pixel; `VideoWriter.adjustment` says what was done, for the job report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator

import av
import numpy as np

from svfrd.config import LimitsConfig
from svfrd.errors import BadInputError, TransientError
from svfrd.files.atomic import PRIVATE_FILE_MODE, create_temp, is_temp_name

#: Audio codecs the MP4 muxer accepts as they are; anything else is re-encoded to AAC.
MP4_COPYABLE_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})


@dataclass(frozen=True)
class AudioInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    duration: float | None


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # upright (display) size, after rotation
    height: int
    coded_width: int
    coded_height: int
    frames: int
    fps: Fraction
    time_base: Fraction
    duration: float
    rotation: int  # degrees counter-clockwise, a multiple of 90
    pix_fmt: str
    codec: str
    audio: list[AudioInfo] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class Frame:
    """One decoded frame, upright RGB uint8, with its presentation timestamp in the stream's time base."""

    index: int
    pts: int
    image: np.ndarray


def _unreadable(path: Path, what: str) -> BadInputError:
    return BadInputError(
        f"{path.name} is not a readable video ({what}); it may be truncated or still being copied. "
        "Re-export or re-copy the file and drop it into the inbox again."
    )


#: The demuxers svfrd reads (FFmpeg's short names), and only from local files. A file in an inbox may be
#: anything under a video's name: a playlist (HLS, concat) would make FFmpeg open other files or URLs, and every
#: other demuxer is attack surface no user needs (docs/architecture.md §5).
INPUT_FORMATS = "mov,matroska,avi,mpeg,mpegts,asf,flv,m4v,h264,hevc,mpegvideo"
INPUT_OPTIONS = {"format_whitelist": INPUT_FORMATS, "protocol_whitelist": "file"}


def open_source(path: Path | str) -> av.container.InputContainer:
    """The source video opened by FFmpeg, restricted to INPUT_FORMATS from a local file."""
    return av.open(str(path), "r", options=dict(INPUT_OPTIONS))


def _open_input(path: Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path.name} does not exist or is not a file; drop the video into the inbox again")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path.name} is empty (0 bytes); copy the complete file into the inbox again")
    try:
        return open_source(path)
    except av.ArgumentError as err:  # FFmpeg found a demuxer that INPUT_FORMATS leaves out
        raise BadInputError(
            f"{path.name} is not in a video container svfrd reads (MP4/MOV, MKV/WebM, AVI, MPEG-PS/TS, WMV/ASF, "
            "FLV, raw H.264/HEVC); it may be a picture or a playlist under a video's name. Convert it, e.g. "
            "`ffmpeg -i IN -c copy OUT.mp4`, and drop that into the inbox."
        ) from err
    except av.FFmpegError as err:
        raise _unreadable(path, str(err).split(";")[0]) from err


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise BadInputError(
            f"{path.name} has no video stream (audio only or not a video); svfrd restores faces in videos"
        )
    return container.streams.video[0]


# ---------------------------------------------------------------------------------------------------------------
# Limits ([limits] in config.toml): a small file can claim a huge picture or an endless stream. They are checked
# in the container's headers before any frame is decoded, and again on each decoded frame, since a stream
# can contradict its header.

DEFAULT_LIMITS = LimitsConfig()


def _over_limit(path: Path, what: str, limit: str, key: str, advice: str) -> BadInputError:
    return BadInputError(
        f"{path.name} {what}, over the limit of {limit} ([limits] {key} in the service's config.toml); "
        f"nothing was decoded beyond that point. {advice}, or raise [limits] {key} if this machine can take it."
    )


def _check_frame_pixels(path: Path, width: int, height: int, limits: LimitsConfig, where: str) -> None:
    if width * height > limits.max_frame_pixels:
        raise _over_limit(path, f"has {width}x{height} pixels per frame ({where})",
                          f"{limits.max_frame_pixels:,} pixels", "max_frame_pixels", "Scale the video down")


def _check_frame_count(path: Path, frames: int, limits: LimitsConfig, where: str) -> None:
    if frames > limits.max_frames:
        raise _over_limit(path, f"has {frames:,} frames ({where})", f"{limits.max_frames:,} frames", "max_frames",
                          "Cut it into shorter parts")


def _check_duration(path: Path, seconds: float, limits: LimitsConfig, where: str) -> None:
    if seconds > limits.max_duration:
        raise _over_limit(path, f"lasts {seconds:,.0f} s ({where})", f"{limits.max_duration:,.0f} s",
                          "max_duration", "Cut it into shorter parts")


def _check_header_limits(path: Path, container: av.container.InputContainer, stream: av.VideoStream,
                         limits: LimitsConfig) -> None:
    """What the headers claim, before the first frame is decoded (a header of 0 means "not stated")."""
    _check_frame_pixels(path, stream.codec_context.width, stream.codec_context.height, limits, "in its header")
    if stream.frames:
        _check_frame_count(path, stream.frames, limits, "by its header")
    if stream.duration and stream.time_base:
        _check_duration(path, float(stream.duration * stream.time_base), limits, "by its header")
    elif container.duration:
        _check_duration(path, container.duration / av.time_base, limits, "by its header")


def _limit_decoder(stream: av.VideoStream, limits: LimitsConfig) -> None:
    """FFmpeg's own check, made before a picture's memory is allocated: the decoder refuses larger frames."""
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(limits.max_frame_pixels)}


def _rotation_of(frame: av.VideoFrame) -> int:
    """The display rotation as a multiple of 90 degrees (other angles do not occur in practice)."""
    return int(round(frame.rotation / 90.0)) * 90 % 360


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Coded orientation -> display orientation (rotation is counter-clockwise degrees)."""
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90)) if rotation else image


def coded(image: np.ndarray, rotation: int) -> np.ndarray:
    """Display orientation -> coded orientation; the inverse of `upright`."""
    return np.ascontiguousarray(np.rot90(image, k=-(rotation // 90))) if rotation else image


def probe(path: Path, limits: LimitsConfig = DEFAULT_LIMITS) -> VideoInfo:
    """Read the facts about a video without decoding more than its first frame.

    The frame count comes from counting video packets (headers may lack or misstate it); the first frame is
    decoded to prove the stream is decodable and to read the rotation. A video over one of the `limits` is
    refused (BadInputError) from its headers before that frame is decoded, else as soon as the count shows it.
    """
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        _check_header_limits(path, container, stream, limits)
        time_base, fps = _time_base_of(stream), _frame_rate_of(stream)
        try:
            _limit_decoder(stream, limits)
            first = next(container.decode(stream), None)
        except av.FFmpegError as err:
            raise _unreadable(path, f"its first frame cannot be decoded: {err}") from err
        if first is None:
            raise _unreadable(path, "it contains no video frames")
        _check_frame_pixels(path, first.width, first.height, limits, "in its first frame")
        rotation = _rotation_of(first)
        audio = [
            AudioInfo(
                index=a.index,
                codec=a.codec_context.name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
                duration=float(a.duration * a.time_base) if a.duration and a.time_base else None,
            )
            for a in container.streams.audio
        ]
        header_frames = stream.frames  # from the container's index; 0 when it has none
        coded_width, coded_height = stream.codec_context.width, stream.codec_context.height
        pix_fmt = stream.codec_context.pix_fmt or first.format.name
        codec = stream.codec_context.name
    frames, first_pts, last_pts, last_duration = _count_video_packets(path, limits)
    if frames == 0:
        raise _unreadable(path, "it contains no video frames")
    if header_frames and frames < header_frames:
        # An index written up front (MP4 "faststart") survives a cut-off copy; the frames do not.
        raise _unreadable(path, f"its index lists {header_frames} frames but only {frames} are present")
    if last_pts is not None and first_pts is not None:
        duration = float((last_pts - first_pts + (last_duration or 0)) * time_base)
        if duration <= 0:
            duration = float(frames / fps)
    else:
        duration = float(frames / fps)
    _check_duration(path, duration, limits, "by its timestamps")
    width, height = (coded_height, coded_width) if rotation in (90, 270) else (coded_width, coded_height)
    return VideoInfo(
        path=path, width=width, height=height, coded_width=coded_width, coded_height=coded_height,
        frames=frames, fps=fps, time_base=time_base, duration=duration,
        rotation=rotation, pix_fmt=pix_fmt, codec=codec, audio=audio,
    )


def _count_video_packets(path: Path, limits: LimitsConfig) -> tuple[int, int | None, int | None, int | None]:
    """(count, smallest pts, largest pts, duration of the last packet) over the video packets, demux only.
    Stops as soon as the count passes `limits.max_frames`."""
    count, first, last, last_duration = 0, None, None, None
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                count += 1
                _check_frame_count(path, count, limits, "counted so far")
                if packet.pts is not None:
                    first = packet.pts if first is None else min(first, packet.pts)
                    if last is None or packet.pts >= last:
                        last, last_duration = packet.pts, packet.duration
        except av.FFmpegError as err:
            raise _unreadable(path, f"reading stopped after {count} frames: {err}") from err
    return count, first, last, last_duration


def iter_frames(path: Path, limits: LimitsConfig = DEFAULT_LIMITS) -> Iterator[Frame]:
    """Decode the video's frames in presentation order, upright, RGB uint8. Streams: one frame at a time.

    Timestamps are made strictly increasing (a few broken files repeat them), so they can be written back.
    A frame larger than the header said or than `limits` allow, or more frames than they allow, stop the
    decoding with a BadInputError before the frame is converted."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        _check_frame_pixels(path, stream.codec_context.width, stream.codec_context.height, limits, "in its header")
        _limit_decoder(stream, limits)
        header_size = (stream.codec_context.width, stream.codec_context.height)
        default_step = _default_pts_step(stream)
        previous_pts: int | None = None
        first_size: tuple[int, int] | None = None
        index = 0
        try:
            for frame in container.decode(stream):
                size = _upright_size(frame)
                if first_size is None:
                    _check_first_frame(path, frame, header_size, limits)
                    first_size = size
                elif size != first_size:
                    raise BadInputError(
                        f"{path.name} changes its picture size at frame {index} (from {first_size[0]}x"
                        f"{first_size[1]} to {size[0]}x{size[1]}); re-export it at one size"
                    )
                _check_frame_count(path, index + 1, limits, "decoded so far")
                pts = frame.pts if frame.pts is not None else (index * default_step)
                if previous_pts is not None and pts <= previous_pts:
                    pts = previous_pts + 1
                previous_pts = pts
                image = upright(frame.to_ndarray(format="rgb24"), _rotation_of(frame))
                yield Frame(index=index, pts=pts, image=image)
                index += 1
        except av.FFmpegError as err:
            raise _unreadable(path, f"decoding failed at frame {index}: {err}") from err


def _upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(width, height) as displayed, known before the frame is converted."""
    rotated = _rotation_of(frame) in (90, 270)
    return (frame.height, frame.width) if rotated else (frame.width, frame.height)


def _check_first_frame(path: Path, frame: av.VideoFrame, header_size: tuple[int, int],
                       limits: LimitsConfig) -> None:
    """A stream can contradict the header its limits were checked in; later frames must match this one."""
    _check_frame_pixels(path, frame.width, frame.height, limits, "in its first frame")
    header_width, header_height = header_size
    if header_width and header_height and frame.width * frame.height > header_width * header_height:
        raise BadInputError(
            f"{path.name} has a {frame.width}x{frame.height} first frame, larger than the "
            f"{header_width}x{header_height} its header states; the file is damaged or crafted. Re-export it."
        )


def _time_base_of(stream: av.VideoStream) -> Fraction:
    return Fraction(stream.time_base or Fraction(1, 90000))


def _frame_rate_of(stream: av.VideoStream) -> Fraction:
    """The stream's frame rate as the container states it; 25 fps when it states none."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate is not None and rate > 0 else Fraction(25)


def _default_pts_step(stream: av.VideoStream) -> int:
    """The timestamp step of one frame, for frames that come without a timestamp."""
    return max(1, int(round(1 / (_frame_rate_of(stream) * _time_base_of(stream)))))


class VideoWriter:
    """Encode upright RGB frames to an H.264 MP4 beside the source's audio.

    Use as a context manager; call `write(image, pts)` with the source frame's pts (in `info.time_base`).
    Audio packets from `audio_source` are interleaved as the video advances.
    """

    def __init__(
        self, path: Path, info: VideoInfo, crf: int = 18, audio_source: Path | None = None,
        size: tuple[int, int] | None = None, rotation: int | None = None, preset: str = "medium",
    ):
        self.path = Path(path)
        self.time_base = info.time_base
        self.rotation = info.rotation if rotation is None else rotation
        #: Upright (display) sizes of the frames given and of the video written; they differ by the odd pixel.
        self.input_size: tuple[int, int] = size or (info.width, info.height)
        self.size = even_size(*self.input_size)
        width, height = self.size
        if self.rotation in (90, 270):
            width, height = height, width  # coded orientation
        self._file = guard_disk(self.path, lambda: _create_output(self.path))
        self._container = _open_output(self._file, self.path)
        # mbtree off: with it, libx264 here encodes the same frames to different pixels from run to run, and a
        # resumed job's segments must equal an uninterrupted run's (docs/architecture.md, "Resume"); it costs
        # about 2% more bytes at the same crf.
        self._video = self._container.add_stream(
            "libx264", rate=info.fps, options={"crf": str(int(crf)), "preset": preset, "x264-params": "mbtree=0"}
        )
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.time_base = info.time_base
        # The encoder must count in the source's time base too: at 1/fps it would round VFR timestamps away.
        self._video.codec_context.time_base = info.time_base
        if self.rotation:
            self._video.set_display_rotation(self.rotation)
        self._audio = [_AudioTrack(self._container, audio_source, a.index) for a in info.audio] if audio_source else []

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def adjustment(self) -> str | None:
        """What was done to the frame size, in words (None: nothing)."""
        return size_adjustment(self.input_size, self.size)

    def write(self, image: np.ndarray, pts: int) -> None:
        width, height = self.size
        image = image[:height, :width]  # drops the odd last column / row, see the module docstring
        frame = av.VideoFrame.from_ndarray(coded(np.ascontiguousarray(image), self.rotation), format="rgb24")
        frame.pts = pts
        frame.time_base = self.time_base
        self._mux(self._video.encode(frame))
        for track in self._audio:
            guard_disk(self.path, lambda: track.write_until(float(pts * self.time_base)))

    def close(self) -> None:
        self._mux(self._video.encode(None))
        for track in self._audio:
            guard_disk(self.path, lambda: track.write_until(None))
            track.close()
        guard_disk(self.path, self._container.close)
        guard_disk(self.path, self._file.close)

    def abort(self) -> None:
        """Close without flushing; the partial file is left for the caller to delete."""
        try:
            for track in self._audio:
                track.close()
            self._container.close()
        except Exception:  # the original error matters more than a failed close
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass

    def _mux(self, packets: list[av.Packet]) -> None:
        guard_disk(self.path, lambda: self._container.mux(packets))


def even_size(width: int, height: int) -> tuple[int, int]:
    """The largest size 4:2:0 can hold within (width, height): an odd dimension loses one pixel."""
    return max(2, width - width % 2), max(2, height - height % 2)


def size_adjustment(source: tuple[int, int], written: tuple[int, int]) -> str | None:
    """`"cropped 1 px column at the right edge ..."`, or None when the size was kept."""
    cut = []
    if written[0] < source[0]:
        cut.append("the last column (right edge)")
    if written[1] < source[1]:
        cut.append("the last row (bottom edge)")
    if not cut:
        return None
    return (f"cropped {' and '.join(cut)} from {source[0]}x{source[1]} to {written[0]}x{written[1]}: "
            "H.264 4:2:0, the format every player reads, needs an even width and height")


def _create_output(path: Path) -> BinaryIO:
    """The file to encode into. The worker's output is one of our temporary names in the outbox, where a symlink
    may have been planted: created new (`create_temp`). Any other path is one the caller chose (a benchmark, a
    test, /dev/null or /dev/full): written as `open(path, "wb")` would, except never through a symlink; only a
    temporary name is ever removed to make room."""
    if is_temp_name(path.name):
        return create_temp(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, PRIVATE_FILE_MODE), "wb")


def _open_output(file: BinaryIO, path: Path) -> av.container.OutputContainer:
    """The MP4 muxer writing into `file`, a file we just opened (`_create_output`): the output path may be a
    predictable temporary name, so it is never opened by name, which would follow a planted symlink."""
    return guard_disk(path, lambda: av.open(file, "w", format="mp4"))


def guard_disk(path: Path, action):
    """Run an output action, turning a full disk into a TransientError (the job is retried later)."""
    try:
        return action()
    except OSError as err:
        if getattr(err, "errno", None) == 28 or "No space left" in str(err):
            raise TransientError(f"the disk holding {path.parent} is full; the job will be retried") from err
        raise


class _AudioTrack:
    """One audio stream of the source, copied (or re-encoded to AAC) into the output, in time order.
    Each track reads the source through its own demuxer, so tracks and video advance independently."""

    def __init__(self, output: av.container.OutputContainer, source: Path, stream_index: int):
        self._input = open_source(source)
        self._in_stream = self._input.streams[stream_index]
        self._copy = self._in_stream.codec_context.name in MP4_COPYABLE_AUDIO
        if self._copy:
            self._out_stream = output.add_stream_from_template(self._in_stream)
        else:
            rate = self._in_stream.codec_context.sample_rate or 48000
            layout = self._in_stream.codec_context.layout.name if self._in_stream.codec_context.layout else "stereo"
            self._out_stream = output.add_stream("aac", rate=rate, layout=layout)
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._output = output
        self._packets = self._input.demux(self._in_stream)
        self._pending: av.Packet | None = None
        self._done = False

    def write_until(self, seconds: float | None) -> None:
        """Mux audio up to `seconds` of presentation time (None: everything that is left)."""
        while not self._done:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                self._done = True
                if not self._copy:
                    self._output.mux(self._out_stream.encode(None))
                return
            if packet.size == 0:
                continue
            if seconds is not None and packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending = packet
                return
            self._write(packet)

    def _write(self, packet: av.Packet) -> None:
        if self._copy:
            packet.stream = self._out_stream
            self._output.mux(packet)
            return
        for frame in self._in_stream.decode(packet):
            for resampled in self._resampler.resample(frame):
                self._output.mux(self._out_stream.encode(resampled))

    def close(self) -> None:
        self._input.close()
