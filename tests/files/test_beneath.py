"""`svfrd.files.beneath`: files of an inbox are reached without any symlink and only plain files are read."""

from __future__ import annotations

import os
import socket

import pytest

from svfrd.errors import BadInputError
from svfrd.files import beneath


@pytest.fixture
def inbox(tmp_path):
    (tmp_path / "inbox" / "trip").mkdir(parents=True)
    (tmp_path / "inbox" / "trip" / "mask.png").write_bytes(b"mask")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "svfrd.db").write_bytes(b"database")
    return tmp_path / "inbox"


def test_a_plain_file_in_a_subfolder_is_read(inbox):
    assert beneath.read_plain_file(inbox, inbox / "trip" / "mask.png", 100) == b"mask"
    assert beneath.read_plain_file(inbox, "trip/mask.png", 100) == b"mask"


def test_a_symlinked_folder_on_the_way_is_refused(inbox):
    (inbox / "st").symlink_to("../state")
    with pytest.raises(BadInputError, match=r"inbox/st is a symbolic link.*Copy the folder itself in"):
        beneath.read_plain_file(inbox, inbox / "st" / "svfrd.db", 100)
    assert not beneath.is_plain_file_beneath(inbox, inbox / "st" / "svfrd.db")
    assert not beneath.lexists_beneath(inbox, inbox / "st" / "svfrd.db")


def test_a_symlinked_file_is_refused_even_when_its_target_is_inside(inbox):
    (inbox / "alias.png").symlink_to(inbox / "trip" / "mask.png")
    with pytest.raises(BadInputError, match="alias.png is a symbolic link.*Copy the file itself in"):
        beneath.read_plain_file(inbox, "alias.png", 100)
    assert beneath.lexists_beneath(inbox, inbox / "alias.png"), "the link itself is there (and may be moved)"


@pytest.mark.parametrize("path", ["../state/svfrd.db", "trip/../../state/svfrd.db", "/etc/hostname", ""])
def test_a_path_leaving_the_inbox_is_refused_before_anything_is_opened(inbox, path):
    with pytest.raises(BadInputError):
        beneath.read_plain_file(inbox, path, 100)


def test_a_fifo_is_refused_without_waiting_for_a_writer(inbox):
    os.mkfifo(inbox / "pipe.png")
    with pytest.raises(BadInputError, match=r"pipe.png is a FIFO \(named pipe\), not a plain file"):
        beneath.read_plain_file(inbox, "pipe.png", 100)


def test_a_socket_a_device_and_a_folder_are_refused(inbox, tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(inbox / "sock.png"))
        with pytest.raises(BadInputError, match="is a socket"):
            beneath.read_plain_file(inbox, "sock.png", 100)
    os.symlink("/dev/null", inbox / "null.png")
    with pytest.raises(BadInputError, match="symbolic link"):
        beneath.read_plain_file(inbox, "null.png", 100)
    with pytest.raises(BadInputError, match="trip is a folder, not a plain file"):
        beneath.read_plain_file(inbox, "trip", 100)


def test_a_file_bigger_than_the_limit_is_refused(inbox):
    (inbox / "big.toml").write_bytes(b"x" * 17)
    assert beneath.read_plain_file(inbox, "big.toml", 17) == b"x" * 17
    with pytest.raises(BadInputError, match="big.toml is bigger than 16 bytes"):
        beneath.read_plain_file(inbox, "big.toml", 16)


def test_a_missing_file_is_file_not_found(inbox):
    with pytest.raises(FileNotFoundError):
        beneath.read_plain_file(inbox, "trip/gone.png", 100)


def test_a_linked_file_is_followed_only_when_asked_and_never_through_a_linked_folder(inbox, tmp_path):
    """An inbox with `follow_symlinks = true` takes a linked video: only the file itself may be a link."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "clip.mp4").write_bytes(b"linked video")
    (inbox / "clip.mp4").symlink_to(tmp_path / "elsewhere" / "clip.mp4")
    (inbox / "away").symlink_to(tmp_path / "elsewhere")
    with beneath.open_plain_file(inbox, "clip.mp4", follow_last_link=True) as f:
        assert f.read() == b"linked video"
    with pytest.raises(BadInputError, match="clip.mp4 is a symbolic link"):
        beneath.read_plain_file(inbox, "clip.mp4", 100)
    with pytest.raises(BadInputError, match="inbox/away is a symbolic link"):
        with beneath.open_plain_file(inbox, "away/clip.mp4", follow_last_link=True):
            pass
    os.mkfifo(tmp_path / "elsewhere" / "pipe")
    (inbox / "pipe.mp4").symlink_to(tmp_path / "elsewhere" / "pipe")
    with pytest.raises(BadInputError, match="is a FIFO"):
        with beneath.open_plain_file(inbox, "pipe.mp4", follow_last_link=True):
            pass
