"""NAME.report.json from a real daemon: the flat schema the README documents, a plug-in engine's own option
arriving at the engine, and an odd-sized video written in 4:2:0 with the adjustment reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pytest

from svfrd.jobs.model import Job
from svfrd.service.report import reuse_report
from tests.helpers.paths import REPO_ROOT
from tests.helpers.service import Daemon, ServiceFolder, write_face_clip


def documented_fields() -> list[str]:
    """The field names of the README's "The job report" table, in order."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## The job report", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def all_keys(value) -> list[str]:
    """Every object key at every depth, except inside `options` (its keys are the user's option names)."""
    if isinstance(value, dict):
        keys = []
        for key, item in value.items():
            keys.append(key)
            if key != "options":
                keys += all_keys(item)
        return keys
    if isinstance(value, list):  # items of a list share their keys: count each once
        return list(dict.fromkeys(key for item in value for key in all_keys(item)))
    return []


def stream_format(path: Path) -> tuple[str, str]:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.pix_fmt, context.profile


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One odd-sized clip (161x161) with a sidecar setting the plug-in engine's own option."""
    root = tmp_path_factory.mktemp("report")
    folder = ServiceFolder(root / "svfrd", engine="tests.helpers.engines:OptionEngine", preview=True)
    with Daemon(folder) as daemon:
        folder.drop(write_face_clip(root / "odd.mp4", tag=3, size=161), sidecar="[options]\nstrength = 3\n")
        (job,) = daemon.wait_for_jobs(1, {"done", "failed"})
    assert job.state == "done", job.error_message
    return folder, job, json.loads(Path(job.report_path).read_text())


def test_the_report_has_exactly_the_documented_fields_in_order_with_schema_1(report):
    _, job, data = report
    assert list(data) == documented_fields()
    assert data["schema"] == 1 and data["job_id"] == job.id
    assert data["source"] == "odd.mp4" and data["tasks"] == ["bfr"] and data["engine"] == "test-options"
    assert data["frames"] == data["frames_with_face"] == 4
    assert data["outputs"] == {"video": "odd.restored.mp4", "preview": "odd.preview.mp4",
                               "contact_sheet": "odd.contact.png"}
    assert set(data["timings"]) == {"queued_at", "started_at", "finished_at", "seconds", "frames_per_second",
                                    "stages"}
    assert set(data["timings"]["stages"]) >= {"probe", "faces", "restore", "encode"}
    assert data["attempt"] == 1 and data["reuses_job"] is None


def test_no_key_repeats_anywhere_in_the_report(report):
    _, _, data = report
    keys = all_keys(data)
    assert sorted(key for key in set(keys) if keys.count(key) > 1) == []


def test_a_plug_in_engines_own_option_is_accepted_and_reaches_the_engine(report):
    _, _, data = report
    assert data["options"] == {"strength": 3, "crop": "tracked", "crf": 23, "output_mode": "full_frame",
                               "restore": "all", "min_size": 0.05, "max_faces": 8}
    assert "test engine options: strength=3" in data["warnings"]


def test_an_odd_sized_video_comes_out_in_4_2_0_one_pixel_smaller_and_the_report_says_so(report):
    folder, job, data = report
    assert stream_format(Path(job.output_path)) == ("yuv420p", "High")
    assert stream_format(folder.outbox / "odd.preview.mp4")[0] == "yuv420p"
    assert data["frame_size"]["input"] == [161, 161] and data["frame_size"]["output"] == [160, 160]
    assert "cropped the last column (right edge) and the last row (bottom edge)" in data["frame_size"]["adjusted"]


def test_a_reused_result_gets_the_earlier_report_under_its_own_name_and_says_which_job_it_reuses(report):
    _, _, earlier = report
    duplicate = Job(id=earlier["job_id"] + 5, inbox="/in", source_name="copy.mp4", source_path="/in/copy.mp4",
                    tasks="0", content_hash="c", dedupe_key="k")
    earlier_job = Job(id=earlier["job_id"], inbox="/in", source_name="odd.mp4", source_path="/done/odd.mp4",
                      tasks="0", content_hash="c", dedupe_key="k")
    data = reuse_report(earlier_job, earlier, duplicate, {"video": "copy.restored.mp4"})
    assert list(data) == documented_fields()
    assert (data["job_id"], data["source"], data["reuses_job"]) == (duplicate.id, "copy.mp4", earlier["job_id"])
    assert data["outputs"] == {"video": "copy.restored.mp4"} and data["frames"] == earlier["frames"]
