"""Writing the systemd unit that runs `svfrd run` as a service.

The unit text is made here, from one template per kind (system service under a dedicated user, or a user
service on a single-user workstation); `systemd/svfrd.service` and `systemd/svfrd-user.service` in the
repository are this template rendered with the documented default paths (a test keeps them in step).
`svfrd install-service` fills in this installation's paths: the venv's `svfrd` and the config file, and for the
system service the folders svfrd writes to, the only ones left writable by `ProtectSystem=strict`.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from svfrd.config import Config, load_config, parse_listen_address
from svfrd.errors import ConfigError
from svfrd.files.atomic import replacing
from svfrd.jobs.database import sqlite_file
from svfrd.ops.printable import printable
from svfrd.web.security import is_loopback

UNIT_NAME = "svfrd.service"
SERVICE_USER = "svfrd"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")

# What the shipped example units assume (see the README's install section).
DEFAULT_SYSTEM_EXECUTABLE = Path("/opt/svfrd/.venv/bin/svfrd")
DEFAULT_SYSTEM_CONFIG = Path("/etc/svfrd/config.toml")
DEFAULT_SYSTEM_WRITABLE = (Path("/var/lib/svfrd"),)
DEFAULT_USER_EXECUTABLE = "%h/svfrd/.venv/bin/svfrd"
DEFAULT_USER_CONFIG = "%h/.config/svfrd/config.toml"

# Timings shared by both kinds. The supervisor sends WATCHDOG=1 from its main loop every WatchdogSec/2, so
# the deadline only fires when the loop is stuck; stopping may take longer and the daemon then asks for more
# time with EXTEND_TIMEOUT_USEC while it winds the running job down.
WATCHDOG_SEC = 60
TIMEOUT_START_SEC = 300
TIMEOUT_STOP_SEC = 120
RESTART_SEC = 15

# Limits a real job fits in. The worker loads multi-GB weights (the SVFR UNet alone is 1.5 G parameters) and
# keeps a few numbers per frame (docs/architecture.md, "Streaming everywhere"): a share of the machine's memory
# leaves the rest of it responsive when something runs away. Threads: PyTorch and the codecs start about one
# per core each, so 4096 fits a 256-core machine and still stops a fork storm. The largest file svfrd writes is
# a restored video (or an input copied across file systems): a long 4K master is tens of GB, so 256G only
# stops a runaway write before it fills the disk. When hit, memory ends the process, a thread or a write
# fails (Python ignores SIGXFSZ, so the write gets EFBIG): the job is retried, then fails, and the rest of
# the machine is never harmed.
MEMORY_MAX = "80%"
TASKS_MAX = 4096
FILE_SIZE_MAX = "256G"
# A crash loop once wrote 40,000 tracebacks in four minutes; a job logs a few lines a minute.
LOG_RATE_INTERVAL = "60s"
LOG_RATE_BURST = 1000

_COMMON_SERVICE = f"""\
Type=notify
NotifyAccess=main
ExecStart={{exec_start}}
WatchdogSec={WATCHDOG_SEC}
TimeoutStartSec={TIMEOUT_START_SEC}
TimeoutStopSec={TIMEOUT_STOP_SEC}
Restart=on-failure
RestartSec={RESTART_SEC}
# Exit 2 is a wrong configuration (a missing face model, a bad config.toml): restarting cannot fix it.
RestartPreventExitStatus=2
# SIGTERM goes to the daemon only: it stops or requeues the job itself and then ends its worker.
KillMode=mixed
# glibc gives every decoder/encoder thread its own malloc arena; two keep the worker's memory steady.
Environment=MALLOC_ARENA_MAX=2
# PyTorch grows its GPU memory segments instead of fragmenting fixed ones: the windows and VAE chunks of one
# job, then the next job's, fit in less memory (docs/svfr.md §9).
Environment=PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
"""

# What a user manager can enforce as well as the system one: seccomp filters, resource limits, the umask.
# Options that need a mount or user namespace are left to the system unit (in a user manager they imply
# PrivateUsers=, which some distributions forbid to unprivileged users).
_COMMON_HARDENING = f"""\
# Files svfrd creates: readable by the service's group, never by everyone.
UMask=0027
NoNewPrivileges=yes
MemoryMax={MEMORY_MAX}
TasksMax={TASKS_MAX}
LimitFSIZE={FILE_SIZE_MAX}
LogRateLimitIntervalSec={LOG_RATE_INTERVAL}
LogRateLimitBurst={LOG_RATE_BURST}
# CUDA needs mmap, mprotect, ioctl and memfd_create: all in @system-service. @privileged is what needs
# capabilities this service has none of. @resources (NUMA memory policy, CPU affinity, priorities, rlimits):
# svfrd sets none, and CUDA and PyTorch run under Docker's default profile, which refuses the NUMA calls too.
# Refused calls fail with EPERM, which libraries handle, instead of killing the process; if a library ever
# logs EPERM for one of them, remove "@resources" from the second line.
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
SystemCallArchitectures=native
{{address_families}}RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""

