"""The web page's figures: time to the first render of the queue page, the event stream's update latency (a
store change until its event arrives), and the web process's memory (RSS) while a 1 GB upload streams in.

    .venv/bin/python bench/bench_web.py [--upload-mb 1024]

Runs `svfrd web` as its own process on a temporary service folder; the upload is generated on the fly (never
written to disk here) and is no video, so the page refuses it once it has streamed in: only the memory counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from svfrd.domain import Task  # noqa: E402
from svfrd.jobs.database import open_database, upgrade_database  # noqa: E402
from svfrd.jobs.store import enqueue_job, record_progress  # noqa: E402
from tests.helpers.service import ServiceFolder  # noqa: E402

CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for_port(port: int, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.05)
    raise SystemExit("svfrd web did not start")


def first_render(url: str, samples: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        answer = requests.get(url + "/", timeout=10)
        answer.raise_for_status()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:])


def sse_latency(url: str, db, job_id: int, samples: int = 20) -> list[float]:
    latencies = []
    with requests.get(url + "/api/events", stream=True, timeout=30) as stream:
        lines = stream.iter_lines(decode_unicode=True)
        next(lines)
        for n in range(1, samples + 1):
            time.sleep(random.uniform(0, 0.5))  # changes come at any moment of the stream's poll cycle
            record_progress(db, job_id, "restore", n, samples, None)
            changed = time.perf_counter()
            for line in lines:
                if line.startswith("data:") and json.loads(line[5:])["frames_done"] == n:
                    latencies.append(time.perf_counter() - changed)
                    break
    return latencies


def upload_memory(url: str, pid: int, megabytes: int) -> tuple[float, float, int]:
    boundary = "svfrdbench"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"tasks\"\r\n\r\nbfr\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"big.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        block = os.urandom(CHUNK)
        for _ in range(megabytes):
            yield block
        yield tail

    peak, before, done = 0.0, rss_mb(pid), threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answer = requests.post(url + "/api/jobs", data=body(), timeout=600,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    done.set()
    sampler.join()
    return before, peak, answer.status_code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mb", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        port = free_port()
        folder = ServiceFolder(Path(temp) / "svc", web={"listen": f"127.0.0.1:{port}",
                                                        "max_upload_mb": args.upload_mb + 64})
        upgrade_database(folder.database_url)
        db = open_database(folder.database_url)
        job = enqueue_job(db, inbox=str(folder.inbox), source_name="a.mp4", source_path=str(folder.inbox / "a.mp4"),
                          tasks={Task.BFR}, content_hash="bench")
        web = subprocess.Popen([sys.executable, "-m", "svfrd", "--config", str(folder.config_path), "web"],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            started = wait_for_port(port)
            url = f"http://127.0.0.1:{port}"
            first, warm = first_render(url)
            latencies = sse_latency(url, db, job.id)
            before, peak, status = upload_memory(url, web.pid, args.upload_mb)
        finally:
            web.terminate()
            web.wait(10)
            db.dispose()
    print(f"svfrd web started listening in {started * 1000:.0f} ms")
    print(f"queue page: first render {first * 1000:.1f} ms, then median {warm * 1000:.1f} ms")
    print(f"SSE update latency over {len(latencies)} changes: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms (the stream polls every 0.5 s)")
    print(f"web process RSS during a {args.upload_mb} MB upload: {before:.0f} MB before, peak {peak:.0f} MB "
          f"(answer {status}: no video, refused after streaming in)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
