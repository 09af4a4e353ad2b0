"""[limits] on videos: a small file that claims a huge picture or an endless stream is refused from its
headers, before any frame is decoded, and a stream that contradicts its header is stopped while decoding.
Each refusal is bad input that names the limit, the value and the config key to raise."""

from __future__ import annotations

import pytest

from svfrd.config import LimitsConfig
from svfrd.errors import BadInputError
from svfrd.media import video_io
from svfrd.media.video_io import iter_frames, probe
from tests.helpers.media_clips import write_decompression_bomb, write_moving_face_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_moving_face_clip(tmp_path_factory.mktemp("limits") / "clip.mp4", frames=10, width=160, height=120)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if a decoder is set up: proves a refusal came from the headers alone."""

    def decoding_started(*_args):
        raise AssertionError("a frame was about to be decoded")

    monkeypatch.setattr(video_io, "_limit_decoder", decoding_started)


def test_a_decompression_bomb_is_refused_from_its_header_before_any_frame_is_decoded(tmp_path, no_decoding):
    bomb = write_decompression_bomb(tmp_path / "bomb.mp4")
    assert bomb.stat().st_size < 300_000
    with pytest.raises(BadInputError) as refused:
        probe(bomb)
    message = str(refused.value)
    assert "bomb.mp4 has 8192x4320 pixels per frame (in its header)" in message
    assert "over the limit of 33,177,600 pixels ([limits] max_frame_pixels" in message
    assert "Scale the video down, or raise [limits] max_frame_pixels" in message


def test_a_lower_frame_pixel_limit_refuses_a_normal_clip(clip, no_decoding):
    with pytest.raises(BadInputError, match=r"160x120 pixels per frame .* limit of 19,199 pixels"):
        probe(clip, LimitsConfig(max_frame_pixels=160 * 120 - 1))


def test_too_many_frames_are_refused_from_the_header_before_any_frame_is_decoded(clip, no_decoding):
    with pytest.raises(BadInputError, match=r"clip.mp4 has 10 frames \(by its header\), over the limit of 5 "
                                            r"frames \(\[limits\] max_frames"):
        probe(clip, LimitsConfig(max_frames=5))


def test_a_stream_without_a_frame_count_is_refused_while_its_packets_are_counted(tmp_path):
    raw = write_moving_face_clip(tmp_path / "raw.h264", frames=10, width=160, height=120)
    with pytest.raises(BadInputError, match=r"raw.h264 has 6 frames \(counted so far\), over the limit of 5"):
        probe(raw, LimitsConfig(max_frames=5))
    assert probe(raw, LimitsConfig(max_frames=10)).frames == 10


def test_a_video_longer_than_the_duration_limit_is_refused(clip):
    # 10 frames at 25 fps: 0.4 s.
    with pytest.raises(BadInputError, match=r"clip.mp4 lasts 0 s .*limit of 0 s \(\[limits\] max_duration.*"
                                            r"Cut it into shorter parts"):
        probe(clip, LimitsConfig(max_duration=0.3))
    assert probe(clip, LimitsConfig(max_duration=0.4)).duration == pytest.approx(0.4)


def test_decoding_stops_at_the_frame_limit_even_if_the_probe_was_passed(clip):
    frames = iter_frames(clip, LimitsConfig(max_frames=3))
    assert [next(frames).index for _ in range(3)] == [0, 1, 2]
    with pytest.raises(BadInputError, match=r"has 4 frames \(decoded so far\), over the limit of 3 frames"):
        next(frames)


def test_decoding_refuses_a_video_over_the_pixel_limit_before_any_frame(clip, no_decoding):
    with pytest.raises(BadInputError, match=r"160x120 pixels per frame \(in its header\)"):
        next(iter_frames(clip, LimitsConfig(max_frame_pixels=1000)))