SYSTEM_TEMPLATE = f"""\
# svfrd as a system service under its own user. Written by `svfrd install-service`; the shipped copy in
# systemd/ assumes the program in /opt/svfrd/.venv and the config in /etc/svfrd/config.toml, both owned by
# root. `systemd-analyze security svfrd.service` rates it SAFE (the tests hold it at 2.5 or lower).
[Unit]
Description=svfrd face video restoration service
After=local-fs.target remote-fs.target

[Service]
{_COMMON_SERVICE}User={SERVICE_USER}
Group={SERVICE_USER}
# /var/lib/svfrd and /run/svfrd are created by systemd and owned by the service user; /etc/svfrd is created
# too but stays root's. The state folder is the service's and its group's, like every folder svfrd creates.
StateDirectory=svfrd
StateDirectoryMode=0750
RuntimeDirectory=svfrd
ConfigurationDirectory=svfrd
WorkingDirectory=/var/lib/svfrd
# The home of a system user does not exist: keep torch/triton caches in the state folder.
Environment=XDG_CACHE_HOME=/var/lib/svfrd/cache
{{password_file}}
{_COMMON_HARDENING}
# Hardening that leaves the GPU working. The NVIDIA device nodes must stay reachable (so no
# PrivateDevices), and MemoryDenyWriteExecute is left out on purpose: PyTorch and CUDA map executable
# memory for their JIT kernels.
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
# No PrivateUsers: where the GPU is opened through a group (device nodes 0660 root:video and the service
# user in that group), a private user namespace cannot map that group and the service would lose the GPU.
# No ProcSubset=pid: it hides /proc/driver/nvidia, where CUDA looks up MIG capabilities, and /proc/cpuinfo.
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome={{protect_home}}
# Only where svfrd writes: inboxes (inputs are moved out), outbox, done, failed and the state folder.
ReadWritePaths={{writable}}
{{binds}}PrivateTmp=yes
PrivateMounts=yes
{{network}}ProtectProc=invisible
RemoveIPC=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes

[Install]
WantedBy=multi-user.target
"""

USER_TEMPLATE = f"""\
# svfrd as a user service on a single-user workstation. Written by `svfrd install-service --user` into
# ~/.config/systemd/user/svfrd.service; the shipped copy in systemd/ assumes the program in ~/svfrd/.venv and
# the config in ~/.config/svfrd/config.toml.
[Unit]
Description=svfrd face video restoration service (user)

[Service]
{_COMMON_SERVICE}
{_COMMON_HARDENING}# A user manager shares the session keyring with its services by default; svfrd needs none of it. Capability
# sets are left alone: the service has no capabilities, and a user manager may not change its bounding set.
KeyringMode=private

[Install]
WantedBy=default.target
"""


@dataclass(frozen=True)
class UnitPaths:
    """What differs between installations."""

    executable: str
    config: str
    writable: tuple[str, ...] = ()
    protect_home: str = "yes"
    specifiers: bool = False  # the paths use unit specifiers such as %h on purpose
    # With ProtectHome=tmpfs, the folders under /home (or /root) that svfrd writes to or reads from.
    home_writable: tuple[str, ...] = ()
    home_readable: tuple[str, ...] = ()
    #: `[web] listen` when the service serves the web page (`[web] enabled`), else None: no network at all.
    web_listen: str | None = None
    #: `[notify] url`, which the service POSTs to when a job ends (svfrd.ops.notifications); None: not set.
    notify_url: str | None = None
    #: The database server's host when `[service] database_url` names one over TCP (docs/architecture.md,
    #: "Workers, claims and leases"); None for SQLite or a server on a Unix socket, which AF_UNIX reaches.
    database_host: str | None = None
    #: Where libpq reads the PostgreSQL password (`database_password_file`); None for SQLite.
    password_file: str | None = None


