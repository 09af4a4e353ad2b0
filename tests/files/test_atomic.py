"""Replacing a file atomically: readers see the old or the new content, and no temporary file stays behind."""

from __future__ import annotations

import os
import stat

import pytest

from svfrd.files.atomic import (
    copy_replacing,
    create_new,
    create_temp,
    hidden_temp_path,
    is_temp_name,
    replacing,
    write_replacing,
)


def test_the_temporary_name_is_hidden_beside_the_target(tmp_path):
    target = tmp_path / "clip.toml"
    assert hidden_temp_path(target) == tmp_path / ".clip.toml.part"
    unique = hidden_temp_path(target, unique=True)
    assert unique.parent == tmp_path and unique.name.startswith(".clip.toml.") and unique.name.endswith(".part")
    assert unique != hidden_temp_path(target)


def test_write_and_copy_replace_the_whole_content_and_leave_only_the_target(tmp_path):
    target = tmp_path / "unit.service"
    target.write_text("old\n")
    write_replacing(target, "new\n")
    assert target.read_text() == "new\n"
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 5000)
    copy = tmp_path / "copy.bin"
    copy_replacing(source, copy)
    assert copy.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "source.bin", "unit.service"]


def test_an_error_while_writing_leaves_the_target_untouched_and_no_temporary_file(tmp_path):
    target = tmp_path / "clip.toml"
    target.write_text("seed = 1\n")
    with pytest.raises(RuntimeError):
        with replacing(target) as f:
            f.write(b"seed = ")
            raise RuntimeError("the writer failed half-way")
    assert target.read_text() == "seed = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.toml"]


# --- temporary names are predictable: a symlink planted on one is never followed (README, "Permissions") ---


def plant_symlink(at, victim):
    victim.write_text("someone's precious file\n")
    os.symlink(victim, at)


def test_a_temporary_file_never_writes_through_a_planted_symlink(tmp_path):
    temp, victim = tmp_path / ".clip.mp4.part", tmp_path / "victim.txt"
    plant_symlink(temp, victim)
    with create_temp(temp) as f:
        f.write(b"result")
    assert victim.read_text() == "someone's precious file\n"
    assert not temp.is_symlink() and temp.read_bytes() == b"result"
    assert stat.S_IMODE(temp.stat().st_mode) & 0o007 == 0  # not for the world


def test_a_stale_temporary_file_is_replaced_and_anything_else_in_the_way_is_an_error(tmp_path):
    stale = tmp_path / ".a.part"
    stale.write_bytes(b"half of an earlier run")
    with create_temp(stale) as f:
        f.write(b"new")
    assert stale.read_bytes() == b"new"
    fifo = tmp_path / ".b.part"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match=r"\.b\.part: something else is in the way .*who else can write"):
        create_temp(fifo)
    with pytest.raises(FileExistsError):
        create_new(stale)  # create_new never replaces anything


def test_nothing_is_removed_under_a_name_that_is_not_one_of_our_temporary_names(tmp_path):
    """Only a stale `.NAME.part` of ours may be removed to make room: a caller passing any other name gets an
    error, never the loss of a user's file (a first version removed /dev/full)."""
    for name in ("clip.mp4", ".clip.mp4", "clip.mp4.part", ".part"):
        users = tmp_path / name
        users.write_text("someone's precious file\n")
        with pytest.raises(FileExistsError, match="not one of svfrd's temporary names, so it is never removed"):
            create_temp(users)
        assert users.read_text() == "someone's precious file\n"
    assert is_temp_name(hidden_temp_path(tmp_path / "clip.mp4").name)
    assert is_temp_name(hidden_temp_path(tmp_path / "clip.mp4", unique=True).name)


def test_replacing_does_not_follow_a_symlink_planted_on_its_temporary_name(tmp_path):
    target, victim = tmp_path / "unit.service", tmp_path / "victim.txt"
    plant_symlink(hidden_temp_path(target, unique=True), victim)
    write_replacing(target, "new\n")
    assert victim.read_text() == "someone's precious file\n"
    assert target.read_text() == "new\n" and not target.is_symlink()
