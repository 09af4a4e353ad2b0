"""The web page's child process under `svfrd run`: restarted when it dies, after pauses on the injected clock
that grow while it keeps dying at once, and never started while its port is taken (said once in the log).
Real processes stand in for the page: a Python that exits at once, or one that waits to be stopped."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from pathlib import Path

import pytest

from svfrd.config import load_config
from svfrd.service.timers import RESTART_FIRST_PAUSE, RESTART_HEALTHY_AFTER, RESTART_MAX_PAUSE
from svfrd.web.child import WebPage
from tests.helpers.clock import FakeClock

DIES_AT_ONCE = [sys.executable, "-c", "raise SystemExit(3)"]
RUNS = [sys.executable, "-c", "import signal; signal.pause()"]


def config_listening_on(tmp_path: Path, listen: str):
    (tmp_path / "config.toml").write_text(f'[[inbox]]\npath = "inbox"\n\n[web]\nenabled = true\nlisten = "{listen}"\n')
    return load_config(tmp_path / "config.toml")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def page_factory(tmp_path: Path, clock: FakeClock):
    pages = []

    def make(command: list[str], listen: str = "127.0.0.1:0") -> WebPage:
        page = WebPage(config_listening_on(tmp_path, listen), clock=clock, command=command)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.stop()


def died(page: WebPage) -> None:
    """Wait for the stand-in to end (a real process exit, no sleep), then let the page notice."""
    page.process.wait(10)
    page.check()


def test_a_page_that_dies_at_once_is_restarted_after_growing_pauses_up_to_the_cap(page_factory, clock, caplog):
    caplog.set_level(logging.INFO, "svfrd.web")
    page = page_factory(DIES_AT_ONCE)
    page.start()
    pauses = []
    for _ in range(12):
        first = page.process.pid
        died(page)
        assert page.process is None  # not restarted before its pause is over
        pause = page.seconds_until_restart()
        pauses.append(pause)
        clock.advance(pause - 0.01)
        page.check()
        assert page.process is None
        clock.advance(0.01)
        page.check()
        assert page.process is not None and page.process.pid != first
    assert pauses[:4] == [RESTART_FIRST_PAUSE, 2 * RESTART_FIRST_PAUSE, 4 * RESTART_FIRST_PAUSE,
                          8 * RESTART_FIRST_PAUSE]
    assert max(pauses) == RESTART_MAX_PAUSE and pauses[-1] == RESTART_MAX_PAUSE
    deaths = [r.getMessage() for r in caplog.records if "the web page stopped" in r.getMessage()]
    assert len(deaths) == 12 and "exit code 3" in deaths[0] and "starting it again in 1 s" in deaths[0]


def test_a_page_that_ran_a_while_is_restarted_after_the_first_pause_again(page_factory, clock):
    page = page_factory(RUNS)
    page.start()
    for _ in range(3):  # three quick deaths: the pause has grown
        page.process.send_signal(signal.SIGKILL)
        died(page)
        clock.advance(page.seconds_until_restart())
        page.check()
    clock.advance(RESTART_HEALTHY_AFTER)
    page.process.send_signal(signal.SIGKILL)
    died(page)
    assert page.seconds_until_restart() == RESTART_FIRST_PAUSE


def test_while_the_port_is_taken_no_page_starts_and_the_log_says_so_once(tmp_path, page_factory, clock, caplog):
    caplog.set_level(logging.DEBUG, "svfrd.web")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    page = page_factory(RUNS, listen=f"127.0.0.1:{port}")
    page.start()
    pauses = []
    for _ in range(10):
        assert page.process is None
        pauses.append(page.seconds_until_restart())
        clock.advance(pauses[-1])
        page.check()
    assert pauses == sorted(pauses) and pauses[-1] == RESTART_MAX_PAUSE
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in warnings[0]
    assert "svfrd doctor" in warnings[0]
    holder.close()
    clock.advance(page.seconds_until_restart())
    page.check()
    assert page.process is not None and page.process.poll() is None
    assert any("can be listened on again" in r.getMessage() for r in caplog.records)


def test_the_main_loop_sleeps_until_the_restart_is_due(page_factory, clock):
    from svfrd.service.timers import LoopTimers

    page = page_factory(DIES_AT_ONCE)
    page.start()
    died(page)
    timers = LoopTimers(scan_interval=10.0, cancel_grace=15.0, clock=clock)
    timers.scan_started()
    timers.scan_finished(None)
    assert timers.seconds_to_sleep(hinted=False, job_running=False, next_job_in=None,
                                   restart_in=page.seconds_until_restart()) == RESTART_FIRST_PAUSE


def test_the_loop_is_woken_when_the_page_dies(page_factory):
    """The page's exit descriptor becomes readable when it ends, so the restart is not left to the next scan."""
    import selectors

    page = page_factory(RUNS)
    page.start()
    [fd] = page.wait_objects()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        assert selector.select(0) == []
        page.process.send_signal(signal.SIGKILL)
        assert selector.select(10)
    page.check()
    assert page.wait_objects() == []
