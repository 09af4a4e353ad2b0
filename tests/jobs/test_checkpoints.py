"""Checkpoint files (svfrd.jobs.checkpoints): atomic, checked, another job's never used, a torn one passed over
for the one before it."""

from __future__ import annotations

import os
import subprocess
import sys

from svfrd.jobs.checkpoints import CheckpointFolder, job_folder, job_ids_with_checkpoints

IDENTITY = {"job": 7, "source_sha256": "ab" * 32, "seed": 42}


def folder(tmp_path, identity=IDENTITY) -> CheckpointFolder:
    return CheckpointFolder(job_folder(tmp_path, 7), identity).create()


def test_the_newest_checkpoint_is_read_back_and_only_the_last_two_are_kept(tmp_path):
    store = folder(tmp_path)
    for step in range(1, 5):
        store.save("steps", {"step": step}, bytes([step]) * 100)

    newest = store.load("steps")
    assert (newest.meta, newest.payload, newest.sequence) == ({"step": 4}, bytes([4]) * 100, 4)
    assert sorted(p.name for p in store.folder.iterdir()) == ["steps-00000003.ckpt", "steps-00000004.ckpt"]
    assert job_ids_with_checkpoints(tmp_path) == [7]


def test_a_torn_newest_checkpoint_is_ignored_and_the_one_before_is_used(tmp_path):
    store = folder(tmp_path)
    store.save("steps", {"step": 1}, b"x" * 1000)
    newest = store.save("steps", {"step": 2}, b"y" * 1000)
    os.truncate(newest.path, newest.path.stat().st_size - 10)  # a power cut in the middle of the write

    assert store.load("steps").meta == {"step": 1}
    assert not newest.path.exists()
    assert store.save("steps", {"step": 2}, b"").sequence == 2  # numbering goes on from what is there


def test_a_checkpoint_with_a_changed_byte_is_ignored(tmp_path):
    store = folder(tmp_path)
    store.save("steps", {"step": 1})
    newest = store.save("steps", {"step": 2}, b"payload")
    data = bytearray(newest.path.read_bytes())
    data[data.index(b"payload")] ^= 1
    newest.path.write_bytes(bytes(data))

    assert store.load("steps").meta == {"step": 1}


def test_a_checkpoint_of_other_settings_or_content_is_never_used(tmp_path):
    folder(tmp_path).save("steps", {"step": 1})

    assert folder(tmp_path, {**IDENTITY, "seed": 43}).load("steps") is None
    assert folder(tmp_path, {**IDENTITY, "source_sha256": "cd" * 32}).load("steps") is None


def test_no_temporary_file_is_left_and_removal_takes_the_folder(tmp_path):
    store = folder(tmp_path)
    store.save("steps", {"step": 1}, b"z")
    assert [p.name for p in store.folder.iterdir()] == ["steps-00000001.ckpt"]

    store.remove()
    assert not store.folder.exists() and job_ids_with_checkpoints(tmp_path) == []


def test_the_identity_of_settings_with_sets_is_the_same_in_every_process(tmp_path):
    # A set's order follows the interpreter's hash seed, which differs between the runs a job resumes across.
    code = ("from svfrd.jobs.checkpoints import fingerprint; "
            "print(fingerprint({'names': frozenset({'steps', 'crop', 'crf', 'mode', 'seed', 'min_size'})}))")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
              for seed in range(4)}
    assert len(prints) == 1


def test_a_final_checkpoint_may_keep_itself_alone(tmp_path):
    store = folder(tmp_path)
    store.save("steps", {"step": 1})
    store.save("steps", {"step": 2}, keep=1)

    assert [p.name for p in store.folder.iterdir()] == ["steps-00000002.ckpt"]
