"""`svfrd status --watch` / `svfrd top`: a live view of the service, read from the job database.

The view never writes: SQLite is opened with `mode=ro`, and nothing here migrates. It is built from small
renderables (`running_panel`, `queue_table`, `recent_table`, `disk_line`, `gpu_lines`, `dashboard`), each a
function of plain data, so they can be rendered to any console, including a test's recording one. The screen
is redrawn a few times a second but the database is read at most once a second. The layout is checked at 80
columns, the narrowest terminal we support (SSH, tmux split).
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from svfrd.config import Config
from svfrd.domain import task_labels
from svfrd.jobs.database import database_error_reason, missing_database_file, open_read_only
from svfrd.jobs.model import Job, JobState, as_utc
from svfrd.jobs.store import overview
from svfrd.ops.printable import printable
from svfrd.service.gate import control_text, queue_mark
from svfrd.service.schedule import Schedule

DB_POLL_SECONDS = 1.0
SCREEN_REFRESH_PER_SECOND = 4
QUEUE_ROWS = 5
RECENT_ROWS = 6
SPEED_WINDOW_SECONDS = 60.0


# --------------------------------------------------------------------------------------------------------------
# Reading the database (read-only).


@dataclass
class Snapshot:
    """What the database said at one moment."""

    taken_at: datetime
    running: list[Job] = field(default_factory=list)
    queued: list[Job] = field(default_factory=list)  # the next few, in claim order
    recent: list[Job] = field(default_factory=list)  # finished jobs, newest first
    counts: dict[str, int] = field(default_factory=dict)
    problem: str | None = None  # why the database could not be read
    control: str = ""  # the pause and the schedule, e.g. "paused" (svfrd.service.gate); "" when jobs run


def read_snapshot(db: Engine, now: datetime | None = None, schedule: Schedule = Schedule()) -> Snapshot:
    now = now or datetime.now(timezone.utc)
    seen = overview(db, queued_limit=QUEUE_ROWS, recent_limit=RECENT_ROWS)
    return Snapshot(taken_at=now, running=seen.running, queued=seen.queued, recent=seen.recent, counts=seen.counts,
                    control=control_text(db, schedule, now))


def safe_snapshot(db: Engine, url: str, schedule: Schedule = Schedule()) -> Snapshot:
    """A snapshot, or one that says why there is none (no database yet, an older schema, a locked file)."""
    now = datetime.now(timezone.utc)
    path = missing_database_file(url)
    if path is not None:
        return Snapshot(now, problem=no_jobs_yet(path))
    try:
        return read_snapshot(db, now, schedule)
    except SQLAlchemyError as err:
        return Snapshot(now, problem=f"cannot read the job database: {database_error_reason(err)} "
                                     "(is its schema older than this svfrd? the service upgrades it on start)")


def no_jobs_yet(database: Path) -> str:
    """What `svfrd status` says before the service ever ran: not an error, there is simply nothing yet."""
    return (f"no jobs yet: the service has not run, so there is no job database at {database} yet; "
            "start it with `svfrd run`")


# --------------------------------------------------------------------------------------------------------------
# Speed of the running job, from how its progress moved between reads.


class SpeedMeter:
    """Frames per second per running job, over the last minute of progress updates.

    The job row only holds the latest progress; the meter keeps the (time, frames) samples it has seen. A new
    stage starts counting afresh, since each stage has its own frame count and pace.
    """

    def __init__(self, window: float = SPEED_WINDOW_SECONDS):
        self.window = window
        self._samples: dict[int, deque[tuple[float, int]]] = {}
        self._stage: dict[int, str | None] = {}

    def update(self, job: Job) -> None:
        if job.id is None or job.updated_at is None:
            return
        at = job.updated_at.timestamp()
        samples = self._samples.setdefault(job.id, deque())
        restarted = self._stage.get(job.id) != job.stage or (samples and job.frames_done < samples[-1][1])
        if restarted:
            samples.clear()
            self._stage[job.id] = job.stage
        if samples and samples[-1][0] >= at:
            return  # the same row again: no new information
        samples.append((at, job.frames_done))
        while len(samples) > 2 and at - samples[0][0] > self.window:
            samples.popleft()

    def speed(self, job_id: int | None) -> float | None:
        samples = self._samples.get(job_id) if job_id is not None else None
        if not samples or len(samples) < 2:
            return None
        (t0, f0), (t1, f1) = samples[0], samples[-1]
        return (f1 - f0) / (t1 - t0) if t1 > t0 else None

    def forget_all_but(self, job_ids: Iterable[int | None]) -> None:
        keep = set(job_ids)
        for job_id in [j for j in self._samples if j not in keep]:
            del self._samples[job_id]
            self._stage.pop(job_id, None)


def seconds_left(job: Job, speed: float | None, now: datetime) -> float | None:
    """The worker's own estimate when it gave one (it knows about later passes), counted down from when it
    was written; else frames left / speed."""
    if job.eta_seconds is not None:
        written = job.updated_at.timestamp() if job.updated_at else now.timestamp()
        return max(0.0, job.eta_seconds - max(0.0, now.timestamp() - written))
    if speed and speed > 0 and job.frames_total:
        return max(0, job.frames_total - job.frames_done) / speed
    return None


# --------------------------------------------------------------------------------------------------------------
# Disk and GPU.


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    free_bytes: int | None  # None: the folder does not exist
    total_bytes: int | None
    min_free_mb: int


def read_disk(outbox: Path, min_free_mb: int) -> DiskInfo:
    try:
        usage = shutil.disk_usage(outbox)
    except OSError:
        return DiskInfo(outbox, None, None, min_free_mb)
    return DiskInfo(outbox, usage.free, usage.total, min_free_mb)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_used: int
    memory_total: int
    utilisation: int | None  # percent busy over the driver's last sample period


class GpuMonitor:
    """NVML, when the `nvidia-ml-py` package and an NVIDIA driver are there; otherwise `reason` says which is
    missing and `read()` returns no GPUs. It is optional: a machine without an NVIDIA GPU is a normal case."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._nvml: Any = None
        try:
            import pynvml  # from nvidia-ml-py (the `gpu` extra)
        except ImportError:
            self.reason = "no NVIDIA GPU (NVML not installed: pip install nvidia-ml-py)"
            return
        try:
            pynvml.nvmlInit()
        except Exception:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable NVIDIA driver
            self.reason = "no NVIDIA GPU"
            return
        self._nvml = pynvml

    def read(self) -> list[GpuInfo]:
        if self._nvml is None:
            return []
        nvml = self._nvml
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    busy: int | None = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                except nvml.NVMLError:  # not supported on some (MIG) devices
                    busy = None
                name = name.decode() if isinstance(name, bytes) else str(name)
                gpus.append(GpuInfo(index, name, int(memory.used), int(memory.total), busy))
        except nvml.NVMLError as err:
            self.reason = f"NVIDIA GPU not readable: {err}"
            return []
        return gpus

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


