"""End to end: one real `svfrd run` daemon on a temporary folder, fed the way users feed it.

Good videos (without a sidecar, with one, through `svfrd submit`, copied in slowly) come out restored in the
outbox with their inputs in done/; bad inputs of every kind end as failed jobs with a precise message, their
files preserved in failed/ beside NAME.error.txt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from svfrd.cli import main
from svfrd.jobs.model import Job
from tests.helpers.service import (
    Daemon,
    ServiceFolder,
    read_frames,
    write_corrupt_video,
    write_face_clip,
    write_faceless_video,
    write_mask,
    write_truncated_video,
)

GOOD = ["plain.mp4", "with_sidecar.mp4", "submitted.mp4", "slow.mp4"]
BAD = {
    # name: (sidecar text or None, phrase the job's error must contain)
    "bad_toml.mp4": ('tasks = ["bfr"\n', "not valid TOML"),
    "unknown_task.mp4": ('tasks = ["sharpen"]\n', "unknown task \"sharpen\""),
    "escaping_mask.mp4": ('tasks = ["inpaint"]\nmask = "../outside.png"\n', "must not contain '..'"),
    "absolute_mask.mp4": ('tasks = ["inpaint"]\nmask = "/etc/hostname"\n', "must be relative to the folder of the video"),
    "symlinked_mask.mp4": ('tasks = ["inpaint"]\nmask = "link.png"\n', "link.png is a symbolic link, and svfrd follows no link"),
    "unreadable_mask.mp4": ('tasks = ["inpaint"]\nmask = "broken.png"\n', "broken.png is not an image file"),
    "no_mask.mp4": ('tasks = ["bfr", "inpaint"]\n', "task 2 (inpaint) needs a mask"),
    "unknown_key.mp4": ('tasks = ["bfr"]\nspeed = 2\n', "unknown key 'speed'"),
    "corrupt.mp4": (None, "corrupt.mp4 is not a readable video"),
    "truncated.mp4": (None, "truncated.mp4 is not a readable video"),
    "no_face.mp4": (None, "no face found"),
}


SIDECAR_PROBLEMS = [name for name, (sidecar, _) in BAD.items() if sidecar is not None]


def copy_slowly(source: Path, target: Path, seconds: float = 2.4, chunks: int = 12) -> None:
    """Write `target` in chunks over `seconds`, as a slow network copy does."""
    data = source.read_bytes()
    step = -(-len(data) // chunks)
    with open(target, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start : start + step])
            f.flush()
            time.sleep(seconds / chunks)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The daemon, after every input below was dropped and every job settled."""
    root = tmp_path_factory.mktemp("flow")
    folder = ServiceFolder(root / "svfrd", preview=True, service={"quiet_period": 1.5})
    clips = root / "clips"
    clips.mkdir()
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(clips / "plain.mp4", tag=1))
        folder.drop(write_face_clip(clips / "with_sidecar.mp4", tag=2), sidecar='tasks = ["bfr"]\nseed = 5\n')
        assert main(["--config", str(folder.config_path), "submit", str(write_face_clip(clips / "submitted.mp4", 3)),
                     "--tasks", "bfr,inpaint", "--mask", str(write_mask(clips / "subtitles.png")),
                     "--seed", "9"]) == 0
        slow_copy = threading.Thread(target=copy_slowly,
                                     args=(write_face_clip(clips / "slow.mp4", tag=4), folder.inbox / "slow.mp4"))
        slow_copy.start()

        write_mask(root / "svfrd" / "outside.png")
        (folder.inbox / "link.png").symlink_to(root / "svfrd" / "outside.png")
        (folder.inbox / "broken.png").write_bytes(b"not a picture")
        for tag, name in enumerate(SIDECAR_PROBLEMS, start=20):
            folder.drop(write_face_clip(clips / name, tag=tag), sidecar=BAD[name][0])
        folder.drop(write_corrupt_video(clips / "corrupt.mp4"))
        folder.drop(write_truncated_video(write_face_clip(clips / "whole.mp4", tag=8, frames=12),
                                          clips / "truncated.mp4"))
        folder.drop(write_faceless_video(clips / "no_face.mp4"))
        slow_copy.join()

        jobs = daemon.wait_for_jobs(len(GOOD) + len(BAD), {"done", "failed"}, timeout=90)
        yield folder, {job.source_name: job for job in jobs}, clips


def test_every_dropped_video_becomes_exactly_one_job(service):
    folder, jobs, _ = service
    assert sorted(jobs) == sorted(GOOD + list(BAD))
    assert len(folder.jobs()) == len(GOOD) + len(BAD)


@pytest.mark.parametrize("name", GOOD)
def test_a_good_video_is_restored_into_the_outbox_and_its_input_moved_to_done(service, name):
    folder, jobs, _ = service
    job = jobs[name]
    stem = Path(name).stem
    assert job.state == "done", job.error_message
    assert Path(job.output_path) == folder.outbox / f"{stem}.restored.mp4"
    assert Path(job.report_path) == folder.outbox / f"{stem}.report.json"
    assert Path(job.output_path).is_file() and Path(job.report_path).is_file()
    assert Path(job.source_path) == folder.folder("done") / name
    assert Path(job.source_path).is_file()
    assert not (folder.inbox / name).exists()
    assert job.frames_done == job.frames_total == 4


def test_the_outbox_holds_the_results_and_previews_and_no_temporary_file(service):
    folder, _, _ = service
    expected = {f"{Path(n).stem}{suffix}" for n in GOOD
                for suffix in (".restored.mp4", ".report.json", ".preview.mp4", ".contact.png")}
    assert set(folder.files("outbox")) == expected


