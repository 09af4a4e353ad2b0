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
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

from svfrd.config import parse_tasks, toml_repr
from svfrd.domain import BUILTIN_OPTION_NAMES, DEFAULT_SEED, Task, mask_rule_problem, option_problem
from svfrd.errors import BadInputError

SIDECAR_KEYS = ("tasks", "mask", "reference", "seed", "options")
#: Sidecars are refused above this size, before they are parsed.
MAX_SIDECAR_BYTES = 16 * 1024
#: Dots allowed on one line of a sidecar (keys and values together; a real sidecar has a handful).
MAX_DOTS_PER_LINE = 64


@dataclass(frozen=True)
class JobSpec:
    """What one video's job will do. Paths are absolute and inside the folder of the video."""

    tasks: frozenset[Task]
    mask_path: Path | None = None
    reference_path: Path | None = None
    seed: int = DEFAULT_SEED
    options: dict = field(default_factory=dict, hash=False)


def sidecar_path_for(video: Path) -> Path:
    """`clip.mp4` -> `clip.toml`."""
    return video.with_suffix(".toml")


def default_spec(tasks: frozenset[Task], options: Mapping[str, Any]) -> JobSpec:
    """The job for a video that arrived without a sidecar: the inbox's defaults."""
    return JobSpec(tasks=frozenset(tasks), options=dict(options))


def parse_sidecar(
    sidecar: Path,
    video_folder: Path,
    *,
    default_tasks: frozenset[Task] = frozenset({Task.BFR}),
    default_options: Mapping[str, Any] | None = None,
    allowed_options: frozenset[str] = BUILTIN_OPTION_NAMES,
) -> JobSpec:
    """Read and check `sidecar`. `mask` and `reference` are named relative to `video_folder`, the folder of the
    video (a folder dropped into the inbox, or the inbox itself), and may not leave it. Unset keys take the
    inbox defaults; `[options]` are merged over the inbox's options. `allowed_options`: the configured
    engine's (`EngineConfig.option_names`, which includes a plug-in engine's own). Raises BadInputError naming
    the sidecar, the key and what to do."""
    problem = _SidecarProblem(sidecar.name)
    raw = _read_toml(sidecar, problem)
    unknown = sorted(set(raw) - set(SIDECAR_KEYS))
    if unknown:
        raise problem(f"unknown key {unknown[0]!r}; allowed keys are " + ", ".join(SIDECAR_KEYS))
    tasks = _tasks(raw, default_tasks, problem)
    mask = _image_path(raw, "mask", video_folder, problem)
    _check_mask_rule(tasks, mask, raw, problem)
    return JobSpec(
        tasks=tasks,
        mask_path=mask,
        reference_path=_image_path(raw, "reference", video_folder, problem),
        seed=_seed(raw, problem),
        options={**(default_options or {}), **_options(raw, allowed_options, problem)},
    )


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


def _read_toml(sidecar: Path, problem: _SidecarProblem) -> dict:
    try:
        return read_sidecar_toml(sidecar)
    except UnreadableSidecar as err:
        raise problem(str(err)) from None


class UnreadableSidecar(ValueError):
    """Why a sidecar's TOML could not be read; the text follows "sidecar NAME: "."""


def read_sidecar_toml(sidecar: Path) -> dict:
    """The TOML of `sidecar`, read within the limits of `sidecar_toml`. Raises UnreadableSidecar."""
    try:
        with open(sidecar, "rb") as f:
            data = f.read(MAX_SIDECAR_BYTES + 1)  # never more: the size limit holds before anything is parsed
    except OSError as err:
        raise UnreadableSidecar(f"cannot be read: {err.strerror}") from None
    return sidecar_toml(data)


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


def _options(raw: dict, allowed: frozenset[str], problem: _SidecarProblem) -> dict:
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise problem(f"options = {toml_repr(options)}: must be a table, e.g. [options] steps = 20")
    for name, value in options.items():
        reason = option_problem(name, value, allowed)
        if reason:
            raise problem(f"[options] {name} = {toml_repr(value)}: {reason}")
    return dict(options)


def _image_path(raw: dict, key: str, video_folder: Path, problem: _SidecarProblem) -> Path | None:
    """A path relative to the folder of the video that stays inside it (also through symlinks) and names a
    readable image."""
    if key not in raw:
        return None
    value = raw[key]
    shown = f"{key} = {toml_repr(value)}"
    if not isinstance(value, str) or not value.strip():
        raise problem(f"{shown}: must be a file name relative to the folder of the video")
    relative = PurePosixPath(value)
    if relative.is_absolute() or value.startswith("~"):
        raise problem(f"{shown}: must be relative to the folder of the video, not an absolute path")
    if ".." in relative.parts:
        raise problem(f"{shown}: must not contain '..'; put the file next to the video")
    path = video_folder / relative
    if not path.exists():
        raise problem(f"{shown}: {path} does not exist; put the image next to the video")
    if not path.resolve().is_relative_to(video_folder.resolve()):
        raise problem(f"{shown}: it is a symlink leading outside the folder of the video ({path.resolve()}); copy the image in")
    if not path.is_file():
        raise problem(f"{shown}: {path} is not a file")
    _check_image(path, shown, problem)
    return path


def _check_image(path: Path, shown: str, problem: _SidecarProblem) -> None:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its pixel limit and twice that; both are refused as too large.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
    except PermissionError:
        raise problem(f"{shown}: {path} cannot be read (permission denied)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise problem(f"{shown}: {path} says it is larger than {Image.MAX_IMAGE_PIXELS:,} pixels, far more than a "
                      "video frame; use an image of the video's frame size") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        detail = "not an image file" if isinstance(err, UnidentifiedImageError) else f"a damaged image ({err})"
        raise problem(f"{shown}: {path} is {detail}; use a PNG or JPEG") from None
