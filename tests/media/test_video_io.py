"""Video reading and writing: what goes in comes out with the same resolution, frame count, timing,
orientation and audio; unreadable files are refused with a clear message."""

from __future__ import annotations

import errno
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from svfrd.errors import BadInputError, TransientError
from svfrd.media.video_io import VideoWriter, iter_frames, probe
from tests.helpers.media_clips import (
    NTSC_FPS,
    moving_face_frames,
    write_audio_only_file,
    write_clip,
    write_moving_face_clip,
    write_truncated_copy,
)


def copy_video(source, target, crf=18):
    info = probe(source)
    with VideoWriter(target, info, crf=crf, audio_source=source, preset="ultrafast") as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
    return probe(target)


def audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


@pytest.fixture(scope="module")
def ntsc_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ntsc")
    return write_moving_face_clip(folder / "ntsc.mp4", frames=20, width=161, height=121, fps=NTSC_FPS, audio=True)


def test_probe_reads_the_facts_of_a_29_97_fps_odd_size_clip_with_audio(ntsc_clip):
    info = probe(ntsc_clip)
    assert (info.width, info.height) == (161, 121)
    assert info.frames == 20
    assert info.fps == Fraction(30000, 1001)
    assert info.duration == pytest.approx(20 * 1001 / 30000, abs=1e-3)
    assert info.rotation == 0
    assert [a.codec for a in info.audio] == ["aac"]


def test_rewritten_clip_keeps_the_even_size_frames_timing_and_audio(ntsc_clip, tmp_path):
    source = probe(ntsc_clip)
    result = copy_video(ntsc_clip, tmp_path / "out.mp4")
    assert (result.width, result.height) == (source.width - 1, source.height - 1)
    assert result.frames == source.frames
    assert result.fps == source.fps
    assert abs(result.duration - source.duration) < 1 / float(source.fps)
    assert len(result.audio) == 1
    assert audio_seconds(tmp_path / "out.mp4") == pytest.approx(audio_seconds(ntsc_clip), abs=0.03)


def test_rewritten_pixels_match_the_source_closely(ntsc_clip, tmp_path):
    copy_video(ntsc_clip, tmp_path / "out.mp4", crf=10)
    for before, after in zip(iter_frames(ntsc_clip), iter_frames(tmp_path / "out.mp4")):
        assert before.pts == after.pts
        kept = before.image[:120, :160]  # the odd last column and row are cropped; the rest stays in place
        difference = np.abs(kept.astype(int) - after.image.astype(int)).mean()
        assert difference < 3.0  # the 4:4:4 source loses half its colour resolution in 4:2:0


def pixel_format(path) -> tuple[str, str]:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.pix_fmt, context.profile


@pytest.mark.parametrize("rotation", [0, 90])
def test_an_odd_size_is_written_as_4_2_0_one_pixel_smaller_and_the_writer_says_so(tmp_path, rotation):
    source = write_clip(tmp_path / "odd.mp4", moving_face_frames(3, width=121, height=90), rotation=rotation)
    info = probe(source)
    with VideoWriter(tmp_path / "out.mp4", info) as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
    out = probe(tmp_path / "out.mp4")
    assert pixel_format(tmp_path / "out.mp4") == ("yuv420p", "High")
    assert (out.width, out.height, out.rotation) == (120, 90, rotation)
    assert writer.adjustment.startswith("cropped the last column (right edge) from 121x90 to 120x90")


def test_the_writer_never_writes_through_a_symlink_planted_on_its_path(tmp_path):
    """The worker's output path is a predictable temporary name in the outbox (svfrd.files.placement)."""
    source = write_moving_face_clip(tmp_path / "clip.mp4", frames=3)
    victim, output = tmp_path / "victim.txt", tmp_path / ".job1.clip.restored.mp4.part"
    victim.write_text("precious\n")
    output.symlink_to(victim)
    with VideoWriter(output, probe(source), preset="ultrafast") as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
    assert victim.read_text() == "precious\n"
    assert not output.is_symlink() and probe(output).frames == 3


