"""The service configuration: `config.toml` parsed into frozen dataclasses, every key validated.

An error names the key, the value found and what is allowed, so the daemon refuses to start with a message the
user can act on. Relative paths are resolved against the config file's folder, so the service behaves the same
whatever the working directory.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from svfrd.domain import (
    BUILTIN_OPTION_NAMES,
    DEFAULT_PRIORITY,
    OPTIONS,
    Task,
    accepted_option_names,
    mask_rule_problem,
    option_problem,
    priority_problem,
)
from svfrd.errors import ConfigError
from svfrd.service.schedule import Schedule, ScheduleError

# ---------------------------------------------------------------------------------------------------------------
# Tasks (shared with the sidecar parser, `svfrd.service.sidecar`, and `svfrd submit`) and the checks of the keys
# that are not per-job options (those are checked by their table, svfrd.domain.OPTIONS).

TASK_NAMES = {task.label: task for task in Task}
TASKS_ALLOWED = '0/"bfr", 1/"colorize", 2/"inpaint"'


def parse_tasks(value: Any) -> frozenset[Task]:
    """Task ids or names (`[0, 2]`, `["bfr", "inpaint"]`, mixed, or one bare value) -> a non-empty set.

    Raises ValueError with a message the callers wrap into ConfigError or BadInputError."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"the task list is empty; use one or more of {TASKS_ALLOWED}")
    return frozenset(_parse_one_task(item) for item in items)


def _parse_one_task(item: Any) -> Task:
    if isinstance(item, bool):
        pass  # bool is an int subclass; true/false is never a task
    elif isinstance(item, int) and item in {t.value for t in Task}:
        return Task(item)
    elif isinstance(item, str) and item.strip().lower() in TASK_NAMES:
        return TASK_NAMES[item.strip().lower()]
    raise ValueError(f"unknown task {toml_repr(item)}: allowed are {TASKS_ALLOWED}")


def tasks_to_text(tasks: frozenset[Task]) -> str:
    """The form stored in the jobs table: sorted ids, comma separated ("0,2")."""
    return ",".join(str(int(t)) for t in sorted(tasks))


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return "allowed values are " + ", ".join(json.dumps(a) for a in allowed)

    return check


