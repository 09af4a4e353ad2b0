"""Face detection and landmarks with MediaPipe Tasks' FaceLandmarker.

MediaPipe wheels ship no model; the `face_landmarker.task` bundle is fetched by a setup step
(`svfrd fetch-face-model`) and checked by hash here before use. Each face gives the 478-point mesh; svfrd keeps
its bounding box and the 5 points SVFR aligns on (eyes, nose tip, mouth corners, image-left before image-right,
the order of the ArcFace template in svfr-spec.md 4.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfrd.errors import BadInputError
from svfrd.face_model import face_model_problem

# Mesh indices: iris centres (refined landmarks 468 and 473), nose tip, mouth corners.
_IRIS_CENTRES = (468, 473)
_NOSE_TIP = 1
_MOUTH_CORNERS = (61, 291)


@dataclass(frozen=True)
class DetectedFace:
    """One face in one frame, in upright frame pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2 of the landmark mesh
    points5: np.ndarray  # (5, 2): left eye, right eye, nose, mouth left, mouth right (image left/right)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def five_points(mesh: np.ndarray) -> np.ndarray:
    """The 5 SVFR alignment points from a (478, 2) landmark mesh in pixels."""
    eyes = sorted((mesh[i] for i in _IRIS_CENTRES), key=lambda p: p[0])
    mouth = sorted((mesh[i] for i in _MOUTH_CORNERS), key=lambda p: p[0])
    return np.array([eyes[0], eyes[1], mesh[_NOSE_TIP], mouth[0], mouth[1]], dtype=np.float32)


def face_from_mesh(mesh: np.ndarray) -> DetectedFace:
    x1, y1 = mesh.min(axis=0)
    x2, y2 = mesh.max(axis=0)
    return DetectedFace(box=(float(x1), float(y1), float(x2), float(y2)), points5=five_points(mesh))


class FaceFinder:
    """Finds faces frame by frame in a video (MediaPipe VIDEO mode: it tracks between frames).

    Use one instance per video and a context manager; timestamps must increase.
    """

    def __init__(self, model_path: Path, max_faces: int = 4, min_confidence: float = 0.5):
        problem = face_model_problem(Path(model_path))
        if problem is not None:
            raise BadInputError(f"cannot look for faces: {problem}")
        # Imported here: mediapipe takes a second to import and only the worker needs it.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self._last_timestamp_ms = -1

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._landmarker.close()

    def find(self, image: np.ndarray, timestamp_ms: int) -> list[DetectedFace]:
        """Faces in an upright RGB uint8 frame, largest first."""
        import mediapipe as mp

        # MediaPipe rejects equal or decreasing timestamps; frames are in order, so nudging is harmless.
        timestamp_ms = max(int(timestamp_ms), self._last_timestamp_ms + 1)
        self._last_timestamp_ms = timestamp_ms
        height, width = image.shape[:2]
        picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        result = self._landmarker.detect_for_video(picture, timestamp_ms)
        faces = []
        for landmarks in result.face_landmarks:
            mesh = np.array([(p.x * width, p.y * height) for p in landmarks], dtype=np.float32)
            faces.append(face_from_mesh(mesh))
        faces.sort(key=lambda f: -f.area)
        return faces