# What the unit lets svfrd reach over the network: nothing (the default), this machine only (a web page on
# loopback), or any address (a web page on a network address).
NO_NETWORK, LOOPBACK_ONLY, ANY_ADDRESS = "none", "loopback", "any"


def network_reach(web_listen: str | None, notify_url: str | None = None, database_host: str | None = None) -> str:
    """The widest reach that the web page, the notification URL and the database server need."""
    hosts = [parse_listen_address(web_listen)[0]] if web_listen is not None else []
    hosts += [urlsplit(notify_url).hostname or ""] if notify_url else []
    hosts += database_host.split(",") if database_host else []  # libpq accepts a list of hosts
    if not hosts:
        return NO_NETWORK
    return LOOPBACK_ONLY if all(is_loopback(host) for host in hosts) else ANY_ADDRESS


def database_server_host(database_url: str) -> str | None:
    """The host a database server URL reaches over TCP; None for SQLite, a malformed URL (the daemon says what
    is wrong with it), or a server on a Unix socket: no host (libpq's default socket) or a folder as host."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    if url.get_backend_name() == "sqlite":
        return None
    host = url.host or url.query.get("host") or ""
    host = host if isinstance(host, str) else ",".join(host)
    tcp_hosts = [h for h in host.split(",") if h and not h.startswith("/") and not h.startswith("@")]
    return ",".join(tcp_hosts) or None


#: The file in the state folder that the system unit names as libpq's password file (PGPASSFILE).
PASSWORD_FILE_NAME = "pgpass"


def database_password_file(config: Config) -> Path | None:
    """The password file the system unit points libpq at when `[service] database_url` names a PostgreSQL
    server; None for SQLite or a malformed URL. Not ~/.pgpass: the service user's home is whatever its passwd
    entry says, and under /home it is hidden by ProtectHome= (README, "Several machines: PostgreSQL")."""
    try:
        backend = make_url(config.service.database_url).get_backend_name()
    except ArgumentError:
        return None
    return config.service.state_dir / PASSWORD_FILE_NAME if backend == "postgresql" else None


def password_file_wanted(config: Config) -> Path | None:
    """`database_password_file` when libpq will look for a password there: the URL carries none."""
    password_file = database_password_file(config)
    if password_file is None or make_url(config.service.database_url).password is not None:
        return None
    return password_file


def password_file_command(password_file: Path) -> str:
    """What creates the password file as libpq accepts it: the service user's, closed to everyone else."""
    return shlex.join(["sudo", "install", "-m", "0600", "-o", SERVICE_USER, "-g", SERVICE_USER, "/dev/null",
                       str(password_file)])


def _password_file_lines(password_file: str | None) -> str:
    if password_file is None:
        return ""
    return ("# libpq reads the database password from this file (the service user's, mode 0600) rather than a\n"
            "# ~/.pgpass that ProtectHome= may hide (README, \"Several machines: PostgreSQL\").\n"
            f"Environment={quote_arg('PGPASSFILE=' + password_file)}\n")


def _database_network_note(database_host: str | None) -> str:
    """Said in the unit when the database server is what opens the network."""
    if not database_host:
        return ""
    return (f"# [service] database_url: the shared job database is a server on {database_host}, reached over "
            "TCP, so the\n# service's network is not private (README, \"Several GPUs, several machines\").\n")


def _notify_network_note(notify_url: str | None) -> str:
    """Said in the unit when [notify] url is what opens the network."""
    if not notify_url:
        return ""
    return (f"# [notify] url: the service POSTs to {urlsplit(notify_url).hostname} when a job ends, so its network "
            "is not private\n# (README, \"Pause, schedule, priority, notifications\").\n")


