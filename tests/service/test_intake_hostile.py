"""Intake never stops (issue 16): whatever a file in the inbox makes a library raise refuses that file alone,
names too long for the files svfrd derives from them are refused under a shortened name, and long scans keep
systemd's watchdog fed. Real folders and a real SQLite database; time is a FakeClock."""

from __future__ import annotations

import os

import svfrd.service.intake as intake_module
from svfrd.files.names import NAME_MAX, byte_length
from svfrd.ops import notify
from tests.service.test_intake_scanning import (
    all_jobs,
    drop,
    enqueued,
    inbox_of,
    intake,  # noqa: F401 - the fixture
    save_mask,
    scan_for,
    scan_until,
    video_bytes,
)


def failed(results) -> list:
    return [job for r in results for job in r.failed]


def test_any_error_a_file_causes_refuses_that_file_and_the_scan_takes_the_next(intake, monkeypatch, caplog):  # noqa: F811
    drop(inbox_of(intake), "a_bad.mp4", video_bytes(1))
    drop(inbox_of(intake), "a_bad.toml", 'tasks = ["bfr"]\n')
    drop(inbox_of(intake), "b_good.mp4", video_bytes(2))
    real_spec = intake._spec

    def spec_that_breaks_on_a_bad(inbox, video, sidecar):
        if video.name == "a_bad.mp4":
            raise RecursionError("maximum recursion depth exceeded")  # what a hostile file makes a parser do
        return real_spec(inbox, video, sidecar)

    monkeypatch.setattr(intake, "_spec", spec_that_breaks_on_a_bad)
    results = scan_until(intake, lambda r: enqueued(r) and failed(r))
    [job] = enqueued(results)
    [refused] = failed(results)
    assert job.source_name == "b_good.mp4"
    assert refused.source_name == "a_bad.mp4" and "RecursionError" in refused.error_message
    failed_folder = intake.config.output.failed
    assert {"a_bad.mp4", "a_bad.toml", "a_bad.error.txt"} <= {p.name for p in failed_folder.iterdir()}
    assert "RecursionError" in (failed_folder / "a_bad.error.txt").read_text()
    assert not enqueued(scan_for(intake, 0.3)) and len(all_jobs(intake)) == 2, "nothing is taken twice"
    # logged once, its traceback as exc_info: inside the message the log formatter escapes it into one line
    [logged] = [record for record in caplog.records if "; it is refused" in record.getMessage()]
    assert "a_bad.mp4; it is refused (maximum recursion depth exceeded)" in logged.getMessage()
    assert logged.exc_info is not None and "Traceback" not in logged.getMessage()


def test_a_name_too_long_for_the_names_derived_from_it_is_refused_under_a_shortened_name(intake):  # noqa: F811
    long_stem = "interview-" + "x" * 222  # 232 bytes: the stem fits, `.job12.STEM.restored.mp4.part` does not
    drop(inbox_of(intake), long_stem + ".mp4", video_bytes(3))
    drop(inbox_of(intake), long_stem + ".toml", 'tasks = ["bfr"]\n')
    drop(inbox_of(intake), "next.mp4", video_bytes(4))
    results = scan_until(intake, lambda r: enqueued(r) and failed(r))
    [refused] = failed(results)
    assert [job.source_name for job in enqueued(results)] == ["next.mp4"]
    assert refused.source_name == long_stem + ".mp4" and "too long" in refused.error_message
    failed_names = sorted(p.name for p in intake.config.output.failed.iterdir())
    assert len(failed_names) == 3 and all(byte_length(name) <= NAME_MAX // 2 for name in failed_names)
    assert {name.rsplit(".", 1)[-1] for name in failed_names} == {"mp4", "toml", "txt"}
    note = next(p for p in intake.config.output.failed.iterdir() if p.name.endswith(".error.txt"))
    assert "too long" in note.read_text() and long_stem in note.read_text()
    assert refused.source_path == str(intake.config.output.failed / next(n for n in failed_names if n.endswith(".mp4")))
    assert sorted(p.name for p in inbox_of(intake).iterdir()) == ["next.mp4"]


def test_a_scan_taking_file_after_file_feeds_the_watchdog_between_files(intake, monkeypatch):  # noqa: F811
    sent = []
    monkeypatch.setattr(notify, "watchdog", lambda: sent.append(intake.clock()))
    for number in range(3):
        drop(inbox_of(intake), f"clip{number}.mp4", video_bytes(10 + number))
    scan_until(intake, lambda r: enqueued(r))
    assert len(sent) == 1, "at most one keep-alive a second, and one at once"
    intake.clock.advance(1.0)
    drop(inbox_of(intake), "later.mp4", video_bytes(20))
    scan_until(intake, lambda r: enqueued(r))
    assert len(sent) == 2


def refused_sidecar_with_mask(intake):  # noqa: F811
    inbox = inbox_of(intake)
    (inbox / "m").mkdir()
    save_mask(inbox / "m" / "mask.png")
    drop(inbox, "clip.toml", 'tasks = ["bfr"]\nmask = "m/mask.png"\n')  # a mask without inpainting: refused
    return drop(inbox, "clip.mp4", video_bytes(30))


def test_a_refusal_whose_move_is_refused_too_records_one_failed_job_not_two(intake, monkeypatch, tmp_path):  # noqa: F811
    """The mask's folder becomes a link between the check and the move (a race): the move refuses it, and the
    refusal that follows moves the video and sidecar alone, as the one failed job of that file."""
    refused_sidecar_with_mask(intake)
    real_move = intake_module.placement.move_input_to

    def move_after_a_swap(folder, paths, **kwargs):
        masks = inbox_of(intake) / "m"
        if not masks.is_symlink():
            os.rename(masks, tmp_path / "m.moved")
            masks.symlink_to(tmp_path / "m.moved")
        return real_move(folder, paths, **kwargs)

    monkeypatch.setattr(intake_module.placement, "move_input_to", move_after_a_swap)
    [job] = failed(scan_until(intake, failed))
    assert [j.id for j in all_jobs(intake)] == [job.id]
    assert job.source_path == str(intake.config.output.failed / "clip.mp4") and job.mask_path is None
    assert (tmp_path / "m.moved" / "mask.png").is_file()


def test_a_refusal_whose_move_fails_is_not_recorded_and_is_tried_again_at_the_next_scan(intake, monkeypatch):  # noqa: F811
    """Before, the failed row stayed while the file stayed in the inbox: owned by that row, it was never looked
    at again, and no note said why."""
    video = refused_sidecar_with_mask(intake)
    real_move = intake_module.placement.move_input_to
    calls = []

    def move_failing_at_first(folder, paths, **kwargs):
        calls.append(paths)
        if len(calls) <= 2:  # at the first two scans
            raise PermissionError(13, "Permission denied", str(folder))
        return real_move(folder, paths, **kwargs)

    monkeypatch.setattr(intake_module.placement, "move_input_to", move_failing_at_first)
    results = scan_until(intake, lambda r: failed(r))
    assert len(calls) == 3 and not video.exists()
    [job] = failed(results)
    assert [j.id for j in all_jobs(intake)] == [job.id]
    assert (intake.config.output.failed / "clip.error.txt").is_file()
