"""Log lines: plain or journal format off a terminal, rich at one, and the job id on every job line."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svfrd.ops import logs


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_plain_lines_carry_time_level_logger_and_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logging.getLogger("svfrd.service.intake").info("took %s", "a.mp4")
    line = stream.getvalue().strip()
    assert line.endswith(" INFO svfrd.service.intake: took a.mp4")
    assert line[:4].isdigit()  # starts with the date


def test_job_logger_names_the_job_on_every_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    log = logs.job_logger(12)
    log.info("stage %s", "restore")
    log.warning("slow")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("INFO svfrd.job: job 12: stage restore")
    assert lines[1].endswith("WARNING svfrd.job: job 12: slow")


def test_extra_job_id_is_prefixed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logging.getLogger("svfrd.job").info("finished", extra={"job_id": 7})
    assert stream.getvalue().strip().endswith("svfrd.job: job 7: finished")


def test_debug_only_when_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logging.getLogger("svfrd").debug("hidden")
    logs.setup_logging(verbose=True, stream=stream)
    logging.getLogger("svfrd").debug("shown")
    assert "hidden" not in stream.getvalue()
    assert "shown" in stream.getvalue()


def test_setting_up_twice_does_not_double_lines() -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logs.setup_logging(stream=stream)
    logging.getLogger("svfrd").info("once")
    assert stream.getvalue().count("once") == 1


def test_journal_lines_have_a_priority_prefix_and_no_timestamp(tmp_path: Path, monkeypatch) -> None:
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup_logging(stream=journal)
        logs.job_logger(3).error("disk full")
        logging.getLogger("svfrd.daemon").info("idle")
        journal.flush()
    assert (tmp_path / "journal").read_text().splitlines() == [
        "<3>ERROR svfrd.job: job 3: disk full",
        "<6>INFO svfrd.daemon: idle",
    ]


def test_inherited_journal_stream_of_another_file_is_ignored(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with open(tmp_path / "log", "w+") as f:
        assert not logs.stderr_is_journal(f)


def test_rich_formatting_at_a_terminal() -> None:
    """A real pseudo-terminal on stderr gets rich's handler; a pipe gets plain lines."""
    code = (
        "import logging, sys; from svfrd.ops import logs; h = logs.setup_logging();"
        "print(type(h).__name__, file=sys.stdout)"
    )
    import pty

    main_fd, child_fd = pty.openpty()
    try:
        tty_run = subprocess.run(
            [sys.executable, "-c", code], stderr=child_fd, stdout=subprocess.PIPE, text=True, timeout=30
        )
    finally:
        os.close(child_fd)
        os.close(main_fd)
    piped_run = subprocess.run(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
    )
    assert tty_run.stdout.strip() == "RichHandler"
    assert piped_run.stdout.strip() == "StreamHandler"


def test_at_a_terminal_an_exception_message_runs_no_escape_sequence() -> None:
    """rich's own tracebacks printed an exception's message raw: `ESC c` in a name reset the terminal."""
    code = (
        "import logging; from svfrd.ops import logs; logs.setup_logging()\n"
        "try:\n    raise ValueError('cannot read b\\x1bc.mp4')\n"
        "except ValueError:\n    logging.getLogger('svfrd').exception('could not take a\\x1bc.mp4')\n"
    )
    import pty

    main_fd, child_fd = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", code], stderr=child_fd, stdout=subprocess.DEVNULL,
                                 env={**os.environ, "COLUMNS": "200"})
        os.close(child_fd)
        out = b""
        while chunk := _read_or_eof(main_fd):
            out += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(main_fd)
    assert b"ValueError" in out and b"cannot read b\\x1bc.mp4" in out and b"a\\x1bc.mp4" in out
    assert b"\x1bc" not in out


def _read_or_eof(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end closed
        return b""


def test_syslog_priorities_follow_levels() -> None:
    assert [logs.syslog_priority(level) for level in (10, 20, 30, 40, 50, 25)] == [7, 6, 4, 3, 2, 6]


def test_a_file_name_cannot_forge_a_journal_line(tmp_path: Path, monkeypatch) -> None:
    """A name with a newline and `<0>` stays inside its record: no line of its own, no emergency priority."""
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        logs.setup_logging(stream=journal)
        logging.getLogger("svfrd.service.intake").info("queued job %d: %s", 1, "a\n<0>forged\x1b[31m.mp4")
        try:
            raise ValueError("bad name b\n<0>forged too")
        except ValueError:
            logs.job_logger(2).exception("failed")
        journal.flush()
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0] == "<6>INFO svfrd.service.intake: queued job 1: a\\n<0>forged\\x1b[31m.mp4"
    assert lines[1] == "<3>ERROR svfrd.job: job 2: failed"
    assert all(line.startswith("<3>") for line in lines[1:])  # every traceback line at the record's priority
    assert lines[-1] == "<3><0>forged too"


def test_plain_lines_escape_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logging.getLogger("svfrd").warning("could not take %s", "x\r\n2024-01-01 ERROR fake")
    assert stream.getvalue().count("\n") == 1
    assert stream.getvalue().rstrip().endswith("could not take x\\r\\n2024-01-01 ERROR fake")
