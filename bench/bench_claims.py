"""How long one claim of the next job takes with 10,000 jobs queued (the supervisor claims on every idle worker).

    .venv/bin/python bench/bench_claims.py [--jobs 10000] [--claims 500] [--postgres postgresql://...]

Fills a fresh, migrated database with `--jobs` queued jobs (SQLite in a temporary folder; with `--postgres URL`
also that PostgreSQL database, whose jobs table must be empty: the script deletes the rows it made), then times
`--claims` calls of `claim_next_job` one after another, each recording host, device, token and lease as the
daemon does, and prints the median, 95th percentile and maximum in milliseconds. Also times the lease
renewal of one running job and the heartbeat's look for expired leases, with every claimed job running.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import delete, insert  # noqa: E402

from svfrd.jobs.database import open_database, upgrade_database  # noqa: E402
from svfrd.jobs.model import Job, utcnow  # noqa: E402
from svfrd.jobs.store import claim_next_job, renew_lease, requeue_expired_leases  # noqa: E402


def fill(db, count: int) -> None:
    now = utcnow()
    rows = [dict(state="queued", inbox="/in", source_name=f"{n}.mp4", source_path=f"/in/{n}.mp4", tasks="0",
                 options_json="{}", seed=42, content_hash=f"{n:064x}", dedupe_key=f"{n:064x}", attempts=0,
                 max_attempts=3, service_interruptions=0, cancel_requested=False, frames_done=0,
                 created_at=now, updated_at=now) for n in range(count)]
    with db.begin() as connection:
        for start in range(0, count, 1000):
            connection.execute(insert(Job), rows[start:start + 1000])


def milliseconds(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (f"median {statistics.median(ordered) * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, "
            f"max {ordered[-1] * 1e3:.2f} ms")


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench(name: str, url: str, jobs: int, claims: int) -> None:
    upgrade_database(url)
    db = open_database(url)
    try:
        fill(db, jobs)
        claimed = []
        samples = [timed(lambda: claimed.append(claim_next_job(db, 1, host="bench:/state", device="cuda:0")))
                   for _ in range(claims)]
        assert all(job is not None for job in claimed) and len({job.id for job in claimed}) == claims
        print(f"{name}: claim with {jobs} queued: {milliseconds(samples)} ({claims} claims)")
        job = claimed[0]
        renewals = [timed(lambda: renew_lease(db, job.id, job.claim_token, 90.0)) for _ in range(100)]
        print(f"{name}: lease renewal of one job: {milliseconds(renewals)}")
        checks = [timed(lambda: requeue_expired_leases(db, 10)) for _ in range(50)]
        print(f"{name}: look for expired leases ({claims} running): {milliseconds(checks)}")
    finally:
        if not url.startswith("sqlite"):
            with db.begin() as connection:
                connection.execute(delete(Job))
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=500)
    parser.add_argument("--postgres", metavar="URL", help="also on this PostgreSQL database (its jobs table empty)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench("SQLite", f"sqlite:///{Path(tmp) / 'svfrd.db'}", args.jobs, args.claims)
    if args.postgres:
        bench("PostgreSQL", args.postgres, args.jobs, args.claims)


if __name__ == "__main__":
    main()
