"""`svfrd doctor`: checks everything a first run needs and prints one line per check.

Each check returns a `Check`: what was looked at, what was found and, when it failed, what to do. A failed
required check makes the exit code 1; a failed optional one is a warning (`!`) that never does. The checks are
plain functions of the config so each can be run and tested on its own; heavy imports (torch, the SVFR model
code) happen inside the checks that need them.
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.text import Text

from svfrd.config import Config, load_config
from svfrd.engines.svfr.model_folder import weights_problem  # file checks only: no torch, no diffusers
from svfrd.errors import ConfigError
from svfrd.files.placement import free_space_mb
from svfrd.weights.lock import fetch_command, unverified_reason, verified_summary  # sizes and times only: no torch

MIN_VRAM_GIB = 8.0  # the SVFR UNet in fp16 alone is ~3 GB; VAE, ArcFace and 16-frame activations need the rest
#: The oldest PostgreSQL svfrd supports: older releases are out of upstream support (no security fixes).
MIN_POSTGRES_MAJOR = 12
REQUIRED_ENCODERS = ("libx264", "aac")
REQUIRED_DECODERS = ("h264", "aac")
OPTIONAL_DECODERS = ("hevc", "mpeg4", "vp9", "prores", "mp3")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True

    @property
    def mark(self) -> str:
        return "✓" if self.ok else ("✗" if self.required else "!")

    @property
    def blocks_start(self) -> bool:
        return self.required and not self.ok


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str | None, required: bool = True) -> Check:
    """`fix` is None when `detail` already says what to do."""
    return Check(name, False, detail, fix, required)


# --------------------------------------------------------------------------------------------------------------
# Folders, database, disk.


def folder_checks(config: Config) -> list[Check]:
    folders = [("inbox", inbox.path) for inbox in config.inboxes]
    folders += [("outbox", config.output.outbox), ("done folder", config.output.done),
                ("failed folder", config.output.failed), ("state folder", config.service.state_dir)]
    checks = [check_folder(name, path) for name, path in folders]
    if config.service.state_dir.is_dir():
        checks.append(check_state_folder_closed(config.service.state_dir))
    return checks


def check_state_folder_closed(path: Path) -> Check:
    """svfrd creates its state folder 0750 (README, "Permissions and shared inboxes"), but one made earlier or
    by hand keeps its mode, and the umask does not protect files written before it was set."""
    name = "state folder access"
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        return failed(name, f"{path} is open to every local user (mode {mode:04o}): the job database names each "
                      "input and folder, and the private copies of masks and reference photos are there",
                      f"chmod o-rwx {path}", required=False)
    return passed(name, f"{path} closed to other users (mode {mode:04o})")


def check_folder(name: str, path: Path) -> Check:
    if not path.exists():
        parent = nearest_existing_parent(path)
        if parent is not None and is_writable_dir(parent):
            return failed(name, f"{path} does not exist yet", f"create it: mkdir -p {path}", required=False)
        return failed(name, f"{path} does not exist and {parent} is not writable",
                      f"create it as root and give it to the service user: sudo install -d -o $USER {path}")
    if not path.is_dir():
        return failed(name, f"{path} is not a folder", "point the config at a folder")
    if not is_writable_dir(path):
        return failed(name, f"{path} is not writable by this user",
                      f"give it to the user svfrd runs as: sudo chown -R $USER {path}")
    return passed(name, f"{path} writable")


def nearest_existing_parent(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return parent
    return None


def is_writable_dir(path: Path) -> bool:
    """By trying: os.access says yes to root even on a read-only mount."""
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".svfrd-doctor-"):
            return True
    except OSError:
        return False


def check_database(config: Config) -> Check:
    """Reachable, and at the newest schema this svfrd knows. Read-only: the doctor never migrates."""
    from sqlalchemy.exc import SQLAlchemyError

    from svfrd.jobs.database import (
        current_revision,
        database_error_reason,
        head_revision,
        known_revisions,
        missing_database_file,
        postgres_server_version,
        read_only_url,
        sqlite_file,
    )

    url = config.service.database_url
    name = "database"
    if (missing := missing_database_file(url)) is not None:
        return passed(name, f"{missing} not created yet; `svfrd run` creates and migrates it")
    path = sqlite_file(url)
    try:
        head = head_revision(url)
        current = current_revision(read_only_url(url))
        server = postgres_server_version(url)
    except ConfigError as err:  # no driver, or a SQLite file on a network filesystem: the message says what to do
        return failed(name, str(err), None)
    except (SQLAlchemyError, OSError, RuntimeError) as err:
        return failed(name, f"cannot open {safe_url(url)}: {database_error_reason(err)}",
                      "check [service] database_url and that this user can read the database"
                      + ("; that the PostgreSQL server runs and accepts this user" if path is None else ""))
    where = str(path) if path is not None else safe_url(url)
    if server is not None:
        if (problem := postgres_version_problem(*server)) is not None:
            return failed(name, f"{where}: {problem}",
                          f"upgrade the server to PostgreSQL {MIN_POSTGRES_MAJOR} or newer")
        where = f"{where} (PostgreSQL {server[0]})"
    if current == head:
        return passed(name, f"{where} reachable, schema at {head} (newest)")
    if current is None:
        return failed(name, f"{where} has no svfrd schema yet", "`svfrd run` creates it on start",
                      required=False)
    if current not in known_revisions(url):
        return failed(name, f"{where} is at schema {current}, which this svfrd does not know",
                      "it was written by a newer svfrd: upgrade svfrd")
    return failed(name, f"{where} is at schema {current}, newest is {head}",
                  "`svfrd run` upgrades it on start", required=False)


def check_database_password_file(config: Config, stat_path=os.stat) -> list[Check]:
    """The file the system unit has libpq read the PostgreSQL password from (PGPASSFILE, README, "Several
    machines: PostgreSQL"), when the URL carries none. libpq skips a file its group or others may read,
    without an error of its own: the login then fails for want of a password. `stat_path` lets tests own it."""
    from svfrd.ops.install_service import SERVICE_USER, password_file_command, password_file_wanted

    password_file = password_file_wanted(config)
    if password_file is None:
        return []
    name = "database password file"
    try:
        st = stat_path(password_file)
    except FileNotFoundError:
        return [failed(name, f"{password_file} does not exist: the system unit has libpq read the database password "
                       "from it (PGPASSFILE), as [service] database_url has none (a service in your own session "
                       "reads ~/.pgpass instead)", f"{password_file_command(password_file)}, then write "
                       "HOST:PORT:DATABASE:USER:PASSWORD into it with sudoedit", required=False)]
    except OSError as err:
        return [failed(name, f"cannot look at {password_file}: {err.strerror}",
                       f"run the doctor as the service user: sudo -u {SERVICE_USER} svfrd doctor", required=False)]
    mode, quoted = stat.S_IMODE(st.st_mode), shlex.quote(str(password_file))
    if not stat.S_ISREG(st.st_mode):
        return [failed(name, f"{password_file} is not a plain file; libpq ignores it", f"replace it: "
                       f"{password_file_command(password_file)}", required=False)]
    if mode & 0o077:
        return [failed(name, f"{password_file} may be read by its group or others (mode {mode:04o}), so libpq "
                       "ignores it and the service has no password to log in with", f"chmod 0600 {quoted}",
                       required=False)]
    if st.st_uid == 0:
        return [failed(name, f"{password_file} belongs to root (mode {mode:04o}): the service user cannot read it",
                       f"sudo chown {SERVICE_USER}:{SERVICE_USER} {quoted}", required=False)]
    return [passed(name, f"{password_file} private to its owner (mode {mode:04o})")]


def postgres_version_problem(shown: str, number: int) -> str | None:
    """What is wrong with a PostgreSQL server of this version (`SHOW server_version`, `server_version_num`)."""
    if number // 10_000 < MIN_POSTGRES_MAJOR:
        return f"the server runs PostgreSQL {shown}; svfrd needs {MIN_POSTGRES_MAJOR} or newer"
    return None


def safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def check_free_space(config: Config) -> Check:
    outbox, needed = config.output.outbox, config.service.min_free_space_mb
    free_mb = free_space_mb(outbox)  # the figure the worker compares before each job
    detail = f"{free_mb / 1024:.1f} GiB free for the outbox {outbox}"
    if free_mb < needed:
        return failed("free space", f"{detail}; jobs need at least {needed} MB ([service] min_free_space_mb)",
                      "free some space or point [output] outbox at a bigger disk")
    return passed("free space", detail)


# --------------------------------------------------------------------------------------------------------------
# Media: PyAV's FFmpeg, the face model.


def check_codecs() -> Check:
    import av

    missing = [f"{name} encoder" for name in REQUIRED_ENCODERS if not has_codec(av, name, "w")]
    missing += [f"{name} decoder" for name in REQUIRED_DECODERS if not has_codec(av, name, "r")]
    version = f"PyAV {av.__version__} (libavcodec {libavcodec_version(av)})"
    if missing:
        return failed("video codecs", f"{version} lacks {', '.join(missing)}",
                      "install the PyAV wheel from PyPI, which bundles FFmpeg with H.264 and AAC: "
                      "pip install --force-reinstall av")
    absent = [name for name in OPTIONAL_DECODERS if not has_codec(av, name, "r")]
    note = f"; cannot decode {', '.join(absent)} inputs" if absent else ""
    return passed("video codecs", f"{version}: H.264 (libx264) and AAC encode, H.264/AAC decode{note}")


def has_codec(av_module, name: str, mode: str) -> bool:
    try:
        av_module.codec.Codec(name, mode)
        return True
    except Exception:  # UnknownCodecError; its home module moved between PyAV releases
        return False


def libavcodec_version(av_module) -> str:
    try:
        libavcodec = av_module.library_versions.get("libavcodec")
        return ".".join(str(v) for v in libavcodec) if libavcodec else "?"
    except AttributeError:
        return "?"


def check_face_model(config: Config) -> Check:
    from svfrd.media.face_model import face_model_problem

    problem = face_model_problem(config.faces.model)
    if problem:
        return failed("face model", problem, None)
    return passed("face model", f"{config.faces.model} (sha256 verified)")


# --------------------------------------------------------------------------------------------------------------
# Models and GPU.


def svfr_required(config: Config) -> bool:
    """Only `engine.name = "svfr"` cannot run without the weights; "auto" falls back to the classical engine."""
    return config.engine.name == "svfr"


def without_svfr(config: Config) -> str:
    """What running without the SVFR weights or a GPU means for the configured engine."""
    name = config.engine.name
    if name == "auto":
        return 'engine "auto" uses the classical engine meanwhile'
    return f"not needed by engine {name!r}"


def check_svfr_weights(config: Config) -> Check:
    required = svfr_required(config)
    consequence = "" if required else f" ({without_svfr(config)})"
    models_dir = config.engine.svfr.models_dir
    problem = weights_problem(models_dir)
    if problem:
        return failed("SVFR weights", problem + consequence, f"`{fetch_command(models_dir)}` downloads and verifies "
                      "them", required)
    unverified = unverified_reason(models_dir)
    if unverified:
        # The files are there; the engine loads them strictly either way, but "auto" waits for the lock.
        return failed("SVFR weights", unverified + consequence, None, required=False)
    return passed("SVFR weights", f"{models_dir}: {verified_summary(models_dir)}")


def gpu_required(config: Config) -> bool:
    return config.engine.name == "svfr" or any(d.startswith("cuda") for d in config.engine.worker_devices)


def cuda_devices(config: Config) -> list[str]:
    """The GPUs the workers run on (`[engine] devices`, else `device`); "auto" and "cuda" mean GPU 0."""
    named = [d if d.startswith("cuda:") else "cuda:0" for d in config.engine.worker_devices if d != "cpu"]
    return list(dict.fromkeys(named)) or ["cuda:0"]


def check_torch_build(config: Config) -> Check:
    import torch

    cuda = torch.version.cuda
    build = f"torch {torch.__version__}, " + (f"CUDA {cuda} build" if cuda else "CPU-only build")
    if cuda is None and gpu_required(config):
        return failed("torch", build, "install the CUDA build of torch (pip install torch==<pinned> from PyPI on "
                      "a machine with an NVIDIA driver)")
    return passed("torch", build)


def check_gpu(config: Config) -> Check:
    import torch

    required = gpu_required(config)
    if not torch.cuda.is_available():
        consequence = "" if required else f" ({without_svfr(config)})"
        return failed("GPU", f"no CUDA GPU visible to torch{consequence}",
                      "check `nvidia-smi`, the NVIDIA driver, and CUDA_VISIBLE_DEVICES", required)
    details, problems = [], []
    for device in cuda_devices(config):  # each worker's own GPU (docs/architecture.md, "Workers, claims and leases")
        index = cuda_index(device)
        if index >= torch.cuda.device_count():
            return failed("GPU", f"{device} asked for, but only {torch.cuda.device_count()} GPU(s) visible",
                          "set [engine] devices (or device) to existing GPUs: cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}; `nvidia-smi -L` lists them")
        props = torch.cuda.get_device_properties(index)
        total_gib = props.total_memory / 2**30
        free_bytes, _ = torch.cuda.mem_get_info(index)
        details.append(f"cuda:{index} {props.name}, {total_gib:.1f} GiB VRAM ({free_bytes / 2**30:.1f} GiB free)")
        if total_gib < MIN_VRAM_GIB:
            problems.append(f"cuda:{index}")
    detail = "; ".join(details)
    if problems:
        return failed("GPU", f"{detail}; SVFR needs about {MIN_VRAM_GIB:.0f} GiB on {', '.join(problems)}",
                      # The UNet is the peak, not the VAE: a smaller VAE chunk would not help, and a smaller
                      # decode chunk changes the output (docs/svfr.md §9).
                      'set [engine.svfr] memory = "low", or use a bigger GPU', required=False)
    return passed("GPU", detail)


def check_workers(config: Config) -> Check:
    """The workers `[engine] devices` starts, and the running jobs with the host and device of each, from the
    job database (every daemon sharing it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from svfrd.jobs.database import missing_database_file, open_read_only
    from svfrd.jobs.store import list_jobs
    from svfrd.ops.status_view import worker_place

    devices = config.engine.worker_devices
    detail = f"{len(devices)} worker(s) here, on {', '.join(devices)}"
    if missing_database_file(config.service.database_url) is not None:
        return passed("workers", f"{detail}; no job database yet")
    db = open_read_only(config.service.database_url)
    try:
        running = list_jobs(db, limit=1000, states=["running"])
    except SQLAlchemyError:
        return passed("workers", f"{detail}; running jobs unknown until the database is upgraded (see above)")
    finally:
        db.dispose()
    jobs = "; ".join(f"job {job.id} {worker_place(job)}" for job in running) or "no job running"
    return passed("workers", f"{detail}; {jobs}")


def cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


# --------------------------------------------------------------------------------------------------------------
# The web page.


def check_web_port(config: Config) -> Check:
    """With `[web] enabled`, whether its address can be listened on, or who holds it (svfrd's own page is fine)."""
    from svfrd.config import parse_listen_address
    from svfrd.ops.ports import bind_problem, in_use, port_holders
    from svfrd.ops.printable import printable

    if not config.web.enabled:
        return passed("web page", "off ([web] enabled = false; `svfrd web` serves it on demand)")
    listen = config.web.listen
    host, port = parse_listen_address(listen)
    err = bind_problem(host, port)
    if err is None:
        return passed("web page", f"{listen} is free to listen on")
    if not in_use(err):
        return failed("web page", f"cannot listen on {listen}: {err.strerror}",
                      "choose an address of this machine and a port >= 1024 in [web] listen")
    holders = port_holders(port)
    ours = [pid for pid, command in holders if "svfrd" in command and " web" in command]
    if ours:
        return passed("web page", f"{listen} is served by svfrd's web page (process {ours[0]})")
    who = ", ".join(f"{printable(command)[:80]} (process {pid})" for pid, command in holders) or \
        "a process this user cannot see (try as root: ss -ltnp)"
    return failed("web page", f"port {port} is in use by {who}",
                  "stop that program, or choose another port in [web] listen")


# --------------------------------------------------------------------------------------------------------------
# Running them.


def all_checks() -> list[tuple[str, Callable[[Config], Check | list[Check]]]]:
    """Every check, in the order a person would fix them."""
    return [
        ("folders", folder_checks),
        ("database", check_database),
        ("database password file", check_database_password_file),
        ("workers", check_workers),
        ("free space", check_free_space),
        ("video codecs", lambda _config: check_codecs()),
        ("face model", check_face_model),
        ("SVFR weights", check_svfr_weights),
        ("torch", check_torch_build),
        ("GPU", check_gpu),
        ("web page", check_web_port),
    ]


def run_checks(config: Config) -> list[Check]:
    checks = [passed("config", f"{config.path} valid")]
    for name, check in all_checks():
        try:
            result = check(config)
        except Exception as err:  # a broken check must not hide the others
            result = failed(name, f"the check itself failed: {err!r}", "report this as a bug in svfrd doctor")
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def format_check(check: Check) -> Text:
    style = "green" if check.ok else ("red" if check.required else "yellow")
    line = Text.assemble((check.mark, style), " ", (check.name, "bold"), ": ", check.detail)
    if check.fix and not check.ok:
        line.append(f" → {check.fix}", style=style)
    return line


def run_doctor(config: Config | str | Path, console: Console | None = None) -> int:
    """Print one line per check. Returns 0 when svfrd can start, 1 when something required is missing,
    2 when the config itself is invalid. Accepts a loaded Config or the path of one."""
    console = console or Console(highlight=False, soft_wrap=True)
    if not isinstance(config, Config):
        try:
            config = load_config(config)
        except ConfigError as err:
            console.print(format_check(failed("config", str(err), "fix the key named above")))
            return 2
    checks = run_checks(config)
    for check in checks:
        console.print(format_check(check))
    blocking = [c for c in checks if c.blocks_start]
    warnings = [c for c in checks if not c.ok and not c.required]
    summary = f"{len(blocking)} problem(s) to fix before svfrd can run" if blocking else "ready to run"
    if warnings:
        summary += f", {len(warnings)} warning(s)"
    console.print(Text(summary, style="bold red" if blocking else "bold green"))
    return 1 if blocking else 0
