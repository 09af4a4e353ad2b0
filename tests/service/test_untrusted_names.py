"""End to end: what someone who can write to an inbox or the outbox chooses (file names, planted symlinks) cannot
forge the service's log lines or drive a terminal, and the service's files are not for the world.

One real daemon, its stderr made its "journal" (`$JOURNAL_STREAM` naming the log file), so the log has the
`<N>` priority prefixes journald reads, as under systemd.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from svfrd.cli import main
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

FORGED = "a\n<0>forged emergency \x1b[31m.mp4"  # a newline, a priority, a terminal escape
MARKUP = "[link=example.invalid]b.mp4"  # rich markup (a name holds no "/", so no closing tag): a hyperlink


def plant_symlinks(outbox: Path, victim: Path) -> None:
    """A symlink on every temporary result name the two jobs will use (`.jobN.STEM.SUFFIX.part`)."""
    for job_id in (1, 2):
        for name in (FORGED, MARKUP):
            for suffix in (".restored.mp4", ".report.json"):
                (outbox / f".job{job_id}.{Path(name).stem}{suffix}.part").symlink_to(victim)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_hostile_names_and_planted_symlinks_change_nothing_and_files_are_not_for_the_world(
    tmp_path, capsys, monkeypatch
):
    folder = ServiceFolder(tmp_path / "svfrd")
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's precious file\n")
    plant_symlinks(folder.outbox, victim)
    folder.drop(write_face_clip(tmp_path / "one.mp4", tag=1), name=FORGED)
    folder.drop(write_face_clip(tmp_path / "two.mp4", tag=2), name=MARKUP)
    log = folder.root / "daemon.log"
    log.touch()
    journal = os.stat(log)
    with Daemon(folder, env={"JOURNAL_STREAM": f"{journal.st_dev}:{journal.st_ino}"}) as daemon:
        jobs = daemon.wait_for_jobs(2, {"done"})
        state = folder.root / "state"
        modes = {path.name: mode(path) for path in (state / "svfrd.db", state / "svfrd.db-wal", state / "svfrd.lock")}

    # the forged log line: the name stays inside its record, escaped
    lines = daemon.log().splitlines()
    assert not [line for line in lines if line.startswith("<0>")]
    assert "a\\n<0>forged emergency \\x1b[31m.mp4" in daemon.log()
    assert "\x1b" not in daemon.log()

    # the planted temporary symlinks: not followed, the results are the service's own files
    assert victim.read_text() == "someone's precious file\n"
    results = [Path(job.output_path) for job in jobs] + [Path(job.report_path) for job in jobs]
    assert all(path.is_file() and not path.is_symlink() and path.stat().st_size > 0 for path in results)

    # file modes: the service and its group only (umask 0027); folders it creates 0750
    assert mode(state) == 0o750
    assert all(m & 0o007 == 0 for m in modes.values()), modes
    assert all(mode(path) == 0o640 for path in results), {p.name: oct(mode(p)) for p in results}

    # the markup name: `status` shows it as text; `show` prints no escape code
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    config = ["--config", str(folder.config_path)]
    assert main([*config, "status"]) == 0
    assert main([*config, "show", str(jobs[0].id)]) == 0
    out = capsys.readouterr().out
    assert MARKUP in out
    assert "a\\n<0>forged emergency \\x1b[31m.mp4" in out and "\x1b" not in out
