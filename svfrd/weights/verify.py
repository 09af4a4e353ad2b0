"""`svfrd verify-models`: is every file in the model folder complete and the one its network expects?

Nothing is loaded onto a GPU or into memory: safetensors files are judged by their JSON header, `.pth` files
are read with `torch.load(..., weights_only=True, mmap=True, map_location="meta")` (tensor shapes and dtypes
only), and the networks are built on the meta device from the folder's own configs, as the loader builds them
(svfrd.engines.svfr.loading, svfrd.engines.svfr.identity). Every key, shape and dtype is compared. The bytes are
read once per new or changed file, for its sha256 and, in a `.pth` (a zip), the CRC of every tensor record.

What was found good goes into models/manifest.lock.json (svfrd.weights.lock); later runs skip files whose size
and mtime are unchanged, `--full` re-reads them all.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from svfrd.engines.svfr.model_folder import (
    ARCFACE_WEIGHTS,
    ID_LINEAR_WEIGHTS,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    UNET_WEIGHTS,
)
from svfrd.weights.files import VAE_CONFIG, human_size
from svfrd.weights.lock import (
    file_stamp,
    files_to_verify,
    now_text,
    read_lock,
    unchanged,
    write_lock,
)

#: A tensor as a file describes it: shape and dtype.
TensorSpec = tuple[tuple[int, ...], torch.dtype]
#: Checkpoints may store float tensors in any of these; the loader casts to the compute dtype.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SAFETENSORS_DTYPES = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_SAFETENSORS_HEADER = 100 * 2**20
READ_CHUNK = 8 * 2**20
#: Called with the number of bytes just read while hashing, for a progress bar.
Progress = Callable[[int], None]


class FileProblem(Exception):
    """What is wrong with one file, in words that name it."""


class CannotCheck(FileProblem):
    """The file could not be judged, because a file it is checked against (a config) is missing or bad."""


@dataclass
class Finding:
    path: str  # relative to the model folder
    problem: str | None = None
    checked: str = ""
    size: int = 0
    sha256: str | None = None
    skipped: bool = False  # unchanged since the lock: not read again

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Report:
    models_dir: Path
    findings: list[Finding] = field(default_factory=list)
    lock_written: Path | None = None

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]


# --------------------------------------------------------------------------------------------------------------
# The whole folder.


def verify_models(models_dir: Path, full: bool = False, progress: Progress | None = None) -> Report:
    """Check every file the engine reads and write the lock with the good ones. Without `full`, a folder whose
    files all match the lock is not read at all, and in a changed folder only new or changed files are hashed."""
    models_dir = Path(models_dir)
    report = Report(models_dir)
    names = files_to_verify(models_dir)
    entries = read_lock(models_dir) or {}
    if not full and entries and all(unchanged(models_dir, n, entries.get(n)) for n in names):
        report.findings = [Finding(n, checked=entries[n].get("checked", ""), size=entries[n]["size"],
                                   sha256=entries[n].get("sha256"), skipped=True) for n in names]
        return report

    architecture = Architecture(models_dir)
    for name in names:
        previous = entries.get(name)
        rehash = full or not unchanged(models_dir, name, previous)
        report.findings.append(verify_file(architecture, name, previous, rehash, progress))
    good = {f.path: lock_entry(models_dir, f, entries.get(f.path)) for f in report.findings if f.ok}
    report.lock_written = write_lock(models_dir, good)
    return report


def verify_file(architecture: Architecture, name: str, previous: dict[str, Any] | None, rehash: bool,
                progress: Progress | None = None) -> Finding:
    path = architecture.models_dir / name
    finding = Finding(name)
    try:
        if not path.is_file():
            raise FileProblem(f"{name} is missing from {architecture.models_dir}; `svfrd fetch-models` downloads it")
        finding.size = path.stat().st_size
        finding.checked = check_structure(architecture, name, path, expected_size=(previous or {}).get("size"))
        if rehash:
            finding.sha256 = read_all_bytes(name, path, progress)
            if previous and previous.get("sha256") not in (None, finding.sha256) and unchanged(
                    architecture.models_dir, name, previous):
                raise FileProblem(f"{name} changed on disk since it was verified on {previous.get('verified_at')} "
                                  "although its size and time did not: the disk or a copy damaged it; fetch it again")
        else:
            finding.sha256 = previous.get("sha256") if previous else None
    except FileProblem as err:
        finding.problem = str(err)
    return finding


def lock_entry(models_dir: Path, finding: Finding, previous: dict[str, Any] | None) -> dict[str, Any]:
    stamp = file_stamp(models_dir / finding.path)
    kept = previous if previous and previous.get("sha256") == finding.sha256 and unchanged(
        models_dir, finding.path, previous) else None
    return {**stamp, "sha256": finding.sha256, "checked": finding.checked,
            "verified_at": kept["verified_at"] if kept else now_text()}


# --------------------------------------------------------------------------------------------------------------
# One file. `path` may be a staged download that is to become `name` (svfrd.weights.fetch).


def check_structure(architecture: Architecture, name: str, path: Path, expected_size: int | None = None) -> str:
    """Raises FileProblem naming the file; returns what was checked."""
    if name in (UNET_CONFIG, SCHEDULER_CONFIG, VAE_CONFIG):
        return check_config(architecture, name, path)
    if name.endswith(".safetensors"):
        return check_vae_weights(architecture, name, path)
    return check_checkpoint(architecture, name, path, expected_size)


def check_config(architecture: Architecture, name: str, path: Path) -> str:
    config = read_json(name, path)
    try:
        if name == UNET_CONFIG:
            architecture.unet_from(config)
            return "a UNet config diffusers builds (SVFR widens it to 12 input channels)"
        if name == VAE_CONFIG:
            architecture.vae_from(config)
            return "a temporal-decoder VAE config diffusers builds"
        from diffusers import EulerDiscreteScheduler

        EulerDiscreteScheduler.from_config(config)
        return "an Euler scheduler config"
    except Exception as err:  # diffusers raises many kinds for a config it cannot build
        raise FileProblem(f"{name} does not describe the network it should ({type(err).__name__}: {err})") from err


def check_vae_weights(architecture: Architecture, name: str, path: Path) -> str:
    tensors, expected_size = read_safetensors_header(name, path)
    actual = path.stat().st_size
    if actual < expected_size:
        raise FileProblem(f"{name} is truncated: {human_size(actual)} of {human_size(expected_size)}")
    if actual > expected_size:
        raise FileProblem(f"{name} has {actual - expected_size} bytes after its last tensor: not a safetensors file "
                          "as written, or two downloads run into each other; fetch it again")
    expected = architecture.vae_tensors
    compare_tensors(name, tensors, expected)
    return f"header, keys, shapes and dtypes of {len(expected)} tensors against the VAE built from {VAE_CONFIG}"


def check_checkpoint(architecture: Architecture, name: str, path: Path, expected_size: int | None) -> str:
    minimum = architecture.minimum_bytes(name)
    tensors = read_checkpoint_tensors(name, path, minimum, expected_size)
    if name == UNET_WEIGHTS:
        expected = architecture.unet_tensors
        compare_tensors(name, tensors, expected)
        return f"keys, shapes and dtypes of {len(expected)} tensors against the UNet built from {UNET_CONFIG}"
    if name == ARCFACE_WEIGHTS:
        arcface = architecture.arcface_for(name, tensors)
        compare_tensors(name, tensors, specs_of(arcface))
        return f"keys, shapes and dtypes of {len(tensors)} tensors against the iresnet they describe"
    if name == ID_LINEAR_WEIGHTS:
        projection = architecture.projection_for(name, tensors)
        compare_tensors(name, tensors, specs_of(projection))
        check_projection_fits(architecture, name, projection)
        return (f"keys, shapes and dtypes of {len(tensors)} tensors; projects the ArcFace features to the UNet's "
                "cross-attention width")
    raise FileProblem(f"{name} is not a file svfrd knows how to check")


def check_projection_fits(architecture: Architecture, name: str, projection: torch.nn.Module) -> None:
    """id_linear sits between ArcFace and the UNet: its widths must be theirs (docs/svfr.md §4)."""
    width = architecture.cross_attention_dim
    if width is not None and projection.project1024.out_channels != width:
        raise FileProblem(f"{name} makes {projection.project1024.out_channels}-wide ID tokens, but the UNet of "
                          f"{UNET_CONFIG} attends to {width}-wide ones: the files do not belong together")
    arcface_width = architecture.arcface_width
    if arcface_width is not None and projection.project1024.in_channels != arcface_width:
        raise FileProblem(f"{name} expects {projection.project1024.in_channels}-channel ArcFace features, but "
                          f"{ARCFACE_WEIGHTS} produces {arcface_width}: the files do not belong together")


def compare_tensors(name: str, found: dict[str, TensorSpec], expected: dict[str, TensorSpec]) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)
    if missing:
        raise FileProblem(f"{name} has {len(expected) - len(missing)} of the {len(expected)} expected keys; "
                          f"missing: {abbreviate(missing)}")
    if unexpected:
        raise FileProblem(f"{name} has {len(unexpected)} keys the network does not have: {abbreviate(unexpected)}")
    wrong_shape = [f"{k} {shape_text(found[k][0])} (the network wants {shape_text(expected[k][0])})"
                   for k in expected if found[k][0] != expected[k][0]]
    if wrong_shape:
        raise FileProblem(f"{name} does not fit the network (wrong shape: {abbreviate(wrong_shape)}); it is not the "
                          "released file for this model folder's configs")
    wrong_dtype = [f"{k} {found[k][1]} (wants {expected_dtype_text(expected[k][1])})"
                   for k in expected if not dtype_fits(found[k][1], expected[k][1])]
    if wrong_dtype:
        raise FileProblem(f"{name} holds tensors of the wrong type: {abbreviate(wrong_dtype)}")


def dtype_fits(found: torch.dtype, expected: torch.dtype) -> bool:
    if expected.is_floating_point:
        return found in FLOAT_DTYPES
    return found == expected


def expected_dtype_text(dtype: torch.dtype) -> str:
    return "float16, bfloat16 or float32" if dtype.is_floating_point else str(dtype)


# --------------------------------------------------------------------------------------------------------------
# Reading files without their tensors.


def read_json(name: str, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise FileProblem(f"{name} is not readable JSON ({err}); fetch it again") from err
    if not isinstance(config, dict):
        raise FileProblem(f"{name} is JSON but not a config object; fetch it again")
    return config


def read_safetensors_header(name: str, path: Path) -> tuple[dict[str, TensorSpec], int]:
    """The tensors a safetensors file declares, and the file size its header implies (8-byte length, JSON
    header, then the tensor bytes up to the largest end offset)."""
    actual = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FileProblem(f"{name} is truncated: {actual} bytes, not even a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER:
            raise FileProblem(f"{name} is corrupted: not a safetensors file (its header would be {length} bytes)")
        raw = f.read(length)
    if len(raw) < length:
        raise FileProblem(f"{name} is truncated: {human_size(actual)}, its header alone needs {human_size(8 + length)}")
    try:
        header = json.loads(raw)
        header.pop("__metadata__", None)
        tensors: dict[str, TensorSpec] = {}
        end = 0
        for key, entry in header.items():
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            tensors[key] = (tuple(int(d) for d in entry["shape"]), dtype)
            end = max(end, int(entry["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise FileProblem(f"{name} is corrupted: its safetensors header does not parse ({err!r})") from err
    return tensors, 8 + length + end


def read_checkpoint_tensors(name: str, path: Path, minimum: int | None, expected_size: int | None
                            ) -> dict[str, TensorSpec]:
    """Keys, shapes and dtypes of a torch.save'd state dict, read onto the meta device (no tensor bytes)."""
    actual = path.stat().st_size
    if expected_size and actual < expected_size:
        raise FileProblem(f"{name} is truncated: {human_size(actual)} of {human_size(expected_size)}")
    if not zipfile.is_zipfile(path):
        if minimum and actual < minimum:
            raise FileProblem(f"{name} is truncated: {human_size(actual)} of at least {human_size(minimum)} "
                              "(the network's tensors alone, in float16)")
        if looks_like_a_web_page(path):
            raise FileProblem(f"{name} is a web page, not a checkpoint: the server sent an error or quota page "
                              "instead of the file; fetch it again")
        raise FileProblem(f"{name} is corrupted: not a zip-format torch checkpoint")
    try:
        state = torch.load(path, weights_only=True, mmap=True, map_location="meta")
    except Exception as err:  # torch raises many kinds for a damaged archive or a non-tensor pickle
        raise FileProblem(f"{name} is corrupted: torch cannot read it ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileProblem(f"{name} is not a plain state dict of tensors")
    if minimum and actual < minimum:
        raise FileProblem(f"{name} is truncated: {human_size(actual)} of at least {human_size(minimum)}")
    return {key: (tuple(t.shape), t.dtype) for key, t in state.items()}


def looks_like_a_web_page(path: Path) -> bool:
    with open(path, "rb") as f:
        start = f.read(512).lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


def read_all_bytes(name: str, path: Path, progress: Progress | None = None) -> str:
    """The file's sha256; a `.pth` (a zip) also has the CRC of every record checked. Reads the file once for
    the hash and once for the CRCs (both from the page cache on a machine with enough memory)."""
    digest = file_sha256(path, progress)
    check_zip_records(name, path)
    return digest


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def check_zip_records(name: str, path: Path) -> None:
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise FileProblem(f"{name} is corrupted: {err}; fetch it again") from err
    if bad is not None:
        raise FileProblem(f"{name} is corrupted: the record {bad} fails its checksum; fetch it again")


# --------------------------------------------------------------------------------------------------------------
# The networks, built on the meta device from the folder's configs.


class Architecture:
    """What the loader would build for this folder; every part is built once, when first asked."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.arcface_width: int | None = None

    def config(self, name: str) -> dict[str, Any]:
        path = self.models_dir / name
        if not path.is_file():
            raise CannotCheck(f"cannot check it without {name}, which is missing; `svfrd fetch-models` downloads it")
        return read_json(name, path)

    def unet_from(self, config: dict[str, Any]) -> torch.nn.Module:
        from diffusers import UNetSpatioTemporalConditionModel

        from svfrd.engines.svfr.loading import SVFR_UNET_IN_CHANNELS

        with torch.device("meta"):
            return UNetSpatioTemporalConditionModel.from_config({**config, "in_channels": SVFR_UNET_IN_CHANNELS})

    def vae_from(self, config: dict[str, Any]) -> torch.nn.Module:
        from diffusers import AutoencoderKLTemporalDecoder

        with torch.device("meta"):
            return AutoencoderKLTemporalDecoder.from_config(config)

    @cached_property
    def unet_config(self) -> dict[str, Any]:
        return self.config(UNET_CONFIG)

    @cached_property
    def unet_tensors(self) -> dict[str, TensorSpec]:
        try:
            return specs_of(self.unet_from(self.unet_config))
        except FileProblem:
            raise
        except Exception as err:
            raise CannotCheck(f"cannot check it: {UNET_CONFIG} does not build a UNet ({err})") from err

    @cached_property
    def vae_tensors(self) -> dict[str, TensorSpec]:
        try:
            return specs_of(self.vae_from(self.config(VAE_CONFIG)))
        except FileProblem:
            raise
        except Exception as err:
            raise CannotCheck(f"cannot check it: {VAE_CONFIG} does not build a VAE ({err})") from err

    @property
    def cross_attention_dim(self) -> int | None:
        try:
            return int(self.unet_config["cross_attention_dim"])
        except (FileProblem, KeyError, TypeError, ValueError):
            return None

    def minimum_bytes(self, name: str) -> int | None:
        """The fewest bytes the checkpoint can have: its tensors in float16. Known for the UNet (from its
        config); the ArcFace and id_linear architectures are read from the files themselves."""
        if name != UNET_WEIGHTS:
            return None
        try:
            return sum(2 * _numel(shape) for shape, _ in self.unet_tensors.values())
        except FileProblem:
            return None

    def arcface_for(self, name: str, tensors: dict[str, TensorSpec]) -> torch.nn.Module:
        from svfrd.engines.svfr.identity import build_arcface_for
        from svfrd.engines.svfr.loading import WeightsError

        try:
            with torch.device("meta"):
                arcface = build_arcface_for(_meta_tensors(tensors), Path(name))
        except WeightsError as err:
            raise FileProblem(f"{name} is not an ArcFace iresnet checkpoint ({err})") from err
        except Exception as err:  # a shape that builds no network
            raise FileProblem(f"{name} does not describe an iresnet ({type(err).__name__}: {err})") from err
        self.arcface_width = arcface.bn2.num_features
        return arcface

    def projection_for(self, name: str, tensors: dict[str, TensorSpec]) -> torch.nn.Module:
        from svfrd.engines.svfr.identity import build_projection_for
        from svfrd.engines.svfr.loading import WeightsError

        if self.arcface_width is None:
            self.arcface_width = self._arcface_width_from_file()
        try:
            with torch.device("meta"):
                return build_projection_for(_meta_tensors(tensors), Path(name))
        except WeightsError as err:
            raise FileProblem(f"{name} is not an id_linear checkpoint (no project1024.weight)") from err

    def _arcface_width_from_file(self) -> int | None:
        try:
            state = torch.load(self.models_dir / ARCFACE_WEIGHTS, weights_only=True, mmap=True, map_location="meta")
            return int(state["bn2.weight"].shape[0])
        except Exception:  # the ArcFace file has its own finding; without it the widths are not compared
            return None


def specs_of(module: torch.nn.Module) -> dict[str, TensorSpec]:
    return {key: (tuple(t.shape), t.dtype) for key, t in module.state_dict().items()}


def _meta_tensors(tensors: dict[str, TensorSpec]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, dtype=dtype, device="meta") for key, (shape, dtype) in tensors.items()}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def abbreviate(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown
