"""Putting a video (with its sidecar, mask and reference) into an inbox so that intake never sees half of it.

`svfrd submit` and the web page's uploads both come through `submit_to_inbox`, so a submitted video is checked,
named and deduplicated exactly like one dropped into the folder: intake makes the job (svfrd.service.intake).
The extras and the sidecar appear first and the video last, each complete (hidden temporary name, then
rename), so intake finds the sidecar the moment it sees the video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from svfrd.config import toml_repr
from svfrd.domain import Task, mask_rule_problem
from svfrd.files import placement

#: Places the file at the first path at the second (copying it, or renaming a temporary upload).
Place = Callable[[Path, Path], None]


class SubmissionError(ValueError):
    """A submission that cannot go in; the message says what to change."""


@dataclass(frozen=True)
class Submission:
    """What to do with the video: None for tasks means the inbox's default tasks (no sidecar needed)."""

    tasks: frozenset[Task] | None = None
    mask: Path | None = None
    reference: Path | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    priority: int | None = None  # None: the inbox's
    #: The suffix each extra's inbox name gets ("mask": ".png"); default: its own path's (an upload's
    #: temporary file has none worth keeping).
    suffixes: dict[str, str] = field(default_factory=dict, hash=False)

    def extras(self) -> dict[str, Path | None]:
        return {"mask": self.mask, "reference": self.reference}

    def extra_names(self) -> dict[str, str | None]:
        """The extras as names with the suffix they get in the inbox (for choosing a free stem)."""
        return {what: f"x{self.suffixes.get(what, path.suffix.lower())}" if path is not None else None
                for what, path in self.extras().items()}


def mask_rule_error(tasks: frozenset[Task] | None, has_mask: bool) -> str | None:
    """The inbox's default tasks never include inpainting (config refuses it), so no tasks means no task 2."""
    return mask_rule_problem(tasks or frozenset(), has_mask)


def submit_to_inbox(inbox: Path, video: Path, video_name: str, submission: Submission, place: Place) -> Path:
    """Put `video` into `inbox` as `video_name` (or `stem-2.mp4`, ... when taken), extras and sidecar first.
    Returns the video's path in the inbox. `video_name` must be a plain name, never a path."""
    if Path(video_name).name != video_name or video_name.startswith("."):
        raise SubmissionError(f"{video_name!r} is not a plain visible file name")
    problem = mask_rule_error(submission.tasks, submission.mask is not None)
    if problem is not None:
        raise SubmissionError(problem)
    inbox.mkdir(parents=True, exist_ok=True)
    suffix = Path(video_name).suffix
    stem = free_stem(inbox, Path(video_name), submission.extra_names())
    copied: dict[str, str] = {}
    for what, path in submission.extras().items():
        if path is not None:
            name = f"{stem}.{what}{submission.suffixes.get(what, path.suffix.lower())}"
            place(path, inbox / name)
            copied[what] = name
    if (submission.tasks is not None or copied or submission.seed is not None or submission.options
            or submission.priority is not None):
        from svfrd.files.atomic import write_replacing

        write_replacing(inbox / f"{stem}.toml", sidecar_text(submission.tasks, copied, submission.seed,
                                                             submission.options, submission.priority))
    target = inbox / f"{stem}{suffix}"
    place(video, target)
    return target


def free_stem(inbox: Path, video: Path, extras: dict[str, Path | str | None]) -> str:
    """The video's stem, or `stem-2`, ... so that no file of this submission replaces one in the inbox."""
    suffixes = [video.suffix, ".toml"]
    suffixes += [f".{what}{Path(p).suffix.lower()}" for what, p in extras.items() if p is not None]
    stem = placement.free_stem(inbox, video.stem, suffixes)
    if stem is not None:
        return stem
    raise SubmissionError(f"{inbox} already holds 10,000 videos named like {video.name}")


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def sidecar_text(
    tasks: frozenset[Task] | None, copied: dict[str, str], seed: int | None, options: dict[str, Any] | None = None,
    priority: int | None = None,
) -> str:
    lines = ["# written by `svfrd submit`"]
    if tasks is not None:
        lines.append("tasks = [" + ", ".join(toml_string(t.label) for t in sorted(tasks)) + "]")
    for what, name in copied.items():
        lines.append(f"{what} = {toml_string(name)}")
    if seed is not None:
        lines.append(f"seed = {seed}")
    if priority is not None:
        lines.append(f"priority = {priority}")
    if options:
        lines.append("[options]")
        lines += [f"{name} = {toml_repr(value)}" for name, value in options.items()]
    return "\n".join(lines) + "\n"
