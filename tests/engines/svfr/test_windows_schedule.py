"""The window schedule and fusion weights of the SVFR long-video sampler (docs/svfr.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from svfrd.engines.svfr.windows import WindowSchedule, fusion_weights


def test_first_step_windows_start_every_13_frames_without_shift():
    assert WindowSchedule(30).windows_for_step(0) == [
        list(range(0, 16)),
        list(range(13, 29)),
        [26, 27, 28, 29, *range(0, 12)],
    ]


def test_pass_1_of_16_frames_feeds_frames_7_to_15_then_0_to_6_at_step_3():
    assert WindowSchedule(16).windows_for_step(3) == [[*range(7, 16), *range(0, 7)]]


def test_100_frames_step_1_first_window_wraps_to_the_last_three_frames():
    windows = WindowSchedule(100).windows_for_step(1)

    assert windows[0] == [97, 98, 99, *range(0, 13)]
    assert len(windows) == 8


def test_shift_grows_by_the_overlap_each_step_modulo_the_window():
    schedule = WindowSchedule(100)

    assert [schedule.shift(i) for i in range(8)] == [0, 3, 6, 9, 12, 15, 2, 5]
    assert schedule.windows_for_step(6)[0][0] == 98  # start 0 - 2, wrapped


def test_a_clip_shorter_than_a_window_repeats_frames_in_reference_mode():
    schedule = WindowSchedule(10)

    assert schedule.windows_for_step(0) == [[*range(0, 10), *range(0, 6)]]
    assert schedule.windows_for_step(3) == [[*range(1, 10), *range(0, 7)]]  # start -9 wraps to frame 1


@pytest.mark.parametrize("num_frames", [1, 5, 13, 16, 17, 20, 26, 27, 100, 250])
def test_window_counts_are_ceil_n_over_13_then_ceil_n_over_16(num_frames):
    schedule = WindowSchedule(num_frames)

    for step in range(3):
        assert len(schedule.windows_for_step(step)) == math.ceil(num_frames / 13)
    for step in range(3, 40):
        assert len(schedule.windows_for_step(step)) == math.ceil(num_frames / 16)


@pytest.mark.parametrize(
    ("num_frames", "steps", "calls"),
    [(16, 50, 53), (16, 30, 33), (25, 30, 60), (100, 30, 213), (250, 30, 492), (750, 30, 1443)],
)
def test_unet_calls_follow_the_spec_formula(num_frames, steps, calls):
    formula = 3 * math.ceil(num_frames / 13) + (steps - 3) * math.ceil(num_frames / 16)

    assert WindowSchedule(num_frames).unet_calls(steps) == formula == calls


@pytest.mark.parametrize("mode", ["circular", "clamped"])
@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 9, 15, 16, 17, 31, 33, 100])
def test_every_frame_is_in_some_window_at_every_step(mode, num_frames):
    schedule = WindowSchedule(num_frames, mode=mode)

    for step in range(20):
        windows = schedule.windows_for_step(step)
        covered = {frame for window in windows for frame in window}
        assert covered == set(range(num_frames))
        assert all(len(window) == schedule.frames_per_window for window in windows)


@pytest.mark.parametrize("num_frames", [16, 17, 20, 31, 100])
def test_clamped_windows_stay_inside_the_clip_in_order(num_frames):
    schedule = WindowSchedule(num_frames, mode="clamped")

    for step in range(20):
        windows = schedule.windows_for_step(step)
        for window in windows:
            assert window == list(range(window[0], window[0] + 16))
            assert 0 <= window[0] and window[-1] < num_frames
        starts = [window[0] for window in windows]
        assert starts == sorted(set(starts))


def test_clamped_windows_move_their_borders_each_step_like_the_reference():
    schedule = WindowSchedule(40, mode="clamped")

    assert [w[0] for w in schedule.windows_for_step(0)] == [0, 13, 24]
    assert [w[0] for w in schedule.windows_for_step(1)] == [0, 10, 23, 24]
    assert [w[0] for w in schedule.windows_for_step(3)] == [0, 7, 23, 24]


def test_clamped_short_clip_is_one_window_of_all_its_frames_without_repeats():
    schedule = WindowSchedule(10, mode="clamped")

    assert schedule.frames_per_window == 10
    for step in range(6):
        assert schedule.windows_for_step(step) == [list(range(10))]


def test_tiny_clips_get_a_positive_stride_where_the_reference_crashes():
    schedule = WindowSchedule(3, window=3)

    assert schedule.stride(0) == 1
    assert schedule.windows_for_step(0) == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]


def test_fusion_weights_are_a_triangle_peaking_in_the_middle():
    assert fusion_weights(16).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1]
    assert fusion_weights(5).tolist() == [1, 2, 3, 2, 1]
    assert fusion_weights(16).dtype == torch.float32


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(num_frames=5, window=0), dict(num_frames=5, mode="loop")])
def test_invalid_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        WindowSchedule(**bad)
