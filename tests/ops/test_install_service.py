"""The systemd units: shipped files match the template, pass `systemd-analyze verify` without a single warning,
and `install-service` writes a unit for this installation and says what to run next."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from svfrd.config import load_config
from svfrd.ops import install_service as ins
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                       if Path("/usr/bin/systemd-analyze").exists() else None)
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (scripts/run-tests installs the systemd package when run as root)")
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
    assert ins.install_service(config, user=False, output=target, owner_uid=os.getuid()) == 0
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
    assert ins.install_service(config, user=False, output="-", owner_uid=os.getuid()) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# svfrd as a system service")
    assert "sudo systemctl daemon-reload" in captured.err


def test_home_is_hidden_except_for_the_folders_svfrd_uses_there(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[inbox]]\npath = "/home/ann/inbox"\n\n[output]\noutbox = "/home/ann/videos/out"\n')
    paths = ins.unit_paths_for(load_config(config), Path("/home/ann/svfrd/.venv/bin/svfrd"))
    assert paths.protect_home == "tmpfs"
    assert paths.home_writable == ("/home/ann/inbox", "/home/ann/videos/out")
    assert "/home/ann/svfrd/.venv" in paths.home_readable
    unit = ins.render_unit(paths, user=False).splitlines()
    assert "BindPaths=-/home/ann/inbox -/home/ann/videos/out" in unit
    assert any(line.startswith("BindReadOnlyPaths=") and "-/home/ann/svfrd/.venv" in line for line in unit)


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
    # --user: a system unit would also need this checkout to be root's (tested on its own below).
    assert main(["--config", str(config), "install-service", "--user", "--output", str(unit)]) == 0
    assert "Type=notify" in unit.read_text()
    assert str(config) in unit.read_text()


# ---------------------------------------------------------------------------------------------------------------
# Hardening (issue 16, case 5): a configured path never writes unit lines or steers the printed commands, the
# folders handed to the service are its own, a system service runs only root's files, and the units' sandbox
# is measured.


def toml_string(value: str) -> str:
    """A TOML basic string holding any text: control characters as \\uXXXX escapes."""
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value)
    return f'"{escaped}"'


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    """`svfrd install-service` as a person runs it: a process of its own, this checkout's code."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "svfrd", "--config", str(config), "install-service", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_a_newline_in_a_folder_cannot_add_a_root_command_to_the_unit(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    evil = f"{tmp_path}/state\nExecStartPre=+/tmp/pwn"
    config.write_text(f'[service]\nstate_dir = {toml_string(evil)}\n\n[[inbox]]\npath = "inbox"\n')
    run = run_cli(config, "--output", "-")
    assert run.returncode == 2, run.stdout
    assert not any(line.startswith("ExecStartPre") for line in run.stdout.splitlines())
    assert "[service] state_dir" in run.stderr and "control character (U+000A)" in run.stderr
    assert "\\n" in run.stderr and "\nExecStartPre" not in run.stderr  # shown escaped, not as a second line


def test_state_dir_slash_is_refused_and_nothing_chowns_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[service]\nstate_dir = "/"\n\n[[inbox]]\npath = "inbox"\n')
    run = run_cli(config, "--output", "-")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "[service] state_dir = / is a system folder" in run.stderr and f"of svfrd's own in {config}" in run.stderr
    assert "install -d" not in run.stderr and run.stdout == ""


@pytest.mark.parametrize("folder", ["/", "/etc", "/etc/svfrd/inbox", "/usr", "/usr/share/videos", "/bin", "/boot",
                                    "/dev/shm", "/proc/self", "/sys", "/var", "/var/lib", "/home", "/root",
                                    "/tmp", "/opt"])
def test_system_folders_are_refused(folder: str) -> None:
    assert ins.unsafe_folder(Path(folder), homes=set()) == "a system folder"