_UNIX_FAMILIES = """\
# AF_UNIX: sd_notify and the worker's connection (multiprocessing's Pipe is a Unix socket pair), and a
# PostgreSQL server on this machine's Unix socket. Nothing svfrd runs here opens an internet or netlink socket.
RestrictAddressFamilies=AF_UNIX
"""
_WEB_FAMILIES = """\
# AF_UNIX: sd_notify and the worker's connection (multiprocessing's Pipe is a Unix socket pair). AF_INET
# AF_INET6: what the network lines below are opened for (the web page, a notification URL, a database server).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
"""
# The system unit's network lines for each reach.
_SYSTEM_NETWORK = {
    NO_NETWORK: """\
# The network namespace holds only loopback: svfrd talks to nothing (sd_notify is a Unix socket by path).
PrivateNetwork=yes
IPAddressDeny=any
""",
    LOOPBACK_ONLY: """\
# Everything the service talks to is on loopback: it shares the machine's network so that local browsers
# reach the page and it reaches local servers, but its sockets exchange packets with this machine only.
IPAddressDeny=any
IPAddressAllow=localhost
""",
    ANY_ADDRESS: """\
# The service talks to other machines (a page on a network address, a notification URL or a database server
# elsewhere), so no PrivateNetwork= or IPAddressDeny= here; a page on the network requires its token (README,
# "Web page"). To admit only your own network, add IPAddressDeny=any and
# IPAddressAllow=localhost 192.0.2.0/24 (its prefix).
""",
}


def quote_arg(arg: str, keep_specifiers: bool = False) -> str:
    """One unit-file argument: `%` starts a specifier (kept only where meant, like `%h`), and spaces or
    quotes need double quotes. Control characters never get here (`refuse_control_characters`)."""
    if not keep_specifiers:
        arg = arg.replace("%", "%%")
    if any(c in arg for c in ' \t"\\'):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def render_unit(paths: UnitPaths, user: bool) -> str:
    args = (paths.executable, "--config", paths.config, "run")
    # On a command line `${NAME}` is an environment variable: a literal `$` is written `$$`.
    exec_start = " ".join(quote_arg(a.replace("$", "$$"), paths.specifiers) for a in args)
    reach = network_reach(paths.web_listen, paths.notify_url, paths.database_host)
    families = _WEB_FAMILIES if reach != NO_NETWORK else _UNIX_FAMILIES
    if user:
        return USER_TEMPLATE.format(exec_start=exec_start, address_families=families)
    # A leading "-" lets the service start even if a folder is missing (svfrd then reports it itself).
    writable = _optional_paths(paths.writable)
    binds = ""
    if paths.home_writable:
        binds += f"BindPaths={_optional_paths(paths.home_writable)}\n"
    if paths.home_readable:
        binds += f"BindReadOnlyPaths={_optional_paths(paths.home_readable)}\n"
    return SYSTEM_TEMPLATE.format(exec_start=exec_start, writable=writable, protect_home=paths.protect_home,
                                  binds=binds, address_families=families,
                                  password_file=_password_file_lines(paths.password_file),
                                  network=_database_network_note(paths.database_host)
                                  + _notify_network_note(paths.notify_url) + _SYSTEM_NETWORK[reach])


def _optional_paths(paths: tuple[str, ...]) -> str:
    return " ".join(quote_arg("-" + p) for p in paths)


def shipped_unit(user: bool) -> str:
    """The example unit kept in the repository's systemd/ folder."""
    if user:
        return render_unit(UnitPaths(DEFAULT_USER_EXECUTABLE, DEFAULT_USER_CONFIG, specifiers=True), user=True)
    paths = UnitPaths(str(DEFAULT_SYSTEM_EXECUTABLE), str(DEFAULT_SYSTEM_CONFIG),
                      tuple(str(p) for p in DEFAULT_SYSTEM_WRITABLE))
    return render_unit(paths, user=False)


def svfrd_executable() -> Path:
    """The `svfrd` script of the environment this process runs in (the venv's, not one found on $PATH)."""
    return Path(sys.executable).absolute().parent / "svfrd"


def writable_folders(config: Config) -> list[Path]:
    unique: list[Path] = []
    for _label, folder in _labelled_folders(config):
        if folder not in unique:
            unique.append(folder)
    return unique


HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))  # what ProtectHome= hides


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in HOME_ROOTS)


def _outermost(paths: list[Path]) -> list[Path]:
    """`paths` without duplicates and without those inside another one (a bind of the outer one shows them)."""
    kept: list[Path] = []
    for path in paths:
        if not any(other == path or other in path.parents for other in kept):
            kept = [k for k in kept if path not in k.parents] + [path]
    return kept


