"""The keys of issue 12: a job's priority (sidecar, inbox default), `[schedule] active` and `[notify]`, each
mistake explained."""

from __future__ import annotations

import pytest

from svfrd.config import load_config
from svfrd.service.sidecar import default_spec
from tests.service.test_sidecar_parsing import error_of, inbox, parse  # noqa: F401  (inbox is a fixture)
from tests.test_config_loading import MINIMAL, load_error, write_config


def test_a_sidecar_priority_replaces_the_inbox_default(inbox):  # noqa: F811
    assert parse(inbox, "priority = 7\n", default_priority=2).priority == 7
    assert parse(inbox, "seed = 1\n", default_priority=2).priority == 2
    assert default_spec(frozenset(), {}, 3).priority == 3


@pytest.mark.parametrize("value", ["101", "-101", "1.5", '"high"', "true"])
def test_a_bad_sidecar_priority_is_explained(inbox, value):  # noqa: F811
    assert "priority = " in error_of(inbox, f"priority = {value}\n")
    assert "from -100 to 100" in error_of(inbox, f"priority = {value}\n")


def test_inbox_priority_schedule_and_notify_load(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL + 'priority = -3\n[schedule]\nactive = ["19:00-07:00"]\n'
                                      '[notify]\ncommand = ["/bin/true", "{id}"]\nurl = "https://example.org/h"\n'))
    assert config.inboxes[0].priority == -3
    assert not config.schedule.always and len(config.schedule.windows) == 1
    assert config.notify.command == ("/bin/true", "{id}") and config.notify.url == "https://example.org/h"
    assert config.notify.enabled and config.notify.timeout == 10.0


def test_without_the_sections_or_with_them_empty_jobs_always_run_and_nothing_is_sent(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.schedule.always and not config.notify.enabled and config.inboxes[0].priority == 0
    empty = load_config(write_config(tmp_path, MINIMAL + '[schedule]\nactive = []\n[notify]\ncommand = []\nurl = ""\n'))
    assert empty.schedule.always and not empty.notify.enabled


@pytest.mark.parametrize("text, words", [
    (MINIMAL + "priority = 500\n", "priority = 500: a priority is a whole number from -100 to 100"),
    (MINIMAL + '[schedule]\nactive = ["7pm-7am"]\n', "'7pm-7am' is not a window"),
    (MINIMAL + '[schedule]\nactive = "19:00-07:00"\n', "must be a list of windows"),
    (MINIMAL + '[notify]\ncommand = "notify-me {id}"\n', "it is run without a shell"),
    (MINIMAL + '[notify]\nurl = "ftp://host/x"\n', "must be an http:// or https:// URL"),
    (MINIMAL + '[notify]\nattempts = 0\n', "attempts = 0"),
])
def test_bad_control_keys_are_explained(tmp_path, text, words):
    assert words in load_error(tmp_path, text)
