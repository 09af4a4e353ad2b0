"""End to end, one real `svfrd run` daemon (issue 16, confirmed case 1): a sidecar naming `st/svfrd.db` through
`inbox/trip/st -> ../../state` fails with a clear note, the job database stays where it is, and a good video
dropped afterwards is still restored. (On the code before the fix, the database was moved into failed/.)"""

from __future__ import annotations

import os

from tests.helpers.service import Daemon, ServiceFolder, write_face_clip

SETTLED = {"done", "failed", "cancelled"}


def test_a_symlinked_folder_cannot_make_the_daemon_move_its_database(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    clips = tmp_path / "clips"
    clips.mkdir()
    with Daemon(folder) as daemon:
        daemon.wait_until_serving()
        database = folder.root / "state" / "svfrd.db"
        # A folder appears whole (renamed in), so its video is taken in the same scan that first sees the link.
        staged = tmp_path / "trip"
        staged.mkdir()
        (staged / "st").symlink_to("../../state")
        write_face_clip(staged / "evil.mp4", tag=11)
        (staged / "evil.toml").write_text('tasks = [2]\nmask = "st/svfrd.db"\n')
        os.rename(staged, folder.inbox / "trip")
        daemon.wait_until("the rejected job", lambda: any(j.source_name == "trip/evil.mp4" for j in folder.jobs()))
        folder.drop(write_face_clip(clips / "good.mp4", tag=12))
        jobs = daemon.wait_until("good.mp4 restored", lambda: [j for j in folder.jobs() if j.source_name == "good.mp4"
                                                               and j.state == "done"] and folder.jobs(), timeout=60)
    evil = next(j for j in jobs if j.source_name == "trip/evil.mp4")
    assert database.is_file() and not list(folder.folder("failed").rglob("svfrd.db"))
    assert evil.state == "failed" and "inbox/trip/st is a symbolic link" in evil.error_message
    assert "good.restored.mp4" in folder.files("outbox")
