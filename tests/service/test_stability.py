"""File stability (svfrd.service.stability) with a clock the test moves: no sleeping, no real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from svfrd.service.stability import StabilityTracker
from tests.helpers.clock import FakeClock

VIDEO, SIDECAR = Path("/inbox/clip.mp4"), Path("/inbox/clip.toml")


def tracker(quiet: float = 2.0, grace: float = 0.0) -> tuple[StabilityTracker, FakeClock]:
    clock = FakeClock()
    return StabilityTracker(quiet, grace, clock), clock


def test_a_file_is_ready_once_it_has_not_changed_for_the_quiet_period():
    stability, clock = tracker(quiet=2.0)
    stability.observe({VIDEO: (10, 1)})
    assert stability.seconds_until_ready(VIDEO, None) == 2.0
    clock.advance(1.5)
    stability.observe({VIDEO: (10, 1)})
    assert stability.seconds_until_ready(VIDEO, None) == 0.5
    clock.advance(0.5)
    assert stability.seconds_until_ready(VIDEO, None) == 0


def test_any_change_of_size_or_mtime_starts_the_quiet_period_again():
    stability, clock = tracker(quiet=2.0)
    stability.observe({VIDEO: (10, 1)})
    clock.advance(1.9)
    stability.observe({VIDEO: (20, 1)})  # still being copied
    clock.advance(1.9)
    stability.observe({VIDEO: (20, 2)})  # touched
    assert stability.seconds_until_ready(VIDEO, None) == 2.0
    clock.advance(2.0)
    assert stability.seconds_until_ready(VIDEO, None) == 0


def test_without_a_sidecar_the_grace_period_follows_the_quiet_period():
    stability, clock = tracker(quiet=1.0, grace=3.0)
    stability.observe({VIDEO: (10, 1)})
    clock.advance(1.0)
    assert stability.seconds_until_ready(VIDEO, None) == 3.0
    clock.advance(3.0)
    assert stability.seconds_until_ready(VIDEO, None) == 0


def test_a_sidecar_that_is_there_must_be_quiet_itself_and_ends_the_grace():
    stability, clock = tracker(quiet=1.0, grace=30.0)
    stability.observe({VIDEO: (10, 1), SIDECAR: (5, 1)})
    clock.advance(0.6)
    stability.observe({VIDEO: (10, 1), SIDECAR: (9, 2)})  # the sidecar is still being edited
    clock.advance(0.6)
    assert stability.seconds_until_ready(VIDEO, SIDECAR) == pytest.approx(0.4)
    clock.advance(0.41)
    assert stability.seconds_until_ready(VIDEO, SIDECAR) == 0


def test_a_file_that_vanishes_and_comes_back_waits_again():
    stability, clock = tracker(quiet=1.0)
    stability.observe({VIDEO: (10, 1)})
    clock.advance(5.0)
    stability.observe({})
    stability.observe({VIDEO: (10, 1)})
    assert stability.seconds_until_ready(VIDEO, None) == 1.0
