"""The systemd units: shipped files match the template, pass `systemd-analyze verify` without a single warning,
and `install-service` writes a unit for this installation and says what to run next."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from svfrd.ops import install_service as ins
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                       if Path("/usr/bin/systemd-analyze").exists() else None)
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
VENV_SVFRD = Path(sys.executable).absolute().parent / "svfrd"


def systemd_verify(unit: Path, tmp_path: Path, user: bool = False, home: Path | None = None) -> str:
    """Everything `systemd-analyze verify` says about `unit` (warnings included; empty means clean)."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    if home is not None:
        env["HOME"] = str(home)
    cmd = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify", "--man=no", str(unit)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=unit.parent, timeout=60)
    return f"rc={run.returncode} {run.stdout}{run.stderr}".strip()


def write_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text('[[inbox]]\npath = "inbox"\n\n[[inbox]]\npath = "/srv/svfrd/colour in"\ntasks = [1]\n')
    return config


def test_shipped_units_are_the_rendered_templates() -> None:
    assert (REPO / "systemd/svfrd.service").read_text() == ins.shipped_unit(user=False)
    assert (REPO / "systemd/svfrd-user.service").read_text() == ins.shipped_unit(user=True)


def test_system_unit_runs_notify_type_under_its_own_user_with_gpu_friendly_hardening() -> None:
    unit = (REPO / "systemd/svfrd.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "User=svfrd", "StateDirectory=svfrd", "RuntimeDirectory=svfrd",
                 "ConfigurationDirectory=svfrd", "Restart=on-failure", "RestartPreventExitStatus=2",
                 "ProtectSystem=strict", "PrivateDevices=no", "NoNewPrivileges=yes", "DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw"):
        assert line in unit.splitlines()
    assert not any(line.startswith("MemoryDenyWriteExecute") for line in unit.splitlines())
    assert "WatchdogSec=" in unit and "TimeoutStopSec=" in unit and "RestartSec=" in unit


def test_user_unit_starts_with_the_session() -> None:
    unit = (REPO / "systemd/svfrd-user.service").read_text()
    assert "WantedBy=default.target" in unit.splitlines()
    assert "User=" not in unit  # a user manager cannot switch users


@needs_systemd_analyze
def test_shipped_system_unit_verifies_cleanly(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this venv's svfrd instead of /opt/svfrd.
    unit = tmp_path / "svfrd.service"
    unit.write_text(ins.shipped_unit(False).replace(str(ins.DEFAULT_SYSTEM_EXECUTABLE), str(VENV_SVFRD)))
    assert systemd_verify(unit, tmp_path) == "rc=0"


@needs_systemd_analyze
def test_shipped_user_unit_verifies_cleanly_with_its_home_specifiers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "svfrd/.venv/bin").mkdir(parents=True)
    (home / "svfrd/.venv/bin/svfrd").symlink_to(VENV_SVFRD)
    unit = tmp_path / "svfrd.service"
    shutil.copy(REPO / "systemd/svfrd-user.service", unit)
    assert systemd_verify(unit, tmp_path, user=True, home=home) == "rc=0"


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The lint above can fail: an unknown key and a bad value are reported."""
    unit = tmp_path / "svfrd.service"
    unit.write_text(ins.shipped_unit(False).replace(str(ins.DEFAULT_SYSTEM_EXECUTABLE), str(VENV_SVFRD))
                    .replace("WatchdogSec=60", "WatchdogSec=soon\nWatchDogSecs=60"))
    report = systemd_verify(unit, tmp_path)
    assert "WatchDogSecs" in report and "soon" in report


@needs_systemd_analyze
def test_installed_system_unit_names_this_venv_config_and_writable_folders(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "site")
    target = tmp_path / "out" / "svfrd.service"
    assert ins.install_service(config, user=False, output=target) == 0
    unit = target.read_text()
    assert f"ExecStart={VENV_SVFRD} --config {config} run" in unit.splitlines()
    writable = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    words = shlex.split(writable.removeprefix("ReadWritePaths="))  # systemd unquotes like a shell here
    expected = [str(tmp_path / "site" / f) for f in ("inbox", "outbox", "done", "failed", "state")]
    assert sorted(words) == sorted(["-" + f for f in expected] + ["-/srv/svfrd/colour in"])
    assert systemd_verify(target, tmp_path) == "rc=0"
    out = capsys.readouterr().out
    assert f"wrote {target}" in out
    assert f"sudo install -m 0644 {target} /etc/systemd/system/svfrd.service" in out
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now svfrd" in out


@needs_systemd_analyze
def test_user_install_goes_to_the_user_unit_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = write_config(tmp_path / "my videos 100%")
    assert ins.install_service(config, user=True) == 0
    target = tmp_path / "xdg/systemd/user/svfrd.service"
    unit = target.read_text()
    assert f'ExecStart={VENV_SVFRD} --config "{str(config).replace("%", "%%")}" run' in unit.splitlines()
    assert systemd_verify(target, tmp_path, user=True) == "rc=0"
    assert "systemctl --user daemon-reload && systemctl --user enable --now svfrd" in capsys.readouterr().out


def test_unit_to_stdout_for_review(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    assert ins.install_service(config, user=False, output="-") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# svfrd as a system service")
    assert "sudo systemctl daemon-reload" in captured.err


def test_home_stays_readable_when_svfrd_lives_there(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    from svfrd.config import load_config

    in_home = ins.unit_paths_for(load_config(config), Path("/home/ann/svfrd/.venv/bin/svfrd"))
    elsewhere = ins.unit_paths_for(load_config(config), Path("/opt/svfrd/.venv/bin/svfrd"))
    assert (in_home.protect_home, elsewhere.protect_home) == ("read-only", "yes")


def test_a_bad_config_is_a_usage_error(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[service]\nscan_interval = -1\n")
    assert ins.install_service(config, user=True, output=tmp_path / "unit") == 2
    assert "config.toml" in capsys.readouterr().err
    assert not (tmp_path / "unit").exists()


def test_an_unwritable_target_fails_with_a_reason(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    (tmp_path / "a-file").write_text("")
    assert ins.install_service(config, user=False, output=tmp_path / "a-file" / "svfrd.service") == 1
    assert "cannot write" in capsys.readouterr().err


def test_the_command_line_writes_the_unit_where_output_says(tmp_path: Path, capsys) -> None:
    from svfrd.cli import main

    config = write_config(tmp_path)
    unit = tmp_path / "review" / "svfrd.service"
    unit.parent.mkdir()
    assert main(["--config", str(config), "install-service", "--output", str(unit)]) == 0
    assert "Type=notify" in unit.read_text()
    assert str(config) in unit.read_text()