def test_a_path_the_caller_chose_is_overwritten_but_never_through_a_symlink(tmp_path):
    """Benchmarks write one output again and again; only the worker's temporary names are created new."""
    source = write_moving_face_clip(tmp_path / "clip.mp4", frames=3)
    output, victim, link = tmp_path / "out.mp4", tmp_path / "victim.txt", tmp_path / "link.mp4"
    output.write_bytes(b"an earlier run")
    victim.write_text("precious\n")
    link.symlink_to(victim)
    with VideoWriter(output, probe(source), preset="ultrafast") as writer:
        for frame in iter_frames(source):
            writer.write(frame.image, frame.pts)
    assert probe(output).frames == 3
    with pytest.raises(OSError) as raised:
        VideoWriter(link, probe(source), preset="ultrafast")
    assert raised.value.errno == errno.ELOOP and victim.read_text() == "precious\n"


def test_clip_without_audio_is_written_without_audio(tmp_path):
    source = write_moving_face_clip(tmp_path / "silent.mp4", frames=6)
    result = copy_video(source, tmp_path / "out.mp4")
    assert result.audio == [] and result.frames == 6


def test_variable_frame_rate_timestamps_survive(tmp_path):
    pts = [0, 1000, 1500, 3500, 4000, 4100, 6000]
    source = write_clip(tmp_path / "vfr.mp4", moving_face_frames(len(pts)), pts=pts, time_base=Fraction(1, 10000))
    copy_video(source, tmp_path / "out.mp4")
    written = [float(f.pts * probe(tmp_path / "out.mp4").time_base) for f in iter_frames(tmp_path / "out.mp4")]
    assert written == pytest.approx([p / 10000 for p in pts], abs=1e-4)


def test_rotated_video_is_read_upright_and_written_with_the_same_rotation(tmp_path):
    frames = moving_face_frames(4, width=120, height=90)
    source = write_clip(tmp_path / "phone.mp4", frames, rotation=90)
    info = probe(source)
    assert info.rotation == 90 and (info.width, info.height) == (120, 90)
    first = next(iter_frames(source)).image
    assert first.shape == (90, 120, 3)
    assert np.abs(first.astype(int) - frames[0].astype(int)).mean() < 6  # upright, as drawn
    result = copy_video(source, tmp_path / "out.mp4")
    assert result.rotation == 90 and (result.width, result.height) == (120, 90)


