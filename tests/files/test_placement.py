"""Results and inputs are put in place durably and never overwrite anything."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import svfrd.files.placement as outbox_module
from svfrd.errors import TransientError
from svfrd.files.placement import (
    clean_stale_temp_files,
    ensure_free_space,
    free_space_mb,
    link_or_copy,
    mirror_folder,
    move_input_to,
    publish,
    publish_text,
    spool_folder,
    temp_output_path,
    write_error_report,
)


def write_temp(outbox: Path, final_name: str, data: bytes) -> Path:
    temp = temp_output_path(outbox, final_name)
    temp.write_bytes(data)
    return temp


def test_temp_outputs_are_hidden_part_files_in_the_outbox(tmp_path):
    temp = temp_output_path(tmp_path / "outbox", "clip.restored.mp4")
    assert temp == tmp_path / "outbox" / ".clip.restored.mp4.part"
    assert temp.parent.is_dir()


def test_publish_renames_and_numbers_clashes_instead_of_overwriting(tmp_path):
    final = tmp_path / "clip.restored.mp4"
    names = [publish(write_temp(tmp_path, final.name, f"v{n}".encode()), final) for n in range(1, 4)]
    assert [p.name for p in names] == ["clip.restored.mp4", "clip.restored-2.mp4", "clip.restored-3.mp4"]
    assert [p.read_bytes() for p in names] == [b"v1", b"v2", b"v3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names), "no temp file left"


def test_a_publish_cut_short_between_link_and_unlink_is_finished_not_numbered(tmp_path):
    final = tmp_path / "clip.restored.mp4"
    (tmp_path / "clip.restored-2.mp4").write_bytes(b"other")
    publish(write_temp(tmp_path, final.name, b"v1"), final)
    temp = write_temp(tmp_path, final.name, b"v2")
    os.link(temp, tmp_path / "clip.restored-3.mp4")  # the crash came after the link, before the unlink
    assert publish(temp, final).name == "clip.restored-3.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.restored-2.mp4", "clip.restored-3.mp4", "clip.restored.mp4"
    ]
    assert (tmp_path / "clip.restored-3.mp4").read_bytes() == b"v2"


def test_publish_text_writes_a_report(tmp_path):
    report = publish_text(tmp_path, "clip.report.json", '{"job": 1}')
    assert report.read_text() == '{"job": 1}'
    assert publish_text(tmp_path, "clip.report.json", "{}").name == "clip.report-2.json"


def test_publish_text_never_writes_through_a_symlink_planted_on_its_temporary_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / ".clip.error.txt.part")
    note = publish_text(tmp_path, "clip.error.txt", "why it failed\n")
    assert victim.read_text() == "precious\n"
    assert note.read_text() == "why it failed\n" and not note.is_symlink()
    assert note.stat().st_mode & 0o777 == 0o640  # the service's group may read it, the world not


def test_inputs_move_together_and_keep_a_shared_number_on_clashes(tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    (done / "clip.toml").write_text("older sidecar")
    video, sidecar, mask = inbox / "clip.mp4", inbox / "clip.toml", inbox / "mask.png"
    for path in (video, sidecar, mask):
        path.write_text(path.name)
    moved = move_input_to(done, [video, sidecar, None, mask])
    assert [p.name for p in moved] == ["clip-2.mp4", "clip-2.toml", "mask-2.png"]
    assert [p.read_text() for p in moved] == ["clip.mp4", "clip.toml", "mask.png"]
    assert (done / "clip.toml").read_text() == "older sidecar"
    assert list(inbox.iterdir()) == []


def test_a_move_cut_short_between_link_and_unlink_is_finished_not_copied_again(tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    done.mkdir()
    video, sidecar = inbox / "clip.mp4", inbox / "clip.toml"
    video.write_text("video")
    sidecar.write_text("seed = 1")
    os.link(video, done / "clip.mp4")  # the crash came after the video's link, before its unlink
    assert move_input_to(done, [video, sidecar]) == [done / "clip.mp4", done / "clip.toml"]
    assert sorted(p.name for p in done.iterdir()) == ["clip.mp4", "clip.toml"]
    assert list(inbox.iterdir()) == []


def test_inputs_already_in_the_folder_stay_as_they_are(tmp_path):
    """A retried job's input lies in failed/ already; failing again must not rename or lose it."""
    failed, inbox = tmp_path / "failed", tmp_path / "inbox"
    failed.mkdir()
    inbox.mkdir()
    video = failed / "clip.mp4"
    video.write_text("video")
    (inbox / "clip.toml").write_text("sidecar")
    moved = move_input_to(failed, [video, inbox / "clip.toml"])
    assert moved == [video, failed / "clip.toml"]
    assert video.read_text() == "video" and sorted(p.name for p in failed.iterdir()) == ["clip.mp4", "clip.toml"]


