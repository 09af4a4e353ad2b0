"""`python -m tests.helpers.crash_in_publication CONFIG`: what a restarted daemon does with a job it finds
running (start-up recovery, then the worker's real JobRunner), in this process, which dies by SIGKILL right
after the first result file is published: a crash between publication steps (docs/architecture.md §3)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from svfrd.config import load_config
from svfrd.engines import create_engine
from svfrd.files import placement
from svfrd.jobs.database import open_database
from svfrd.jobs.store import claim_next_job
from svfrd.service.recovery import recover_at_startup
from svfrd.service.worker import JobRunner


def main(config_path: str) -> None:
    config = load_config(Path(config_path))
    db = open_database(config.service.database_url)
    recover_at_startup(config, db)
    engine = create_engine(config.engine, face_model=config.faces.model)
    publish = placement.publish

    def publish_then_die(temp: Path, final: Path) -> Path:
        publish(temp, final)
        os.kill(os.getpid(), signal.SIGKILL)

    placement.publish = publish_then_die
    job = claim_next_job(db, worker_pid=os.getpid())
    JobRunner(config, db, engine).run(job.id)
    sys.exit("the job ended without publishing anything")


if __name__ == "__main__":
    main(sys.argv[1])