def test_a_home_folder_itself_is_refused_but_a_folder_in_it_is_not() -> None:
    homes = {Path("/home/alice"), Path("/srv/home/bob")}
    assert ins.unsafe_folder(Path("/home/alice"), homes) == "a home folder itself"
    assert ins.unsafe_folder(Path("/srv/home/bob"), homes) == "a home folder itself"
    for fine in ("/home/alice/svfrd/inbox", "/var/lib/svfrd", "/srv/svfrd/outbox", "/tmp/svfrd-test/state"):
        assert ins.unsafe_folder(Path(fine), homes) is None


def test_the_home_folders_include_every_child_of_home_and_root(tmp_path: Path) -> None:
    homes = ins.home_folders()
    assert Path("/root") in homes
    assert all(child in homes for child in Path("/home").iterdir()) if Path("/home").is_dir() else True


@pytest.mark.parametrize("key", ["inbox", "outbox", "done", "failed", "state_dir", "models_dir", "face_model",
                                 "config_folder"])
@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028"])
def test_control_characters_in_any_value_are_refused(tmp_path: Path, key: str, char: str, capsys) -> None:
    name = f"odd{char}name"
    folder = tmp_path / (name if key == "config_folder" else "site")
    folder.mkdir()
    values = {"inbox": "inbox", "outbox": "outbox", "done": "done", "failed": "failed", "state_dir": "state",
              "models_dir": "models", "face_model": "models/face_landmarker.task"}
    if key in values:
        values[key] = name
    (folder / "config.toml").write_text(
        f'[service]\nstate_dir = {toml_string(values["state_dir"])}\n\n'
        f'[[inbox]]\npath = {toml_string(values["inbox"])}\n\n'
        f'[output]\noutbox = {toml_string(values["outbox"])}\ndone = {toml_string(values["done"])}\n'
        f'failed = {toml_string(values["failed"])}\n\n'
        f'[faces]\nmodel = {toml_string(values["face_model"])}\n\n'
        f'[engine.svfr]\nmodels_dir = {toml_string(values["models_dir"])}\n')
    target = tmp_path / "svfrd.service"
    assert ins.install_service(folder / "config.toml", user=False, output=target, owner_uid=os.getuid()) == 2
    err = capsys.readouterr().err
    assert f"contains a control character (U+{ord(char):04X})" in err and not target.exists()
    assert char not in err.removesuffix("\n")  # the message shows it escaped


def test_a_control_character_in_the_unit_file_name_is_refused(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    target = tmp_path / "svfrd\n.service"
    assert ins.install_service(config, user=True, output=target) == 2
    assert "the unit's file name" in capsys.readouterr().err and not target.exists()


def root_owned_install(tmp_path: Path) -> Path:
    """A tiny installation laid out like /opt/svfrd: an executable in a venv's bin/ folder (owned by whoever
    runs the tests: root here, which the tests pass as the trusted owner)."""
    executable = tmp_path / "opt/svfrd/.venv/bin/svfrd"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    for folder in (tmp_path / "opt", tmp_path / "opt/svfrd", tmp_path / "opt/svfrd/.venv"):
        folder.chmod(0o755)
    return executable


def hand_to_another_user(path: Path) -> None:
    """Make `path` somebody else's: as root, give it to nobody; otherwise it already is (the tests then
    expect root, the default owner)."""
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)


def test_a_system_unit_refuses_an_executable_a_user_owns(tmp_path: Path, capsys) -> None:
    executable = root_owned_install(tmp_path)
    hand_to_another_user(executable)
    config = write_config(tmp_path / "site")
    target = tmp_path / "svfrd.service"
    trusted = os.getuid() if os.geteuid() == 0 else 0
    assert ins.install_service(config, user=False, output=target, owner_uid=trusted, executable=executable) == 1
    err = capsys.readouterr().err
    assert f"{executable} belongs to " in err and "(the svfrd executable)" in err
    assert "sudo python3 -m venv /opt/svfrd/.venv && sudo /opt/svfrd/.venv/bin/pip install ." in err
    assert "install-service --user" in err
    assert not target.exists()


