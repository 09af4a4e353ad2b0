"""End to end: a burst of 50 videos dropped at once becomes 50 jobs, each done exactly once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

COUNT = 50


def test_fifty_videos_dropped_at_once_are_each_restored_exactly_once(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    clips = tmp_path / "clips"
    clips.mkdir()
    names = [f"clip{n:02d}.mp4" for n in range(COUNT)]
    made = [write_face_clip(clips / name, tag=n, frames=2) for n, name in enumerate(names)]
    with Daemon(folder) as daemon:
        daemon.wait_until_serving()
        for clip in made:
            folder.drop(clip)
        jobs = daemon.wait_for_jobs(COUNT, {"done", "failed"}, timeout=180)

    assert len(jobs) == COUNT
    assert Counter(job.state for job in jobs) == {"done": COUNT}, [j.error_message for j in jobs if j.error_message]
    assert sorted(job.source_name for job in jobs) == names  # none lost, none twice
    assert all(job.attempts == 0 for job in jobs)
    assert len({job.content_hash for job in jobs}) == COUNT
    assert all(json.loads(Path(job.report_path).read_text())["job_id"] == job.id for job in jobs)
    expected = sorted(f"clip{n:02d}{suffix}" for n in range(COUNT) for suffix in (".report.json", ".restored.mp4"))
    assert folder.files("outbox") == expected  # one result each, no clash numbers, no temporary files
    assert folder.files("done") == names
    assert folder.files("inbox") == [] and folder.files("failed") == []
