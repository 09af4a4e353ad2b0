"""End to end, one real `svfrd run` daemon (issue 16, cases 2 and 3): sidecars made to stall or crash the
parser (a long dotted key, 600 nested arrays, a 65-byte PNG claiming 14000x14000 pixels) and a name too long
for the names derived from it each fail alone with a note, and a good video dropped after them is still
restored, with a short log."""

from __future__ import annotations

from svfrd.files.names import NAME_MAX, byte_length
from tests.helpers.service import Daemon, ServiceFolder, write_corrupt_video, write_face_clip
from tests.service.test_sidecar_limits import png_header

LONG_STEM = "interview-" + "x" * 222  # 232 bytes: fits, but `.jobN.STEM.restored.mp4.part` does not


def test_hostile_sidecars_and_a_long_name_fail_alone_and_a_later_video_is_restored(tmp_path):
    folder = ServiceFolder(tmp_path / "svfrd")
    junk = write_corrupt_video(tmp_path / "junk.mp4")  # refused before it is decoded
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(14000, 14000))
    with Daemon(folder) as daemon:
        daemon.wait_until_serving()
        folder.drop(junk, "a_dotted.mp4", sidecar="a" + ".a" * 20_000 + " = 1\n")  # 40 KB: 1.5 GB in tomllib
        folder.drop(junk, "a_nested.mp4", sidecar="tasks = " + "[" * 600 + "\n")
        folder.drop(junk, "a_bomb.mp4", sidecar='tasks = ["bfr", "inpaint"]\nmask = "bomb.png"\n',
                    extras={"bomb.png": bomb})
        folder.drop(junk, LONG_STEM + ".mp4")
        folder.drop(write_face_clip(tmp_path / "good.mp4", tag=16), "z_good.mp4")
        jobs = {job.source_name: job for job in daemon.wait_for_jobs(5, {"done", "failed"}, timeout=45)}

    assert jobs["z_good.mp4"].state == "done" and (folder.outbox / "z_good.restored.mp4").is_file()
    failed = folder.folder("failed")
    for name, reason in [("a_dotted", "larger than 16 KiB"), ("a_nested", "nested too deeply"),
                         ("a_bomb", "pixels")]:
        assert jobs[f"{name}.mp4"].state == "failed" and reason in jobs[f"{name}.mp4"].error_message
        assert reason in (failed / f"{name}.error.txt").read_text()
    long_job = jobs[LONG_STEM + ".mp4"]
    assert long_job.state == "failed" and "too long" in long_job.error_message
    [note] = [path for path in failed.iterdir() if path.name.startswith("interview-") and path.suffix == ".txt"]
    assert byte_length(note.name) < NAME_MAX and "too long" in note.read_text()
    assert folder.files("inbox") == []
    log = daemon.log()
    assert len(log) < 50_000 and log.count("Traceback") == 0, log[-4000:]
