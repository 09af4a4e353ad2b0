"""Replacing a file atomically: readers see the old or the new content, and no temporary file stays behind."""

from __future__ import annotations

import pytest

from svfrd.files.atomic import copy_replacing, hidden_temp_path, replacing, write_replacing


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