def read_paths(config: Config, executable: Path) -> list[Path]:
    """What the service reads besides its writable folders: its Python environment, its own code (an
    editable install lives elsewhere), the interpreter behind the venv, the config and the models."""
    import svfrd

    package = Path(svfrd.__file__).resolve().parent
    return [executable.parent.parent, package, Path(sys.base_prefix).resolve(), config.path,
            config.engine.svfr.models_dir, config.faces.model]


def unit_paths_for(config: Config, executable: Path) -> UnitPaths:
    folders = writable_folders(config)
    # ProtectHome=yes hides /home, /root and /run/user. When svfrd or its folders live there, an empty tmpfs
    # stands in for them instead and only those folders are bound into it: other users' files stay hidden.
    home_writable = _outermost([f for f in folders if _under_home(f)])
    home_readable = [p for p in _outermost([*home_writable, *read_paths(config, executable)])
                     if _under_home(p) and p not in home_writable]
    protect_home = "tmpfs" if home_writable or home_readable else "yes"
    return UnitPaths(str(executable), str(config.path), tuple(str(f) for f in folders), protect_home,
                     home_writable=tuple(str(f) for f in home_writable),
                     home_readable=tuple(str(p) for p in home_readable),
                     web_listen=config.web.listen if config.web.enabled else None,
                     notify_url=config.notify.url or None,
                     database_host=database_server_host(config.service.database_url),
                     password_file=_optional_str(database_password_file(config)))


def _optional_str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


# ---------------------------------------------------------------------------------------------------------------
# What install-service refuses. The unit is text that systemd runs as root; the printed commands are pasted
# into a root shell. Neither may be steered by a configured path.


class InstallRefused(Exception):
    """`str(err)` says what is wrong and what to do; `code` is the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# C0, DEL and C1 controls: a newline would start a unit line of its own, like `ExecStartPre=+...` (run as
# root). U+2028/9 end a line for some readers too.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Folders svfrd must never write to or chown as a whole: the system's own trees (also anything under them)
# and folders that hold many other things (only the folder itself).
SYSTEM_TREES = tuple(Path(p) for p in ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                                       "/boot", "/dev", "/proc", "/sys"))
SHARED_FOLDERS = tuple(Path(p) for p in ("/", "/var", "/var/lib", "/var/log", "/var/tmp", "/var/cache", "/tmp",
                                         "/opt", "/srv", "/mnt", "/media", "/run", "/home", "/root",
                                         "/run/user", "/usr/local"))


def control_character(value: str) -> str | None:
    match = _CONTROL.search(value)
    return None if match is None else f"U+{ord(match.group()):04X}"


def refuse_control_characters(values: list[tuple[str, str]]) -> None:
    """`values` are (what it is, text) pairs headed for the unit or the printed commands."""
    for label, value in values:
        found = control_character(value)
        if found is not None:
            raise InstallRefused(
                f"{label} {ascii(value)} contains a control character ({found}); a unit line or a command "
                "cannot carry it safely. Rename that file or folder, or point the config at another one.", 2)


def home_folders() -> set[Path]:
    """Every person's home folder itself: under /home, /run/user, and the homes of login users elsewhere."""
    homes = {Path("/root")}
    for root in (Path("/home"), Path("/run/user")):
        try:
            homes.update(child for child in root.iterdir())
        except OSError:
            pass
    for entry in pwd.getpwall():
        if entry.pw_uid >= 1000 and entry.pw_uid != 65534 and entry.pw_dir not in ("", "/"):
            homes.add(Path(entry.pw_dir))
    return homes


def unsafe_folder(folder: Path, homes: set[Path]) -> str | None:
    """Why `folder` cannot be one svfrd writes to (and the printed commands chown), or None."""
    if folder in SHARED_FOLDERS or any(folder == tree or tree in folder.parents for tree in SYSTEM_TREES):
        return "a system folder"
    if folder in homes:
        return "a home folder itself"
    return None


# An absolute folder of its own for each key, as the README's system install sets them.
SUGGESTED_FOLDERS = {"[[inbox]] path": "/srv/svfrd/inbox", "[output] outbox": "/srv/svfrd/outbox",
                     "[output] done": "/srv/svfrd/done", "[output] failed": "/srv/svfrd/failed",
                     "[service] state_dir": "/var/lib/svfrd/state",
                     "the folder of [service] database_url": "sqlite:////var/lib/svfrd/state/svfrd.db"}