def test_pcm_audio_that_mp4_cannot_hold_is_reencoded_to_aac(tmp_path):
    source = tmp_path / "pcm.mov"
    with av.open(str(source), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = (np.sin(np.arange(6400) / 5) * 8000).astype(np.int16).reshape(1, -1)
        chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = 16000, 0
        out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    result = copy_video(source, tmp_path / "out.mp4")
    assert [a.codec for a in result.audio] == ["aac"]
    assert audio_seconds(tmp_path / "out.mp4") == pytest.approx(0.4, abs=0.05)


def test_truncated_file_whose_index_survived_is_refused(tmp_path):
    # MP4 "faststart" puts the index first, so a cut-off copy still opens and looks shorter, not broken.
    source = write_clip(tmp_path / "fast.mp4", moving_face_frames(20), faststart=True)
    cut = write_truncated_copy(source, tmp_path / "fast-cut.mp4", keep=0.6)
    with pytest.raises(BadInputError, match=r"fast-cut.mp4 is not a readable video \(its index lists 20 frames"):
        probe(cut)


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


UNUSABLE_FILES = {
    "truncated": (lambda folder, clip: write_truncated_copy(clip, folder / "cut.mp4", 0.5), "not a readable video"),
    "zero-length": (lambda folder, clip: write_file(folder / "empty.mp4", b""), "empty"),
    "audio-only": (lambda folder, clip: write_audio_only_file(folder / "song.m4a"), "no video stream"),
    "garbage": (lambda folder, clip: write_file(folder / "notes.mp4", b"not a video\n" * 50), "not a readable video"),
}


@pytest.mark.parametrize("make, expected", UNUSABLE_FILES.values(), ids=UNUSABLE_FILES.keys())
def test_unusable_files_are_refused_with_a_clear_message(tmp_path, ntsc_clip, make, expected):
    path = make(tmp_path, ntsc_clip)
    with pytest.raises(BadInputError, match=expected) as caught:
        probe(path)
    assert path.name in str(caught.value)


def test_every_audio_stream_is_kept(tmp_path):
    source = tmp_path / "two-languages.mp4"
    with av.open(str(source), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        tracks = [out.add_stream("aac", rate=rate, layout="mono") for rate in (44100, 22050)]
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 9 * i, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for track in tracks:
            rate = track.codec_context.sample_rate
            samples = (np.sin(np.arange(rate) / 7) * 6000).astype(np.int16).reshape(1, -1)
            chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = rate, 0
            out.mux(track.encode(chunk))
            out.mux(track.encode(None))
    result = copy_video(source, tmp_path / "out.mp4")
    assert [(a.codec, a.sample_rate) for a in result.audio] == [("aac", 44100), ("aac", 22050)]
    with av.open(str(tmp_path / "out.mp4")) as container:
        durations = [float(s.duration * s.time_base) for s in container.streams.audio]
    assert durations == pytest.approx([1.0, 1.0], abs=0.05)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux /dev/full")
def test_a_full_disk_is_a_transient_error(ntsc_clip):
    info = probe(ntsc_clip)
    with pytest.raises(TransientError, match="is full; the job will be retried"):
        with VideoWriter(Path("/dev/full"), info, audio_source=ntsc_clip) as writer:
            for frame in iter_frames(ntsc_clip):
                writer.write(frame.image, frame.pts)


def test_a_stream_that_changes_picture_size_is_refused(tmp_path):
    def raw_h264(path, width, height):
        with av.open(str(path), "w", format="h264") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(5):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 30 * i, np.uint8), format="rgb24")
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path.read_bytes()

    joined = tmp_path / "joined.h264"
    joined.write_bytes(raw_h264(tmp_path / "a.h264", 160, 120) + raw_h264(tmp_path / "b.h264", 200, 150))
    assert probe(joined).frames == 10
    expected = r"joined.h264 changes its picture size at frame 5 \(from 160x120 to 200x150\)"
    with pytest.raises(BadInputError, match=expected):
        list(iter_frames(joined))


@pytest.mark.parametrize("content", ["png", "hls"])
def test_only_video_containers_are_opened_never_a_picture_or_a_playlist(tmp_path, content):
    """A file under a video's name may be anything; a playlist would make FFmpeg open other files."""
    clip = tmp_path / "clip.mp4"
    if content == "png":
        from PIL import Image

        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(clip, format="PNG")  # FFmpeg reads it as a frame
    else:
        segment = tmp_path / "elsewhere.mkv"
        write_clip(segment, [np.zeros((64, 64, 3), np.uint8)] * 3)
        clip.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{segment}\n#EXT-X-ENDLIST\n")
    expected = "not in a video container svfrd reads" if content == "png" else "not a readable video|not in a video"
    with pytest.raises(BadInputError, match=expected):
        probe(clip)


def test_the_same_frames_encode_to_the_same_video_every_time(tmp_path):
    # A resumed job's output segments must equal an uninterrupted run's (docs/architecture.md, "Resume").
    source = write_moving_face_clip(tmp_path / "source.mp4", frames=30)
    info = probe(source)
    frames = list(iter_frames(source))
    written = []
    for run in range(4):
        with VideoWriter(tmp_path / f"run{run}.mp4", info, crf=18) as writer:
            for frame in frames:
                writer.write(255 - frame.image, frame.pts)
        written.append((tmp_path / f"run{run}.mp4").read_bytes())
    assert all(data == written[0] for data in written)