# --------------------------------------------------------------------------------------------------------------
# Formatting helpers.


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_time(moment: datetime | None, now: datetime) -> str:
    """Local clock time today, else the date: short enough for a table column."""
    if moment is None:
        return "—"
    local, local_now = as_utc(moment).astimezone(), now.astimezone()
    return local.strftime("%H:%M") if local.date() == local_now.date() else local.strftime("%b %d")


def one_line(text: str | None) -> str:
    return printable(" ".join((text or "").split()))


def file_name(name: str | None, style: str = "") -> Text:
    """A file name as plain text: never read as rich markup (`[link=...]` in a name stays those characters),
    its control characters escaped (`svfrd.ops.printable`)."""
    return Text(printable(name or ""), style=style)


# --------------------------------------------------------------------------------------------------------------
# Renderables.


def running_panel(job: Job, speed: float | None, now: datetime) -> RenderableType:
    """The running job: name, stage, a progress bar with frames done/total, speed and time left."""
    title = Text.assemble(("job ", "dim"), (str(job.id), "bold"), "  ", file_name(job.source_name, "bold cyan"))
    stage = job.stage or "starting"
    if job.cancel_requested:
        stage += " (cancelling)"
    total = job.frames_total or 0
    bar_line = Table.grid(padding=(0, 1), expand=True)
    bar_line.add_column(ratio=1)
    bar_line.add_column(justify="right", no_wrap=True)
    if total:
        percent = 100 * min(job.frames_done, total) / total
        bar_line.add_row(ProgressBar(total=total, completed=min(job.frames_done, total)),
                         f"{percent:3.0f}%  {job.frames_done}/{total} frames")
    else:
        bar_line.add_row(ProgressBar(total=None), f"{job.frames_done} frames")
    speed_text = f"{speed:.1f} frames/s" if speed is not None else "— frames/s"
    details = Text.assemble(
        ("stage ", "dim"), (stage, "yellow"), ("  ·  ", "dim"), speed_text, ("  ·  ", "dim"),
        format_duration(seconds_left(job, speed, now)), (" left", "dim"),
    )
    return Group(title, bar_line, details, _start_line(job, now), Text(worker_place(job), style="dim"))