def test_a_system_unit_refuses_a_folder_others_can_write_above_its_files(tmp_path: Path, capsys) -> None:
    executable = root_owned_install(tmp_path)
    (tmp_path / "opt/svfrd").chmod(0o777)  # anyone could swap .venv for their own
    config = write_config(tmp_path / "site")
    (tmp_path / "site/models").mkdir()
    (tmp_path / "site/models/unet.safetensors").write_text("")
    (tmp_path / "site/models/unet.safetensors").chmod(0o666)
    assert ins.install_service(config, user=False, output="-", owner_uid=os.getuid(), executable=executable) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'opt/svfrd'} can be changed by its group or by everyone (mode 0777)" in err
    assert f"{tmp_path / 'site/models/unet.safetensors'} can be changed by its group or by everyone" in err


def test_a_system_unit_accepts_root_owned_files_under_a_sticky_shared_folder(tmp_path: Path, capsys) -> None:
    """/tmp is writable by everyone but sticky: nobody can replace what another owns in it."""
    executable = root_owned_install(tmp_path)
    config = write_config(tmp_path / "site")
    assert ins.install_service(config, user=False, output="-", owner_uid=os.getuid(), executable=executable) == 0
    assert f"ExecStart={executable} --config {config} run" in capsys.readouterr().out.splitlines()


def test_a_user_unit_does_not_ask_for_root_owned_files(tmp_path: Path) -> None:
    executable = root_owned_install(tmp_path)
    hand_to_another_user(executable)
    config = write_config(tmp_path / "site")
    assert ins.install_service(config, user=True, output=tmp_path / "u.service", executable=executable) == 0


def test_the_ownership_check_reads_the_injected_stat(tmp_path: Path) -> None:
    """Without root, tests can still show what a file of another owner does: the check asks `stat_path`."""
    real = os.lstat

    def others_own_the_config(path):
        st = real(path)
        if Path(path) == tmp_path / "config.toml":
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, 1000, 1000, *st[6:10]))
        return st

    (tmp_path / "config.toml").write_text("")
    problems = ins.ownership_problems([("the config file", tmp_path / "config.toml", False)],
                                      owner_uid=os.getuid(), stat_path=others_own_the_config)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'config.toml'} belongs to ")


def exposure(unit: Path, tmp_path: Path, user: bool) -> float:
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
    cmd = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "security", "--offline=yes", "--no-pager", str(unit)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=unit.parent, timeout=60)
    if run.returncode != 0 and "--offline" in run.stderr:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline (systemd 250 or newer can): {run.stderr}")
    last = [line for line in run.stdout.splitlines() if "Overall exposure level" in line]
    assert last, run.stdout + run.stderr
    score = float(last[-1].split(":")[1].split()[0])
    print(f"systemd-analyze security --offline=yes {'--user ' if user else ''}{unit.name}: {last[-1].strip()}")
    return score


@needs_systemd_analyze
def test_units_for_an_install_are_rated_and_verify_cleanly(tmp_path: Path, capsys) -> None:
    """The system unit's exposure was 5.5 (MEDIUM) before the hardening of issue 16; the user unit's 9.6. The
    analyzer rates a user unit as if it ran as root with every capability, which a user manager never
    grants: the seccomp, rlimit and cgroup settings it can use bring it to 5.9."""
    config = write_config(tmp_path / "site")
    for user, bound in ((False, 2.5), (True, 6.0)):
        output = tmp_path / ("user" if user else "system") / "svfrd.service"
        assert ins.install_service(config, user=user, output=output, owner_uid=os.getuid(),
                                   executable=VENV_SVFRD) == 0
        with capsys.disabled():
            score = exposure(output, tmp_path, user)
        assert score <= bound
        assert systemd_verify(output, tmp_path, user=user) == "rc=0"



def write_web_config(folder: Path, listen: str) -> Path:
    config = write_config(folder)
    config.write_text(config.read_text() + f'\n[web]\nenabled = true\nlisten = "{listen}"\n')
    return config