def test_the_report_names_job_tasks_engine_frames_and_timings(service):
    _, jobs, _ = service
    job = jobs["with_sidecar.mp4"]
    report = json.loads(Path(job.report_path).read_text())
    assert report["job_id"] == job.id
    assert report["tasks"] == ["bfr"]
    assert report["seed"] == 5
    assert report["engine"] == "test-invert"
    assert report["frames"] == 4
    assert report["outputs"]["video"] == "with_sidecar.restored.mp4"
    assert set(report["timings"]["stages"]) >= {"probe", "faces", "restore", "encode"}
    assert "test engine: job number" in report["warnings"][-1]
    assert report["schema"] == 1 and report["frame_size"]["output"] == [160, 160]


def test_the_engine_kept_its_models_between_jobs(service):
    _, jobs, _ = service
    numbers = sorted(
        int(json.loads(Path(job.report_path).read_text())["warnings"][-1].rsplit("number ", 1)[1].split()[0])
        for job in jobs.values() if job.state == "done"
    )
    assert numbers == list(range(1, len(GOOD) + 1))  # one engine object saw every job


def test_the_face_in_the_output_is_the_engines_work(service):
    _, jobs, clips = service
    job = jobs["plain.mp4"]
    before, after = read_frames(clips / "plain.mp4"), read_frames(Path(job.output_path))
    assert len(after) == len(before) == 4
    x0, y0, x1, y1 = (int(v) for v in json.loads(Path(job.report_path).read_text())
                      ["face_tracking"]["shot_details"][0]["subject_box"])
    inner = (slice(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4), slice(x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4))
    for original, restored in zip(before, after):
        face_before = original[inner].astype(np.float32)
        face_after = restored[inner].astype(np.float32)
        # The test engine returns the negative: the face's pixels flip around mid-grey.
        assert np.abs((255 - face_before) - face_after).mean() < 25
        assert np.abs(face_before - face_after).mean() > 40


def test_the_sidecar_and_the_submitted_mask_travel_with_the_video(service):
    folder, jobs, _ = service
    assert jobs["with_sidecar.mp4"].seed == 5
    assert Path(jobs["with_sidecar.mp4"].sidecar_path) == folder.folder("done") / "with_sidecar.toml"
    submitted = jobs["submitted.mp4"]
    assert submitted.tasks == "0,2" and submitted.seed == 9
    assert Path(submitted.mask_path) == folder.folder("done") / "submitted.mask.png"
    assert {"submitted.mp4", "submitted.toml", "submitted.mask.png"} <= set(folder.files("done"))


def test_a_slowly_copied_file_is_taken_only_once_complete(service):
    _, jobs, clips = service
    job = jobs["slow.mp4"]
    assert job.state == "done"
    assert job.content_hash == hashlib.sha256((clips / "slow.mp4").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_input_fails_with_a_precise_message_and_is_kept_in_failed(service, name):
    folder, jobs, _ = service
    job: Job = jobs[name]
    assert job.state == "failed"
    assert job.error_kind == "bad_input"
    assert BAD[name][1] in job.error_message
    failed = folder.folder("failed")
    assert Path(job.source_path) == failed / name and (failed / name).is_file()
    error_txt = (failed / f"{Path(name).stem}.error.txt").read_text()
    assert job.error_message in error_txt
    assert not (folder.inbox / name).exists()
    assert job.output_path is None


def test_a_bad_sidecar_is_kept_beside_its_video(service):
    folder, jobs, _ = service
    for name in SIDECAR_PROBLEMS:
        assert Path(jobs[name].sidecar_path) == folder.folder("failed") / f"{Path(name).stem}.toml"
    assert (folder.root / "outside.png").is_file()  # a file outside the inbox is never touched
    assert Path("/etc/hostname").is_file()


def test_status_lists_the_jobs_in_a_table(service, capsys):
    folder, jobs, _ = service
    assert main(["--config", str(folder.config_path), "status"]) == 0
    table = capsys.readouterr().out
    for name, job in jobs.items():
        row = next(line for line in table.splitlines() if name in line)
        assert job.state in row
    assert "100%" in table and "bfr+inpaint" in table


def test_show_prints_the_whole_row_and_the_error(service, capsys):
    folder, jobs, _ = service
    job = jobs["no_face.mp4"]
    assert main(["--config", str(folder.config_path), "show", str(job.id)]) == 0
    text = capsys.readouterr().out
    assert f"source_path: {job.source_path}" in text
    assert "error_kind: bad_input" in text
    assert text.rstrip().endswith(f"failed: {job.error_message}")


def test_cancel_and_retry_say_why_they_cannot_apply_to_a_finished_job(service, capsys):
    folder, jobs, _ = service
    config = str(folder.config_path)
    assert main(["--config", config, "cancel", str(jobs["plain.mp4"].id)]) == 1
    assert "already done; nothing to cancel" in capsys.readouterr().err
    assert main(["--config", config, "retry", str(jobs["plain.mp4"].id)]) == 1
    assert "only failed or cancelled jobs can be retried" in capsys.readouterr().err
    assert main(["--config", config, "show", "999"]) == 1
    assert "there is no job 999" in capsys.readouterr().err


def test_with_the_default_engine_choice_a_machine_without_svfr_restores_with_the_classical_engine(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", engine="auto")
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(tmp_path / "clip.mp4", tag=11))
        (job,) = daemon.wait_for_jobs(1, {"done", "failed"})
        log = daemon.log()
    assert job.state == "done" and job.engine == "classical"
    assert "engine = auto: using classical (SVFR weights are not usable" in log
    assert len(read_frames(Path(job.output_path))) == 4
