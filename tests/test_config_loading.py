"""config.toml is validated on start-up: every error names the key and says what is allowed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from svfrd.config import load_config, parse_tasks
from svfrd.domain import BUILTIN_OPTION_NAMES, OPTIONS, Task
from svfrd.errors import ConfigError
from tests.helpers.paths import REPO_ROOT

SHIPPED_CONFIG = REPO_ROOT / "config.toml"

MINIMAL = '[[inbox]]\npath = "in"\n'


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, text))
    return str(info.value)


def test_shipped_config_loads_with_documented_defaults():
    config = load_config(SHIPPED_CONFIG)
    root = SHIPPED_CONFIG.parent
    assert config.path == SHIPPED_CONFIG
    assert config.service.state_dir == root / "state"
    assert config.service.database_url == f"sqlite:///{root / 'state' / 'svfrd.db'}"
    assert config.service.quiet_period == 5.0 and config.service.max_attempts == 3
    assert config.service.on_stop == "requeue"
    assert [i.path for i in config.inboxes] == [root / "inbox"]
    assert config.inboxes[0].tasks == frozenset({Task.BFR})
    assert config.output.outbox == root / "outbox" and config.output.crf == 18
    assert config.faces.model == root / "models" / "face_landmarker.task"
    assert config.engine.dtype == "fp16" and config.engine.svfr.steps == 30
    assert config.engine.svfr.models_dir == root / "models"


def test_every_default_equals_the_shipped_config(tmp_path):
    """The shipped config.toml documents the defaults: a config with only an inbox must load the same."""
    shipped = tmp_path / "config.toml"
    shipped.write_text(SHIPPED_CONFIG.read_text())
    minimal = tmp_path / "minimal.toml"
    minimal.write_text('[[inbox]]\npath = "inbox"\n')
    assert replace(load_config(minimal), path=shipped) == load_config(shipped)


def test_the_limits_have_safe_defaults_and_are_configurable(tmp_path):
    default = load_config(SHIPPED_CONFIG).limits
    assert (default.max_frame_pixels, default.max_mask_pixels) == (7680 * 4320, 7680 * 4320)
    assert (default.max_frames, default.max_duration) == (1_000_000, 4 * 3600.0)
    assert default.job_timeout(frames=10) == 3600.0 and default.job_timeout(frames=1000) == 30_000.0
    text = MINIMAL + "[limits]\nmax_frame_pixels = 100\nmax_frames = 5\nmax_duration = 2\nmax_mask_pixels = 7\n" \
        "job_timeout_per_frame = 2\njob_timeout_min = 60\n"
    (tmp_path / "config.toml").write_text(text)
    limits = load_config(tmp_path / "config.toml").limits
    assert (limits.max_frame_pixels, limits.max_frames, limits.max_duration, limits.max_mask_pixels) == (100, 5, 2, 7)
    assert limits.job_timeout(frames=10) == 60.0 and limits.job_timeout(frames=100) == 200.0


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(write_config(tmp_path, MINIMAL + '[output]\noutbox = "../out"\n'))
    assert config.output.outbox == tmp_path.parent / "out"
    assert config.service.state_dir == tmp_path / "state"


def test_explicit_database_url_is_kept_and_relative_sqlite_paths_are_resolved(tmp_path):
    pg = load_config(write_config(tmp_path, '[service]\ndatabase_url = "postgresql://db/svfrd"\n' + MINIMAL))
    assert pg.service.database_url == "postgresql://db/svfrd"
    rel = load_config(write_config(tmp_path, '[service]\ndatabase_url = "sqlite:///q.db"\n' + MINIMAL))
    assert rel.service.database_url == f"sqlite:///{tmp_path / 'q.db'}"


def test_configs_are_frozen(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        config.service.quiet_period = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[engine]\ndtype = "fp64"\n', '[engine] dtype = "fp64": allowed values are "fp16", "bf16", "fp32"'),
        ("[service]\nquiet_period = -1\n", "[service] quiet_period = -1: must be a number >= 0"),
        ('[service]\nmax_attempts = "3"\n', '[service] max_attempts = "3": must be a whole number >= 1'),
        ('[service]\non_stop = "kill"\n', '[service] on_stop = "kill": allowed values are "requeue", "finish"'),
        ("[service]\nquiet = 3\n", "[service] unknown key 'quiet'"),
        ("[output]\ncrf = 60\n", "[output] crf = 60: must be a whole number >= 0 and <= 51"),
        ('[output]\npreview = "yes"\n', '[output] preview = "yes": must be true or false'),
        ('[faces]\ncrop = "box"\n', '[faces] crop = "box": allowed values are "tracked", "reference"'),
        ('[engine]\nname = "magic"\n', '[engine] name = "magic": allowed values are "auto", "svfr", "classical"'),
        ('[engine]\ndevice = "gpu"\n', '[engine] device = "gpu": allowed values are "auto", "cpu", "cuda"'),
        ("[engine.svfr]\nsteps = 0\n", "[engine.svfr] steps = 0: must be a whole number >= 1"),
        ("[engine.svfr]\nturbo = true\n", "[engine.svfr] unknown key 'turbo'"),
        ("[engines]\nname = 'auto'\n", "unknown section or key 'engines' at the top level"),
        ("[limits]\nmax_frame_pixels = 0\n", "[limits] max_frame_pixels = 0: must be a whole number >= 1"),
        ("[limits]\nmax_frames = 2.5\n", "[limits] max_frames = 2.5: must be a whole number >= 1"),
        ("[limits]\nmax_duration = -1\n", "[limits] max_duration = -1: must be a number > 0"),
        ('[limits]\nmax_mask_pixels = "8K"\n', '[limits] max_mask_pixels = "8K": must be a whole number >= 1'),
        ("[limits]\njob_timeout_per_frame = 0\n", "[limits] job_timeout_per_frame = 0: must be a number > 0"),
        ("[limits]\njob_timeout_min = nan\n", "[limits] job_timeout_min = nan: must be a number > 0"),
        ("[limits]\nmax_width = 10\n", "[limits] unknown key 'max_width'"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key_and_what_is_allowed(tmp_path, text, expected):
    assert expected in load_error(tmp_path, MINIMAL + text)


@pytest.mark.parametrize(
    "inbox, expected",
    [
        ('path = "in"\ntasks = ["sharpen"]', '[[inbox]] #1 tasks = ["sharpen"]: unknown task "sharpen"'),
        ('path = "in"\ntasks = [2]', "[[inbox]] #1 tasks = [2]: task 2 (inpaint) needs a mask, so it can only be"),
        ('path = "in"\ntasks = []', "the task list is empty"),
        ('path = "in"\nfolder = "x"', "[[inbox]] #1 unknown key 'folder'"),
        ('tasks = ["bfr"]', '[[inbox]] #1 has no path; add path = "FOLDER"'),
        ('path = "in"\noptions = { steps = -2 }', "option steps = -2: must be a whole number >= 1"),
        ('path = "in"\noptions = { speed = 2 }', "option speed = 2: unknown option; allowed options are crf"),
        ('path = "outbox"', "is also [output] outbox; use separate folders"),
    ],
)
def test_invalid_inboxes_are_rejected_with_a_precise_message(tmp_path, inbox, expected):
    assert expected in load_error(tmp_path, f"[[inbox]]\n{inbox}\n")


def test_a_config_without_inbox_is_rejected(tmp_path):
    assert "no [[inbox]] configured" in load_error(tmp_path, "[service]\nquiet_period = 1\n")


def test_the_same_inbox_twice_is_rejected(tmp_path):
    assert "is listed twice" in load_error(tmp_path, MINIMAL + MINIMAL)


def test_toml_syntax_errors_and_missing_files_are_config_errors(tmp_path):
    message = load_error(tmp_path, "[service\nquiet_period = 1\n")
    assert "is not valid TOML" in message and "line 1" in message
    with pytest.raises(ConfigError, match="not found; pass --config PATH"):
        load_config(tmp_path / "missing.toml")


def test_inbox_options_and_several_inboxes(tmp_path):
    text = MINIMAL + 'options = { steps = 12, mode = "improved" }\n[[inbox]]\npath = "bw"\ntasks = [0, "colorize"]\n'
    config = load_config(write_config(tmp_path, text))
    assert config.inboxes[0].options == {"steps": 12, "mode": "improved"}
    assert config.inboxes[1].tasks == frozenset({Task.BFR, Task.COLORIZE})


def test_parse_tasks_accepts_ids_names_and_mixtures():
    assert parse_tasks([0, 1, 2]) == frozenset(Task)
    assert parse_tasks(["bfr", "Colorize", "inpaint"]) == frozenset(Task)
    assert parse_tasks("inpaint") == frozenset({Task.INPAINT})
    assert parse_tasks([2, "bfr", 0]) == frozenset({Task.BFR, Task.INPAINT})
    for bad in ([3], ["deblur"], [True], [1.0]):
        with pytest.raises(ValueError, match="unknown task"):
            parse_tasks(bad)


PLUG_IN = '[engine]\nname = "tests.helpers.engines:{}"\n'


def test_a_plug_in_engines_own_options_are_accepted_when_it_is_the_configured_engine(tmp_path):
    text = MINIMAL + "options = { strength = 3, steps = 12 }\n" + PLUG_IN.format("OptionEngine")
    config = load_config(write_config(tmp_path, text))
    assert config.inboxes[0].options == {"strength": 3, "steps": 12}
    assert config.engine.option_names == BUILTIN_OPTION_NAMES | {"strength"}


def test_a_plug_in_engines_options_are_unknown_with_another_engine(tmp_path):
    text = MINIMAL + "options = { strength = 3 }\n" + PLUG_IN.format("InvertingEngine")
    assert "option strength = 3: unknown option; allowed options are crf" in load_error(tmp_path, text)


def test_an_engine_that_cannot_be_imported_is_left_to_the_worker_to_report(tmp_path):
    # The worker's start says what is wrong (tests/service/test_recovery.py); config only adds no options.
    config = load_config(write_config(tmp_path, MINIMAL + PLUG_IN.format("NoSuchEngine")))
    assert config.engine.option_names == BUILTIN_OPTION_NAMES


def test_the_configured_defaults_of_per_job_options_come_from_the_option_table(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    configured = {"steps": config.engine.svfr.steps, "pass1_steps": config.engine.svfr.pass1_steps,
                  "guidance_scale": config.engine.svfr.guidance_scale, "mode": config.engine.svfr.mode,
                  "crop": config.faces.crop, "crf": config.output.crf, "output_mode": config.output.mode,
                  "restore": config.faces.restore, "min_size": config.faces.min_size,
                  "max_faces": config.faces.max_faces}
    assert configured == {name: option.default for name, option in OPTIONS.items()}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_option_is_configured_under_the_key_its_table_row_names(tmp_path, name):
    table, _, key = OPTIONS[name].config_key.rpartition(" ")
    error = load_error(tmp_path, f"{MINIMAL}{table}\n{key} = true\n")
    assert f"{table} {key} = true: " in error and OPTIONS[name].allowed in error


def test_devices_gives_one_worker_each_and_defaults_to_the_one_device(tmp_path):
    from svfrd.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[[inbox]]\npath = "inbox"\n[engine]\ndevice = "cuda:1"\n')
    assert load_config(path).engine.worker_devices == ("cuda:1",)
    path.write_text('[[inbox]]\npath = "inbox"\n[engine]\ndevices = ["cpu", "cpu"]\n')
    assert load_config(path).engine.worker_devices == ("cpu", "cpu")
    path.write_text('[[inbox]]\npath = "inbox"\n[engine]\ndevices = []\n')
    with pytest.raises(ConfigError, match="devices"):
        load_config(path)


def test_a_heartbeat_over_half_the_lease_is_refused_saying_why(tmp_path):
    from svfrd.config import load_config

    path = tmp_path / "config.toml"
    path.write_text('[service]\nlease = 20\nheartbeat = 15\n[[inbox]]\npath = "inbox"\n')
    with pytest.raises(ConfigError, match="at most half of"):
        load_config(path)
