"""The page in a real browser (headless Chromium through chromedriver) against `svfrd run` serving it with
`[web] enabled = true`: queue page (its pause line follows the pause), upload through the form, live progress
without a reload, the result plays.

scripts/run-tests installs Debian's chromium and chromium-driver where they are missing (as root); elsewhere
this test is skipped with the reason.
"""

from __future__ import annotations

import shutil
import socket

import pytest

from svfrd.jobs.database import open_database
from svfrd.service.pause import Pause, set_pause
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium or chromedriver is missing: `apt-get install chromium chromium-driver` (scripts/run-tests "
                    "does it as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000",
                     "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_a_video_submitted_in_the_browser_shows_live_progress_and_its_result_plays(browser, tmp_path):
    port = free_port()
    folder = ServiceFolder(tmp_path / "svc", engine="tests.helpers.engines:SlowEngine",
                           web={"enabled": True, "listen": f"127.0.0.1:{port}"})
    clip = write_face_clip(tmp_path / "portrait.mp4", tag=21, frames=12)
    wait = WebDriverWait(browser, 40, poll_frequency=0.1)
    with Daemon(folder, env={"SVFRD_TEST_SECONDS_PER_FRAME": "0.25"}) as daemon:
        daemon.wait_until_serving()
        wait.until(lambda _: _page_answers(port), "the page to answer")
        browser.get(f"http://127.0.0.1:{port}/")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Queue"
        _pause_line_follows_the_pause(browser, wait, folder)

        browser.find_element(By.LINK_TEXT, "Submit").click()
        browser.find_element(By.ID, "video").send_keys(str(clip))
        browser.find_element(By.ID, "seed").send_keys("9")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: "/jobs/" in b.current_url, "the job page after the upload")
        first_state = browser.find_element(By.CSS_SELECTOR, "#job .state").text
        assert first_state in ("queued", "running")
        browser.execute_script("window.notReloaded = true")
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#job .state").text == "done", "done on the page")
        assert browser.find_element(By.CSS_SELECTOR, "#job .percent").text == "100%"
        assert browser.execute_script("return window.notReloaded") is True  # updated live, not reloaded

        browser.find_element(By.ID, "show-results").click()
        wait.until(lambda b: b.find_elements(By.ID, "after"), "the result video")
        browser.execute_script("document.getElementById('after').play()")
        wait.until(lambda b: b.execute_script(
            "const v = document.getElementById('after'); return v.readyState >= 2 && (v.currentTime > 0 || v.ended)"),
            "the result to play")
        shot = tmp_path / "job-page.png"
        browser.save_screenshot(str(shot))
        print(f"screenshot of the job page: {shot}")
        assert shot.stat().st_size > 0
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
        assert errors == [], errors


def _pause_line_follows_the_pause(browser, wait, folder) -> None:
    line = browser.find_element(By.ID, "control")
    assert not line.is_displayed()
    db = open_database(folder.database_url)
    try:
        set_pause(db, Pause.NOW)
        wait.until(lambda _: line.is_displayed() and line.text.startswith("svfrd is paused:"), "the pause line")
        set_pause(db, Pause.NONE)
        wait.until(lambda _: not line.is_displayed(), "the pause line to go")
    finally:
        db.dispose()


def _page_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
