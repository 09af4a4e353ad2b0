"""The identity branch: 5-point similarity alignment onto the ArcFace template at 512 (docs/svfr.md §4), the ArcFace
input crop in its reference and corrected forms (docs/svfr.md §4), and the 49 ID tokens."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from svfrd.engines.svfr.identity import (
    TEMPLATE_256,
    align_face,
    arcface_input,
    id_tokens_for_face,
    load_identity_models,
    similarity_transform,
)
from svfrd.media.faces import FaceFinder
from tests.helpers.media_clips import astronaut
from tests.helpers.paths import FACE_MODEL
from tests.helpers.tiny_svfr import write_tiny_svfr_models

needs_face_model = pytest.mark.skipif(
    not FACE_MODEL.is_file(), reason="models/face_landmarker.task missing: run scripts/ensure-env"
)


def face_points(image: np.ndarray) -> np.ndarray:
    with FaceFinder(FACE_MODEL) as finder:
        faces = finder.find(image, 0)
    assert faces, "the test picture must show a face"
    return faces[0].points5


def test_the_template_at_512_is_where_the_spec_puts_it() -> None:
    template_512 = TEMPLATE_256 * 2
    expected = [(185, 207), (326, 206), (256, 287), (198, 369), (315, 369)]
    assert np.allclose(template_512, expected, atol=1.0)


def test_the_similarity_transform_recovers_a_known_rotation_scale_and_shift() -> None:
    angle, scale, shift = np.deg2rad(17.0), 1.7, np.array([40.0, -12.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = TEMPLATE_256.copy()
    target = source @ rotation.T + shift
    matrix = similarity_transform(source, target)
    assert np.allclose(matrix[:, :2], rotation, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_the_similarity_transform_never_reflects() -> None:
    source = TEMPLATE_256.copy()
    mirrored = source * np.array([-1.0, 1.0])
    matrix = similarity_transform(source, mirrored)
    a, b = matrix[0, 0], matrix[1, 0]
    assert np.allclose(matrix[:, :2], [[a, -b], [b, a]])  # a rotation times a scale: determinant >= 0


@needs_face_model
def test_an_aligned_face_is_upright_with_its_eyes_on_the_template() -> None:
    photo = astronaut()
    tilted = cv2.warpAffine(photo, cv2.getRotationMatrix2D((200, 120), 20, 0.8), (512, 512))
    points = face_points(tilted)
    aligned = align_face(tilted, points)
    assert aligned.shape == (512, 512, 3) and aligned.dtype == np.uint8
    # The warp moves the face's landmarks where the fitted transform says (the picture follows the matrix) ...
    matrix = similarity_transform(points, TEMPLATE_256 * 2)
    predicted = points @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(face_points(aligned) - predicted).max() < 6
    # ... and the fit puts the eyes on the template's eyes, level (nose and mouth vary with the expression).
    assert np.linalg.norm(predicted[:2] - TEMPLATE_256[:2] * 2, axis=1).max() < 15
    assert abs(predicted[0, 1] - predicted[1, 1]) < 5


def test_the_reference_crop_sees_only_the_top_left_of_the_512_face_and_the_corrected_one_all_of_it() -> None:
    face = np.zeros((512, 512, 3), np.uint8)
    face[0:224, 16:240] = 255  # exactly the reference's box (docs/svfr.md §4)
    reference = arcface_input(face, "reference", torch.device("cpu"), torch.float32)
    corrected = arcface_input(face, "corrected", torch.device("cpu"), torch.float32)
    assert reference.shape == corrected.shape == (1, 3, 112, 112)
    assert torch.allclose(reference, torch.ones_like(reference))
    assert corrected.mean() < -0.4, "the corrected crop covers the whole face region, mostly black here"
    assert corrected.min() == -1.0 and corrected.max() == 1.0


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory):
    return load_identity_models(write_tiny_svfr_models(tmp_path_factory.mktemp("models")), "cpu", torch.float32)


def test_id_tokens_are_49_layer_normed_tokens_that_depend_on_the_face(identity) -> None:
    photo = astronaut()
    face_a = cv2.resize(photo[0:260, 60:320], (512, 512))
    face_b = cv2.resize(photo[250:510, 250:510], (512, 512))
    tokens_a = id_tokens_for_face(identity, face_a)
    tokens_b = id_tokens_for_face(identity, face_b)
    assert tokens_a.shape == (1, 49, identity.token_width)
    assert torch.isfinite(tokens_a).all()
    assert torch.allclose(tokens_a.mean(-1), torch.zeros(1, 49), atol=1e-4)
    assert not torch.allclose(tokens_a, tokens_b)


def test_the_two_arcface_crops_give_different_tokens(identity) -> None:
    face = cv2.resize(astronaut()[0:260, 60:320], (512, 512))
    reference = id_tokens_for_face(identity, face, "reference")
    assert not torch.allclose(reference, id_tokens_for_face(identity, face, "corrected"))


def test_id_tokens_refuse_a_face_that_is_not_an_aligned_512_crop(identity) -> None:
    with pytest.raises(ValueError, match="512"):
        id_tokens_for_face(identity, np.zeros((256, 256, 3), np.uint8))
