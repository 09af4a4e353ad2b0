"""Test engines for the service tests, plugged in through `create_engine` by import path
(`[engine] name = "tests.helpers.engines:InvertingEngine"`), so the daemon runs its real loading code.

They stand in for a restoration model only; everything around them (daemon, worker, pipeline, outbox) is real.
Engines that misbehave once (crash, transient error) remember it in a marker file named by the
environment variable SVFRD_TEST_MARKER, so a retry of the same job then succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from svfrd.config import EngineConfig
from svfrd.domain import BUILTIN_OPTION_NAMES
from svfrd.engines.interface import CropStream, ProgressReporter, RestoreRequest
from svfrd.errors import BadInputError, TransientError

MARKER_ENV = "SVFRD_TEST_MARKER"
SLOW_SECONDS_ENV = "SVFRD_TEST_SECONDS_PER_FRAME"


def invert(image: np.ndarray) -> np.ndarray:
    """The visible, deterministic "restoration": a photographic negative of the crop."""
    return 255 - image


class InvertingEngine:
    """Restores every crop to its negative, so a test can see that the face region of the output changed."""

    name = "test-invert"
    option_names = BUILTIN_OPTION_NAMES

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.jobs_seen = 0  # proves the engine object lives on between jobs

    def check(self, request: RestoreRequest) -> None:
        return None

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        self.jobs_seen += 1
        self.before_restore()
        total = len(crops)
        for done, crop in enumerate(crops, start=1):
            self.before_frame()
            progress("restore", done - 1, total)
            yield invert(crop.image)
        progress("restore", total, total)

    def warnings(self) -> list[str]:
        return [f"test engine: job number {self.jobs_seen} for this worker"]

    def before_restore(self) -> None:
        """Hook for misbehaving subclasses."""

    def before_frame(self) -> None:
        """Hook for slow subclasses."""


class SlowEngine(InvertingEngine):
    """Sleeps before every frame ($SVFRD_TEST_SECONDS_PER_FRAME, default 0.5 s), to stop or kill mid-job."""

    name = "test-slow"

    def before_frame(self) -> None:
        time.sleep(float(os.environ.get(SLOW_SECONDS_ENV, "0.5")))


class StuckEngine(InvertingEngine):
    """Hangs in its first frame for a minute with no progress report (a wedged GPU kernel), after leaving a
    marker file "stuck", so a test knows the worker cannot notice a cancel by itself."""

    name = "test-stuck"

    def before_frame(self) -> None:
        Path(os.environ[MARKER_ENV], "stuck").touch()
        time.sleep(60)


def _first_time(marker_name: str) -> bool:
    """True once per marker file: creates it and reports whether it was new."""
    folder = os.environ.get(MARKER_ENV)
    if not folder:
        raise RuntimeError(f"set ${MARKER_ENV} to a folder for the test engine's marker files")
    try:
        with open(Path(folder) / marker_name, "x"):
            return True
    except FileExistsError:
        return False


class CrashOnceEngine(InvertingEngine):
    """Kills its own process (as a segfault or the OOM killer would) on the first job it ever sees."""

    name = "test-crash-once"

    def before_restore(self) -> None:
        if _first_time("crashed"):
            os.kill(os.getpid(), signal.SIGKILL)


class TransientOnceEngine(InvertingEngine):
    """Fails the first job it ever sees with a transient error (as a CUDA out-of-memory would)."""

    name = "test-transient-once"

    def before_restore(self) -> None:
        if _first_time("transient"):
            raise TransientError("the test engine ran out of (pretend) GPU memory; the job will be retried")


class OptionEngine(InvertingEngine):
    """A plug-in engine with an option of its own, `strength` (a whole number 1 to 10), besides the table's
    (svfrd.domain.OPTIONS). Its warnings name the options it received, so a test sees them arrive."""

    name = "test-options"
    option_names = BUILTIN_OPTION_NAMES | {"strength"}

    def check(self, request: RestoreRequest) -> None:
        strength = request.options.get("strength", 1)
        if isinstance(strength, bool) or not isinstance(strength, int) or not 1 <= strength <= 10:
            raise BadInputError(f"option strength = {strength!r}: must be a whole number from 1 to 10")

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        self.received = dict(request.options)
        return super().restore(request, crops, progress)

    def warnings(self) -> list[str]:
        return ["test engine options: " + ", ".join(f"{k}={v}" for k, v in sorted(self.received.items()))]


class SlowClassicalEngine:
    """The real classical engine, slowed down by $SVFRD_TEST_SECONDS_PER_FRAME (default 0.5 s) per frame, so a
    test can kill the daemon mid-job; its results are the classical engine's, pixel for pixel."""

    name = "test-slow-classical"
    option_names = BUILTIN_OPTION_NAMES

    def __init__(self, cfg: EngineConfig):
        from svfrd.engines.classical import ClassicalEngine

        self._engine = ClassicalEngine(cfg)
        self.resume_context = self._engine.resume_context

    def check(self, request: RestoreRequest) -> None:
        self._engine.check(request)

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        for restored in self._engine.restore(request, crops, progress):
            time.sleep(float(os.environ.get(SLOW_SECONDS_ENV, "0.5")))
            yield restored

    def warnings(self) -> list[str]:
        return self._engine.warnings()