@needs_systemd_analyze
def test_units_that_serve_the_web_page_are_rated_and_verify_cleanly(tmp_path: Path, capsys) -> None:
    """With `[web] enabled` the unit opens what the page needs and no more: internet sockets, the machine's
    network instead of a private one, and on loopback packets to and from this machine only. Rated 1.3 on
    loopback, 1.5 on a network address (0.6 without the page), and 6.2 as a user unit (5.9)."""
    for listen, user, bound in (("127.0.0.1:8765", False, 1.5), ("0.0.0.0:8765", False, 2.0),
                                ("127.0.0.1:8765", True, 6.3)):
        config = write_web_config(tmp_path / "site", listen)
        output = tmp_path / f"{listen.split(':')[0]}-{'user' if user else 'system'}" / "svfrd.service"
        assert ins.install_service(config, user=user, output=output, owner_uid=os.getuid(),
                                   executable=VENV_SVFRD) == 0
        with capsys.disabled():
            print(f"[web] listen = {listen}:", end=" ")
            score = exposure(output, tmp_path, user)
        assert score <= bound
        assert systemd_verify(output, tmp_path, user=user) == "rc=0"


def unit_lines(config: Path, user: bool = False) -> list[str]:
    return ins.render_unit(ins.unit_paths_for(load_config(config), VENV_SVFRD), user).splitlines()


def test_a_page_on_loopback_gets_the_machines_network_but_talks_to_this_machine_only(tmp_path: Path) -> None:
    lines = unit_lines(write_web_config(tmp_path, "127.0.0.1:8765"))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in lines
    assert "IPAddressDeny=any" in lines and "IPAddressAllow=localhost" in lines
    assert not any(line.startswith("PrivateNetwork=") for line in lines)
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in unit_lines(tmp_path / "config.toml", user=True)


def test_a_page_on_a_network_address_is_not_filtered_by_address(tmp_path: Path) -> None:
    lines = unit_lines(write_web_config(tmp_path, "192.0.2.7:8765"))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in lines
    assert not any(line.startswith(("PrivateNetwork=", "IPAddressDeny=", "IPAddressAllow=")) for line in lines)
    assert any("requires its token" in line for line in lines if line.startswith("#"))


def test_without_the_page_the_unit_has_no_network(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + '\n[web]\nenabled = false\nlisten = "0.0.0.0:8765"\n')
    lines = unit_lines(config)
    assert "PrivateNetwork=yes" in lines and "RestrictAddressFamilies=AF_UNIX" in lines
    assert "IPAddressAllow=localhost" not in lines


