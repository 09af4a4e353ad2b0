"""The service's domain vocabulary, with no heavy imports: the restoration tasks, the face crop size and the
default seed. Config, sidecar, CLI, pipeline and engines all take these from here."""

from __future__ import annotations

import enum

#: Engines restore square face crops of this many pixels a side (SVFR's training resolution; docs/svfr.md).
CROP_SIZE = 512

#: The seed a job gets when its sidecar names none (the SVFR reference inference uses 77).
DEFAULT_SEED = 77


class Task(enum.IntEnum):
    """SVFR task ids, as in the sidecar (`tasks = [0, 2]` or `["bfr", "inpaint"]`)."""

    BFR = 0
    COLORIZE = 1
    INPAINT = 2

    @property
    def label(self) -> str:
        return {Task.BFR: "bfr", Task.COLORIZE: "colorize", Task.INPAINT: "inpaint"}[self]
