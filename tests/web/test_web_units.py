"""The web page's configuration, token, upload names and the doctor's port check, without a server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from svfrd.config import load_config
from svfrd.errors import ConfigError
from svfrd.ops.doctor import check_web_port
from svfrd.web.security import cross_site_problem, is_loopback, required_token
from svfrd.web.uploads import UploadError, safe_video_name
from tests.helpers.service import ServiceFolder


def test_the_web_section_is_read_and_checked(tmp_path):
    folder = ServiceFolder(tmp_path / "svc", web={"enabled": True, "listen": "[::1]:9000", "max_upload_mb": 10})
    web = load_config(folder.config_path).web
    assert (web.enabled, web.listen, web.max_upload_mb, web.token) == (True, "[::1]:9000", 10, "")
    bad = ServiceFolder(tmp_path / "bad", web={"listen": "8765"})
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        load_config(bad.config_path)


@pytest.mark.parametrize("token", ["short", 'has space and "quotes"; more than 16', "nön-ascii-0123456789"])
def test_a_token_that_would_break_the_login_cookie_is_refused(tmp_path, token):
    folder = ServiceFolder(tmp_path / "svc", web={"token": token})
    with pytest.raises(ConfigError, match=r"\[web\] token.*letters, digits and -\._~"):
        load_config(folder.config_path)


def test_a_token_is_generated_once_for_another_address_and_kept_private(tmp_path):
    config = load_config(ServiceFolder(tmp_path / "svc").config_path)
    assert required_token(config, "127.0.0.1:8765") == (None, False)
    token, generated = required_token(config, "0.0.0.0:8765")
    assert generated and len(token) >= 32
    assert required_token(config, "192.168.1.5:80") == (token, False)  # the same one, not shown again
    assert stat.S_IMODE(os.stat(config.service.state_dir / "web-token").st_mode) == 0o600


def test_loopback_and_cross_site_rules():
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("evil.example")
    assert cross_site_problem("POST", {"host": "127.0.0.1:1", "origin": "http://127.0.0.1:1"}) is None
    assert cross_site_problem("POST", {"host": "127.0.0.1:1"}) is None  # curl and other API clients
    assert cross_site_problem("GET", {"host": "a", "origin": "http://b"}) is None
    assert "another site" in cross_site_problem("POST", {"host": "127.0.0.1:1", "origin": "http://evil"})


def test_an_upload_name_becomes_a_plain_inbox_name():
    assert safe_video_name("C:\\\\Users\\\\me\\\\Holiday 2024 (1).MP4") == "Holiday_2024_1.mp4"
    assert safe_video_name("../../.hidden.mp4") == "hidden.mp4"
    assert safe_video_name("\x1b[31m.mov") == "31m.mov"
    assert safe_video_name("....mp4") == "upload.mp4"
    with pytest.raises(UploadError, match="video's suffix"):
        safe_video_name("clip.mp4.exe")


def test_the_doctor_names_who_holds_the_web_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        folder = ServiceFolder(tmp_path / "svc", web={"enabled": True, "listen": f"127.0.0.1:{port}"})
        check = check_web_port(load_config(folder.config_path))
        assert not check.ok and f"port {port} is in use by" in check.detail and f"process {os.getpid()}" in check.detail
    check = check_web_port(load_config(folder.config_path))
    assert check.ok and "free" in check.detail
    off = ServiceFolder(tmp_path / "off")
    assert check_web_port(load_config(off.config_path)).ok


def test_svfrd_web_refuses_a_bad_listen_address(tmp_path):
    folder = ServiceFolder(tmp_path / "svc")
    done = subprocess.run([sys.executable, "-m", "svfrd", "--config", str(folder.config_path), "web", "--listen",
                           "nowhere"], capture_output=True, text=True)
    assert done.returncode == 2 and "--listen" in done.stderr and "HOST:PORT" in done.stderr


def test_install_service_says_what_the_unit_opens_for_an_enabled_page(tmp_path):
    from svfrd.ops.install_service import web_page_note

    assert web_page_note(load_config(ServiceFolder(tmp_path / "off").config_path)) is None
    on = load_config(ServiceFolder(tmp_path / "on", web={"enabled": True}).config_path)
    assert "IPAddressAllow=localhost" in web_page_note(on) and "PrivateNetwork=" not in web_page_note(on)


def _serve(response, headers=()) -> tuple[int, bytes]:
    """Run an ASGI response to the end; (its status, its body)."""
    import asyncio

    scope = {"type": "http", "method": "GET", "headers": list(headers), "asgi": {"spec_version": "2.4"}}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(response(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_served_file_is_the_one_checked_even_if_a_link_replaces_it_meanwhile(tmp_path):
    from svfrd.web.api import OpenedFileResponse, open_served_file

    outbox, secret = tmp_path / "outbox", tmp_path / "shadow"
    outbox.mkdir()
    secret.write_bytes(b"not for the page")
    result = outbox / "a.restored.mp4"
    result.write_bytes(b"the restored video")
    fd = open_served_file(result, outbox)
    result.unlink()
    result.symlink_to(secret)  # planted by a user who may write to the outbox, after the check
    assert _serve(OpenedFileResponse(fd, "a.restored.mp4", "video/mp4")) == (200, b"the restored video")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once served
    assert open_served_file(result, outbox) is None  # the link itself is never served
    (outbox / "sub").symlink_to(tmp_path)
    assert open_served_file(outbox / "sub" / "shadow", outbox) is None  # nor a file reached through a linked folder
    assert open_served_file(secret, outbox) is None  # nor one outside the outbox
    os.mkfifo(outbox / "fifo.mp4")
    assert open_served_file(outbox / "fifo.mp4", outbox) is None  # nor a FIFO (without blocking)


def test_an_opened_file_is_served_in_ranges(tmp_path):
    from svfrd.web.api import OpenedFileResponse, open_served_file

    (tmp_path / "r.mp4").write_bytes(bytes(range(200)))
    fd = open_served_file(tmp_path / "r.mp4", tmp_path)
    assert _serve(OpenedFileResponse(fd, "r.mp4", "video/mp4"), [(b"range", b"bytes=10-19")]) == (206, bytes(range(10, 20)))


def test_a_link_or_a_readable_file_in_place_of_the_token_file_is_refused(tmp_path):
    from svfrd.web.security import stored_token

    state = tmp_path / "state"
    state.mkdir()
    chosen = tmp_path / "chosen"  # a token another local user picked and planted
    chosen.write_text("known-to-them\n")
    (state / "web-token").symlink_to(chosen)
    with pytest.raises(OSError, match="symbolic link"):
        stored_token(state)
    (state / "web-token").unlink()
    (state / "web-token").write_text("known-to-them\n")
    os.chmod(state / "web-token", 0o644)
    with pytest.raises(OSError, match="chmod 600"):
        stored_token(state)
    os.chmod(state / "web-token", 0o600)
    assert stored_token(state) == ("known-to-them", False)
    (state / "web-token").write_text("")
    with pytest.raises(OSError, match="empty"):
        stored_token(state)


def test_an_upload_broken_off_leaves_no_file_and_is_no_server_error(tmp_path):
    import asyncio

    from starlette.requests import Request

    from svfrd.web.uploads import receive_form

    head = b'--B\r\nContent-Disposition: form-data; name="video"; filename="clip.mp4"\r\n\r\n'
    messages = iter([{"type": "http.request", "body": head + b"x" * 1000, "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/api/jobs", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=B")]}
    with pytest.raises(UploadError, match="broken off"):
        asyncio.run(receive_form(Request(scope, receive), tmp_path, 1 << 20))
    assert list(tmp_path.iterdir()) == []


def test_jobs_changed_at_the_same_moment_are_all_found_beyond_one_page(tmp_path):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from svfrd.domain import Task
    from svfrd.jobs.database import open_database, upgrade_database
    from svfrd.jobs.model import Job
    from svfrd.jobs.store import enqueue_job, jobs_updated_since

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade_database(url)
    db = open_database(url)
    for n in range(7):
        enqueue_job(db, inbox="/in", source_name=f"{n}.mp4", source_path=f"/in/{n}.mp4", tasks={Task.BFR},
                    content_hash=str(n))
    moment = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    with db.begin() as connection:  # a folder of videos taken in one scan: the same updated_at
        connection.execute(update(Job).where(Job.id <= 5).values(updated_at=moment))
        connection.execute(update(Job).where(Job.id > 5).values(updated_at=moment + timedelta(seconds=1)))
    found = jobs_updated_since(db, moment - timedelta(seconds=2), page=2)
    assert [job.id for job in found] == [1, 2, 3, 4, 5, 6, 7]
    assert [job.id for job in jobs_updated_since(db, moment + timedelta(seconds=1), page=2)] == [6, 7]
    db.dispose()


def test_the_settings_page_shows_no_database_password(tmp_path):
    from dataclasses import replace

    from svfrd.web.pages import settings_rows

    config = load_config(ServiceFolder(tmp_path / "svc", web={"token": "s3cret-0123456789"}).config_path)
    config = replace(config, service=replace(config.service, database_url="postgresql://svfrd:hunter2@db/svfrd"))
    rows = dict(settings_rows(config))
    assert rows["service.database_url"] == "postgresql://svfrd:***@db/svfrd" and rows["web.token"] == "(set)"
    assert not any("hunter2" in value or "s3cret-0123456789" in value for value in rows.values())