def _int_in(low: int, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if in_range and (high is None or value <= high):
            return None
        upper = f" and <= {high}" if high is not None else ""
        return f"must be a whole number >= {low}{upper}"

    return check


def _positive_number(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return None
    return "must be a number > 0"


def toml_repr(value: Any) -> str:
    """A value as it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + "}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# The configuration objects.


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: Path
    database_url: str
    scan_interval: float
    quiet_period: float
    sidecar_grace: float
    max_attempts: int
    retry_backoff: float
    min_free_space_mb: int
    on_stop: str  # "requeue" | "finish"
    stop_timeout: float
    #: Seconds a running job's worker gets to honour a cancel by itself before it is killed.
    cancel_grace: float = 15.0
    #: Deaths of the whole service (kill -9, power loss) during one job before that job fails.
    max_service_interruptions: int = 10
    #: Seconds a running job's claim holds without renewal; after that any daemon puts it back in the queue
    #: (docs/architecture.md, "Workers, claims and leases" says why 90 and 15).
    lease: float = 90.0
    #: Seconds between renewals of the leases of the running jobs, by the supervisor.
    heartbeat: float = 15.0


@dataclass(frozen=True)
class InboxConfig:
    path: Path
    tasks: frozenset[Task]
    options: dict = field(default_factory=dict, hash=False)
    #: Take videos from subfolders too, mirroring their relative path under the outbox, done/ and failed/.
    recursive: bool = True
    #: Take symlinked videos (their target is read); by default a link fails and asks for a copy.
    follow_symlinks: bool = False
    #: The priority of its jobs unless a sidecar says otherwise (higher runs first).
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True)
class OutputConfig:
    outbox: Path
    done: Path
    failed: Path
    mode: str  # "full_frame" | "crop"
    crf: int
    preview: bool
    #: Seconds of video per independently encoded output segment, the unit a restarted job resumes from
    #: (svfrd.media.segments): the most work a crash can lose in encoding.
    segment_seconds: float = 2.0


@dataclass(frozen=True)
class FacesConfig:
    crop: str  # "tracked" | "reference"
    model: Path
    restore: str = "all"  # "all" | "largest" (svfrd.media.multiface)
    min_size: float = 0.05  # fraction of the frame height
    max_faces: int = 8  # per shot


@dataclass(frozen=True)
class SvfrConfig:
    models_dir: Path
    mode: str  # "reference" | "improved"
    steps: int
    pass1_steps: int
    guidance_scale: float
    vae_chunk: int  # frames per VAE decode call (the temporal decoder's chunk is part of the result)
    segment_frames: int
    #: Frames per VAE encode call: the encoder works frame by frame, so this only sets its memory peak.
    encode_chunk: int = 4
    #: "auto" | "high" | "balanced" | "low": how the engine trades GPU memory for speed (svfrd.engines.svfr.memory).
    memory: str = "auto"
    #: "once": the temporal ID cross-attention projects K and V once per clip; "stock": diffusers' processor.
    id_attention: str = "once"
    #: Speed-ups, off until measured on a GPU (svfrd.engines.svfr.speedups).
    compile: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False
    tf32: bool = False
    #: Where torch.compile keeps its cache: `<state_dir>/torch-compile` (set by the config loader).
    compile_cache: Path | None = None


@dataclass(frozen=True)
class EngineConfig:
    name: str  # "auto" | "svfr" | "classical" | "package.module:ClassName"
    device: str  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str  # "fp16" | "bf16" | "fp32"
    svfr: SvfrConfig
    #: The per-job options a job may set with this engine: the table's and a plug-in engine's own.
    option_names: frozenset[str] = BUILTIN_OPTION_NAMES
    #: One worker process per entry, each with its own models on that device; by default one, on `device`.
    devices: tuple[str, ...] = ()

    @property
    def worker_devices(self) -> tuple[str, ...]:
        return self.devices or (self.device,)


#: 8K UHD (7680x4320): the largest picture a camera or editor commonly writes. One decoded RGB frame of it is
#: about 100 MB, and the pipeline holds a few at once.
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320


@dataclass(frozen=True)
class LimitsConfig:
    """What one input may cost. A video or mask over a limit fails as bad input (not retried), with a message
    naming the limit and its key; the defaults are far above any real recording (config.toml says why)."""

    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    #: A million frames: 9 hours at 30 fps, 4.6 hours at 60 fps.
    max_frames: int = 1_000_000
    #: Four hours, in seconds.
    max_duration: float = 4 * 3600.0
    #: A mask is the frame's size or 512x512, so the frame limit fits it too.
    max_mask_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    #: A running job is stopped after max(job_timeout_min, job_timeout_per_frame x its frames) seconds.
    job_timeout_per_frame: float = 30.0
    job_timeout_min: float = 3600.0

    def job_timeout(self, frames: int) -> float:
        """Seconds a job on a video of `frames` frames may run before it is stopped."""
        return max(self.job_timeout_min, self.job_timeout_per_frame * frames)


#: Where the web page listens unless `[web] listen` or `svfrd web --listen` says otherwise.
DEFAULT_WEB_LISTEN = "127.0.0.1:8765"


@dataclass(frozen=True)
class WebConfig:
    """The web page (svfrd.web): off unless `enabled`; a listen address other than loopback needs a token."""

    enabled: bool = False
    listen: str = DEFAULT_WEB_LISTEN
    #: Empty: none on loopback; generated and stored in the state folder for any other address.
    token: str = field(default="", repr=False)
    max_upload_mb: int = 4096


@dataclass(frozen=True)
class NotifyConfig:
    """What to tell when a job ends (svfrd.ops.notifications): a command run with the job's details as
    arguments (never through a shell) and/or a JSON POST to an http(s) URL. Neither: nothing is sent."""

    command: tuple[str, ...] = ()
    url: str = ""
    #: Seconds one attempt may take, and how many attempts in all (with a doubling pause between them).
    timeout: float = 10.0
    attempts: int = 3

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.url)


@dataclass(frozen=True)
class Config:
    path: Path
    service: ServiceConfig
    inboxes: list[InboxConfig] = field(hash=False)
    output: OutputConfig
    faces: FacesConfig
    engine: EngineConfig
    limits: LimitsConfig = LimitsConfig()
    web: WebConfig = WebConfig()
    #: `[schedule] active`: when jobs may run (svfrd.service.schedule); no windows: always.
    schedule: Schedule = Schedule()
    notify: NotifyConfig = NotifyConfig()


# ---------------------------------------------------------------------------------------------------------------
# Loading.


def load_config(path: str | Path) -> Config:
    """Read and validate `path`. Raises ConfigError naming the key, the value and what is allowed."""
    path = Path(path).expanduser().absolute()
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config PATH to a svfrd config.toml") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    try:
        return _build_config(path, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


_ENGINE_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Table:
    """One TOML table being read: each `take` validates one key; `finish` rejects keys nobody took."""

    def __init__(self, label: str, raw: Any, base: Path):
        if not isinstance(raw, dict):
            raise ConfigError(f"{label} must be a table")
        self.label, self.raw, self.base = label, raw, base
        self.taken: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.label} {key} = {toml_repr(self.raw[key])}: {problem}")

    def take(self, key: str, default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
        self.taken.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        problem = check(value) if check else _same_type_problem(value, default)
        if problem:
            raise self.fail(key, problem)
        return float(value) if isinstance(default, float) else value

    def take_option(self, option: str) -> Any:
        """The key that sets a per-job option's service-wide default: its name (`config_key`), default and
        check are the table's (svfrd.domain.OPTIONS)."""
        spec = OPTIONS[option]
        table, _, key = spec.config_key.rpartition(" ")
        assert table == self.label, f"option {option} is set in {table}, not in {self.label}"
        return self.take(key, spec.default, spec.problem)

    def take_path(self, key: str, default: str) -> Path:
        value = self.take(key, default, _non_empty_string)
        return (self.base / Path(value).expanduser()).resolve()

    def sub(self, key: str) -> "_Table":
        self.taken.add(key)
        return _Table(f"[{self.label.strip('[]')}.{key}]", self.raw.get(key, {}), self.base)

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.taken)
        if unknown:
            known = ", ".join(sorted(self.taken))
            raise ConfigError(f"{self.label} unknown key {unknown[0]!r}; known keys are {known}")


def _same_type_problem(value: Any, default: Any) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        return None if ok else "must be a number >= 0"
    if isinstance(default, int):
        return _int_in(0)(value)
    if isinstance(default, str):
        return None if isinstance(value, str) else "must be a string"
    return None


def _non_empty_string(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string (a path)"


def _build_config(path: Path, raw: dict) -> Config:
    base = path.parent
    known_sections = {"service", "inbox", "output", "faces", "engine", "limits", "web", "schedule", "notify"}
    for key in raw:
        if key not in known_sections:
            allowed = ", ".join(f"[{s}]" for s in sorted(known_sections - {"inbox"})) + ", [[inbox]]"
            raise ConfigError(f"unknown section or key {key!r} at the top level; allowed are {allowed}")
    service = _service(_Table("[service]", raw.get("service", {}), base))
    engine = _engine(_Table("[engine]", raw.get("engine", {}), base))
    # torch.compile's cache lives with the service's other state, so it survives restarts and upgrades.
    engine = replace(engine, svfr=replace(engine.svfr, compile_cache=service.state_dir / "torch-compile"))
    inboxes = _inboxes(raw.get("inbox"), base, engine.option_names)
    output = _output(_Table("[output]", raw.get("output", {}), base))
    faces = _faces(_Table("[faces]", raw.get("faces", {}), base))
    limits = _limits(_Table("[limits]", raw.get("limits", {}), base))
    web = _web(_Table("[web]", raw.get("web", {}), base))
    schedule = _schedule(_Table("[schedule]", raw.get("schedule", {}), base))
    notify = _notify(_Table("[notify]", raw.get("notify", {}), base))
    _check_folders_distinct(inboxes, output)
    return Config(path=path, service=service, inboxes=inboxes, output=output, faces=faces, engine=engine,
                  limits=limits, web=web, schedule=schedule, notify=notify)


def _service(t: _Table) -> ServiceConfig:
    state_dir = t.take_path("state_dir", "state")
    url = t.take("database_url", "")
    service = ServiceConfig(
        state_dir=state_dir,
        database_url=_resolve_database_url(url, state_dir, t.base),
        scan_interval=t.take("scan_interval", 10.0, _positive_number),
        quiet_period=t.take("quiet_period", 5.0),
        sidecar_grace=t.take("sidecar_grace", 10.0),
        max_attempts=t.take("max_attempts", 3, _int_in(1)),
        retry_backoff=t.take("retry_backoff", 60.0),
        min_free_space_mb=t.take("min_free_space_mb", 2048),
        on_stop=t.take("on_stop", "requeue", _choice("requeue", "finish")),
        stop_timeout=t.take("stop_timeout", 90.0, _positive_number),
        cancel_grace=t.take("cancel_grace", 15.0, _positive_number),
        max_service_interruptions=t.take("max_service_interruptions", 10, _int_in(1)),
        lease=t.take("lease", 90.0, _positive_number),
        heartbeat=t.take("heartbeat", 15.0, _positive_number),
    )
    t.finish()
    if service.heartbeat * 2 > service.lease:
        raise ConfigError(f"[service] heartbeat = {service.heartbeat:g} s must be at most half of [service] lease = "
                          f"{service.lease:g} s, so that one late renewal does not lose a running job; lower "
                          "heartbeat or raise lease")
    return service


def _resolve_database_url(url: str, state_dir: Path, base: Path) -> str:
    """Empty -> an SQLite file in the state folder; a relative SQLite path -> against the config folder."""
    if not url.strip():
        return f"sqlite:///{state_dir / 'svfrd.db'}"
    prefix = "sqlite:///"
    if url.startswith(prefix):
        file_part = url[len(prefix):]
        if file_part and not file_part.startswith("/") and file_part != ":memory:":
            return prefix + str((base / file_part).resolve())
    return url


def _inboxes(raw: Any, base: Path, option_names: frozenset[str]) -> list[InboxConfig]:
    if raw is None:
        raise ConfigError('no [[inbox]] configured; add one, e.g. [[inbox]] path = "inbox"')
    if not isinstance(raw, list):
        raise ConfigError("inbox must be written as [[inbox]] blocks (an array of tables)")
    inboxes = [_inbox(_Table(f"[[inbox]] #{n}", item, base), option_names) for n, item in enumerate(raw, start=1)]
    seen: set[Path] = set()
    for inbox in inboxes:
        if inbox.path in seen:
            raise ConfigError(f"[[inbox]] path {inbox.path} is listed twice; list each folder once")
        seen.add(inbox.path)
    return inboxes


def _inbox(t: _Table, option_names: frozenset[str]) -> InboxConfig:
    if "path" not in t.raw:
        raise ConfigError(f"{t.label} has no path; add path = \"FOLDER\"")
    path = t.take_path("path", "inbox")
    tasks = t.take("tasks", ["bfr"], _inbox_tasks_problem)
    options = t.take("options", {}, lambda value: _inbox_options_problem(value, option_names))
    recursive, follow_symlinks = t.take("recursive", True), t.take("follow_symlinks", False)
    priority = t.take("priority", DEFAULT_PRIORITY, priority_problem)
    t.finish()
    return InboxConfig(path=path, tasks=parse_tasks(tasks), options=dict(options), recursive=recursive,
                       follow_symlinks=follow_symlinks, priority=priority)


def _inbox_tasks_problem(value: Any) -> str | None:
    try:
        tasks = parse_tasks(value)
    except ValueError as err:
        return str(err)
    problem = mask_rule_problem(tasks, has_mask=False)  # an inbox has no mask: only a sidecar can name one
    if problem:
        return f"{problem}, so it can only be asked for in a video's sidecar NAME.toml"
    return None


def _inbox_options_problem(value: Any, option_names: frozenset[str]) -> str | None:
    if not isinstance(value, dict):
        return "must be a table of engine options, e.g. options = { steps = 20 }"
    for name, option in value.items():
        problem = option_problem(name, option, option_names)
        if problem:
            return f"option {name} = {toml_repr(option)}: {problem}"
    return None


def _positive_seconds_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 600:
        return "must be a number of seconds above 0 and at most 600, e.g. 2.0"
    return None


def _output(t: _Table) -> OutputConfig:
    output = OutputConfig(
        outbox=t.take_path("outbox", "outbox"),
        done=t.take_path("done", "done"),
        failed=t.take_path("failed", "failed"),
        mode=t.take_option("output_mode"),
        crf=t.take_option("crf"),
        preview=t.take("preview", True),
        segment_seconds=t.take("segment_seconds", 2.0, _positive_seconds_problem),
    )
    t.finish()
    return output


def _faces(t: _Table) -> FacesConfig:
    faces = FacesConfig(
        crop=t.take_option("crop"),
        model=t.take_path("model", "models/face_landmarker.task"),
        restore=t.take_option("restore"),
        min_size=t.take_option("min_size"),
        max_faces=t.take_option("max_faces"),
    )
    t.finish()
    return faces


def _engine(t: _Table) -> EngineConfig:
    name = t.take("name", "auto", _engine_name_problem)
    device = t.take("device", "auto", lambda v: None if isinstance(v, str) and _DEVICE.match(v) else
                    'allowed values are "auto", "cpu", "cuda", "cuda:N"')
    devices = t.take("devices", [], _devices_problem)
    dtype = t.take("dtype", "fp16", _choice("fp16", "bf16", "fp32"))
    svfr = _svfr(t.sub("svfr"))
    t.finish()
    option_names = accepted_option_names(plugin_option_names(name))
    return EngineConfig(name=name, device=device, dtype=dtype, svfr=svfr, option_names=option_names,
                        devices=tuple(devices))


def _devices_problem(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(v, str) and _DEVICE.match(v) for v in value):
        return None
    return ('must be a non-empty list of devices, one worker each, e.g. devices = ["cuda:0", "cuda:1"] '
            '(each "auto", "cpu", "cuda" or "cuda:N")')


def _engine_name_problem(value: Any) -> str | None:
    if value in ("auto", "svfr", "classical"):
        return None
    if isinstance(value, str) and _ENGINE_IMPORT_PATH.match(value):
        return None
    return 'allowed values are "auto", "svfr", "classical" or an import path "package.module:ClassName"'


def plugin_option_names(engine_name: str) -> frozenset[str]:
    """The `option_names` a plug-in engine class ("package.module:ClassName") declares, read from the class
    without creating an engine. Empty for the built-in engines (their options are the table's) and for a class
    that cannot be imported: the worker then refuses to start and says why (svfrd.engines.create_engine)."""
    if not _ENGINE_IMPORT_PATH.match(engine_name):
        return frozenset()
    try:
        cls = import_engine_class(engine_name)
    except (ImportError, AttributeError):
        return frozenset()
    names = getattr(cls, "option_names", ())
    return frozenset(names) if isinstance(names, (set, frozenset, list, tuple)) else frozenset()


def import_engine_class(import_path: str) -> type:
    """The class a plug-in engine's "package.module:ClassName" names. Raises ImportError or AttributeError."""
    module_name, _, class_name = import_path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _svfr(t: _Table) -> SvfrConfig:
    svfr = SvfrConfig(
        models_dir=t.take_path("models_dir", "models"),
        mode=t.take_option("mode"),
        steps=t.take_option("steps"),
        pass1_steps=t.take_option("pass1_steps"),
        guidance_scale=float(t.take_option("guidance_scale")),
        vae_chunk=t.take("vae_chunk", 16, _int_in(1)),
        segment_frames=t.take("segment_frames", 2000, _int_in(32)),
        encode_chunk=t.take("encode_chunk", 4, _int_in(1)),
        memory=t.take("memory", "auto", _choice("auto", "high", "balanced", "low")),
        id_attention=t.take("id_attention", "once", _choice("once", "stock")),
        compile=t.take("compile", False),
        channels_last=t.take("channels_last", False),
        cuda_graphs=t.take("cuda_graphs", False),
        tf32=t.take("tf32", False),
    )
    t.finish()
    return svfr


def _limits(t: _Table) -> LimitsConfig:
    default = LimitsConfig()
    limits = LimitsConfig(
        max_frame_pixels=t.take("max_frame_pixels", default.max_frame_pixels, _int_in(1)),
        max_frames=t.take("max_frames", default.max_frames, _int_in(1)),
        max_duration=t.take("max_duration", default.max_duration, _positive_number),
        max_mask_pixels=t.take("max_mask_pixels", default.max_mask_pixels, _int_in(1)),
        job_timeout_per_frame=t.take("job_timeout_per_frame", default.job_timeout_per_frame, _positive_number),
        job_timeout_min=t.take("job_timeout_min", default.job_timeout_min, _positive_number),
    )
    t.finish()
    return limits


def _web(t: _Table) -> WebConfig:
    web = WebConfig(
        enabled=t.take("enabled", False),
        listen=t.take("listen", DEFAULT_WEB_LISTEN, listen_address_problem),
        token=t.take("token", "", web_token_problem),
        max_upload_mb=t.take("max_upload_mb", 4096, _int_in(1)),
    )
    t.finish()
    return web


def _schedule(t: _Table) -> Schedule:
    texts = t.take("active", [], _schedule_problem)
    t.finish()
    return Schedule.parse(texts)


def _schedule_problem(value: Any) -> str | None:
    try:
        Schedule.parse(value)
    except ScheduleError as err:
        return str(err)
    return None


def _notify(t: _Table) -> NotifyConfig:
    default = NotifyConfig()
    notify = NotifyConfig(
        command=tuple(t.take("command", [], _notify_command_problem)),
        url=t.take("url", "", _notify_url_problem),
        timeout=t.take("timeout", default.timeout, _positive_number),
        attempts=t.take("attempts", default.attempts, _int_in(1, 10)),
    )
    t.finish()
    return notify


def _notify_command_problem(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):  # []: no command
        return None
    return ('must be a list of arguments, the program first, e.g. ["/usr/local/bin/notify-me", "{id}", "{state}"]; '
            "it is run without a shell")


def _notify_url_problem(value: Any) -> str | None:
    from urllib.parse import urlsplit

    if value == "" or isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and urlsplit(value).hostname:
        return None
    return 'must be an http:// or https:// URL, e.g. "http://127.0.0.1:9000/svfrd"'


def web_token_problem(value: Any) -> str | None:
    """A token travels in a cookie and an Authorization header: letters, digits and `-._~` only."""
    if not isinstance(value, str):
        return "must be a string of letters, digits and -._~"
    if value and (len(value) < 16 or not all(c.isascii() and (c.isalnum() or c in "-._~") for c in value)):
        return ("must be at least 16 characters, only letters, digits and -._~ (it goes into a cookie); "
                "leave it out and svfrd generates one")
    return None


def parse_listen_address(text: str) -> tuple[str, int]:
    """"HOST:PORT" (an IPv6 host in brackets, "[::1]:8765") -> (host, port). Raises ValueError saying what
    is wrong."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT; write e.g. \"127.0.0.1:8765\" or \"[::1]:8765\"")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def listen_address_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return 'must be a string "HOST:PORT", e.g. "127.0.0.1:8765"'
    try:
        parse_listen_address(value)
    except ValueError as err:
        return str(err)
    return None


def _check_folders_distinct(inboxes: list[InboxConfig], output: OutputConfig) -> None:
    """An inbox that is also an output folder would feed results (or failed inputs) back in as new jobs."""
    outputs = {"outbox": output.outbox, "done": output.done, "failed": output.failed}
    for inbox in inboxes:
        for key, folder in outputs.items():
            if inbox.path == folder:
                raise ConfigError(
                    f"[[inbox]] path {inbox.path} is also [output] {key}; use separate folders"
                )
