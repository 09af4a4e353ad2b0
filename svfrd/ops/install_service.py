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
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from svfrd.config import Config, load_config
from svfrd.errors import ConfigError
from svfrd.files.atomic import replacing

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
"""

SYSTEM_TEMPLATE = f"""\
# svfrd as a system service under its own user. Written by `svfrd install-service`; the shipped copy in
# systemd/ assumes the program in /opt/svfrd/.venv and the config in /etc/svfrd/config.toml.
[Unit]
Description=svfrd face video restoration service
After=local-fs.target remote-fs.target

[Service]
{_COMMON_SERVICE}User={SERVICE_USER}
Group={SERVICE_USER}
# /var/lib/svfrd, /run/svfrd and /etc/svfrd, created by systemd and owned by the service user.
StateDirectory=svfrd
RuntimeDirectory=svfrd
ConfigurationDirectory=svfrd
WorkingDirectory=/var/lib/svfrd
# The home of a system user does not exist: keep torch/triton caches in the state folder.
Environment=XDG_CACHE_HOME=/var/lib/svfrd/cache

# Hardening that leaves the GPU working. The NVIDIA device nodes must stay reachable (so no
# PrivateDevices), and MemoryDenyWriteExecute is left out on purpose: PyTorch and CUDA map executable
# memory for their JIT kernels.
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={{protect_home}}
# Only where svfrd writes: inboxes (inputs are moved out), outbox, done, failed and the state folder.
ReadWritePaths={{writable}}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
# AF_INET*: kept for a database server on another machine (planned; SQLite is the only store today).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native

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
{_COMMON_SERVICE}NoNewPrivileges=yes

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


def quote_arg(arg: str, keep_specifiers: bool = False) -> str:
    """One unit-file argument: `%` starts a specifier (kept only where meant, like `%h`), and spaces or
    quotes need double quotes."""
    if not keep_specifiers:
        arg = arg.replace("%", "%%")
    if any(c in arg for c in ' \t"\\'):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def render_unit(paths: UnitPaths, user: bool) -> str:
    args = (paths.executable, "--config", paths.config, "run")
    exec_start = " ".join(quote_arg(a, paths.specifiers) for a in args)
    if user:
        return USER_TEMPLATE.format(exec_start=exec_start)
    # A leading "-" lets the service start even if a folder is missing (svfrd then reports it itself).
    writable = " ".join(quote_arg("-" + p) for p in paths.writable)
    return SYSTEM_TEMPLATE.format(exec_start=exec_start, writable=writable, protect_home=paths.protect_home)


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
    folders = [inbox.path for inbox in config.inboxes]
    folders += [config.output.outbox, config.output.done, config.output.failed, config.service.state_dir]
    unique: list[Path] = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _under_home(path: Path) -> bool:
    return any(path == root or root in path.parents for root in (Path("/home"), Path("/root"), Path("/run/user")))


def unit_paths_for(config: Config, executable: Path) -> UnitPaths:
    folders = writable_folders(config)
    # ProtectHome=yes hides /home; when svfrd or its folders live there, keep it visible but read-only
    # (ReadWritePaths still opens the folders svfrd writes to).
    used = [executable, config.path, *folders, config.engine.svfr.models_dir, config.faces.model]
    protect_home = "read-only" if any(_under_home(p) for p in used) else "yes"
    return UnitPaths(str(executable), str(config.path), tuple(str(f) for f in folders), protect_home)


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
        steps.append(f"sudo useradd --system --home-dir /var/lib/svfrd --shell /usr/sbin/nologin {SERVICE_USER}")
    folders = [str(f) for f in writable_folders(config)]
    steps.append(shlex.join(["sudo", "install", "-d", "-o", SERVICE_USER, "-g", SERVICE_USER, *folders]))
    if written_to is not None and written_to != default_unit_path(False):
        steps.append(shlex.join(["sudo", "install", "-m", "0644", str(written_to), str(default_unit_path(False))]))
    steps.append("sudo systemctl daemon-reload && sudo systemctl enable --now svfrd")
    return steps


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def install_service(config_path: Path, user: bool, output: Path | str | None = None) -> int:
    """Write the unit for `config_path` (to the systemd folder, to `output`, or to stdout when `output` is
    "-") and print the next commands. Returns 0, 1 when it cannot write, 2 for a bad config."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print(f"svfrd install-service: {err}", file=sys.stderr)
        return 2
    executable = svfrd_executable()
    if not executable.is_file():
        print(f"svfrd install-service: {executable} not found; install svfrd into this environment "
              "(pip install -e .) and run install-service with its Python", file=sys.stderr)
        return 1
    unit = render_unit(unit_paths_for(config, executable), user)
    if output == "-":
        sys.stdout.write(unit)
        _print_steps(next_steps(user, Path("svfrd.service"), config), file=sys.stderr)
        return 0
    target = Path(output) if output is not None else default_unit_path(user)
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
