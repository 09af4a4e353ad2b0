"""Face detection and landmarks with MediaPipe Tasks' FaceLandmarker.

MediaPipe wheels ship no model; the `face_landmarker.task` bundle is fetched by a setup step
(`svfrd fetch-face-model`) and checked by hash here before use. Each face gives the 478-point mesh; svfrd keeps
its bounding box and the 5 points SVFR aligns on (eyes, nose tip, mouth corners, image-left before image-right,
the order of the ArcFace template in docs/svfr.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svfrd.errors import BadInputError
from svfrd.media.face_model import face_model_problem

# Mesh indices: iris centres (refined landmarks 468 and 473), nose tip, mouth corners.
_IRIS_CENTRES = (468, 473)
_NOSE_TIP = 1
_MOUTH_CORNERS = (61, 291)

#: Smallest search tile side; and how often (in frames) tiles are searched while no face is seen.
MIN_TILE = 160
SEARCH_EVERY = 5
#: Tiles are enlarged views in which the detector also "sees" faces in texture now and then; a higher
#: confidence for them keeps those out (real faces in tiles score well above it).
SEARCH_CONFIDENCE = 0.7


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


Square = tuple[int, int, int]  # x, y, side of a square region of the frame


def search_tiles(width: int, height: int, tile: int = 0) -> list[Square]:
    """Overlapping square tiles covering the frame, for faces too small for a whole-frame look.

    MediaPipe's face detector sees the whole frame at 128x128, so a face below roughly a quarter of the frame's
    height goes unseen; in a tile of half the frame's shorter side it is twice as large. Small frames are not
    tiled (their faces are large enough already)."""
    tile = tile or max(MIN_TILE, min(width, height) // 2)
    if 2 * tile > min(width, height):
        return []
    stride = 2 * tile // 3  # a third of overlap, so a face on a border is whole in some tile
    xs = list(range(0, width - tile, stride)) + [width - tile]
    ys = list(range(0, height - tile, stride)) + [height - tile]
    return [(x, y, tile) for y in ys for x in xs]


def square_around(face: DetectedFace, width: int, height: int) -> Square:
    """A square of three face sizes around a face, kept inside the frame where possible: where to look for
    the same face in the next frame."""
    side = int(min(max(face.width, face.height) * 3, min(width, height)))
    cx, cy = face.centre
    x = int(np.clip(cx - side / 2, 0, width - side))
    y = int(np.clip(cy - side / 2, 0, height - side))
    return x, y, side


def intersection_area(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The area two boxes (x1, y1, x2, y2) share; 0 when they do not touch."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return width * height


def _overlap(a: DetectedFace, b: DetectedFace) -> float:
    """The shared area relative to the smaller face: 1 when one face lies within the other."""
    smaller = min(a.area, b.area)
    return intersection_area(a.box, b.box) / smaller if smaller > 0 else 0.0


def distinct_faces(faces: list[DetectedFace]) -> list[DetectedFace]:
    """One face per person when overlapping tiles found the same face twice: the larger copy wins."""
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: -f.area):
        if all(_overlap(face, other) < 0.5 for other in kept):
            kept.append(face)
    return kept


class FaceFinder:
    """Finds faces frame by frame in a video.

    The whole frame goes through MediaPipe in VIDEO mode (it tracks between frames). When that sees no face,
    small faces are looked for: around where a small face was last frame, else, every SEARCH_EVERY frames,
    in overlapping tiles of the frame. Use one instance per video, as a context manager; frames in order.
    """

    def __init__(self, model_path: Path, max_faces: int = 4, min_confidence: float = 0.5):
        problem = face_model_problem(Path(model_path))
        if problem is not None:
            raise BadInputError(f"cannot look for faces: {problem}")
        # Imported here: mediapipe takes a second to import and only the worker needs it.
        from mediapipe.tasks.python import vision
        from mediapipe.tasks.python.core.base_options import BaseOptions

        def landmarker(mode, confidence: float):
            return vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(model_path)),
                running_mode=mode,
                num_faces=max_faces,
                min_face_detection_confidence=confidence,
                min_face_presence_confidence=confidence,
                min_tracking_confidence=confidence,
            ))

        self._video = landmarker(vision.RunningMode.VIDEO, min_confidence)
        # For tiles and regions: no tracking state between them, and a stricter threshold.
        self._image = landmarker(vision.RunningMode.IMAGE, max(min_confidence, SEARCH_CONFIDENCE))
        self._last_timestamp_ms = -1
        self._frame = 0
        self._small_face_regions: list[Square] = []

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._video.close()
        self._image.close()

    def find(self, image: np.ndarray, timestamp_ms: int) -> list[DetectedFace]:
        """Faces in an upright RGB uint8 frame, largest first."""
        faces = self._find_whole_frame(image, timestamp_ms)
        if faces:
            self._small_face_regions = []
        else:
            faces = self._find_small_faces(image)
        self._frame += 1
        return sorted(faces, key=lambda f: -f.area)

    def _find_whole_frame(self, image: np.ndarray, timestamp_ms: int) -> list[DetectedFace]:
        import mediapipe as mp

        # MediaPipe rejects equal or decreasing timestamps; frames are in order, so nudging is harmless.
        timestamp_ms = max(int(timestamp_ms), self._last_timestamp_ms + 1)
        self._last_timestamp_ms = timestamp_ms
        picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        return _faces_of(self._video.detect_for_video(picture, timestamp_ms), image.shape, (0, 0))

    def _find_small_faces(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        if self._small_face_regions:
            squares = self._small_face_regions
        elif self._frame % SEARCH_EVERY == 0:
            squares = search_tiles(width, height)
        else:
            squares = []
        faces = distinct_faces([face for square in squares for face in self._find_in_square(image, square)])
        self._small_face_regions = [square_around(face, width, height) for face in faces]
        return faces

    def _find_in_square(self, image: np.ndarray, square: Square) -> list[DetectedFace]:
        import mediapipe as mp

        x, y, side = square
        region = np.ascontiguousarray(image[y : y + side, x : x + side])
        picture = mp.Image(image_format=mp.ImageFormat.SRGB, data=region)
        return _faces_of(self._image.detect(picture), region.shape, (x, y))


def _faces_of(result, shape: tuple[int, ...], offset: tuple[int, int]) -> list[DetectedFace]:
    """MediaPipe's normalised landmarks -> faces in frame pixels (`offset`: where the analysed region starts)."""
    height, width = shape[:2]
    faces = []
    for landmarks in result.face_landmarks:
        mesh = np.array([(p.x * width + offset[0], p.y * height + offset[1]) for p in landmarks], dtype=np.float32)
        faces.append(face_from_mesh(mesh))
    return faces
