"""Publishing a job's results survives a crash at any point (svfrd.service.results): whatever step a kill -9 cut short,
completing the publication afterwards yields exactly one set of results and never loses the input.

These run in-process on a real SQLite database and real files; each test stops the sequence where a crash
could, then calls what the restarted daemon calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svfrd.errors import BadInputError, TransientError
from svfrd.files import placement
from svfrd.jobs.model import Job
from svfrd.jobs.store import (
    claim_next_job,
    enqueue_job,
    enqueue_reusing,
    get_job,
    retry_job,
)
from svfrd.service.recovery import finish_interrupted_publications, recover_at_startup
from svfrd.service.results import (
    ResultFiles,
    complete_publication,
    plan_final_files,
    publish_planned,
    publish_reused_results,
    record_plan,
    remove_temp_files,
    settle_failure,
    temp_files,
)
from tests.helpers.service import ServiceFolder


@pytest.fixture
def service(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd", preview=True)
    with folder.open_store() as (config, db):
        yield folder, config, db


def running_job(service, name: str = "clip.mp4", mask: str | None = None) -> Job:
    folder, _, db = service
    video = folder.inbox / name
    video.parent.mkdir(parents=True, exist_ok=True)
    video.write_bytes(f"the video {name}".encode())
    enqueue_job(db, inbox=str(folder.inbox), source_name=name, source_path=str(video), tasks="0",
                mask_path=str(folder.inbox / mask) if mask else None,
                content_hash=hashlib.sha256(video.read_bytes()).hexdigest())
    job = claim_next_job(db, worker_pid=os.getpid())
    assert job is not None and job.source_name == name
    return job


def restored_and_planned(service, job: Job) -> tuple[ResultFiles, Job]:
    """What a worker leaves when the pipeline has finished and the final names are recorded (step 2)."""
    _, config, db = service
    for kind, temp in temp_files(config, job).items():
        temp.write_text(f"{kind} of job {job.id}")
    finals = plan_final_files(config, job)
    record_plan(db, job.id, finals, frames=4)
    return finals, get_job(db, job.id)


def outbox_names(folder: ServiceFolder) -> list[str]:
    return folder.files("outbox")


RESULTS = ["clip.contact.png", "clip.preview.mp4", "clip.report.json", "clip.restored.mp4"]


def test_temporary_results_are_hidden_partial_names_unique_to_the_job(service):
    _, config, _ = service
    job = running_job(service)
    for _, temp in temp_files(config, job).items():
        assert temp.parent == config.output.outbox
        assert temp.name.startswith(f".job{job.id}-{job.claim_token[:12]}.clip.") and temp.name.endswith(".part")


def test_a_crash_before_any_rename_is_completed_by_publishing_everything(service):
    folder, config, db = service
    job = running_job(service)
    _, planned = restored_and_planned(service, job)

    finished = complete_publication(config, db, planned, "test")

    assert finished.state == "done" and finished.engine == "test"
    assert outbox_names(folder) == RESULTS
    assert (folder.outbox / "clip.restored.mp4").read_text() == f"video of job {job.id}"
    assert folder.files("done") == ["clip.mp4"] and folder.files("inbox") == []
    assert Path(finished.source_path) == folder.folder("done") / "clip.mp4"


def test_a_crash_between_two_renames_publishes_only_what_is_left(service):
    folder, config, db = service
    job = running_job(service)
    finals, planned = restored_and_planned(service, job)
    placement.publish(temp_files(config, job).video, finals.video)  # the video made it, the rest did not

    complete_publication(config, db, planned, "test")

    assert outbox_names(folder) == RESULTS  # no clip-2.restored.mp4


def test_a_crash_inside_a_rename_leaves_one_file_not_two(service):
    folder, config, db = service
    job = running_job(service)
    finals, planned = restored_and_planned(service, job)
    os.link(temp_files(config, job).video, finals.video)  # publish's hard link was made, its unlink was not

    complete_publication(config, db, planned, "test")

    assert outbox_names(folder) == RESULTS


def test_a_crash_after_publishing_only_moves_the_input(service):
    folder, config, db = service
    job = running_job(service)
    _, planned = restored_and_planned(service, job)
    publish_planned(config, planned)

    assert complete_publication(config, db, planned, "test").state == "done"
    assert outbox_names(folder) == RESULTS
    assert folder.files("done") == ["clip.mp4"]


def test_a_crash_inside_the_input_move_leaves_one_copy_of_the_input(service):
    folder, config, db = service
    job = running_job(service)
    _, planned = restored_and_planned(service, job)
    publish_planned(config, planned)
    os.link(folder.inbox / "clip.mp4", folder.folder("done") / "clip.mp4")  # linked, not yet unlinked

    complete_publication(config, db, planned, "test")

    assert folder.files("done") == ["clip.mp4"] and folder.files("inbox") == []


def test_results_that_vanished_before_publication_make_the_job_run_again(service):
    folder, config, db = service
    job = running_job(service)
    _, planned = restored_and_planned(service, job)
    placement.clean_stale_temp_files(config.output.outbox)  # as at start-up, had it come first

    assert complete_publication(config, db, planned, "test") is None
    assert get_job(db, job.id).state == "running"
    assert folder.files("inbox") == ["clip.mp4"]  # the input stays for the re-run


def test_final_names_never_clash_with_earlier_results(service):
    folder, config, _ = service
    (folder.outbox / "clip.restored.mp4").write_text("an earlier result")
    job = running_job(service)
    finals = plan_final_files(config, job)
    assert finals.video.name == "clip-2.restored.mp4"
    assert finals.report.name == "clip-2.report.json"  # the set stays together


def test_a_mask_another_waiting_job_uses_stays_in_the_inbox(service):
    folder, config, db = service
    (folder.inbox / "subtitles.png").write_bytes(b"mask")
    first = running_job(service, "first.mp4", mask="subtitles.png")
    video = folder.inbox / "second.mp4"
    video.write_bytes(b"second video")
    enqueue_job(db, inbox=str(folder.inbox), source_name="second.mp4", source_path=str(video), tasks="0,2",
                mask_path=str(folder.inbox / "subtitles.png"), content_hash="second")
    _, planned = restored_and_planned(service, first)

    complete_publication(config, db, planned, "test")

    assert (folder.inbox / "subtitles.png").is_file()
    assert folder.files("done") == ["first.mp4"]


def test_bad_input_moves_the_files_to_failed_beside_an_error_report(service):
    folder, config, db = service
    job = running_job(service)

    failed = settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4; use a clip with a face"))

    assert failed.state == "failed" and failed.error_kind == "bad_input"
    assert folder.files("failed") == ["clip.error.txt", "clip.mp4"]
    report = (folder.folder("failed") / "clip.error.txt").read_text()
    assert "no face found in clip.mp4" in report and f"svfrd retry {job.id}" in report
    assert Path(failed.source_path) == folder.folder("failed") / "clip.mp4"


def test_a_transient_failure_leaves_the_input_in_the_inbox_for_the_retry(service):
    folder, config, db = service
    job = running_job(service)

    retried = settle_failure(config, db, job.id, TransientError("GPU out of memory"))

    assert retried.state == "queued" and retried.attempts == 1
    assert folder.files("inbox") == ["clip.mp4"] and folder.files("failed") == []


def test_a_retried_job_that_fails_again_keeps_its_files_under_their_names_in_failed(service):
    folder, config, db = service
    job = running_job(service)
    settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4"))
    retry_job(db, job.id)
    assert claim_next_job(db, worker_pid=os.getpid()).id == job.id

    again = settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4"))

    assert Path(again.source_path) == folder.folder("failed") / "clip.mp4"
    assert "clip.mp4" in folder.files("failed") and "clip-2.mp4" not in folder.files("failed")


def test_a_retried_job_renamed_in_failed_gets_its_second_error_report_under_its_new_name(service):
    folder, config, db = service
    (folder.folder("failed") / "clip.mp4").write_text("another video of the same name")
    job = running_job(service)
    settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4"))
    retry_job(db, job.id)
    claim_next_job(db, worker_pid=os.getpid())

    again = settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4"))

    assert Path(again.source_path) == folder.folder("failed") / "clip-2.mp4"
    assert folder.files("failed") == ["clip-2.error-2.txt", "clip-2.error.txt", "clip-2.mp4", "clip.mp4"]


def test_at_start_up_cut_short_publications_are_finished_before_stale_temporary_files_are_cleared(service):
    folder, config, db = service
    planned_job = running_job(service, "planned.mp4")
    restored_and_planned(service, planned_job)
    unplanned_job = running_job(service, "unplanned.mp4")
    temp_files(config, unplanned_job).video.write_text("half an encode")

    finish_interrupted_publications(config, db)  # what `svfrd run` does first, then:
    placement.clean_stale_temp_files(config.output.outbox)

    assert get_job(db, planned_job.id).state == "done"
    assert get_job(db, unplanned_job.id).state == "running"  # recovery.requeue_jobs_of_a_dead_service's business
    assert outbox_names(folder) == [f"planned{suffix}" for suffix in
                                    (".contact.png", ".preview.mp4", ".report.json", ".restored.mp4")]


def spool_left_by_a_killed_run(temp_result: Path) -> Path:
    """The restored-face spool folder (svfrd.media.multiface) of a run killed mid-job: made by a process that
    then dies without any cleanup."""
    code = ("import os, sys; from pathlib import Path; from svfrd.files.placement import spool_folder\n"
            "spool = spool_folder(Path(sys.argv[1])); (Path(spool.name) / 'track-1.png-spool').write_bytes(b'png')\n"
            "print(spool.name, flush=True); os._exit(9)")
    done = subprocess.run([sys.executable, "-c", code, str(temp_result)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    spool = Path(done.stdout.strip())
    assert done.returncode == 9 and spool.parent == temp_result.parent and (spool / "track-1.png-spool").exists()
    return spool


def test_a_killed_runs_face_spool_goes_with_the_jobs_temporary_results_and_at_start_up(service):
    folder, config, db = service
    job, other = running_job(service), running_job(service, "other.mp4")
    user_folder = config.output.outbox / ".faces-of-the-family.part"  # a user's, not ours
    user_folder.mkdir()
    spool = spool_left_by_a_killed_run(temp_files(config, job).video)
    others_spool = spool_left_by_a_killed_run(temp_files(config, other).video)

    remove_temp_files(config, job)  # the job's cleanup after its worker died
    assert not spool.exists() and others_spool.exists()

    recover_at_startup(config, db)  # the next start after the daemon died
    assert not others_spool.exists() and user_folder.is_dir()


# ---------------------------------------------------------------------------------------------------------------
# Videos in folders, and duplicates that reuse an earlier job's results.


def test_a_video_from_a_folder_keeps_its_folder_in_the_outbox_and_in_done(service):
    folder, config, db = service
    job = running_job(service, "trip/day2/clip.mp4")
    _, planned = restored_and_planned(service, job)

    finished = complete_publication(config, db, planned, "test")

    assert finished.output_path == str(folder.outbox / "trip" / "day2" / "clip.restored.mp4")
    assert sorted(p.name for p in (folder.outbox / "trip" / "day2").iterdir()) == RESULTS
    assert finished.source_path == str(folder.folder("done") / "trip" / "day2" / "clip.mp4")


def test_a_failed_video_from_a_folder_keeps_its_folder_in_failed(service):
    folder, config, db = service
    job = running_job(service, "trip/clip.mp4")

    failed = settle_failure(config, db, job.id, BadInputError("no face found in clip.mp4"))

    assert failed.source_path == str(folder.folder("failed") / "trip" / "clip.mp4")
    assert sorted(p.name for p in (folder.folder("failed") / "trip").iterdir()) == ["clip.error.txt", "clip.mp4"]


def finished_original(service, name: str = "first.mp4") -> Job:
    _, config, db = service
    job = running_job(service, name)
    _, planned = restored_and_planned(service, job)
    report = json.dumps({"job_id": job.id, "source": name, "engine": "test", "frames": 4})
    temp_files(config, planned).report.write_text(report)
    return complete_publication(config, db, planned, "test")


def queued_duplicate(service, original: Job, name: str) -> Job:
    folder, _, db = service
    video = folder.inbox / name
    video.write_bytes(b"the same video under another name")
    job, earlier = enqueue_reusing(db, inbox=str(folder.inbox), source_name=name, source_path=str(video),
                                   tasks=original.tasks, content_hash=original.content_hash)
    assert earlier.id == original.id
    claimed = claim_next_job(db, worker_pid=os.getpid())
    assert claimed.id == job.id
    return claimed


def test_a_duplicate_publishes_the_earlier_results_under_its_own_name_and_says_which_job_it_reuses(service):
    folder, config, db = service
    original = finished_original(service)
    duplicate = queued_duplicate(service, original, "copy.mp4")

    assert publish_reused_results(config, db, duplicate)

    done = get_job(db, duplicate.id)
    assert done.state == "done" and done.output_path == str(folder.outbox / "copy.restored.mp4")
    assert os.path.samefile(folder.outbox / "copy.restored.mp4", folder.outbox / "first.restored.mp4")
    assert os.path.samefile(folder.outbox / "copy.preview.mp4", folder.outbox / "first.preview.mp4")
    report = json.loads((folder.outbox / "copy.report.json").read_text())
    assert report["reuses_job"] == original.id and report["job_id"] == duplicate.id
    assert report["source"] == "copy.mp4" and report["engine"] == "test" and report["frames"] == 4
    assert report["outputs"]["video"] == "copy.restored.mp4"
    assert folder.files("done") == ["copy.mp4", "first.mp4"] and folder.files("inbox") == []
    assert not [name for name in outbox_names(folder) if name.startswith(".")], "no temporary file left"


def test_a_duplicate_whose_earlier_report_was_deleted_still_gets_its_results_and_names_the_job_it_reuses(service):
    folder, config, db = service
    original = finished_original(service)
    duplicate = queued_duplicate(service, original, "copy.mp4")
    (folder.outbox / "first.report.json").unlink()

    assert publish_reused_results(config, db, duplicate)

    assert get_job(db, duplicate.id).state == "done"
    report = json.loads((folder.outbox / "copy.report.json").read_text())
    assert (report["schema"], report["job_id"], report["reuses_job"]) == (1, duplicate.id, original.id)
    assert "the report of job" in report["warnings"][0] and report["outputs"]["video"] == "copy.restored.mp4"


def test_a_duplicate_whose_earlier_result_was_deleted_restores_its_video_itself(service):
    folder, config, db = service
    original = finished_original(service)
    duplicate = queued_duplicate(service, original, "copy.mp4")
    (folder.outbox / "first.restored.mp4").unlink()

    assert not publish_reused_results(config, db, duplicate)
    assert get_job(db, duplicate.id).state == "running" and folder.files("inbox") == ["copy.mp4"]
