"""The restoration engine interface.

An engine restores a sequence of 512x512 face crops. The video pipeline (`svfrd.media.pipeline`) owns everything
around it: decoding, finding the face, cropping, masks, pasting the result back and encoding. An engine
never sees the full frame, and never holds the whole video: it reads crops from a re-iterable stream and
yields restored crops, in order, one per input crop.

Engines: `svfrd.engines.classical` (CPU, no weights) and `svfrd.engines.svfr.engine` (the SVFR model).
`svfrd.engines.create_engine` picks one from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

from svfrd.domain import DEFAULT_SEED, Task


@dataclass(frozen=True)
class FaceCrop:
    """One frame's face crop, as the engine receives it.

    image: (512, 512, 3) uint8 RGB, the original pixels of the crop (no task preparation applied).
    mask:  (512, 512) bool, True where the picture is damaged and must be inpainted; None without task 2.
    has_face: False for frames where no face was found; the pipeline passes those frames through
              unchanged, but the engine still receives the crop so windows stay temporally contiguous.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    has_face: bool = True


class CropStream(Protocol):
    """The crops of one video, in frame order. Each `iter()` decodes the video anew (bounded memory),
    so an engine may read it several times (for example once to encode latents, once for a reference)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[FaceCrop]: ...


@dataclass(frozen=True)
class RestoreRequest:
    """What to do with one video's crops.

    reference_face: an optional (H, W, 3) uint8 RGB image of the subject supplied in the sidecar; an engine
                    that can use one (SVFR) replaces its self-found reference with it.
    options: per-job options from the sidecar and the inbox, already validated (svfrd.domain.OPTIONS and the
             configured engine's `option_names`), less those the pipeline owns (crop, crf, output_mode).
    """

    tasks: frozenset[Task]
    seed: int = DEFAULT_SEED
    reference_face: np.ndarray | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A `svfrd.jobs.checkpoints.CheckpointFolder` where the engine may save its own progress and find what an
    #: interrupted run of the same job saved (docs/architecture.md, "Resume"); None: the run is not resumable.
    checkpoints: Any = None


class ProgressReporter(Protocol):
    """Called by engines and the pipeline as work advances. It is cheap to call often: the worker
    throttles database writes. It raises `svfrd.errors.JobCancelled` when the job has been cancelled,
    so long loops must call it regularly (at least once per window / chunk)."""

    def __call__(self, stage: str, done: int, total: int) -> None: ...


@runtime_checkable
class Engine(Protocol):
    """A restoration engine. Created once per worker process and reused for every job (models stay loaded)."""

    #: Short name recorded in the job row and the report, e.g. "classical" or "svfr".
    name: str
    #: Per-job options this engine uses: names from the table in `svfrd.domain.OPTIONS` and/or its own. The
    #: table's options are accepted whatever the engine; an engine's own names are accepted in sidecars, inbox
    #: options and `svfrd submit --option` when it is the configured engine. Config reads it from the class
    #: without creating an engine, so a plug-in declares it as a class attribute.
    option_names: frozenset[str]

    # Optional: `resume_context: int`, how many frames before a frame its result depends on. A resumed job
    # (docs/architecture.md, "Resume") then restarts the engine that many frames before the first frame it
    # still needs; an engine without it restarts at frame 0 (and may resume from checkpoints of its own).

    def check(self, request: RestoreRequest) -> None:
        """Raise `BadInputError` (with what to do) if this engine cannot honour the request,
        e.g. the classical engine and task 1. Called before any decoding."""

    def restore(
        self, request: RestoreRequest, crops: CropStream, progress: ProgressReporter
    ) -> Iterator[np.ndarray]:
        """Yield exactly `len(crops)` restored crops, (512, 512, 3) uint8 RGB, in frame order.

        Raise `BadInputError` for problems with the input, `TransientError` for problems that may go
        away (CUDA out of memory after retries). Warnings for the report go through `warnings` below."""

    def warnings(self) -> list[str]:
        """Human-readable notes about the last `restore` call, for the job report (may be empty)."""


def engine_start(engine: Engine, start: int, needed_from: int) -> int:
    """Where an engine run over frames from `start` begins when its output is needed only from `needed_from` on
    (a resumed job): `resume_context` frames earlier for an engine that declares it (not before `start`); at
    `start` for any other, whose first outputs are then dropped (it may resume from checkpoints of its own)."""
    context = getattr(engine, "resume_context", None)
    if needed_from == start or context is None:
        return start
    return max(start, needed_from - int(context))
