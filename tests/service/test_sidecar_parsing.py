"""A sidecar NAME.toml says what to do with NAME.mp4; every mistake in it is a precise BadInputError."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svfrd.domain import Task
from svfrd.errors import BadInputError
from svfrd.service.sidecar import default_spec, parse_sidecar, sidecar_path_for


def save_png(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size, size), np.uint8)).save(path)
    return path


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    save_png(folder / "clip.mask.png")
    save_png(folder / "faces" / "face.png")
    return folder


def parse(inbox: Path, text: str, **kwargs):
    sidecar = inbox / "clip.toml"
    sidecar.write_text(text)
    return parse_sidecar(sidecar, inbox, **kwargs)


def error_of(inbox: Path, text: str, **kwargs) -> str:
    with pytest.raises(BadInputError) as info:
        parse(inbox, text, **kwargs)
    return str(info.value)


def test_a_full_sidecar(inbox):
    spec = parse(
        inbox,
        'tasks = ["bfr", 2]\nmask = "clip.mask.png"\nreference = "faces/face.png"\nseed = 5\n'
        "[options]\nsteps = 12\nguidance_scale = 1.5\n",
    )
    assert spec.tasks == frozenset({Task.BFR, Task.INPAINT})
    assert spec.mask_path == inbox / "clip.mask.png"
    assert spec.reference_path == inbox / "faces" / "face.png"
    assert spec.seed == 5 and spec.options == {"steps": 12, "guidance_scale": 1.5}


def test_unset_keys_take_the_inbox_defaults_and_options_merge_over_them(inbox):
    spec = parse(inbox, "[options]\nsteps = 9\n", default_tasks=frozenset({Task.COLORIZE}),
                 default_options={"steps": 30, "crf": 20})
    assert spec.tasks == frozenset({Task.COLORIZE}) and spec.seed == 77
    assert spec.options == {"steps": 9, "crf": 20}
    assert spec.mask_path is None and spec.reference_path is None
    assert default_spec(frozenset({Task.BFR}), {"crf": 20}).options == {"crf": 20}


def test_the_sidecar_of_a_video_has_the_same_stem(tmp_path):
    assert sidecar_path_for(tmp_path / "my.clip.mov") == tmp_path / "my.clip.toml"


def test_engine_specific_options_are_accepted_when_the_engine_declares_them(inbox):
    assert parse(inbox, "[options]\nsharpen = 0.5\n", allowed_options=frozenset({"sharpen"})).options == {
        "sharpen": 0.5
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tasks = [0\n", "sidecar clip.toml: not valid TOML: "),
        ("tasks = [0]\ntasks = [1]\n", "(at line 2, column"),
        ('taks = ["bfr"]\n', "sidecar clip.toml: unknown key 'taks'; allowed keys are tasks, mask, reference"),
        ('tasks = ["deblur"]\n', 'tasks = ["deblur"]: unknown task "deblur": allowed are 0/"bfr"'),
        ("tasks = [7]\n", "tasks = [7]: unknown task 7"),
        ("tasks = []\n", "tasks = []: the task list is empty"),
        ("tasks = [2]\n", 'task 2 (inpaint) needs a mask; add mask = "NAME.png", a path relative to the folder of the video'),
        ('tasks = [0]\nmask = "clip.mask.png"\n',
         'mask = "clip.mask.png": a mask is only used for inpainting (task 2); add "inpaint" to tasks'),
        ('tasks = [2]\nmask = "/etc/mask.png"\n', 'mask = "/etc/mask.png": must be relative to the folder of the video'),
        ('tasks = [2]\nmask = "../mask.png"\n', "mask = \"../mask.png\": must not contain '..'"),
        ('tasks = [2]\nmask = "faces/../clip.mask.png"\n', "must not contain '..'"),
        ('tasks = [2]\nmask = "missing.png"\n', "missing.png does not exist; put the image next to the video"),
        ('tasks = [2]\nmask = "faces"\n', "faces is a folder, not a plain file"),
        ("tasks = [2]\nmask = 3\n", "mask = 3: must be a file name relative to the folder of the video"),
        ('tasks = [2]\nmask = "notes.png"\n', "notes.png is not an image file; use a PNG or JPEG"),
        ('reference = "broken.png"\n', "broken.png is a damaged image"),
        ('seed = -1\n', "seed = -1: must be a whole number >= 0"),
        ('seed = "7"\n', 'seed = "7": must be a whole number >= 0'),
        ("[options]\nturbo = true\n", "[options] turbo = true: unknown option; allowed options are crf, crop"),
        ("[options]\nsteps = 0\n", "[options] steps = 0: must be a whole number >= 1"),
        ('[options]\nmode = "fast"\n', '[options] mode = "fast": allowed values are "reference", "improved"'),
        ('options = "fast"\n', 'options = "fast": must be a table'),
    ],
)
def test_every_mistake_is_a_bad_input_error_naming_the_key(inbox, text, expected):
    (inbox / "notes.png").write_text("not a picture")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inbox / "whole.png")
    png = (inbox / "whole.png").read_bytes()
    (inbox / "broken.png").write_bytes(png[: len(png) // 2])
    message = error_of(inbox, text)
    assert expected in message
    assert message.startswith("sidecar clip.toml: ")
    assert message.endswith("Correct clip.toml and put the video and its sidecar into the inbox again.")


def test_a_symlink_leading_outside_the_inbox_is_refused(inbox, tmp_path):
    outside = save_png(tmp_path / "private" / "secret.png")
    os.symlink(outside, inbox / "sneaky.png")
    message = error_of(inbox, 'tasks = [2]\nmask = "sneaky.png"\n')
    assert 'mask = "sneaky.png": ' in message and "sneaky.png is a symbolic link, and svfrd follows no link" in message


def test_a_symlink_inside_the_inbox_is_refused_too(inbox):
    """No link is followed in an inbox (docs/architecture.md, "Paths from an inbox"): its target may change."""
    os.symlink(inbox / "clip.mask.png", inbox / "alias.png")
    assert "alias.png is a symbolic link" in error_of(inbox, 'tasks = [2]\nmask = "alias.png"\n')


def test_a_symlinked_folder_on_the_way_to_the_mask_is_refused(inbox, tmp_path):
    save_png(tmp_path / "state" / "secret.png")
    os.symlink(tmp_path / "state", inbox / "st")
    message = error_of(inbox, 'tasks = [2]\nmask = "st/secret.png"\n')
    assert "inbox/st is a symbolic link" in message and "Copy the folder itself in" in message


def test_a_fifo_named_as_mask_is_refused_without_waiting_for_a_writer(inbox):
    os.mkfifo(inbox / "pipe.png")
    assert "pipe.png is a FIFO (named pipe), not a plain file" in error_of(inbox, 'tasks = [2]\nmask = "pipe.png"\n')


def test_the_spec_carries_the_image_bytes_that_were_checked(inbox):
    spec = parse(inbox, 'tasks = [2]\nmask = "clip.mask.png"\n')
    assert spec.mask_data == (inbox / "clip.mask.png").read_bytes() and spec.reference_data is None


def test_a_sidecar_may_come_as_bytes_or_an_open_file(inbox):
    for sidecar in (b"seed = 3\n", __import__("io").BytesIO(b"seed = 3\n")):
        assert parse_sidecar(sidecar, inbox, name="clip.toml").seed == 3


def test_an_unreadable_image_is_refused(inbox, monkeypatch):
    (inbox / "clip.mask.png").chmod(0)
    if os.geteuid() == 0:  # root reads every file: make the open fail as it would for anyone else
        real_open = os.open

        def denied(path, flags, *args, **kwargs):
            if str(path).endswith(".png"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr("svfrd.files.beneath.os.open", denied)
    assert "cannot be read (permission denied)" in error_of(inbox, 'tasks = [2]\nmask = "clip.mask.png"\n')


def test_a_sidecar_that_is_not_text_is_refused(inbox):
    sidecar = inbox / "clip.toml"
    sidecar.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BadInputError, match="not valid TOML"):
        parse_sidecar(sidecar, inbox)