def worker_place(job: Job) -> str:
    """Where a running job runs: "on HOST:STATE_FOLDER, cpu, worker 1234" (docs/architecture.md, "Workers,
    claims and leases"); "-" for a job no worker holds."""
    if job.state != "running" or not job.claim_host:
        return "-"
    return f"on {printable(job.claim_host)}, {job.claim_device or 'device ?'}, worker {job.worker_pid}"


def _start_line(job: Job, now: datetime) -> Text:
    """When it started, which attempt, deaths of the service during it (counted apart from attempts: not the
    job's fault), and the engine."""
    line = Text.assemble(("started ", "dim"), format_time(job.started_at, now), ("  attempt ", "dim"),
                         f"{max(job.attempts, 1)}/{job.max_attempts}")
    if job.service_interruptions:
        line.append_text(Text.assemble(("  service interruptions ", "dim"), str(job.service_interruptions)))
    if job.engine:
        line.append_text(Text.assemble(("  engine ", "dim"), job.engine))
    return line


def queue_table(queued: list[Job], queued_count: int, now: datetime) -> RenderableType:
    if not queued:
        return Text("queue empty", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim", expand=True)
    table.add_column("job", justify="right", no_wrap=True)
    table.add_column("video", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("tasks", no_wrap=True)
    table.add_column("prio", justify="right", no_wrap=True)
    table.add_column("waiting", no_wrap=True)
    for job in queued:
        table.add_row(str(job.id), file_name(job.source_name), task_labels(job.tasks), queue_mark(job),
                      queue_note(job, now))
    more = queued_count - len(queued)
    if more > 0:
        table.add_row("", Text(f"… and {more} more", style="dim"), "", "", "")
    return table


def queue_note(job: Job, now: datetime) -> str:
    if job.not_before is not None:
        not_before = as_utc(job.not_before)
        if not_before > now:
            wait = format_duration((not_before - now).total_seconds())
            return f"retry {job.attempts + 1}/{job.max_attempts} in {wait}"
    return "since " + format_time(job.created_at, now)


STATE_MARKS = {
    JobState.DONE.value: ("✓", "green"),
    JobState.FAILED.value: ("✗", "red"),
    JobState.CANCELLED.value: ("–", "yellow"),
}


def recent_table(recent: list[Job], now: datetime) -> RenderableType:
    """Finished jobs, newest first; a failed one shows its error on one line, cut to the width."""
    if not recent:
        return Text("nothing finished yet", style="dim")
    table = Table(box=None, padding=(0, 1), show_edge=False, show_header=False, expand=True)
    table.add_column(no_wrap=True)  # mark
    table.add_column(justify="right", no_wrap=True)  # id
    table.add_column(no_wrap=True, max_width=24, overflow="ellipsis")  # video
    table.add_column(no_wrap=True)  # time
    table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")  # outcome
    for job in recent:
        mark, style = STATE_MARKS.get(job.state, ("?", "dim"))
        table.add_row(Text(mark, style=style), str(job.id), file_name(job.source_name),
                      format_time(job.finished_at, now), outcome(job))
    return table


def outcome(job: Job) -> Text:
    if job.state == JobState.DONE.value:
        output = Path(job.output_path).name if job.output_path else ""
        return Text.assemble(file_name(output), (f"  {job.engine}" if job.engine else "", "dim"))
    if job.state == JobState.CANCELLED.value:
        return Text("cancelled", style="yellow")
    return Text(one_line(job.error_message) or "failed", style="red")


def disk_line(disk: DiskInfo) -> Text:
    label = Text("outbox ", style="dim")
    if disk.free_bytes is None:
        return label + Text(f"{disk.path} is missing", style="red")
    low = disk.free_bytes < disk.min_free_mb * 1024 * 1024
    free = Text(f"{format_bytes(disk.free_bytes)} free", style="bold red" if low else "green")
    line = label + free + Text(f" of {format_bytes(disk.total_bytes or 0)}", style="dim")
    if low:
        line += Text(f"  below min_free_space_mb = {disk.min_free_mb}: jobs wait", style="red")
    return line


def gpu_lines(gpus: list[GpuInfo], reason: str | None) -> RenderableType:
    if not gpus:
        return Text.assemble(("gpu    ", "dim"), (reason or "no NVIDIA GPU", "dim"))
    lines = []
    for gpu in gpus:
        busy = f"{gpu.utilisation}% busy" if gpu.utilisation is not None else "busy —"
        lines.append(Text.assemble(
            ("gpu ", "dim"), (f"{gpu.index}  ", "dim"), (gpu.name, "bold"), "  ",
            f"{format_bytes(gpu.memory_used)} / {format_bytes(gpu.memory_total)}", ("  ·  ", "dim"), busy,
        ))
    return Group(*lines)


def header(snapshot: Snapshot) -> Text:
    counts = snapshot.counts
    parts = [f"{counts.get(s.value, 0)} {s.value}" for s in
             (JobState.RUNNING, JobState.QUEUED, JobState.DONE, JobState.FAILED)]
    if counts.get(JobState.CANCELLED.value):
        parts.append(f"{counts[JobState.CANCELLED.value]} cancelled")
    return Text.assemble(("svfrd  ", "bold"), (" · ".join(parts), ""))


def dashboard(snapshot: Snapshot, disk: DiskInfo, gpus: list[GpuInfo], gpu_reason: str | None,
              speeds: Callable[[int | None], float | None]) -> RenderableType:
    """The whole screen."""
    now = snapshot.taken_at
    if snapshot.problem:
        body: list[RenderableType] = [Text(snapshot.problem, style="yellow")]
    else:
        running: list[RenderableType] = [running_panel(job, speeds(job.id), now) for job in snapshot.running]
        queued_count = snapshot.counts.get(JobState.QUEUED.value, len(snapshot.queued))
        body = [
            Panel(Group(*running) if running else Text("idle", style="dim"), title="running", title_align="left",
                  border_style="cyan" if running else "dim"),
            Panel(queue_table(snapshot.queued, queued_count, now), title=f"queue ({queued_count})",
                  title_align="left", border_style="dim"),
            Panel(recent_table(snapshot.recent, now), title="recent", title_align="left", border_style="dim"),
        ]
    clock = now.astimezone().strftime("%H:%M:%S")
    top = Table.grid(expand=True)
    top.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    top.add_column(justify="right", no_wrap=True)
    top.add_row(header(snapshot) if not snapshot.problem else Text("svfrd", style="bold"),
                Text(clock, style="dim"))
    control = [Text(snapshot.control, style="bold yellow")] if snapshot.control else []  # "paused", ...
    return Group(top, *control, *body, disk_line(disk), gpu_lines(gpus, gpu_reason))


# --------------------------------------------------------------------------------------------------------------
# The live loop.


class StatusSource:
    """Everything the dashboard shows, re-read at most once per `poll_seconds`."""

    def __init__(self, config: Config, poll_seconds: float = DB_POLL_SECONDS):
        self.config = config
        self.poll_seconds = poll_seconds
        self.db = open_read_only(config.service.database_url)
        self.gpu = GpuMonitor()
        self.speed = SpeedMeter()
        self._last_read = float("-inf")
        self._screen: RenderableType = Text("reading…")

    def screen(self) -> RenderableType:
        if time.monotonic() - self._last_read >= self.poll_seconds:
            self._last_read = time.monotonic()
            self._screen = self._build()
        return self._screen

    def _build(self) -> RenderableType:
        snapshot = safe_snapshot(self.db, self.config.service.database_url, self.config.schedule)
        for job in snapshot.running:
            self.speed.update(job)
        self.speed.forget_all_but(job.id for job in snapshot.running)
        disk = read_disk(self.config.output.outbox, self.config.service.min_free_space_mb)
        gpus = self.gpu.read()
        return dashboard(snapshot, disk, gpus, self.gpu.reason, self.speed.speed)

    def close(self) -> None:
        self.gpu.close()
        self.db.dispose()


def watch(config: Config, console: Console | None = None, pause: Callable[[float], None] = time.sleep) -> int:
    """Show the live view until Ctrl-C. Returns the exit code (0). `pause` waits between redraws (a test's
    pause raises KeyboardInterrupt, as Ctrl-C does)."""
    from rich.live import Live

    console = console or Console()
    source = StatusSource(config)
    try:
        with Live(source.screen(), console=console, refresh_per_second=SCREEN_REFRESH_PER_SECOND,
                  screen=False, transient=False, redirect_stderr=False) as live:
            while True:
                pause(1 / SCREEN_REFRESH_PER_SECOND)
                live.update(source.screen())
    except KeyboardInterrupt:
        if not console.is_terminal:
            console.line()  # Live leaves its last frame without a final newline off a terminal
        return 0
    finally:
        source.close()
