"""The domain table and rule every part reads: per-job options and "inpainting needs a mask"."""

from __future__ import annotations

import pytest

from svfrd.domain import (
    BUILTIN_OPTION_NAMES,
    OPTIONS,
    PIPELINE,
    SVFR,
    Task,
    accepted_option_names,
    engine_options,
    mask_rule_problem,
    option_problem,
    options_owned_by,
    task_labels,
)


@pytest.mark.parametrize(
    "tasks, has_mask, expected",
    [
        ({Task.BFR}, False, None),
        ({Task.BFR, Task.INPAINT}, True, None),
        ({Task.INPAINT}, False, "task 2 (inpaint) needs a mask"),
        ({Task.BFR}, True, "a mask is only used for inpainting (task 2)"),
    ],
)
def test_the_mask_rule(tasks, has_mask, expected):
    assert mask_rule_problem(frozenset(tasks), has_mask) == expected


def test_every_option_has_an_owner_a_valid_default_and_help():
    assert options_owned_by(PIPELINE) == {"crop", "crf", "output_mode", "restore", "min_size", "max_faces"}
    assert options_owned_by(SVFR) == {"steps", "pass1_steps", "guidance_scale", "mode"}
    for option in OPTIONS.values():
        assert option.problem(option.default) is None and option.help and option.config_key.startswith("[")


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("steps", 20, None),
        ("steps", True, "must be a whole number >= 1 and <= 150"),
        ("crf", 52, "must be a whole number >= 0 and <= 51"),
        ("guidance_scale", 0, "must be a finite number > 0 and <= 20"),
        ("mode", "fast", 'allowed values are "reference", "improved"'),
        ("turbo", 1, "unknown option; allowed options are crf, crop, guidance_scale, max_faces, min_size, mode"),
    ],
)
def test_values_are_checked_against_the_table(name, value, expected):
    problem = option_problem(name, value)
    assert problem == expected if expected is None else expected in problem


@pytest.mark.parametrize(
    "name, highest, too_high",
    [("steps", 150, 151), ("pass1_steps", 250, 251), ("guidance_scale", 20.0, 20.5)],
)
def test_the_svfr_options_have_upper_bounds_that_hold_the_gpu_for_hours_not_weeks(name, highest, too_high):
    assert option_problem(name, highest) is None
    assert f"<= {highest:g}" in option_problem(name, too_high)
    assert option_problem(name, 1000) is not None  # accepted before: 1000 steps over a whole video


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400], ids=["inf", "-inf", "nan", "10**400"])
def test_guidance_scale_must_be_a_finite_number(value):
    assert "must be a finite number > 0 and <= 20" in option_problem("guidance_scale", value)


def test_an_engines_own_option_is_accepted_and_its_value_left_to_the_engine():
    accepted = accepted_option_names({"strength"})
    assert accepted == BUILTIN_OPTION_NAMES | {"strength"}
    assert option_problem("strength", "anything", accepted) is None


def test_the_engine_receives_every_option_but_the_pipelines():
    assert engine_options({"crf": 20, "steps": 5, "strength": 3}) == {"steps": 5, "strength": 3}


def test_stored_task_ids_read_as_names_for_people():
    assert task_labels("0,2") == "bfr+inpaint" and task_labels("1") == "colorize"
    assert task_labels("0,7") == "bfr+7" and task_labels("") == "-"