def test_install_service_says_what_the_unit_opens_for_the_page(tmp_path: Path, capsys) -> None:
    config = write_web_config(tmp_path, "127.0.0.1:8765")
    assert ins.install_service(config, user=False, output=tmp_path / "s.service", owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    err = capsys.readouterr().err
    assert "serves the page on 127.0.0.1:8765" in err and "IPAddressAllow=localhost" in err
    assert "PrivateNetwork" not in err  # nothing left to delete by hand


def test_a_database_server_note_fits_a_unit_opened_for_the_page(tmp_path: Path, capsys) -> None:
    config = write_web_config(tmp_path, "127.0.0.1:8765")
    config.write_text(config.read_text() + '\n[service]\ndatabase_url = "postgresql://db.example/svfrd"\n')
    assert ins.install_service(config, user=False, output=tmp_path / "s.service", owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    err = capsys.readouterr().err
    assert "database_url names a postgresql server on db.example" in err and "not private" in err
    unit = (tmp_path / "s.service").read_text().splitlines()
    assert not any(line.startswith("IPAddressDeny=") for line in unit)  # the server is elsewhere


def test_the_system_unit_keeps_the_gpu_and_drops_everything_else() -> None:
    unit = (REPO / "systemd/svfrd.service").read_text().splitlines()
    for line in ("CapabilityBoundingSet=", "AmbientCapabilities=", "SystemCallFilter=@system-service",
                 "SystemCallFilter=~@privileged @resources", "SystemCallErrorNumber=EPERM", "ProtectProc=invisible",
                 "RemoveIPC=yes", "PrivateMounts=yes", "PrivateNetwork=yes", "RestrictAddressFamilies=AF_UNIX",
                 "UMask=0027", "StateDirectoryMode=0750", "ProtectHome=yes", "DeviceAllow=char-nvidia-caps rw"):
        assert line in unit
    for prefix in ("MemoryMax=", "TasksMax=", "LimitFSIZE=", "LogRateLimitIntervalSec=", "LogRateLimitBurst="):
        assert any(line.startswith(prefix) for line in unit)
    for absent in ("MemoryDenyWriteExecute=", "PrivateUsers=", "ProcSubset=", "PrivateDevices=yes"):
        assert not any(line.startswith(absent) for line in unit)


def test_the_printed_steps_keep_the_mode_of_an_existing_shared_inbox(tmp_path: Path) -> None:
    """`install -d` on an existing folder resets it to 0755: a shared inbox (2770, README) would lose its
    setgid bit and group write. Existing folders only change owner; missing ones are created 0750."""
    config = write_config(tmp_path / "site")
    shared = tmp_path / "site/inbox"
    shared.mkdir(mode=0o2770)
    steps = [shlex.split(step) for step in ins.next_steps(False, None, load_config(config))]
    install = next(step for step in steps if step[:3] == ["sudo", "install", "-d"])
    chown = next(step for step in steps if step[:2] == ["sudo", "chown"])
    assert chown == ["sudo", "chown", "svfrd:svfrd", str(shared)]
    assert str(shared) not in install and install[3:9] == ["-o", "svfrd", "-g", "svfrd", "-m", "0750"]
    assert str(tmp_path / "site/outbox") in install


def test_the_shipped_config_copied_to_a_system_folder_is_refused_with_every_folder_to_set(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """README: `install -D config.toml /etc/svfrd/config.toml`. Its relative folders then resolve under /etc:
    one message lists them all, says why they landed there and what to write instead."""
    etc = tmp_path / "etc/svfrd"
    etc.mkdir(parents=True)
    shutil.copy(REPO / "config.toml", etc / "config.toml")
    monkeypatch.setattr(ins, "SYSTEM_TREES", (*ins.SYSTEM_TREES, tmp_path / "etc"))
    assert ins.install_service(etc / "config.toml", user=False, output="-", owner_uid=os.getuid()) == 2
    err = capsys.readouterr().err
    for key, folder, suggested in (("[[inbox]] path", "inbox", "/srv/svfrd/inbox"),
                                   ("[output] outbox", "outbox", "/srv/svfrd/outbox"),
                                   ("[output] done", "done", "/srv/svfrd/done"),
                                   ("[output] failed", "failed", "/srv/svfrd/failed"),
                                   ("[service] state_dir", "state", "/var/lib/svfrd/state")):
        assert (f"  - {key} = {etc / folder} is a system folder (a relative path in the config resolves against "
                f"its folder): use e.g. {suggested}\n") in err
    assert err.count(f"{etc / 'state'} is a system folder") == 1  # the database's folder is the same one
    assert err.rstrip().endswith(f"Set absolute folders of svfrd's own in {etc / 'config.toml'}.")


def test_a_database_outside_the_state_folder_is_writable_and_checked(tmp_path: Path) -> None:
    """ProtectSystem=strict leaves only the listed folders writable: a database moved by database_url must be
    one of them, and is held to the same rule (its folder is chowned to the service)."""
    config = tmp_path / "config.toml"
    config.write_text('[service]\ndatabase_url = "sqlite:///db/jobs.db"\n\n[[inbox]]\npath = "inbox"\n')
    paths = ins.unit_paths_for(load_config(config), VENV_SVFRD)
    assert str(tmp_path / "db") in paths.writable
    config.write_text('[service]\ndatabase_url = "sqlite:////var/lib/jobs.db"\n\n[[inbox]]\npath = "inbox"\n')
    with pytest.raises(ins.InstallRefused, match=r"the folder of \[service\] database_url = /var/lib is a system"):
        ins.refuse_unsafe_folders(load_config(config))


def test_a_database_server_url_gets_a_note_on_what_the_unit_opens(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[service]\ndatabase_url = "postgresql://db.example/svfrd"\n\n[[inbox]]\npath = "inbox"\n')
    assert ins.install_service(config, user=True, output=tmp_path / "u.service") == 0
    err = capsys.readouterr().err
    assert "database_url names a postgresql server on db.example" in err and "AF_INET AF_INET6" in err
    write_config(tmp_path)  # SQLite: no note
    assert ins.install_service(tmp_path / "config.toml", user=True, output=tmp_path / "u.service") == 0
    assert "note:" not in capsys.readouterr().err


def database_config(folder: Path, url: str) -> Path:
    config = write_config(folder)
    config.write_text(f'[service]\ndatabase_url = "{url}"\n\n' + config.read_text())
    return config


@pytest.mark.parametrize("url", ["postgresql://svfrd@dbhost.example/svfrd",
                                 "postgresql+psycopg://svfrd:pw@192.0.2.9:5433/svfrd",
                                 "postgresql://svfrd@/svfrd?host=db1.example,db2.example"])
def test_a_database_server_over_tcp_gets_the_network_in_the_system_unit(tmp_path: Path, url: str) -> None:
    """The hardened unit had no network (PrivateNetwork=yes, IPAddressDeny=any, AF_UNIX only): a service with a
    PostgreSQL server elsewhere could not reach its job database and never started."""
    lines = unit_lines(database_config(tmp_path, url))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in lines
    assert not any(line.startswith(("PrivateNetwork=", "IPAddressDeny=")) for line in lines)
    assert any(line.startswith("# [service] database_url: the shared job database is a server on")
               for line in lines)
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in unit_lines(tmp_path / "config.toml", user=True)


def test_a_database_server_on_loopback_is_reached_on_this_machine_only(tmp_path: Path) -> None:
    lines = unit_lines(database_config(tmp_path, "postgresql://svfrd@127.0.0.1/svfrd"))
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in lines
    assert "IPAddressDeny=any" in lines and "IPAddressAllow=localhost" in lines
    assert not any(line.startswith("PrivateNetwork=") for line in lines)


@pytest.mark.parametrize("url", ["postgresql://svfrd@/svfrd", "postgresql:///svfrd?host=/run/postgresql"])
def test_a_database_server_on_a_unix_socket_keeps_the_unit_off_the_network(tmp_path: Path, url: str,
                                                                          capsys) -> None:
    config = database_config(tmp_path, url)
    lines = unit_lines(config)
    assert "PrivateNetwork=yes" in lines and "RestrictAddressFamilies=AF_UNIX" in lines
    assert ins.install_service(config, user=False, output=tmp_path / "s.service", owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    assert "Unix socket" in capsys.readouterr().err


@needs_systemd_analyze
def test_units_for_a_database_server_verify_cleanly(tmp_path: Path) -> None:
    for name, url in (("remote", "postgresql://svfrd@dbhost.example/svfrd"),
                      ("local", "postgresql://svfrd@localhost/svfrd")):
        config = database_config(tmp_path / name, url)
        for user in (False, True):
            output = tmp_path / name / ("user" if user else "system") / "svfrd.service"
            assert ins.install_service(config, user=user, output=output, owner_uid=os.getuid(),
                                       executable=VENV_SVFRD) == 0
            assert systemd_verify(output, tmp_path, user=user) == "rc=0"


@needs_systemd_analyze
def test_code_under_root_is_bound_read_only_into_an_empty_home(tmp_path: Path) -> None:
    """ProtectHome= hides /root too (pyenv puts Python there): the venv is bound back read-only, nothing
    under /root is writable, and the unit still verifies."""
    config = tmp_path / "config.toml"
    config.write_text('[[inbox]]\npath = "/srv/svfrd/inbox"\n\n[service]\nstate_dir = "/var/lib/svfrd/state"\n')
    paths = ins.unit_paths_for(load_config(config), Path("/root/svfrd/.venv/bin/svfrd"))
    assert paths.protect_home == "tmpfs" and paths.home_writable == ()
    assert "/root/svfrd/.venv" in paths.home_readable
    unit = ins.render_unit(replace(paths, executable=str(VENV_SVFRD)), user=False)
    assert not any(line.startswith("BindPaths=") for line in unit.splitlines())
    (tmp_path / "svfrd.service").write_text(unit)
    assert systemd_verify(tmp_path / "svfrd.service", tmp_path) == "rc=0"


@needs_systemd_analyze
def test_a_dollar_in_the_config_path_stays_literal_on_the_command_line(tmp_path: Path) -> None:
    """systemd expands `${NAME}` in ExecStart=: a folder named so would point the service at another config."""
    config = write_config(tmp_path / "a${HOME}b")
    target = tmp_path / "svfrd.service"
    assert ins.install_service(config, user=True, output=target) == 0
    exec_start = next(line for line in target.read_text().splitlines() if line.startswith("ExecStart="))
    assert exec_start == f"ExecStart={VENV_SVFRD} --config {tmp_path}/a$${{HOME}}b/config.toml run"
    assert systemd_verify(target, tmp_path, user=True) == "rc=0"


def test_both_units_and_run_service_let_pytorch_grow_gpu_memory_segments() -> None:
    for unit in ("svfrd.service", "svfrd-user.service"):
        assert "Environment=PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in (REPO / "systemd" / unit).read_text()
    assert "PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True" in (REPO / "scripts" / "run-service").read_text()


@pytest.mark.parametrize("url, filtered", [("http://127.0.0.1:9000/hook", True), ("https://hooks.example.org/x", False)])
def test_a_notification_url_opens_the_network_it_needs_and_the_unit_says_why(tmp_path: Path, url, filtered) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text() + f'\n[notify]\nurl = "{url}"\n')
    lines = unit_lines(config)
    assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in lines
    assert not any(line.startswith("PrivateNetwork=") for line in lines)
    assert ("IPAddressAllow=localhost" in lines) == filtered
    assert any(line.startswith("# [notify] url: the service POSTs to") for line in lines)


@pytest.mark.parametrize("url", ["postgresql://svfrd@dbhost.example/svfrd", "postgresql+psycopg://svfrd@/svfrd"])
def test_a_postgres_database_gets_its_password_file_in_the_state_folder(tmp_path: Path, url: str) -> None:
    """The service user's home may be hidden from the unit (ProtectHome=) or lie elsewhere than the state folder,
    so libpq would not find ~/.pgpass: the system unit names the file (README, "Several machines")."""
    config = database_config(tmp_path, url)
    state = load_config(config).service.state_dir
    assert f"Environment=PGPASSFILE={state / 'pgpass'}" in unit_lines(config)
    assert not any("PGPASSFILE" in line for line in unit_lines(config, user=True))  # the user's own ~/.pgpass
    assert not any("PGPASSFILE" in line for line in unit_lines(write_config(tmp_path / "sqlite")))


def test_install_service_says_how_to_make_the_password_file_when_the_url_has_no_password(tmp_path: Path,
                                                                                       capsys) -> None:
    config = database_config(tmp_path, "postgresql://svfrd@dbhost.example/svfrd")
    assert ins.install_service(config, user=False, output=tmp_path / "s.service", owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    password_file = tmp_path / "state" / "pgpass"
    assert f"sudo install -m 0600 -o svfrd -g svfrd /dev/null {password_file}" in capsys.readouterr().err
    config.write_text(config.read_text().replace("svfrd@", "svfrd:secret@"))
    assert ins.install_service(config, user=False, output=tmp_path / "s.service", owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    assert "PGPASSFILE" not in capsys.readouterr().err


@needs_systemd_analyze
def test_a_password_file_in_a_state_folder_with_odd_characters_verifies(tmp_path: Path) -> None:
    config = database_config(tmp_path / "site", "postgresql://svfrd@dbhost.example/svfrd")
    config.write_text(config.read_text().replace("[service]\n", '[service]\nstate_dir = "my state 100%"\n'))
    output = tmp_path / "system" / "svfrd.service"
    assert ins.install_service(config, user=False, output=output, owner_uid=os.getuid(),
                               executable=VENV_SVFRD) == 0
    line = next(line for line in output.read_text().splitlines() if "PGPASSFILE" in line)
    assert line == f'Environment="PGPASSFILE={tmp_path / "site" / "my state 100%%" / "pgpass"}"'
    assert systemd_verify(output, tmp_path) == "rc=0"
