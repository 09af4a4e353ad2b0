"""The live status view, rendered at 80 columns from a real SQLite job database with jobs in every state."""

from __future__ import annotations

import io
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from svfrd.config import load_config
from svfrd.jobs.database import (
    current_revision,
    open_database,
    open_read_only,
    upgrade_database,
)
from svfrd.jobs.model import Job
from svfrd.ops import status_view as sv

NOW = datetime(2026, 11, 30, 10, 0, 0, tzinfo=timezone.utc)
LONG_ERROR = ("the video has no face in any of its 250 frames; crop the video to the person, or drop a "
              "reference image beside it\n(see failed/b.error.txt)")


def render(renderable, width: int = 80) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.export_text()


def new_job(n: int, state: str, **fields) -> Job:
    values = dict(id=n, inbox="/in", source_name=f"clip{n}.mp4", source_path=f"/in/clip{n}.mp4", tasks="0",
                  content_hash=f"h{n}", dedupe_key=f"k{n}", state=state, created_at=NOW - timedelta(minutes=60 - n),
                  updated_at=NOW - timedelta(minutes=60 - n))
    values.update(fields)
    return Job(**values)


def every_state() -> list[Job]:
    return [
        new_job(1, "done", finished_at=NOW - timedelta(minutes=30), engine="svfr",
                output_path="/out/clip1.restored.mp4"),
        new_job(2, "failed", source_name="b.mp4", finished_at=NOW - timedelta(minutes=20), error_kind="bad_input",
                error_message=LONG_ERROR),
        new_job(3, "cancelled", finished_at=NOW - timedelta(minutes=10)),
        new_job(4, "running", source_name="interview.mp4", stage="restore", frames_done=420, frames_total=1000,
                started_at=NOW - timedelta(minutes=5), attempts=1, engine="svfr", updated_at=NOW),
        new_job(5, "queued", tasks="1,2", attempts=1, not_before=NOW + timedelta(minutes=2)),
        *[new_job(n, "queued") for n in range(6, 12)],
    ]


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    upgrade_database(url)
    db = open_database(url)
    with Session(db) as session:
        session.add_all(every_state())
        session.commit()
    db.dispose()
    return url


@pytest.fixture
def snapshot(database: str) -> sv.Snapshot:
    db = open_read_only(database)
    try:
        return sv.read_snapshot(db, now=NOW)
    finally:
        db.dispose()


def test_dashboard_shows_every_part_of_the_service_in_80_columns(snapshot: sv.Snapshot) -> None:
    disk = sv.DiskInfo(Path("/out"), free_bytes=50 * 2**30, total_bytes=200 * 2**30, min_free_mb=2048)
    screen = render(sv.dashboard(snapshot, disk, [], "no NVIDIA GPU", lambda job_id: 2.0 if job_id == 4 else None))
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "1 running · 7 queued · 1 done · 1 failed · 1 cancelled" in screen
    # The running job: name, stage, progress, speed and time left (580 frames at 2 frames/s).
    assert "interview.mp4" in screen
    assert "42%  420/1000 frames" in screen
    assert "stage restore" in screen and "2.0 frames/s" in screen and "4m50s left" in screen
    # The queue: the next five in order, a retry waiting for its backoff, and how many more.
    assert "queue (7)" in screen
    assert screen.index("clip5.mp4") < screen.index("clip6.mp4") < screen.index("clip9.mp4")
    assert "clip10.mp4" not in screen and "… and 2 more" in screen
    assert "colorize+inpaint" in screen and "retry 2/3 in 2m00s" in screen
    # Recent jobs: newest first, the error on one line, cut to fit.
    recent = [line for line in lines if "✓" in line or "✗" in line or "–" in line]
    assert ["clip3.mp4" in recent[0], "b.mp4" in recent[1], "clip1.mp4" in recent[2]] == [True] * 3
    assert "clip1.restored.mp4" in recent[2] and "svfr" in recent[2]
    assert "the video has no face in any" in recent[1] and "…" in recent[1]
    assert "cancelled" in recent[0]
    assert "outbox 50.0 GiB free of 200.0 GiB" in screen
    assert "gpu    no NVIDIA GPU" in screen


def test_idle_service_with_an_empty_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url)
    db = open_read_only(url)
    snapshot = sv.read_snapshot(db, now=NOW)
    db.dispose()
    disk = sv.DiskInfo(Path("/out"), 10 * 2**30, 20 * 2**30, 2048)
    screen = render(sv.dashboard(snapshot, disk, [], None, lambda _: None))
    assert "idle" in screen and "queue empty" in screen and "nothing finished yet" in screen


def test_running_job_without_a_speed_yet_shows_dashes_and_the_workers_estimate() -> None:
    job = new_job(4, "running", stage="faces", frames_done=0, frames_total=None, eta_seconds=130.0,
                  updated_at=NOW - timedelta(seconds=10), cancel_requested=True)
    screen = render(sv.running_panel(job, None, NOW))
    assert "0 frames" in screen and "— frames/s" in screen
    assert "2m00s left" in screen  # the estimate counts down from when the worker wrote it
    assert "faces (cancelling)" in screen