def refuse_unsafe_folders(config: Config) -> None:
    """All unsafe folders at once, each with a value to write instead. The shipped config's relative folders
    resolve beside the config file, so copied to /etc/svfrd they would all land under /etc."""
    homes = home_folders()
    problems, reported = [], set()
    for label, folder in _labelled_folders(config):
        why = unsafe_folder(folder, homes)
        if why is not None and folder not in reported:
            reported.add(folder)
            relative = " (a relative path in the config resolves against its folder)" \
                if config.path.parent in (folder, *folder.parents) else ""
            problems.append(f"\n  - {label} = {folder} is {why}{relative}: use e.g. {SUGGESTED_FOLDERS[label]}")
    if problems:
        raise InstallRefused(
            "these folders cannot be svfrd's: it moves files in and out of them, and the printed commands would "
            f"hand them to the svfrd user:{''.join(problems)}\nSet absolute folders of svfrd's own in {config.path}.", 2)


def _labelled_folders(config: Config) -> list[tuple[str, Path]]:
    """Every folder svfrd writes to, named by its config key."""
    folders = [*(("[[inbox]] path", inbox.path) for inbox in config.inboxes),
               ("[output] outbox", config.output.outbox), ("[output] done", config.output.done),
               ("[output] failed", config.output.failed), ("[service] state_dir", config.service.state_dir)]
    database = _database_file(config.service.database_url)
    if database is not None:  # the database, its WAL and journal may live outside the state folder
        folders.append(("the folder of [service] database_url", Path(database).absolute().parent))
    return folders


def _database_file(url: str) -> Path | None:
    """The SQLite file `url` names; None for anything else, including a URL too malformed to parse (the
    daemon says what is wrong with it when it starts)."""
    try:
        return sqlite_file(url)
    except ArgumentError:
        return None


def database_server_note(config: Config, user: bool = False) -> str | None:
    """What the unit opens for a database server, said once when it is written."""
    try:
        backend = make_url(config.service.database_url).get_backend_name()
    except ArgumentError:
        return None
    if backend == "sqlite":
        return None
    host = database_server_host(config.service.database_url)
    start = f"note: [service] database_url names a {backend} server"
    if host is None:
        return (f"{start} on this machine's Unix socket: the unit allows Unix sockets only (AF_UNIX) and no "
                "network. Keep the socket out of /tmp, which the unit makes private (PrivateTmp=yes).")
    reach = network_reach(config.web.listen if config.web.enabled else None, config.notify.url or None, host)
    if user or reach == ANY_ADDRESS:
        return (f"{start} on {host}: the unit lets svfrd open internet sockets (AF_INET AF_INET6) to reach it over "
                "TCP; its network is not private.")
    return (f"{start} on {host}: the unit lets svfrd open internet sockets and exchange packets with this "
            "machine only (IPAddressAllow=localhost).")


def password_file_note(config: Config, user: bool = False) -> str | None:
    """Where the system unit has libpq look for the database password, said once when it is written."""
    password_file = password_file_wanted(config)
    if user or password_file is None:
        return None
    shown = printable(str(password_file))
    return (f"note: the unit has libpq read the database password from {shown} (PGPASSFILE), not ~/.pgpass: "
            f"create it with `{printable(password_file_command(password_file))}` and write the line "
            "HOST:PORT:DATABASE:USER:PASSWORD into it (e.g. with sudoedit); `svfrd doctor` checks it.")


def web_page_note(config: Config, user: bool = False) -> str | None:
    """What the unit lets the web page do: it is served from the unit itself."""
    reach = network_reach(config.web.listen if config.web.enabled else None)
    if reach == NO_NETWORK:
        return None
    listen = printable(config.web.listen)
    if user:
        return f"note: [web] enabled = true: the unit lets svfrd open internet sockets, for the page on {listen}."
    if reach == LOOPBACK_ONLY:
        return (f"note: [web] enabled = true: the unit serves the page on {listen} and lets svfrd exchange packets "
                "with this machine only (IPAddressAllow=localhost); to serve it on your network, set [web] "
                "listen to a network address and run install-service again.")
    return (f"note: [web] enabled = true: the page on {listen} may be reached from any address, so the unit "
            "does not filter addresses (IPAddressDeny=) and the page requires its token; to admit only your own "
            "network, add IPAddressDeny=any and IPAddressAllow=localhost YOUR-NETWORK/PREFIX to the unit.")


