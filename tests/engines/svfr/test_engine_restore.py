"""The SVFR engine restores every task combination, with and without a reference picture, on clips shorter
than, as long as and longer than one 16-frame window, streaming its input once.

Tiny random models in the real folder layout, loaded by the real loading code, on the CPU at a 64-pixel
working resolution (the crops the engine receives and returns are still 512x512).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from svfrd.domain import CROP_SIZE, Task
from svfrd.engines.interface import Engine, RestoreRequest
from svfrd.engines.svfr import pipeline as pipeline_module
from svfrd.engines.svfr.engine import DTYPES, SvfrEngine, build_pipeline, run_settings
from svfrd.engines.svfr.identity import TEMPLATE_256
from svfrd.engines.svfr.pipeline import crossfade, segment_bounds
from svfrd.errors import BadInputError
from svfrd.media.faces import DetectedFace
from tests.helpers.media_clips import astronaut
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import engine_config, face_crops

needs_face_model = pytest.mark.skipif(
    not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env"
)
RESOLUTION = 64

TASK_COMBINATIONS = [(0,), (1,), (2,), (0, 1), (0, 1, 2)]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> SvfrEngine:
    torch.set_num_threads(1)
    return SvfrEngine(engine_config(models_dir), resolution=RESOLUTION, face_model=FACE_MODEL)


def request_for(tasks: tuple[int, ...], seed: int = 7, reference: bool = False, **options: object) -> RestoreRequest:
    return RestoreRequest(
        tasks=frozenset(Task(t) for t in tasks),
        seed=seed,
        reference_face=astronaut() if reference else None,
        options=options,
    )


def restore(engine: SvfrEngine, request: RestoreRequest, frames: int) -> tuple[list[np.ndarray], list[tuple]]:
    crops = face_crops(frames, with_mask=Task.INPAINT in request.tasks)
    reports: list[tuple] = []
    engine.check(request)
    restored = list(engine.restore(request, crops, lambda stage, done, total: reports.append((stage, done, total))))
    assert crops.iterations == 1, "the engine must read the crop stream once"
    return restored, reports


def assert_restored_crops(restored: list[np.ndarray], frames: int) -> None:
    assert len(restored) == frames
    for crop in restored:
        assert crop.shape == (CROP_SIZE, CROP_SIZE, 3) and crop.dtype == np.uint8


def test_the_engine_meets_the_engine_protocol(engine: SvfrEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name == "svfr"
    assert {"steps", "pass1_steps", "guidance_scale", "mode"} <= engine.option_names


@needs_face_model
@pytest.mark.parametrize("frames", [9, 16, 20], ids=["shorter-than-a-window", "one-window", "longer"])
@pytest.mark.parametrize("tasks", TASK_COMBINATIONS, ids=lambda t: "tasks-" + "".join(map(str, t)))
def test_every_task_combination_restores_every_clip_length(engine: SvfrEngine, tasks, frames: int) -> None:
    restored, reports = restore(engine, request_for(tasks), frames)
    assert_restored_crops(restored, frames)
    stages = [stage for stage, _, _ in reports]
    assert stages[0] == "vae encode" and "pass 1" in stages and stages[-1] == "vae decode"
    assert stages.index("pass 1") < stages.index("pass 2 step 1/2") < stages.index("pass 2 step 2/2")
    assert reports[-1] == ("vae decode", frames, frames)
    for stage, done, total in reports:
        assert 0 <= done <= total, (stage, done, total)


@needs_face_model
@pytest.mark.parametrize("tasks", TASK_COMBINATIONS, ids=lambda t: "tasks-" + "".join(map(str, t)))
def test_a_reference_picture_replaces_pass_one_for_every_task_combination(engine: SvfrEngine, tasks) -> None:
    restored, reports = restore(engine, request_for(tasks, reference=True), 20)
    assert_restored_crops(restored, 20)
    assert "pass 1" not in [stage for stage, _, _ in reports]
    assert engine.warnings() == [], "the astronaut's face is found, so ID tokens are used"


@needs_face_model
def test_a_random_pass_one_frame_without_a_face_disables_id_tokens_with_a_warning(engine: SvfrEngine) -> None:
    restore(engine, request_for((0,)), 9)
    assert engine.warnings() == ["no face found in the pass-1 reference frame; ID tokens disabled"]


@needs_face_model
def test_the_same_seed_gives_the_same_video_and_another_seed_a_different_one(engine: SvfrEngine) -> None:
    first, _ = restore(engine, request_for((0, 1), seed=3), 12)
    again, _ = restore(engine, request_for((0, 1), seed=3), 12)
    other, _ = restore(engine, request_for((0, 1), seed=4), 12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@needs_face_model
def test_the_reference_picture_conditions_the_result(engine: SvfrEngine) -> None:
    plain, _ = restore(engine, request_for((0,), seed=3), 9)
    referenced, _ = restore(engine, request_for((0,), seed=3, reference=True), 9)
    assert not all(np.array_equal(a, b) for a, b in zip(plain, referenced))


@needs_face_model
def test_job_options_override_the_configuration(engine: SvfrEngine) -> None:
    _, reports = restore(engine, request_for((0,), steps=3, pass1_steps=1, mode="improved"), 9)
    stages = {stage for stage, _, _ in reports}
    assert "pass 2 step 3/3" in stages


@pytest.mark.parametrize(
    "options", [{"steps": 0}, {"mode": "fast"}, {"guidance_scale": -1.0}, {"seed_offset": 1}], ids=str
)
def test_check_refuses_invalid_options_with_a_message_naming_them(engine: SvfrEngine, options: dict) -> None:
    with pytest.raises(BadInputError, match=next(iter(options))):
        engine.check(request_for((0,), **options))


def test_check_accepts_every_task_combination(engine: SvfrEngine) -> None:
    for tasks in TASK_COMBINATIONS:
        engine.check(request_for(tasks))


@needs_face_model
def test_a_reference_picture_without_a_face_is_refused_before_any_work(engine: SvfrEngine) -> None:
    blank = np.full((300, 300, 3), 128, np.uint8)
    request = RestoreRequest(tasks=frozenset({Task.BFR}), reference_face=blank)
    with pytest.raises(BadInputError, match="no face was found in the reference image"):
        engine.check(request)


@needs_face_model
def test_a_long_video_is_restored_in_overlapping_segments(models_dir: Path) -> None:
    segmented = SvfrEngine(engine_config(models_dir, segment_frames=32), resolution=RESOLUTION, face_model=FACE_MODEL)
    restored, reports = restore(segmented, request_for((0,), steps=1, pass1_steps=1), 50)
    assert_restored_crops(restored, 50)
    assert any(stage.endswith("(segment 3/3)") for stage, _, _ in reports)
    assert all(np.isfinite(crop).all() for crop in restored)


def test_segments_cover_the_video_and_overlap() -> None:
    assert segment_bounds(20, 2000) == [(0, 20)]
    assert segment_bounds(50, 32) == [(0, 32), (16, 48), (32, 50)]
    bounds = segment_bounds(10_000, 2000)
    assert bounds[0][0] == 0 and bounds[-1][1] == 10_000
    assert all(later[0] == earlier[1] - 16 for earlier, later in zip(bounds, bounds[1:]))


def test_the_segment_crossfade_moves_from_the_earlier_to_the_later_segment() -> None:
    earlier, later = torch.zeros(3, 4, 2, 2), torch.ones(3, 4, 2, 2)
    blended = crossfade(earlier, later)
    assert torch.allclose(blended[:, 0, 0, 0], torch.tensor([0.25, 0.5, 0.75]))


@pytest.mark.parametrize("mode, crop", [("reference", "reference"), ("improved", "corrected")])
def test_a_face_in_the_pass_one_frame_gives_id_tokens_that_condition_pass_two(
    engine: SvfrEngine, monkeypatch: pytest.MonkeyPatch, mode: str, crop: str
) -> None:
    without_face, _ = restore(engine, request_for((0,), seed=5, mode=mode), 9)
    # The random tiny models paint no face, so the face finder is told the frame shows one, on the template.
    face = DetectedFace(box=(150.0, 150.0, 360.0, 400.0), points5=TEMPLATE_256 * 2)
    monkeypatch.setattr(engine.pipeline, "find_face", lambda image, warn: face)
    crops_used: list[str] = []
    real_tokens = pipeline_module.id_tokens_for_face

    def recording_tokens(identity, aligned, crop_name):
        crops_used.append(crop_name)
        return real_tokens(identity, aligned, crop_name)

    monkeypatch.setattr(pipeline_module, "id_tokens_for_face", recording_tokens)
    with_face, _ = restore(engine, request_for((0,), seed=5, mode=mode), 9)
    assert engine.warnings() == []
    assert crops_used == [crop]
    assert not all(np.array_equal(a, b) for a, b in zip(without_face, with_face))


@needs_face_model
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_half_precision_dtypes_of_the_gpu_run_the_same_code(models_dir: Path, dtype: str) -> None:
    # The service refuses half precision on a CPU (svfrd.engines.svfr.engine.check_cpu_explicit); the pipeline a
    # script builds runs it, so the GPU's code paths are exercised here.
    half = build_pipeline(models_dir, device="cpu", dtype=DTYPES[dtype], face_model=FACE_MODEL, resolution=RESOLUTION)
    assert half.models.unet.dtype == DTYPES[dtype]
    # The identity branch stays in fp16 or fp32 whatever the engine's dtype (bf16 -> fp32).
    assert half.identity.arcface.conv1.weight.dtype == (torch.float32 if dtype == "bf16" else torch.float16)
    request = request_for((0, 1), reference=True)
    settings = replace(run_settings(engine_config(models_dir).svfr, {}), steps=2, pass1_steps=2)
    restored = list(half(face_crops(9), request.tasks, seed=request.seed, settings=settings,
                         reference_face=request.reference_face))
    assert_restored_crops(restored, 9)