def test_moving_across_filesystems_copies_before_removing_the_source(tmp_path, monkeypatch):
    real_link = os.link

    def link_fails_across_devices(source, target, **kwargs):
        if "inbox" in str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(source, target, **kwargs)

    monkeypatch.setattr(outbox_module.os, "link", link_fails_across_devices)
    (tmp_path / "inbox").mkdir()
    video = tmp_path / "inbox" / "clip.mp4"
    video.write_bytes(b"frames" * 1000)
    [moved] = move_input_to(tmp_path / "failed", [video])
    assert moved.read_bytes() == b"frames" * 1000 and not video.exists()
    assert [p.name for p in moved.parent.iterdir()] == ["clip.mp4"], "no temp copy left behind"


def test_filesystems_without_hard_links_still_never_overwrite(tmp_path, monkeypatch):
    def no_links(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(outbox_module.os, "link", no_links)
    final = tmp_path / "out" / "clip.restored.mp4"
    first = publish(write_temp(final.parent, final.name, b"1"), final)
    second = publish(write_temp(final.parent, final.name, b"2"), final)
    assert (first.read_bytes(), second.name, second.read_bytes()) == (b"1", "clip.restored-2.mp4", b"2")


def test_error_report_beside_the_failed_input(tmp_path):
    report = write_error_report(tmp_path, "clip-2.mp4", "sidecar clip-2.toml: unknown key 'taks'")
    assert report.name == "clip-2.error.txt"
    text = report.read_text()
    assert "clip-2.mp4" in text and "unknown key 'taks'" in text
    assert write_error_report(tmp_path, "clip-2.mp4", "again").name == "clip-2.error-2.txt"


def test_an_error_report_shows_control_characters_in_names_escaped(tmp_path):
    report = write_error_report(tmp_path, "a\x1b[2Jb.mp4", "line one\nb\x1b]0;owned\x07.mp4 has no face")
    text = report.read_text()
    assert "\x1b" not in text and "\x07" not in text
    assert text.splitlines()[:4] == ["svfrd could not process a\\x1b[2Jb.mp4.", "", "line one",
                                     "b\\x1b]0;owned\\x07.mp4 has no face"]


def test_free_space_check_fails_transiently_with_what_to_do(tmp_path):
    free = free_space_mb(tmp_path)
    assert free > 0
    assert free_space_mb(tmp_path / "not" / "yet") == pytest.approx(free, rel=0.01)
    ensure_free_space(tmp_path, need_mb=1)
    with pytest.raises(TransientError) as info:
        ensure_free_space(tmp_path, need_mb=free * 10 + 1e9)
    message = str(info.value)
    assert message.startswith("disk full: ") and f"MB free in {tmp_path}, need " in message
    assert "free space and the job will be retried" in message


def test_start_up_cleans_only_stale_temp_files(tmp_path):
    stale = write_temp(tmp_path, "clip.restored.mp4", b"half")
    keep = [tmp_path / "clip.restored.mp4", tmp_path / "notes.part", tmp_path / ".hidden"]
    for path in keep:
        path.write_text("keep")
    assert clean_stale_temp_files(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert clean_stale_temp_files(tmp_path / "missing") == []


def test_an_input_keeps_the_folder_it_had_under_its_inbox(tmp_path):
    assert mirror_folder(tmp_path / "done", "clip.mp4") == tmp_path / "done"
    assert mirror_folder(tmp_path / "done", "trip/day 2/clip.mp4") == tmp_path / "done" / "trip" / "day 2"


def refuse_links_of(monkeypatch, source: Path) -> None:
    """Make hard links from `source` fail as they do across filesystems."""
    real_link = os.link

    def link(src, dst, *args, **kwargs):
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(outbox_module.os, "link", link)


def test_a_result_is_reused_by_hard_link_or_by_copy_where_linking_fails(tmp_path, monkeypatch):
    result = tmp_path / "first.restored.mp4"
    result.write_bytes(b"restored")
    link_or_copy(result, tmp_path / "linked.mp4")
    assert os.path.samefile(result, tmp_path / "linked.mp4")
    refuse_links_of(monkeypatch, result)
    (tmp_path / ".copied.mp4.part").write_bytes(b"left by an interrupted run")
    link_or_copy(result, tmp_path / ".copied.mp4.part")
    assert (tmp_path / ".copied.mp4.part").read_bytes() == b"restored"
    assert not os.path.samefile(result, tmp_path / ".copied.mp4.part")


def test_a_leftover_temporary_file_is_replaced_by_the_link(tmp_path):
    result = tmp_path / "first.restored.mp4"
    result.write_bytes(b"restored")
    (tmp_path / ".second.mp4.part").write_bytes(b"left by an interrupted run")
    link_or_copy(result, tmp_path / ".second.mp4.part")
    assert os.path.samefile(result, tmp_path / ".second.mp4.part")


@pytest.mark.parametrize("links", [True, False], ids=["linking", "copying"])
def test_link_or_copy_never_replaces_a_name_that_is_not_one_of_our_temporary_names(tmp_path, monkeypatch, links):
    """Only a stale `.NAME.part` of ours may be replaced: a caller passing any other name gets an error, never
    the loss of a user's file."""
    result = tmp_path / "first.restored.mp4"
    result.write_bytes(b"restored")
    if not links:
        refuse_links_of(monkeypatch, result)
    for name in ("clip.mp4", ".clip.mp4", "clip.mp4.part"):
        users = tmp_path / name
        users.write_text("someone's precious file\n")
        with pytest.raises(FileExistsError, match="not one of svfrd's temporary names, so it is never"):
            link_or_copy(result, users)
        assert users.read_text() == "someone's precious file\n"


def test_a_symlink_moved_across_filesystems_stays_a_link_and_its_target_is_never_read(tmp_path, monkeypatch):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not for svfrd")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    link = inbox / "link.mp4"
    link.symlink_to(secret)
    refuse_links_of(monkeypatch, link)

    [moved] = move_input_to(tmp_path / "failed", [link])

    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert not link.exists() and secret.read_bytes() == b"not for svfrd"


def spool_named(outbox: Path, result: str, random: str) -> Path:
    """A folder named as `spool_folder` names one (checked), left behind as a killed run leaves it."""
    made = spool_folder(outbox / f".{result}.part")
    assert Path(made.name).name[: -len("XXXXXXXX.part")] == f"..{result}.part.spool-"
    made.cleanup()
    folder = outbox / f"..{result}.part.spool-{random}.part"
    folder.mkdir()
    return folder


def test_start_up_removes_only_folders_named_exactly_like_a_spool_and_only_its_own_files(tmp_path):
    outbox, elsewhere = tmp_path / "outbox", tmp_path / "elsewhere"
    outbox.mkdir()
    elsewhere.mkdir()
    (elsewhere / "album.jpg").write_text("a user's file")
    ours = spool_named(outbox, "clip.restored.mp4", "ab_c1234")
    (ours / "track-1.png-spool").write_bytes(b"png")
    (ours / "track-2.png-spool").symlink_to(elsewhere / "album.jpg")  # the link goes, never its target
    lookalike = outbox / ".photos.spool-2020.part"  # a user's: not the exact name spool_folder makes
    lookalike.mkdir()
    (lookalike / "track-1.png-spool").write_text("keep")
    crowded = spool_named(outbox, "other.restored.mp4", "zzzzzzzz")
    (crowded / "track-1.png-spool").write_bytes(b"png")
    (crowded / "holiday.mp4").write_text("a user's file put in there")
    linked = outbox / "..third.restored.mp4.part.spool-12345678.part"
    linked.symlink_to(elsewhere, target_is_directory=True)  # a spool's name on a link to a user's folder

    assert clean_stale_temp_files(outbox) == [ours]

    assert not ours.exists() and (elsewhere / "album.jpg").read_text() == "a user's file"
    assert (lookalike / "track-1.png-spool").read_text() == "keep"
    assert os.listdir(crowded) == ["holiday.mp4"]
    assert linked.is_symlink() and os.listdir(elsewhere) == ["album.jpg"]
