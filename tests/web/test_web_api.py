"""The web page's API against a real uvicorn server on loopback, on a real job database; the upload test with a
real daemon that finishes the job."""

from __future__ import annotations

import json
import time

import pytest
import requests
from PIL import Image

from svfrd.domain import Task
from svfrd.jobs.store import enqueue_job, finish_job, record_progress, request_run_now
from svfrd.service.pause import Pause, set_pause
from tests.helpers.service import Daemon, ServiceFolder, write_corrupt_video, write_face_clip, write_mask
from tests.helpers.web import WebServer


@pytest.fixture
def folder(tmp_path):
    return ServiceFolder(tmp_path / "svc")


def new_job(web, name: str, **fields):
    return enqueue_job(web.db, inbox=str(web.config.inboxes[0].path), source_name=name,
                       source_path=str(web.config.inboxes[0].path / name), tasks={Task.BFR}, content_hash=name,
                       **fields)


def test_an_upload_becomes_a_job_that_the_daemon_finishes_and_its_result_is_served_with_ranges(folder, tmp_path):
    clip = write_face_clip(tmp_path / "clip.mp4", tag=11)
    with Daemon(folder) as daemon, WebServer(folder.config_path) as web:
        daemon.wait_until_serving()
        with open(clip, "rb") as f:
            answer = web.post("/api/jobs", files={"video": ("../../etc/holiday clip.mp4", f, "video/mp4")},
                              data={"tasks": "bfr", "seed": "5"})
        assert answer.status_code == 201, answer.text
        job = answer.json()
        assert job["name"] == "holiday_clip.mp4" and job["tasks"] == ["bfr"] and job["seed"] == 5
        assert answer.headers["location"] == f"/api/jobs/{job['id']}"
        daemon.wait_for_jobs(1, {"done"})
        done = web.get(f"/api/jobs/{job['id']}").json()
        assert done["state"] == "done" and done["percent"] == 100 and done["urls"]["result"]
        assert "/" not in done["result_name"]  # names, never the server's paths

        whole = web.get(done["urls"]["result"])
        assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
        assert whole.content == (folder.outbox / "holiday_clip.restored.mp4").read_bytes()
        size = len(whole.content)
        part = web.get(done["urls"]["result"], headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        tail = web.get(done["urls"]["result"], headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == whole.content[-50:]
        assert web.get(done["urls"]["result"], headers={"Range": f"bytes={size + 10}-"}).status_code == 416

        page = web.get(f"/jobs/{job['id']}")
        assert page.status_code == 200 and f"/api/jobs/{job['id']}/result" in page.text
        assert "<h2>Report</h2>" in page.text  # read like the API serves it: from the outbox, no link followed
        assert web.get(f"/api/jobs/{job['id']}/source").content == clip.read_bytes()  # from done/
    assert [name for name in folder.files("inbox") if name.startswith(".upload")] == []


def test_cancel_and_retry_through_the_api(folder):
    with WebServer(folder.config_path) as web:
        queued = new_job(web, "a.mp4")
        cancelled = web.post(f"/api/jobs/{queued.id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = web.post(f"/api/jobs/{queued.id}/cancel")
        assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]
        retried = web.post(f"/api/jobs/{queued.id}/retry")
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        assert web.post(f"/api/jobs/{queued.id}/retry").status_code == 409
        missing = web.post("/api/jobs/999/cancel")
        assert missing.status_code == 404 and "GET /api/jobs" in missing.json()["error"]
        listed = web.get("/api/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [queued.id]


def test_a_job_whose_result_lies_outside_the_outbox_serves_nothing(folder, tmp_path):
    with WebServer(folder.config_path) as web:
        secret = tmp_path / "secret.restored.mp4"
        secret.write_bytes(b"not for the page")
        job = new_job(web, "b.mp4")
        finish_job(web.db, job.id, engine="x", output_path=secret, report_path=None)
        assert web.get(f"/api/jobs/{job.id}/result").status_code == 404
        assert web.get(f"/api/jobs/{job.id}/nonsense").status_code == 404


def test_bad_uploads_are_refused_with_what_to_do_and_leave_nothing_in_the_inbox(folder, tmp_path):
    clip = write_face_clip(tmp_path / "clip.mp4", tag=12)
    not_video = write_corrupt_video(tmp_path / "fake.mp4")
    wrong_mask = tmp_path / "wrong.png"
    Image.new("L", (100, 50)).save(wrong_mask)
    mask = write_mask(tmp_path / "mask.png")

    def upload(video, data, mask_file=None, name="clip.mp4"):
        files = {"video": (name, open(video, "rb"), "video/mp4")}
        if mask_file is not None:
            files["mask"] = ("mask.png", open(mask_file, "rb"), "image/png")
        return web.post("/api/jobs", files=files, data=data)

    with WebServer(folder.config_path) as web:
        answer = upload(not_video, {"tasks": "bfr"})
        assert answer.status_code == 415 and "is not a video svfrd can read" in answer.json()["error"]
        answer = upload(clip, {"tasks": "sharpen"})
        assert answer.status_code == 400 and "unknown task" in answer.json()["error"]
        assert "tick one or more" in answer.json()["error"]
        answer = upload(clip, {"tasks": "bfr,inpaint"}, wrong_mask)
        assert answer.status_code == 422, answer.text
        assert "100x50" in answer.json()["error"] and "160x160" in answer.json()["error"]
        answer = upload(clip, {"tasks": "inpaint"})
        assert answer.status_code == 400 and "add a mask" in answer.json()["error"]
        answer = upload(clip, {"tasks": "bfr"}, name="notes.txt")
        assert answer.status_code == 415 and "video's suffix" in answer.json()["error"]
        answer = web.post("/api/jobs", data={"tasks": "bfr"})
        assert answer.status_code == 415 and "multipart/form-data" in answer.json()["error"]
        assert folder.files("inbox") == []

        # A good mask of the frame's size goes in beside its sidecar (no daemon runs: 202, the file waits).
        answer = upload(clip, {"tasks": "bfr,inpaint"}, mask)
        assert answer.status_code == 202, answer.text
    assert folder.files("inbox") == ["clip.mask.png", "clip.mp4", "clip.toml"]
    assert 'tasks = ["bfr", "inpaint"]' in (folder.inbox / "clip.toml").read_text()


def test_an_upload_over_the_limit_is_refused_while_it_streams(tmp_path):
    folder = ServiceFolder(tmp_path / "svc", web={"max_upload_mb": 1})
    with WebServer(folder.config_path) as web:
        big = b"\0" * (3 << 20)
        answer = web.post("/api/jobs", files={"video": ("big.mp4", big, "video/mp4")}, data={"tasks": "bfr"})
        assert answer.status_code == 413 and "max_upload_mb" in answer.json()["error"]
    assert folder.files("inbox") == []


def test_what_an_upload_keeps_in_memory_is_bounded_even_without_a_content_length(folder, tmp_path):
    clip = write_face_clip(tmp_path / "clip.mp4", tag=13)

    def send(parts: list[bytes]) -> requests.Response:
        body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + b"--B--\r\n"
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # a generator: sent chunked
        return web.post("/api/jobs", data=chunks, headers={"Content-Type": "multipart/form-data; boundary=B"})

    video = b'Content-Disposition: form-data; name="video"; filename="clip.mp4"\r\n\r\n' + clip.read_bytes()
    tasks = b'Content-Disposition: form-data; name="tasks"\r\n\r\n' + b"bfr," * 4000
    with WebServer(folder.config_path) as web:
        many_tasks = send([video] + [tasks] * 10)  # each field is under its limit, together they are not
        assert many_tasks.status_code == 413 and "together" in many_tasks.json()["error"]
        long_header = b'Content-Disposition: form-data; name="seed"\r\nX-Pad: ' + b"x" * 20000 + b"\r\n\r\n5"
        assert send([video, long_header]).status_code == 400
        many_parts = send([video] + [b'Content-Disposition: form-data; name="seed"\r\n\r\n'] * 100)
        assert many_parts.status_code == 400 and "parts" in many_parts.json()["error"]
    assert folder.files("inbox") == []


def test_a_chunked_body_over_the_limit_is_refused_whatever_part_of_it_is_big(tmp_path, monkeypatch):
    from svfrd.web import uploads

    monkeypatch.setattr(uploads, "MAX_IMAGE_BYTES", 1 << 20)  # the server runs in this process: a small test
    folder = ServiceFolder(tmp_path / "svc", web={"max_upload_mb": 1})
    clip = write_face_clip(tmp_path / "clip.mp4", tag=14)
    head = b'--B\r\nContent-Disposition: form-data; name="video"; filename="clip.mp4"\r\n\r\n'
    body = head + clip.read_bytes() + b"\r\n--B--\r\n" + b"\0" * (6 << 20)  # an endless epilogue, say
    with WebServer(folder.config_path) as web:
        answer = web.post("/api/jobs", data=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                          headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert answer.status_code == 413 and "max_upload_mb" in answer.json()["error"]
    assert folder.files("inbox") == []


def test_without_the_token_a_request_is_refused_when_one_is_required(folder):
    with WebServer(folder.config_path, token="s3cret-0123456789") as web:
        refused = web.get("/api/jobs")
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["error"]
        assert web.get("/", headers={"Accept": "text/html"}).status_code == 401
        assert web.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert web.get("/api/jobs", headers={"Authorization": "Bearer s3cret-0123456789"}).status_code == 200
        login = web.get("/login?token=s3cret-0123456789", allow_redirects=False)
        assert login.status_code == 303 and "SameSite=Strict" in login.headers["set-cookie"]
        assert web.get("/api/jobs").status_code == 200  # the session now carries the cookie


def test_cross_site_posts_and_foreign_host_names_are_refused(folder):
    with WebServer(folder.config_path) as web:
        job = new_job(web, "c.mp4")
        port = web.url.rsplit(":", 1)[1]
        forged = web.post(f"/api/jobs/{job.id}/cancel", headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403 and "another site" in forged.json()["error"]
        assert web.post(f"/api/jobs/{job.id}/cancel", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        own = web.post(f"/api/jobs/{job.id}/cancel", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert own.status_code == 200
        rebound = web.get("/api/jobs", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 421


def test_names_from_the_inbox_are_escaped_in_the_pages(folder):
    with WebServer(folder.config_path) as web:
        job = new_job(web, "<script>alert(1)</script>\x1b[31m.mp4")
        for path in ("/", f"/jobs/{job.id}"):
            page = web.get(path).text
            assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31m.mp4" in page


def test_the_event_stream_sends_a_job_when_its_row_changes(folder):
    with WebServer(folder.config_path) as web:
        job = new_job(web, "d.mp4")
        with requests.get(web.url + "/api/events", stream=True, timeout=10) as stream:
            lines = stream.iter_lines(decode_unicode=True)
            assert next(lines).startswith("retry:")
            record_progress(web.db, job.id, "restore", 3, 10, 12.0)
            changed = time.monotonic()
            seen = None
            for line in lines:
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("id") == job.id and event["frames_done"] == 3:  # not a `service` event
                        seen = event
                        break
            latency = time.monotonic() - changed
        assert seen["stage"] == "restore" and seen["percent"] == 30 and seen["eta_seconds"] == 12.0
        print(f"SSE update latency: {latency * 1000:.0f} ms")
        assert latency < 2.0


def test_the_queue_page_and_the_api_show_the_pause_and_each_jobs_priority(folder):
    with WebServer(folder.config_path) as web:
        new_job(web, "ordinary.mp4", priority=5)
        urgent = new_job(web, "urgent.mp4")
        request_run_now(web.db, urgent.id)
        set_pause(web.db, Pause.NOW)

        listed = web.get("/api/jobs").json()
        page = web.get("/").text
        assert listed["service"] == {"pause": "now", "in_schedule": True, "control": "paused"}
        marks = {job["name"]: (job["priority"], job["run_now"], job["queue_mark"]) for job in listed["jobs"]}
        assert marks == {"ordinary.mp4": (5, False, "5"), "urgent.mp4": (0, True, "now")}
        assert 'id="control">svfrd is <span class="what">paused</span>' in page
        assert '<td class="priority">5</td>' in page and '<td class="priority">now</td>' in page
        assert '<td class="priority">now</td>' in web.get(f"/jobs/{urgent.id}").text

        set_pause(web.db, Pause.NONE)
        assert web.get("/api/jobs").json()["service"]["control"] == ""
        assert 'id="control" hidden>' in web.get("/").text


def test_the_event_stream_sends_the_pause_at_once_and_again_only_when_it_changes(folder):
    with WebServer(folder.config_path) as web:
        job = new_job(web, "e.mp4")
        with requests.get(web.url + "/api/events", stream=True, timeout=10) as stream:
            events = server_sent_events(stream)
            assert next(events) == ("service", {"pause": None, "in_schedule": True, "control": ""})

            set_pause(web.db, Pause.AFTER_CURRENT)
            assert next_event(events, "service") == {"pause": "after_current", "in_schedule": True,
                                                     "control": "paused after current"}
            # Nothing else changed: the next event is the job's, not the same pause again.
            record_progress(web.db, job.id, "restore", 4, 10, 6.0)
            kind, data = next(e for e in events if e[0] != "job" or e[1]["frames_done"] == 4)
            assert (kind, data["id"]) == ("job", job.id)

            set_pause(web.db, Pause.NONE)
            assert next_event(events, "service")["control"] == ""


def server_sent_events(stream):
    """(event name, parsed data) for each event the stream sends; comments and `retry:` are skipped."""
    name = None
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])


def next_event(events, kind: str):
    """The data of the next `kind` event, none of another kind coming first except job rows."""
    for name, data in events:
        if name == kind:
            return data
        assert name == "job", (name, data)
