"""The service's domain vocabulary, with no heavy imports (standard library only): the restoration tasks, the
face crop size, the default seed, the rule that inpainting needs a mask, and the table of per-job options.

Config, sidecar, `svfrd submit`, the pipeline and the engines all take these from here, so an option or a rule
is defined once.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping

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


def task_labels(stored: str) -> str:
    """Task ids as the jobs table stores them ("0,2") in words ("bfr+inpaint"), for people; an id this svfrd
    does not know is shown as it is, none as "-"."""
    labels = {str(task.value): task.label for task in Task}
    ids = [item.strip() for item in stored.split(",") if item.strip()]
    return "+".join(labels.get(item, item) for item in ids) or "-"


# ---------------------------------------------------------------------------------------------------------------
# The mask rule.


def mask_rule_problem(tasks: Collection[Task], has_mask: bool) -> str | None:
    """None if the tasks and the presence of a mask fit together, else what is wrong (callers add how to fix
    it where the user gave the tasks: a sidecar key, a command-line flag, a config key)."""
    if Task.INPAINT in tasks and not has_mask:
        return "task 2 (inpaint) needs a mask"
    if has_mask and Task.INPAINT not in tasks:
        return "a mask is only used for inpainting (task 2)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Per-job options: one table. A sidecar `[options]` table, an inbox's `options` and `svfrd submit --option` may
# set them; the config key named in `config_key` sets the service-wide default.

#: Who reads an option: the video pipeline (`svfrd.media.pipeline`) or the SVFR engine. Options the pipeline
#: owns never reach an engine; every other option goes to the engine in `RestoreRequest.options`.
PIPELINE, SVFR = "pipeline", "svfr"


@dataclass(frozen=True)
class Option:
    """One per-job option. `kind` is "int" (whole number in [minimum, maximum]), "number" (finite, > minimum
    and <= maximum) or "choice" (one of `choices`)."""

    name: str
    owner: str
    kind: str
    default: Any
    config_key: str
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    def problem(self, value: Any) -> str | None:
        """None if `value` is allowed, else what is allowed (for an error message)."""
        if self.kind == "choice":
            return None if value in self.choices else "allowed values are " + self.allowed
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int":
            ok = is_number and isinstance(value, int) and self._in_range(value)
        else:
            finite = is_number and (isinstance(value, int) or math.isfinite(value))  # a TOML int may not fit a float
            ok = finite and value > (self.minimum or 0) and self._in_range(value)
        return None if ok else "must be " + self.allowed

    @property
    def allowed(self) -> str:
        """What the option accepts, in words: `"a", "b"`, `a whole number >= 1 and <= 150`,
        `a finite number > 0 and <= 20`."""
        if self.kind == "choice":
            return ", ".join(json.dumps(c) for c in self.choices)
        if self.kind == "int":
            upper = f" and <= {self.maximum:g}" if self.maximum is not None else ""
            return f"a whole number >= {self.minimum:g}{upper}"
        upper = f" and <= {self.maximum:g}" if self.maximum is not None else ""
        return f"a finite number > {self.minimum or 0:g}{upper}"

    def _in_range(self, value: float) -> bool:
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)


#: Upper bounds of the SVFR options: every step is a full pass of UNet calls over the video (docs/svfr.md §9), so
#: time grows linearly with them while the result stops improving long before. Steps allow five times the
#: reference's 30 and 50 (docs/svfr.md §6); guidance ten times its constant 2.0. A sidecar asking for more
#: would hold the GPU for days, or (guidance = inf) produce only noise.
MAX_STEPS, MAX_PASS1_STEPS, MAX_GUIDANCE_SCALE = 150, 250, 20.0

OPTIONS: dict[str, Option] = {option.name: option for option in (
    Option("steps", SVFR, "int", 30, "[engine.svfr] steps", "SVFR denoising steps of the main pass",
           minimum=1, maximum=MAX_STEPS),
    Option("pass1_steps", SVFR, "int", 50, "[engine.svfr] pass1_steps",
           "SVFR denoising steps of the first pass that finds the reference frame", minimum=1,
           maximum=MAX_PASS1_STEPS),
    Option("guidance_scale", SVFR, "number", 2.0, "[engine.svfr] guidance_scale",
           "SVFR classifier-free guidance strength", minimum=0, maximum=MAX_GUIDANCE_SCALE),
    Option("mode", SVFR, "choice", "reference", "[engine.svfr] mode",
           "SVFR as the original code runs it, or with its known flaws corrected (docs/svfr.md)",
           choices=("reference", "improved")),
    Option("crop", PIPELINE, "choice", "tracked", "[faces] crop",
           "face crop per frame following the face, or SVFR's larger static crop", choices=("tracked", "reference")),
    Option("restore", PIPELINE, "choice", "all", "[faces] restore",
           "restore every face in the picture (each its own track and engine run), or only the largest one",
           choices=("all", "largest")),
    Option("min_size", PIPELINE, "number", 0.05, "[faces] min_size",
           "faces smaller than this fraction of the frame height are left as they are (restore = \"all\")",
           minimum=0, maximum=1),
    Option("max_faces", PIPELINE, "int", 8, "[faces] max_faces",
           "the most faces restored per shot, the largest first (restore = \"all\")", minimum=1, maximum=32),
    Option("crf", PIPELINE, "int", 18, "[output] crf", "H.264 quality of the output (lower is better, larger)",
           minimum=0, maximum=51),
    Option("output_mode", PIPELINE, "choice", "full_frame", "[output] mode",
           "the whole picture with the face pasted back, or the 512x512 face crop only",
           choices=("full_frame", "crop")),
)}

#: The options of the table: accepted whatever the engine, so an inbox can switch engines (an engine ignores
#: the ones it does not use and says so in the report).
BUILTIN_OPTION_NAMES = frozenset(OPTIONS)


def options_owned_by(owner: str) -> frozenset[str]:
    return frozenset(name for name, option in OPTIONS.items() if option.owner == owner)


def accepted_option_names(engine_option_names: Iterable[str] = ()) -> frozenset[str]:
    """The options a job may set with a given engine: the table's, plus the engine's own (a plug-in engine
    declares them in `option_names`; see svfrd/engines/interface.py)."""
    return BUILTIN_OPTION_NAMES | frozenset(engine_option_names)


def option_problem(name: str, value: Any, accepted: Collection[str] = BUILTIN_OPTION_NAMES) -> str | None:
    """None if `name = value` is an acceptable per-job option, else why not (for an error message).
    Values of an engine's own options (not in the table) are the engine's to check, in `Engine.check`."""
    if name not in accepted:
        return "unknown option; allowed options are " + ", ".join(sorted(accepted))
    option = OPTIONS.get(name)
    return option.problem(value) if option else None


def engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options an engine receives: all but the pipeline's own."""
    pipeline = options_owned_by(PIPELINE)
    return {name: value for name, value in options.items() if name not in pipeline}


#: A job's priority: higher runs first, then arrival (a sidecar's `priority`, `[[inbox]] priority`, `svfrd submit
#: --priority`, `svfrd priority ID N`).
PRIORITY_MIN, PRIORITY_MAX, DEFAULT_PRIORITY = -100, 100, 0


def priority_problem(value: Any) -> str | None:
    """Why `value` is not a priority, or None."""
    if isinstance(value, int) and not isinstance(value, bool) and PRIORITY_MIN <= value <= PRIORITY_MAX:
        return None
    return (f"a priority is a whole number from {PRIORITY_MIN} to {PRIORITY_MAX} (higher runs first, "
            f"default {DEFAULT_PRIORITY})")
