"""Telling someone that a job ended (done, failed, cancelled): `[notify] command` and `[notify] url`
(docs/architecture.md, "Pause, schedule, priority, notifications"). Not systemd's sd_notify: that is
`svfrd.ops.notify`.

The supervisor hands each ended job to `Notifier.job_ended` and goes on at once: a background thread sends
the notifications one by one, each attempt limited to `[notify] timeout` seconds, with up to `[notify]
attempts` tries and a doubling pause between them. A notification that still fails is logged once for the job
and dropped: never fatal, and it never holds the queue.

The command is an argument list run without a shell; in each argument `{id}`, `{state}`, `{source}`,
`{output}` and `{error}` are replaced with the job's values. The URL gets a JSON POST:
{"id": 3, "state": "done", "source": "/srv/svfrd/done/clip.mp4", "outputs": [...], "error": null}.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import urllib.request
from typing import Any, Callable

from svfrd.config import NotifyConfig
from svfrd.jobs.model import Job

log = logging.getLogger(__name__)

#: The pause after a failed attempt, doubled after each further one.
FIRST_BACKOFF = 2.0
#: How long stopping the service waits for notifications still being sent.
CLOSE_WAIT = 15.0
PLACEHOLDERS = ("id", "state", "source", "output", "error")


def job_payload(job: Job) -> dict[str, Any]:
    outputs = [path for path in (job.output_path, job.report_path) if path]
    return {"id": job.id, "state": job.state, "source": job.source_path, "outputs": outputs,
            "error": job.error_message}


def command_arguments(command: tuple[str, ...], payload: dict[str, Any]) -> list[str]:
    """The command with its placeholders filled in; values are single arguments, never parsed by a shell."""
    values = {"id": str(payload["id"]), "state": payload["state"], "source": payload["source"] or "",
              "output": payload["outputs"][0] if payload["outputs"] else "", "error": payload["error"] or ""}
    arguments = []
    for argument in command:
        for name in PLACEHOLDERS:
            argument = argument.replace("{" + name + "}", values[name])
        arguments.append(argument)
    return arguments


def post_json(url: str, payload: dict[str, Any], timeout: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "svfrd"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # an HTTP error status raises
        response.read(1024)


def run_command(arguments: list[str], timeout: float) -> None:
    done = subprocess.run(arguments, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-300:]
        raise RuntimeError(f"exit code {done.returncode}" + (f": {said}" if said else ""))


class Notifier:
    """Sends notifications of ended jobs from a thread of its own; `job_ended` never blocks."""

    def __init__(self, config: NotifyConfig, first_backoff: float = FIRST_BACKOFF,
                 post: Callable[[str, dict, float], None] = post_json,
                 run: Callable[[list[str], float], None] = run_command):
        self.config, self.first_backoff, self.post, self.run = config, first_backoff, post, run
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._stopping = threading.Event()  # cuts the pauses between attempts short at shutdown
        self._thread: threading.Thread | None = None

    def job_ended(self, job: Job) -> None:
        if not self.config.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="svfrd-notifications", daemon=True)
            self._thread.start()
        self._queue.put(job_payload(job))

    def wait_idle(self, timeout: float) -> bool:
        """Whether everything handed in so far was sent or given up within `timeout` (for tests and shutdown)."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put({"_done": done})
        return done.wait(timeout)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        if self._thread is None:
            return
        if not self.wait_idle(timeout):
            log.warning("stopping with notifications not yet sent ([notify] %s)", self._targets())
        self._stopping.set()
        self._queue.put(None)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            if "_done" in item:
                item["_done"].set()
                continue
            if self.config.command:
                self._send(item, "command", lambda: self.run(command_arguments(self.config.command, item),
                                                             self.config.timeout))
            if self.config.url:
                self._send(item, "url", lambda: self.post(self.config.url, item, self.config.timeout))

    def _send(self, payload: dict, what: str, attempt: Callable[[], None]) -> None:
        """Up to `attempts` tries; a failure is logged once, at the end."""
        pause = self.first_backoff
        for number in range(1, self.config.attempts + 1):
            try:
                attempt()
                log.debug("job %d: notified ([notify] %s)", payload["id"], what)
                return
            except Exception as err:  # noqa: BLE001 - whatever went wrong, the service goes on
                error = err
            if number < self.config.attempts and self._stopping.wait(pause):
                break
            pause *= 2
        log.warning("job %d (%s): the notification by [notify] %s failed %s: %s. The job itself is unaffected; "
                    "check that the %s works (try it by hand)", payload["id"], payload["state"], what,
                    _tries(number), _describe(error), "program" if what == "command" else "URL")

    def _targets(self) -> str:
        return " and ".join(name for name, value in (("command", self.config.command), ("url", self.config.url))
                            if value)


def _tries(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _describe(err: BaseException) -> str:
    if isinstance(err, subprocess.TimeoutExpired):
        return f"it did not finish within {err.timeout:g} s ([notify] timeout)"
    if isinstance(err, TimeoutError) or "timed out" in str(err):
        return "no answer within [notify] timeout"
    if isinstance(err, FileNotFoundError):
        return f"no such program: {err.filename}"
    return str(err) or type(err).__name__
