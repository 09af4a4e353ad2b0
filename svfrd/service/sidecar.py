"""The sidecar `NAME.toml` beside `NAME.mp4`: what to do with that one video.

```
tasks = ["bfr", "inpaint"]     # or ids [0, 2]; default: the inbox's tasks
mask = "clip.mask.png"         # relative to the folder of the video; required for inpainting (2)
reference = "face.jpg"         # optional photo of the subject
seed = 77
[options]                      # per-job engine options, e.g. steps = 20
```

Everything is checked here, before a job exists: a wrong sidecar fails its video at once with a message that
says which key is wrong and how to fix it (a BadInputError), instead of failing minutes into a GPU run.

The sidecar, mask and reference are opened beneath the inbox (`svfrd.files.beneath`: no symlink in any part of
the path, plain files only) and read once, with a size cap; the spec carries the image bytes that were checked,
and intake keeps a private copy of them for the worker (docs/architecture.md, "Paths from an inbox").
"""

from __future__ import annotations

import io
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Mapping

from PIL import Image, UnidentifiedImageError

from svfrd.config import parse_tasks, toml_repr
from svfrd.domain import (
    BUILTIN_OPTION_NAMES,
    DEFAULT_PRIORITY,
    DEFAULT_SEED,
    Task,
    mask_rule_problem,
    option_problem,
    priority_problem,
)
from svfrd.errors import BadInputError
from svfrd.files import beneath
from svfrd.media.masks import DEFAULT_MAX_MASK_PIXELS, check_mask_file

SIDECAR_KEYS = ("tasks", "mask", "reference", "seed", "priority", "options")
#: Sidecars are refused above this size, before they are parsed: a few settings fit in far less.
MAX_SIDECAR_BYTES = 16 * 1024
#: Dots allowed on one line of a sidecar (keys and values together; a real sidecar has a handful).
MAX_DOTS_PER_LINE = 64
#: The most bytes read from a mask or reference image (a 4K PNG mask is a few MB).
IMAGE_READ_LIMIT = 64 << 20


@dataclass(frozen=True)
class JobSpec:
    """What one video's job will do. Paths are absolute and inside the folder of the video; `mask_data` and
    `reference_data` are the images' bytes as read and checked (the worker uses a private copy of them)."""

    tasks: frozenset[Task]
    mask_path: Path | None = None
    reference_path: Path | None = None
    seed: int = DEFAULT_SEED
    options: dict = field(default_factory=dict, hash=False)
    priority: int = DEFAULT_PRIORITY
    mask_data: bytes | None = field(default=None, repr=False, hash=False)
    reference_data: bytes | None = field(default=None, repr=False, hash=False)


def sidecar_path_for(video: Path) -> Path:
    """`clip.mp4` -> `clip.toml`."""
    return video.with_suffix(".toml")


def default_spec(tasks: frozenset[Task], options: Mapping[str, Any], priority: int = DEFAULT_PRIORITY) -> JobSpec:
    """The job for a video that arrived without a sidecar: the inbox's defaults."""
    return JobSpec(tasks=frozenset(tasks), options=dict(options), priority=priority)


def parse_sidecar(
    sidecar: Path | bytes | BinaryIO,
    video_folder: Path,
    *,
    name: str | None = None,
    inbox: Path | None = None,
    default_tasks: frozenset[Task] = frozenset({Task.BFR}),
    default_options: Mapping[str, Any] | None = None,
    allowed_options: frozenset[str] = BUILTIN_OPTION_NAMES,
    default_priority: int = DEFAULT_PRIORITY,
    max_mask_pixels: int = DEFAULT_MAX_MASK_PIXELS,
) -> JobSpec:
    """Read and check a sidecar: a path (opened beneath its own folder), an open binary file (intake opens it
    beneath the inbox), or its bytes; `name` is what messages call it (default: the path's name). `mask` and
    `reference` are named relative to `video_folder`, the folder of the video (a folder dropped into the inbox,
    or the inbox itself), may not leave it, and are opened beneath `inbox` (default: `video_folder`) with no
    symlink in any part of their path. Unset keys take the inbox defaults; `[options]` are merged over the
    inbox's options. `allowed_options`: the configured engine's (`EngineConfig.option_names`, which includes a
    plug-in engine's own). `max_mask_pixels`: [limits] max_mask_pixels, the limit the worker holds the mask to.
    Raises BadInputError naming the sidecar, the key and what to do."""
    problem = _SidecarProblem(name or (sidecar.name if isinstance(sidecar, Path) else "sidecar"))
    raw = _read_toml(_sidecar_bytes(sidecar, problem), problem)
    unknown = sorted(set(raw) - set(SIDECAR_KEYS))
    if unknown:
        raise problem(f"unknown key {unknown[0]!r}; allowed keys are " + ", ".join(SIDECAR_KEYS))
    tasks = _tasks(raw, default_tasks, problem)
    images = _Images(video_folder, inbox or video_folder, problem)
    mask = images.read(raw, "mask", max_mask_pixels)
    _check_mask_rule(tasks, mask and mask[0], raw, problem)
    reference = images.read(raw, "reference")
    return JobSpec(
        tasks=tasks,
        mask_path=mask and mask[0],
        reference_path=reference and reference[0],
        seed=_seed(raw, problem),
        priority=_priority(raw, default_priority, problem),
        options={**(default_options or {}), **_options(raw, allowed_options, problem)},
        mask_data=mask and mask[1],
        reference_data=reference and reference[1],
    )


