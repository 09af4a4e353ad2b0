"""What an idle svfrd costs: CPU time of the daemon and its worker processes while no video arrives.

    .venv/bin/python bench/bench_service_idle.py [--seconds 20] [--scan-interval 10]

Starts a real `svfrd run` on a temporary folder (test engine, nothing in the inbox), lets start-up settle,
then reads utime + stime from /proc/PID/stat of the daemon and each child before and after `--seconds` and
prints the CPU share of each. The daemon sleeps in one `select` until the next inbox rescan, so its share is
a rescan's cost divided by `scan_interval`; the worker blocks on its pipe and should show nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.service import Daemon, ServiceFolder  # noqa: E402 - after the sys.path line above


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/PID/stat), in seconds."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:70]


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scan-interval", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = ServiceFolder(Path(tmp) / "svfrd", service={"scan_interval": args.scan_interval})
        with Daemon(folder) as daemon:
            daemon.wait_until_serving()
            time.sleep(3.0)  # let the worker finish loading
            pids = [daemon.pid] + children(daemon.pid)
            names = {pid: command_line(pid) for pid in pids}
            before = {pid: cpu_seconds(pid) for pid in pids}
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            after = {pid: cpu_seconds(pid) for pid in pids}
    print(f"idle for {elapsed:.1f} s, scan_interval = {args.scan_interval} s")
    for pid in pids:
        used = after[pid] - before[pid]
        role = "daemon" if pid == pids[0] else "child "
        print(f"  {role} {pid}: {used:.2f} s CPU = {100 * used / elapsed:.2f} %   {names[pid]}")


if __name__ == "__main__":
    main()