def _unit_values(config: Config, executable: Path, target: Path | None) -> list[tuple[str, str]]:
    values = [("the svfrd executable", str(executable)), ("the config file", str(config.path))]
    values += [(label, str(folder)) for label, folder in _labelled_folders(config)]
    values += [("a file or folder svfrd reads", str(p)) for p in read_paths(config, executable)]
    if target is not None:
        values.append(("the unit's file name", str(target)))
    return values


# ---------------------------------------------------------------------------------------------------------------
# A system service runs as its own user and is started by root: what it runs and reads must be root's alone,
# or whoever can change those files runs code as the service, with every inbox's files.

MODEL_ENTRIES_CHECKED = 10_000  # a models folder holds a few dozen files; stop walking a mistaken one early


def ownership_problems(items: list[tuple[str, Path, bool]], owner_uid: int = 0,
                       stat_path=os.lstat) -> list[str]:
    """What lets someone other than root (or `owner_uid`) change `items`, given as (what it is, path, whether
    to look inside): the files, their folders up to /, where their links lead, and a folder's contents."""
    problems: list[str] = []
    for label, path, look_inside in items:
        for checked in _chain(path) + (_contents(path) if look_inside else []):
            problem = _entry_problem(checked, owner_uid, stat_path)
            if problem is None:
                continue
            where = f"{label}" if checked == Path(os.path.abspath(path)) else f"{label} {path}"
            line = f"{problem} ({where})"
            if not any(existing.startswith(problem) for existing in problems):
                problems.append(line)
    return problems


def _chain(path: Path) -> list[Path]:
    """`path` and every folder above it, as written and where its links lead."""
    written = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    chain: list[Path] = []
    for entry in (written, *written.parents, real, *real.parents):
        if entry not in chain:
            chain.append(entry)
    return chain


