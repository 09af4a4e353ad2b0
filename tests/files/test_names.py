"""The names svfrd derives from an input's name are checked against the file system's limit (issue 16: a
232-byte stem made a temporary name longer than 255 bytes and took the service down)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from svfrd.files.names import (
    JOB_ID_DIGITS,
    NAME_MAX,
    RESULT_SUFFIXES,
    byte_length,
    derived_name_problem,
    derived_names,
    numbered,
    shortened_name,
)
from svfrd.files.placement import MAX_NAME_TRIES, numbered_names
from svfrd.service import results
from svfrd.service.sidecar import sidecar_path_for


def test_the_longest_numbered_name_is_the_one_placement_makes():
    *_, last = numbered_names([Path("clip.mp4")])
    assert last == [Path(numbered("clip.mp4"))] and numbered("clip.mp4") == f"clip-{MAX_NAME_TRIES - 1}.mp4"


def test_the_result_suffixes_are_those_of_the_results():
    assert set(RESULT_SUFFIXES) == {suffix for suffix in results._suffixes(preview=True).values()}


def test_the_temporary_results_and_the_sidecar_are_named_as_the_service_names_them(tmp_path):
    """names.py cannot import the service's naming (files/ sits below service/), so its copies are held to it."""
    config = SimpleNamespace(output=SimpleNamespace(outbox=tmp_path, preview=True))
    job = SimpleNamespace(id=10**JOB_ID_DIGITS - 1, source_name="trip/clip.mp4", claim_token="f" * 32,
                          output_path=None, plan_token=None)
    derived = set(derived_names("clip.mp4"))
    assert {path.name for _, path in results.temp_files(config, job).items()} <= derived
    assert sidecar_path_for(Path("clip.mp4")).name in derived


def test_a_usual_name_is_fine_and_a_232_byte_stem_is_refused_saying_how_long_it_may_be():
    assert derived_name_problem("interview.mp4") is None
    problem = derived_name_problem("x" * 232 + ".mp4")
    assert problem is not None and "too long" in problem and f"at most {NAME_MAX} bytes" in problem
    allowed = int(problem.split("has at most ")[1].split(" bytes")[0])
    assert derived_name_problem("x" * allowed + ".mp4") is None
    assert derived_name_problem("x" * (allowed + 1) + ".mp4") is not None


def test_bytes_count_not_characters():
    assert derived_name_problem("é" * 100 + ".mp4") is None  # 200 bytes would be too many
    assert derived_name_problem("é" * 116 + ".mp4") is not None


def test_a_shortened_name_keeps_its_suffix_cuts_at_a_character_and_fits_everything():
    short = shortened_name("é" * 120 + ".mp4")
    assert short.endswith("….mp4") and short.startswith("é")
    assert derived_name_problem(short) is None
    assert all(byte_length(name) <= NAME_MAX for name in derived_names(short))