def test_a_running_job_shows_the_service_interruptions_it_survived_next_to_its_attempt() -> None:
    job = new_job(4, "running", attempts=1, service_interruptions=2, engine="svfr", started_at=NOW)
    screen = render(sv.running_panel(job, None, NOW))
    assert "attempt 1/3  service interruptions 2  engine svfr" in screen
    assert "service interruptions" not in render(sv.running_panel(new_job(5, "running", attempts=1), None, NOW))


def test_a_running_job_shows_the_host_device_and_worker_that_run_it() -> None:
    job = new_job(4, "running", claim_host="studio-2:/var/lib/svfrd", claim_device="cuda:1", worker_pid=4321)
    assert "on studio-2:/var/lib/svfrd, cuda:1, worker 4321" in render(sv.running_panel(job, None, NOW), width=100)
    assert sv.worker_place(new_job(5, "done", claim_host="studio-2:/s", claim_device="cuda:1")) == "-"


def test_speed_comes_from_progress_over_time_and_restarts_with_each_stage() -> None:
    meter = sv.SpeedMeter()
    for seconds, done in ((0, 100), (10, 130), (20, 160), (20, 160)):
        meter.update(new_job(4, "running", stage="restore", frames_done=done,
                             updated_at=NOW + timedelta(seconds=seconds)))
    assert meter.speed(4) == pytest.approx(3.0)
    meter.update(new_job(4, "running", stage="encode", frames_done=5, updated_at=NOW + timedelta(seconds=25)))
    assert meter.speed(4) is None
    meter.forget_all_but([])
    assert meter.speed(4) is None


def test_gpu_lines_show_name_memory_and_utilisation() -> None:
    gpu = sv.GpuInfo(0, "NVIDIA H200", memory_used=12 * 2**30, memory_total=140 * 2**30, utilisation=87)
    assert "gpu 0  NVIDIA H200  12.0 GiB / 140.0 GiB  ·  87% busy" in render(sv.gpu_lines([gpu], None))


def test_a_machine_without_nvml_is_not_an_error() -> None:
    monitor = sv.GpuMonitor()
    try:
        gpus = monitor.read()
    finally:
        monitor.close()
    if gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert monitor.reason is not None and monitor.reason.startswith("no NVIDIA GPU")


def test_low_disk_space_is_flagged(tmp_path: Path) -> None:
    low = sv.DiskInfo(tmp_path, free_bytes=100 * 2**20, total_bytes=2**40, min_free_mb=2048)
    assert "100.0 MiB free of 1.0 TiB  below min_free_space_mb = 2048: jobs wait" in render(sv.disk_line(low))
    assert "is missing" in render(sv.disk_line(sv.read_disk(tmp_path / "nope", 2048)), width=300)
    assert "free of" in render(sv.disk_line(sv.read_disk(tmp_path, 0)))


def test_the_view_opens_the_database_read_only(database: str) -> None:
    db = open_read_only(database)
    try:
        with pytest.raises(OperationalError, match="readonly"):
            with db.begin() as connection:
                connection.execute(text("UPDATE jobs SET state = 'done'"))
    finally:
        db.dispose()


def test_a_missing_database_is_reported_and_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'svfrd.db'}"
    db = open_read_only(url)
    snapshot = sv.safe_snapshot(db, url)
    db.dispose()
    assert snapshot.problem.startswith("no jobs yet") and "svfrd run" in snapshot.problem
    assert str(tmp_path / "state" / "svfrd.db") in snapshot.problem
    assert not (tmp_path / "state" / "svfrd.db").exists()


def test_an_older_schema_is_reported_and_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'svfrd.db'}"
    upgrade_database(url, "0001")
    db = open_read_only(url)
    snapshot = sv.safe_snapshot(db, url)
    db.dispose()
    assert snapshot.problem.startswith("cannot read the job database")
    assert current_revision(url) == "0001"
    assert "cannot read the job database" in render(sv.dashboard(snapshot, sv.read_disk(tmp_path, 0), [], None,
                                                                 lambda _: None))


def write_config(folder: Path) -> Path:
    config = folder / "config.toml"
    config.write_text('[[inbox]]\npath = "inbox"\n')
    (folder / "outbox").mkdir(exist_ok=True)
    return config


