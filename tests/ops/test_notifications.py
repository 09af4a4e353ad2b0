"""Notifications of ended jobs against a loopback HTTP server (http.server in a thread), one that hangs, one that
fails, and commands; the supervisor never waits for them."""

from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from svfrd.config import NotifyConfig
from svfrd.jobs.model import Job
from svfrd.ops.notifications import Notifier, command_arguments, job_payload


def ended_job(job_id: int = 3, state: str = "done", **fields) -> Job:
    fields = {"output_path": "/out/a b.restored.mp4", "report_path": "/out/a b.report.json", **fields}
    return Job(id=job_id, state=state, inbox="/in", source_name="a b.mp4", source_path="/done/a b.mp4",
               tasks="0", content_hash="c", dedupe_key="k", **fields)


class LoopbackServer:
    """Records the JSON bodies POSTed to it; `status` is answered, or with `hang` set, nothing until released."""

    def __init__(self, status: int = 200, hang: bool = False):
        self.bodies: list[dict] = []
        self.status, self.hang, self.release = status, hang, threading.Event()
        self.requests = threading.Semaphore(0)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                server.requests.release()
                if server.hang:
                    server.release.wait(30)
                    return
                self.send_response(server.status)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_job_end_is_posted_as_json():
    with LoopbackServer() as server:
        notifier = Notifier(NotifyConfig(url=server.url))
        notifier.job_ended(ended_job(state="failed", error_message="bad input"))
        assert notifier.wait_idle(10)
    assert server.bodies == [{"id": 3, "state": "failed", "source": "/done/a b.mp4",
                              "outputs": ["/out/a b.restored.mp4", "/out/a b.report.json"], "error": "bad input"}]


def test_a_hanging_server_times_out_is_retried_logged_once_and_the_next_job_is_still_sent(caplog):
    with LoopbackServer(hang=True) as server:
        notifier = Notifier(NotifyConfig(url=server.url, timeout=0.2, attempts=2), first_backoff=0.0)
        notifier.job_ended(ended_job(1))
        notifier.job_ended(ended_job(2))  # returns at once: nothing waits for the server
        with caplog.at_level(logging.WARNING, logger="svfrd.ops.notifications"):
            assert notifier.wait_idle(20)
    assert [body["id"] for body in server.bodies] == [1, 1, 2, 2]  # each tried twice
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "job 1 (done)" in warnings[0] and "failed 2 times" in warnings[0]
    assert "no answer within [notify] timeout" in warnings[0]


def test_an_error_status_is_a_failure_retried_with_backoff(caplog):
    with LoopbackServer(status=500) as server, caplog.at_level(logging.WARNING):
        notifier = Notifier(NotifyConfig(url=server.url, attempts=3), first_backoff=0.01)
        notifier.job_ended(ended_job())
        assert notifier.wait_idle(20)
    assert len(server.bodies) == 3
    assert "HTTP Error 500" in caplog.text and "The job itself is unaffected" in caplog.text


def test_the_command_gets_its_arguments_without_a_shell(tmp_path):
    out = tmp_path / "args.json"
    script = f"import json, sys; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    notifier = Notifier(NotifyConfig(command=(sys.executable, "-c", script, "{id}", "{state}:{output}", "$HOME;x")))
    notifier.job_ended(ended_job(7))
    assert notifier.wait_idle(20)
    assert json.loads(out.read_text()) == ["7", "done:/out/a b.restored.mp4", "$HOME;x"]


@pytest.mark.parametrize("command, words", [
    ((sys.executable, "-c", "import sys; sys.exit('no route')"), "exit code 1: no route"),
    (("/nonexistent/notify-me",), "no such program: /nonexistent/notify-me"),
    ((sys.executable, "-c", "import time; time.sleep(30)"), "did not finish within 0.3 s"),
])
def test_a_failing_command_is_logged_once_and_never_raised(caplog, command, words):
    notifier = Notifier(NotifyConfig(command=command, timeout=0.3, attempts=1), first_backoff=0.0)
    with caplog.at_level(logging.WARNING, logger="svfrd.ops.notifications"):
        notifier.job_ended(ended_job())
        assert notifier.wait_idle(20)
    assert len(caplog.records) == 1 and words in caplog.records[0].getMessage()


def test_nothing_is_configured_nothing_runs():
    notifier = Notifier(NotifyConfig())
    notifier.job_ended(ended_job())
    assert notifier._thread is None and notifier.wait_idle(0)


def test_placeholders_and_payload():
    payload = job_payload(ended_job(state="cancelled", output_path=None, report_path=None))
    assert payload["outputs"] == [] and payload["error"] is None
    assert command_arguments(("x", "{id}-{error}-{output}-{source}"), payload) == ["x", "3---/done/a b.mp4"]
