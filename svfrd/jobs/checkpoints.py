"""A job's checkpoints: its progress on disk, so that a restarted job goes on instead of starting over
(docs/architecture.md, "Resume").

A job's checkpoints live in one folder, STATE_DIR/checkpoints/job<ID>/. Each checkpoint is one file,
`KIND-SEQUENCE.ckpt`, written atomically (temporary name, fsync, rename, folder fsync), in three parts:

    svfrd-checkpoint 1\\n
    {"kind": ..., "sequence": ..., "identity": <fingerprint>, "meta": {...}, "payload_bytes": N}\\n
    <N bytes of payload>
    \\nsvfrd-checkpoint-end <sha256 of the header line and the payload>\\n

The identity is a fingerprint of everything that decides the result (job id, the source's sha256, tasks,
options, seed, engine, the configuration that shapes the output): a checkpoint of another job, of changed
content or of other settings is never used. A torn file (a kill -9 or power cut while it was written, or a
truncated disk) fails its length or checksum and is ignored; the one before it is used, which is why the last
two of each kind are kept. Other files of the job (encoded segments) are written with `new_file`, the same way,
and named in a checkpoint with their own sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ContextManager, Mapping

from svfrd.files.atomic import fsync_file, fsync_folder, replacing
from svfrd.files.hashing import file_sha256

log = logging.getLogger(__name__)

MAGIC = b"svfrd-checkpoint 1\n"
FOOTER = b"\nsvfrd-checkpoint-end "
SUFFIX = ".ckpt"
#: Checkpoints kept per kind: the newest and the one before it, the fallback when the newest is torn.
KEEP = 2
FOLDER_MODE = 0o750


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short digest of what decides a job's result, the same in every process (sets are sorted: their order
    changes with each interpreter's hash seed)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return str(value)


def job_folder(state_dir: Path, job_id: int) -> Path:
    return Path(state_dir) / "checkpoints" / f"job{job_id}"


@dataclass(frozen=True)
class Checkpoint:
    kind: str
    sequence: int
    meta: dict
    payload: bytes
    path: Path


class CheckpointProblem(ValueError):
    """A checkpoint file that cannot be used: torn, damaged, or another job's."""


def encode(kind: str, sequence: int, identity: str, meta: Mapping[str, Any], payload: bytes) -> bytes:
    header = json.dumps({"kind": kind, "sequence": sequence, "identity": identity, "meta": dict(meta),
                         "payload_bytes": len(payload)}, separators=(",", ":")).encode() + b"\n"
    digest = hashlib.sha256(header + payload).hexdigest().encode()
    return MAGIC + header + payload + FOOTER + digest + b"\n"


def decode(data: bytes, identity: str, path: Path) -> Checkpoint:
    """The checkpoint in `data`, or CheckpointProblem saying why it cannot be used."""
    if not data.startswith(MAGIC):
        raise CheckpointProblem("it does not start like a checkpoint")
    end_of_header = data.find(b"\n", len(MAGIC))
    if end_of_header < 0:
        raise CheckpointProblem("its header is cut off")
    header = data[len(MAGIC):end_of_header + 1]
    try:
        fields = json.loads(header)
        size = int(fields["payload_bytes"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointProblem(f"its header is damaged ({err})") from None
    payload_end = end_of_header + 1 + size
    expected_end = payload_end + len(FOOTER) + 64 + 1
    if len(data) != expected_end or data[payload_end:payload_end + len(FOOTER)] != FOOTER:
        raise CheckpointProblem(f"it is {len(data)} bytes, its header promises {expected_end}: torn")
    payload = data[end_of_header + 1:payload_end]
    digest = data[payload_end + len(FOOTER):expected_end - 1].decode("ascii", "replace")
    if hashlib.sha256(header + payload).hexdigest() != digest:
        raise CheckpointProblem("its checksum does not match its content")
    if fields.get("identity") != identity:
        raise CheckpointProblem("it belongs to another job, other content or other settings")
    return Checkpoint(str(fields["kind"]), int(fields["sequence"]), dict(fields.get("meta") or {}), payload, path)


class CheckpointFolder:
    """One job's checkpoints (see the module docstring). `identity` is what decides the job's result."""

    def __init__(self, folder: Path, identity: Mapping[str, Any]):
        self.folder = Path(folder)
        self.identity = fingerprint(identity)

    def create(self) -> "CheckpointFolder":
        self.folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
        return self

    def save(self, kind: str, meta: Mapping[str, Any], payload: bytes = b"", keep: int = KEEP) -> Checkpoint:
        """Write the next checkpoint of `kind` atomically, then drop all but the last `keep` of that kind (one:
        a final state no later checkpoint replaces; without it, the work is redone, never wrong)."""
        sequence = max((seq for seq, _ in self._files(kind)), default=0) + 1
        path = self.folder / f"{kind}-{sequence:08d}{SUFFIX}"
        with self.new_file(path.name) as f:
            f.write(encode(kind, sequence, self.identity, meta, payload))
        for _, old in self._files(kind)[:-keep]:
            old.unlink(missing_ok=True)
        return Checkpoint(kind, sequence, dict(meta), payload, path)

    def load(self, kind: str) -> Checkpoint | None:
        """The newest usable checkpoint of `kind`; unusable ones (torn, damaged, another job's) are logged,
        removed and passed over for the one before."""
        for _, path in reversed(self._files(kind)):
            try:
                return decode(path.read_bytes(), self.identity, path)
            except (CheckpointProblem, OSError) as err:
                log.warning("checkpoint %s is not used: %s; the one before it is used instead", path, err)
                path.unlink(missing_ok=True)
        return None

    def new_file(self, name: str) -> ContextManager[BinaryIO]:
        """A file that appears under `name` in the folder complete or not at all (replacing what is there)."""
        return replacing(self.folder / name)

    def put(self, finished: Path, name: str) -> str:
        """Give a finished file, written under a hidden name in the folder, the name `name`, durably; returns
        its sha256, for the checkpoint that will name it (a file whose sha256 changed is never reused)."""
        fsync_file(finished)
        digest = file_sha256(finished)
        os.replace(finished, self.folder / name)
        fsync_folder(self.folder)
        return digest

    def size_bytes(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(entry.stat().st_size for entry in self.folder.iterdir() if entry.is_file())

    def remove(self) -> None:
        remove_folder(self.folder)

    def _files(self, kind: str) -> list[tuple[int, Path]]:
        """(sequence, path) of the checkpoints of `kind`, oldest first."""
        found = []
        if not self.folder.is_dir():
            return found
        prefix = f"{kind}-"
        for entry in self.folder.iterdir():
            name = entry.name
            if name.startswith(prefix) and name.endswith(SUFFIX) and name[len(prefix):-len(SUFFIX)].isdigit():
                found.append((int(name[len(prefix):-len(SUFFIX)]), entry))
        return sorted(found)


def remove_folder(folder: Path) -> None:
    """Remove a job's checkpoint folder; a failure is logged, never raised (cleanup never fails a job)."""
    if not folder.exists() and not folder.is_symlink():
        return
    try:
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink()
        else:
            shutil.rmtree(folder)
    except OSError as err:
        log.warning("could not remove the checkpoints in %s (%s); remove the folder by hand", folder, err)


def job_ids_with_checkpoints(state_dir: Path) -> list[int]:
    root = Path(state_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[3:]) for p in root.iterdir() if p.name.startswith("job") and p.name[3:].isdigit())