def _sidecar_bytes(sidecar: Path | bytes | BinaryIO, problem: _SidecarProblem) -> bytes:
    """At most one byte more than MAX_SIDECAR_BYTES: enough for `sidecar_toml` to refuse a bigger sidecar."""
    if isinstance(sidecar, bytes):
        content = sidecar
    elif isinstance(sidecar, Path):
        try:
            with beneath.open_plain_file(sidecar.parent, sidecar.name) as f:
                content = f.read(MAX_SIDECAR_BYTES + 1)
        except OSError as err:
            raise problem(f"cannot be read: {err.strerror}") from None
    else:
        content = sidecar.read(MAX_SIDECAR_BYTES + 1)
    return content


def _check_mask_rule(tasks: frozenset[Task], mask: Path | None, raw: dict, problem: _SidecarProblem) -> None:
    rule = mask_rule_problem(tasks, has_mask=mask is not None)
    if rule is None:
        return
    if mask is None:
        raise problem(f'{rule}; add mask = "NAME.png", a path relative to the folder of the video')
    raise problem(f"mask = {toml_repr(raw['mask'])}: {rule}; add \"inpaint\" to tasks or remove the mask")


class _SidecarProblem:
    """Builds the BadInputError for one sidecar, so every message has the same shape."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, what: str) -> BadInputError:
        return BadInputError(
            f"sidecar {self.name}: {what}. Correct {self.name} and put the video and its sidecar into the inbox again."
        )


def _read_toml(content: bytes, problem: _SidecarProblem) -> dict:
    """Parse the sidecar's bytes within the limits of `sidecar_toml`."""
    try:
        return sidecar_toml(content)
    except UnreadableSidecar as err:
        raise problem(str(err)) from None


class UnreadableSidecar(ValueError):
    """Why a sidecar's TOML could not be read; the text follows "sidecar NAME: "."""


def sidecar_toml(data: bytes) -> dict:
    """Parse a sidecar's bytes. A sidecar is a few short lines, and anyone who can write to an inbox can write
    one, so what could make the parser slow or big is refused first (docs/architecture.md §5, "Hostile
    input"): more than MAX_SIDECAR_BYTES, or a line with more than MAX_DOTS_PER_LINE dots (tomllib's memory
    grows with the square of a dotted key's length: 16 KiB of `a.a.a…` took 270 MB); nesting too deep for
    the parser's recursion is caught. Raises UnreadableSidecar."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise UnreadableSidecar(f"larger than {MAX_SIDECAR_BYTES // 1024} KiB, and a sidecar needs only a few "
                                "short lines (tasks, mask, reference, seed, [options])")
    for number, line in enumerate(data.splitlines(), start=1):
        if line.count(b".") > MAX_DOTS_PER_LINE:
            raise UnreadableSidecar(f"line {number} has more than {MAX_DOTS_PER_LINE} dots; sidecar keys are "
                                    "short (e.g. options.steps)")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnreadableSidecar("not valid TOML: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise UnreadableSidecar(f"not valid TOML: {err}") from None
    except RecursionError:
        raise UnreadableSidecar("not valid TOML for svfrd: its arrays or tables are nested too deeply") from None


def _tasks(raw: dict, default: frozenset[Task], problem: _SidecarProblem) -> frozenset[Task]:
    if "tasks" not in raw:
        return frozenset(default)
    try:
        return parse_tasks(raw["tasks"])
    except ValueError as err:
        raise problem(f"tasks = {toml_repr(raw['tasks'])}: {err}") from None


def _seed(raw: dict, problem: _SidecarProblem) -> int:
    seed = raw.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise problem(f"seed = {toml_repr(seed)}: must be a whole number >= 0")
    return seed


def _priority(raw: dict, default: int, problem: _SidecarProblem) -> int:
    """A sidecar's `priority` replaces the inbox's `[[inbox]] priority`."""
    if "priority" not in raw:
        return default
    reason = priority_problem(raw["priority"])
    if reason:
        raise problem(f"priority = {toml_repr(raw['priority'])}: {reason}")
    return raw["priority"]


def _options(raw: dict, allowed: frozenset[str], problem: _SidecarProblem) -> dict:
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise problem(f"options = {toml_repr(options)}: must be a table, e.g. [options] steps = 20")
    for name, value in options.items():
        reason = option_problem(name, value, allowed)
        if reason:
            raise problem(f"[options] {name} = {toml_repr(value)}: {reason}")
    return dict(options)


class _Images:
    """Reads the images a sidecar names: each once, beneath the inbox, checked to be an image."""

    def __init__(self, video_folder: Path, inbox: Path, problem: _SidecarProblem):
        self.video_folder, self.inbox, self.problem = video_folder, inbox, problem

    def read(self, raw: dict, key: str, max_pixels: int | None = None) -> tuple[Path, bytes] | None:
        """(path, content) of the image `raw[key]` names, or None when the key is not set. `max_pixels`: a
        mask's limit ([limits] max_mask_pixels); without it, Pillow's own limit applies."""
        if key not in raw:
            return None
        path = _image_path(raw, key, self.video_folder, self.problem)
        shown = f"{key} = {toml_repr(raw[key])}"
        try:
            with beneath.open_plain_file(self.inbox, path) as f:
                data = beneath.read_at_most(f, IMAGE_READ_LIMIT, path.name)
        except FileNotFoundError:
            raise self.problem(f"{shown}: {path} does not exist; put the image next to the video") from None
        except PermissionError:
            raise self.problem(f"{shown}: {path} cannot be read (permission denied)") from None
        except BadInputError as err:
            raise self.problem(f"{shown}: {str(err).rstrip('.')}") from None
        except OSError as err:
            raise self.problem(f"{shown}: {path} cannot be read ({err.strerror})") from None
        _check_image(data, path, shown, self.problem, max_pixels)
        return path, data


def _image_path(raw: dict, key: str, video_folder: Path, problem: _SidecarProblem) -> Path:
    """The path `raw[key]` names: relative to the folder of the video and without '..' (whether it is a plain
    file reached without links is checked when it is opened)."""
    value = raw[key]
    shown = f"{key} = {toml_repr(value)}"
    if not isinstance(value, str) or not value.strip():
        raise problem(f"{shown}: must be a file name relative to the folder of the video")
    relative = PurePosixPath(value)
    if relative.is_absolute() or value.startswith("~"):
        raise problem(f"{shown}: must be relative to the folder of the video, not an absolute path")
    if ".." in relative.parts:
        raise problem(f"{shown}: must not contain '..'; put the file next to the video")
    return video_folder / relative


def _check_image(data: bytes, path: Path, shown: str, problem: _SidecarProblem, max_pixels: int | None) -> None:
    """A mask is held to `max_pixels`, the limit the worker holds it to (`svfrd.media.masks.load_mask`), so that
    a mask it would refuse fails here, before a job exists; a reference to Pillow's own limit."""
    try:
        if max_pixels is not None:
            check_mask_file(io.BytesIO(data), path.name, max_pixels)
            return
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice that; both are refused as too large.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
    except BadInputError as err:  # the mask's own message, as the worker would give it
        raise problem(f"{shown}: {str(err).rstrip('.')}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise problem(f"{shown}: {path} says it is larger than {Image.MAX_IMAGE_PIXELS:,} pixels, far more than a "
                      "video frame; use an image of the video's frame size") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        detail = "not an image file" if isinstance(err, UnidentifiedImageError) else f"a damaged image ({err})"
        raise problem(f"{shown}: {path} is {detail}; use a PNG or JPEG") from None