def _contents(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(root) / name
            found += [entry] if not entry.is_symlink() else _chain(entry)
            if len(found) >= MODEL_ENTRIES_CHECKED:
                return found
    return found


def _entry_problem(path: Path, owner_uid: int, stat_path) -> str | None:
    try:
        st = stat_path(path)
    except FileNotFoundError:
        return None  # the folders above it are checked: only their owner can create it
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode means nothing; where it leads is checked
    if st.st_uid not in (0, owner_uid):
        return f"{path} belongs to {_user_name(st.st_uid)}"
    # A sticky folder such as /tmp is shared, but nobody can rename or replace what another user owns in it.
    shared_sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not shared_sticky:
        return f"{path} can be changed by its group or by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


ROOT_INSTALL_HINT = (
    "Install svfrd as root where only root can change it, and keep its config and weights root's: "
    "`sudo python3 -m venv /opt/svfrd/.venv && sudo /opt/svfrd/.venv/bin/pip install .` (in the source "
    "folder), `sudo install -D -m 0644 config.toml /etc/svfrd/config.toml`, weights in a root-owned folder "
    "(`sudo chown -R root: FOLDER && sudo chmod -R go-w FOLDER`); then "
    "`sudo /opt/svfrd/.venv/bin/svfrd --config /etc/svfrd/config.toml install-service`. "
    "For a service under your own account, use `svfrd install-service --user` instead.")


def refuse_unprotected_install(config: Config, executable: Path, owner_uid: int = 0,
                               stat_path=os.lstat) -> None:
    items = [("the svfrd executable", executable, False),
             ("its Python environment", executable.parent.parent, False),
             ("the svfrd package", Path(sys.modules["svfrd"].__file__).resolve().parent, True),
             ("the Python interpreter", Path(sys.executable).resolve(), False),
             ("the config file", config.path, False),
             ("[engine.svfr] models_dir", config.engine.svfr.models_dir, True),
             ("[faces] model", config.faces.model, False)]
    problems = ownership_problems(items, owner_uid, stat_path)
    if problems:
        listed = "".join(f"\n  - {p}" for p in problems)
        raise InstallRefused("a system service must only run and read files that only root can change, "
                             f"but:{listed}\n{ROOT_INSTALL_HINT}", 1)


def default_unit_path(user: bool) -> Path:
    if user:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return config_home / "systemd" / "user" / UNIT_NAME
    return SYSTEM_UNIT_DIR / UNIT_NAME


def next_steps(user: bool, written_to: Path | None, config: Config) -> list[str]:
    """The commands the person runs next, in order."""
    if user:
        steps = []
        if written_to is not None and written_to != default_unit_path(True):
            steps.append(shlex.join(["install", "-D", "-m", "0644", str(written_to), str(default_unit_path(True))]))
        steps.append("systemctl --user daemon-reload && systemctl --user enable --now svfrd")
        steps.append("loginctl enable-linger $USER   # keep it running while you are logged out")
        return steps
    steps = []
    if not _user_exists(SERVICE_USER):
        # --user-group: the group svfrd that people who share an inbox join (README, "Permissions").
        steps.append(f"sudo useradd --system --user-group --home-dir /var/lib/svfrd --shell /usr/sbin/nologin "
                     f"{SERVICE_USER}")
    steps += folder_steps(writable_folders(config))
    if written_to is not None and written_to != default_unit_path(False):
        steps.append(shlex.join(["sudo", "install", "-m", "0644", str(written_to), str(default_unit_path(False))]))
    steps.append("sudo systemctl daemon-reload && sudo systemctl enable --now svfrd")
    return steps


def folder_steps(folders: list[Path]) -> list[str]:
    """Hand the folders to the service user: missing ones are created 0750 (as the daemon would), existing
    ones only change owner. `install -d` on an existing folder would reset its mode to 0755, dropping the
    setgid bit and group write of a shared inbox (README, "Permissions and shared inboxes")."""
    owner = f"{SERVICE_USER}:{SERVICE_USER}"
    missing = [str(f) for f in folders if not f.exists()]
    existing = [str(f) for f in folders if f.exists()]
    steps = []
    if missing:
        steps.append(shlex.join(["sudo", "install", "-d", "-o", SERVICE_USER, "-g", SERVICE_USER, "-m", "0750",
                                 *missing]))
    if existing:
        steps.append(shlex.join(["sudo", "chown", owner, *existing]))
    return steps


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def install_service(config_path: Path, user: bool, output: Path | str | None = None,
                    owner_uid: int = 0, executable: Path | None = None) -> int:
    """Write the unit for `config_path` (to the systemd folder, to `output`, or to stdout when `output` is
    "-") and print the next commands. Returns 0; 1 when it cannot write or a system service would run files
    someone other than root (or `owner_uid`) can change; 2 for a bad config or an unsafe path. `owner_uid`
    and `executable` (default: this environment's svfrd) let tests run this without root."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(f"svfrd install-service: {err}", file=sys.stderr)
        return 2
    executable = executable or svfrd_executable()
    if not executable.is_file():
        print(f"svfrd install-service: {executable} not found; install svfrd into this environment "
              "(pip install .) and run install-service with its Python", file=sys.stderr)
        return 1
    target = None if output == "-" else Path(output) if output is not None else default_unit_path(user)
    try:
        refuse_control_characters(_unit_values(config, executable, target))
        refuse_unsafe_folders(config)
        if not user:
            refuse_unprotected_install(config, executable, owner_uid)
    except InstallRefused as err:
        print(f"svfrd install-service: {err}", file=sys.stderr)
        return err.code
    unit = render_unit(unit_paths_for(config, executable), user)
    for note in (database_server_note(config, user), password_file_note(config, user), web_page_note(config, user)):
        if note is not None:
            print(f"svfrd install-service: {note}", file=sys.stderr)
    if target is None:
        sys.stdout.write(unit)
        _print_steps(next_steps(user, Path("svfrd.service"), config), file=sys.stderr)
        return 0
    try:
        write_unit(target, unit)
    except PermissionError:
        hint = "svfrd install-service --output svfrd.service" + (" --user" if user else "")
        print(f"svfrd install-service: no permission to write {target}; run it with sudo, or write the unit "
              f"for review with `{hint}` and install that file as root", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"svfrd install-service: cannot write {target}: {err.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    _print_steps(next_steps(user, target, config))
    return 0


def write_unit(target: Path, unit: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as f:
        f.write(unit.encode("utf-8"))
        os.fchmod(f.fileno(), 0o644)


def _print_steps(steps: list[str], file=None) -> None:
    print("next:", file=file)
    for step in steps:
        print(f"  {step}", file=file)