def test_the_database_is_read_at_most_once_a_second(tmp_path: Path, database: str) -> None:
    config = load_config(write_config(tmp_path))
    assert config.service.database_url == database
    source = sv.StatusSource(config, poll_seconds=60)
    statements: list[str] = []
    event.listen(source.db, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        for _ in range(20):
            screen = render(source.screen())
    finally:
        source.close()
    assert "interview.mp4" in screen
    selects = [s for s in statements if s.startswith("SELECT")]
    assert 0 < len(selects) <= 5  # one snapshot's queries (four, and the pause) for twenty redraws


def ctrl_c_after(redraws: int):
    """A pause for `watch` that lets it redraw `redraws` times, then acts as Ctrl-C."""
    calls = []

    def pause(_seconds: float) -> None:
        calls.append(_seconds)
        if len(calls) > redraws:
            raise KeyboardInterrupt

    return pause


def recording_console() -> Console:
    return Console(record=True, width=80, file=io.StringIO(), color_system=None)


def test_watch_runs_until_ctrl_c_and_exits_0(tmp_path: Path, database: str) -> None:
    console = recording_console()
    assert sv.watch(load_config(write_config(tmp_path)), console, pause=ctrl_c_after(3)) == 0
    assert "interview.mp4" in console.export_text()


def test_watch_before_the_service_ever_ran_says_there_are_no_jobs_yet(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    console = recording_console()
    assert sv.watch(config, console, pause=ctrl_c_after(1)) == 0
    screen = " ".join(console.export_text().split())  # the message wraps at 80 columns
    assert "no jobs yet" in screen and "svfrd run" in screen
    assert not (tmp_path / "state" / "svfrd.db").exists()


class FakeNvml:
    """Stands in for the `pynvml` module (nvidia-ml-py) with the calls the monitor makes."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[dict], init_fails: bool = False):
        self.devices, self.init_fails, self.shut_down = devices, init_fails, False

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: dict):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict):
        return type("Memory", (), {"used": handle["used"], "total": handle["total"]})()

    def nvmlDeviceGetUtilizationRates(self, handle: dict):
        if handle.get("busy") is None:
            raise self.NVMLError("Not Supported")
        return type("Rates", (), {"gpu": handle["busy"]})()


def test_gpus_are_read_through_nvml(monkeypatch) -> None:
    nvml = FakeNvml([{"name": b"NVIDIA H200", "used": 2**30, "total": 140 * 2**30, "busy": 55},
                     {"name": "NVIDIA H200 MIG 1g.18gb", "used": 0, "total": 18 * 2**30, "busy": None}])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monitor = sv.GpuMonitor()
    gpus = monitor.read()
    monitor.close()
    assert monitor.reason is None and nvml.shut_down
    assert gpus == [sv.GpuInfo(0, "NVIDIA H200", 2**30, 140 * 2**30, 55),
                    sv.GpuInfo(1, "NVIDIA H200 MIG 1g.18gb", 0, 18 * 2**30, None)]
    screen = render(sv.gpu_lines(gpus, None))
    assert "55% busy" in screen and "busy —" in screen


def test_a_driver_that_does_not_load_means_no_gpu(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_fails=True))
    monitor = sv.GpuMonitor()
    assert monitor.read() == [] and monitor.reason == "no NVIDIA GPU"


MARKUP_NAME = "[link=x]a[/link].mp4"


def test_file_names_are_shown_as_they_are_never_as_markup() -> None:
    """A name that looks like rich markup is not a terminal link; a name with an ESC does not colour the screen."""
    queued = [new_job(1, "queued", source_name=MARKUP_NAME), new_job(2, "queued", source_name="\x1b[31mred.mp4")]
    recent = [new_job(3, "done", source_name=MARKUP_NAME, finished_at=NOW, output_path=f"/out/{MARKUP_NAME}"),
              new_job(4, "failed", source_name="b.mp4", finished_at=NOW, error_message="no face in \x1b[2J.mp4")]
    running = new_job(5, "running", source_name=MARKUP_NAME, stage="restore", started_at=NOW, updated_at=NOW)
    screens = [render(sv.queue_table(queued, 2, NOW), 100), render(sv.recent_table(recent, NOW), 100),
               render(sv.running_panel(running, None, NOW), 100)]
    assert all(MARKUP_NAME in screen for screen in screens)
    assert "\\x1b[31mred.mp4" in screens[0]
    assert "no face in \\x1b[2J.mp4" in screens[1]
    assert not any("\x1b" in screen for screen in screens)


def test_the_view_shows_the_pause_the_schedule_and_each_queued_jobs_priority(database: str) -> None:
    from svfrd.service.pause import Pause, set_pause
    from svfrd.service.schedule import Schedule

    db = open_database(database)
    try:
        set_pause(db, Pause.AFTER_CURRENT)
        with Session(db) as session:
            session.get(Job, 6).priority, session.get(Job, 7).run_now = 5, True
            session.commit()
        snapshot = sv.read_snapshot(db, now=NOW, schedule=Schedule.parse(["19:00-07:00"], zone=timezone.utc))
    finally:
        db.dispose()
    disk = sv.DiskInfo(Path("/out"), free_bytes=50 * 2**30, total_bytes=200 * 2**30, min_free_mb=2048)
    screen = render(sv.dashboard(snapshot, disk, [], None, lambda job_id: None), width=120)
    assert "paused after current; outside schedule until 19:00" in screen
    queue = [line for line in screen.splitlines() if "clip" in line and ("since" in line or "retry" in line)]
    assert "clip7.mp4" in queue[0] and " now " in queue[0]  # run-now first, then by priority
    assert "clip6.mp4" in queue[1] and " 5 " in queue[1]
