"""Real test videos, written with PyAV, for the media, pipeline and service tests.

The face is scikit-image's astronaut photo (a real face, usable offline); a moving clip pans and zooms a
window over it so that face detection and tracking have real work to do. Clips are small so tests stay fast.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from tests.helpers.paths import FACE_MODEL

NTSC_FPS = Fraction(30000, 1001)
AUDIO_RATE = 48000


def astronaut() -> np.ndarray:
    """The astronaut photo, (512, 512, 3) uint8 RGB. The face is roughly at x 150..260, y 40..190."""
    from skimage import data

    return data.astronaut()


def moving_face_frames(
    frames: int, width: int = 240, height: int = 180, pan: float = 60.0, zoom: float = 0.25
) -> list[np.ndarray]:
    """Frames of a virtual camera that pans sideways and zooms in on the astronaut's face.

    The view starts wide (the face about a third of the frame height) and moves by `pan` source pixels and
    zooms by `zoom` (relative) over the clip, smoothly, so a tracked crop has a true smooth path to follow.
    """
    photo = astronaut()
    aspect = width / height
    result = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        ease = 0.5 - 0.5 * math.cos(math.pi * t)  # smooth start and stop
        view_h = 380.0 * (1.0 - zoom * ease)
        view_w = view_h * aspect
        cx = 205.0 + pan * (ease - 0.5)
        cy = 150.0
        scale = width / view_w
        # Affine map from photo to frame: the view rectangle fills the frame.
        matrix = np.array(
            [[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]], dtype=np.float64
        )
        frame = cv2.warpAffine(
            photo, matrix, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        result.append(frame)
    return result


def small_face_frames(frames: int, width: int = 640, height: int = 360, scale: float = 0.45) -> list[np.ndarray]:
    """A wide shot: the astronaut photo shrunk (face about 50 px, a seventh of the frame height) drifting
    across a plain wall. Too small for MediaPipe's whole-frame look; the face finder must search closer."""
    photo = cv2.resize(astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ph, pw = photo.shape[:2]
    wall = np.empty((height, width, 3), np.uint8)
    wall[:] = np.linspace(70, 150, width, dtype=np.uint8)[None, :, None]
    result = []
    for i in range(frames):
        frame = wall.copy()
        x = int(width * 0.3 + 3 * i)
        y = int(height * 0.15)
        frame[y : y + ph, x : x + pw] = photo[: height - y, : width - x]
        result.append(frame)
    return result


def no_face_frames(frames: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """A moving colour gradient with no face in it."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    result = []
    for i in range(frames):
        r = (xs + 3 * i) % 256
        g = (ys + 2 * i) % 256
        b = np.full_like(xs, (7 * i) % 256)
        result.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return result


def two_face_frames(frames: int, width: int = 320, height: int = 180) -> list[np.ndarray]:
    """Two astronauts side by side: a large one on the left and a smaller one on the right."""
    photo = astronaut()
    face = photo[20:240, 110:300]  # head and shoulders
    big = cv2.resize(face, (150, 174), interpolation=cv2.INTER_AREA)
    small = cv2.resize(face, (90, 104), interpolation=cv2.INTER_AREA)
    result = []
    for i in range(frames):
        frame = np.full((height, width, 3), 90, np.uint8)
        dx = i % 4  # a little movement
        frame[3 : 3 + 174, 10 + dx : 160 + dx] = big
        frame[40 : 40 + 104, 210 - dx : 300 - dx] = small
        result.append(frame)
    return result


# Several people. Three different real people, all in scikit-image (offline): the astronaut Eileen Collins
# (colour), the "camera" photo by Lav Varshney (CC0, grey) and a face of its LFW subset (grey, 25x25, scaled up).


def cameraman() -> np.ndarray:
    """Head and shoulders of scikit-image's "camera" photo, (160, 150, 3) RGB grey; the face is roughly in the
    middle, turned to the right."""
    from skimage import data

    grey = data.camera()[70:230, 150:300]
    return np.repeat(grey[:, :, None], 3, axis=2)


def lfw_person(index: int = 0, side: int = 80) -> np.ndarray:
    """A tightly cropped face from scikit-image's LFW subset, scaled to side x side, RGB grey."""
    from skimage import data

    face = data.lfw_subset()[index]
    face = (face * 255).astype(np.uint8) if face.dtype != np.uint8 else face
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    return np.repeat(big[:, :, None], 3, axis=2)


def astronaut_head() -> np.ndarray:
    """Head and shoulders of the astronaut photo, (220, 190, 3)."""
    return astronaut()[20:240, 110:300]


def _place(frame: np.ndarray, picture: np.ndarray, x: int, y: int) -> None:
    """Paint `picture` with its top-left corner at (x, y), clipped to the frame."""
    height, width = frame.shape[:2]
    ph, pw = picture.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(width, x + pw), min(height, y + ph)
    if x2 > x1 and y2 > y1:
        frame[y1:y2, x1:x2] = picture[y1 - y : y2 - y, x1 - x : x2 - x]


def people_frames(frames: int, third_from: int | None = None, width: int = 440,
                  height: int = 200) -> list[np.ndarray]:
    """Two different people side by side at different sizes: the astronaut large on the left, the cameraman
    smaller on the right, both drifting a little. With `third_from`, a third person (an LFW face) appears at
    the bottom middle from that frame on."""
    big = cv2.resize(astronaut_head(), (150, 174), interpolation=cv2.INTER_AREA)
    small = cv2.resize(cameraman(), (140, 150), interpolation=cv2.INTER_AREA)
    third = lfw_person(side=100)
    result = []
    for i in range(frames):
        frame = np.full((height, width, 3), 90, np.uint8)
        dx = i % 4
        _place(frame, big, 8 + dx, 10)
        _place(frame, small, 290 - dx, 30)
        if third_from is not None and i >= third_from:
            _place(frame, third, 172, 60)
        result.append(frame)
    return result


def crossing_frames(frames: int, width: int = 420, height: int = 250) -> tuple[list[np.ndarray], list[dict]]:
    """Two people passing each other: the astronaut (nearer: painted last) from left to right along the top,
    an LFW face from right to left lower down; their crop squares overlap in the middle frames.
    Returns the frames and, per frame, each person's true face centre {"astronaut": (x, y), "lfw": (x, y)}."""
    near = cv2.resize(astronaut_head(), (130, 150), interpolation=cv2.INTER_AREA)
    far = lfw_person(side=100)
    result, centres = [], []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        frame = np.full((height, width, 3), 90, np.uint8)
        near_x, far_x = int(60 + t * 160), int(220 - t * 160)
        near_y, far_y = 0, 120
        _place(frame, far, far_x, far_y)
        _place(frame, near, near_x, near_y)
        result.append(frame)
        centres.append({"astronaut": (near_x + 65, near_y + 60), "lfw": (far_x + 50, far_y + 50)})
    return result, centres


def sine_audio_frames(seconds: float, rate: int = AUDIO_RATE, chunk: int = 1024):
    """Stereo 440/660 Hz tone as s16 AudioFrames."""
    total = int(round(seconds * rate))
    start = 0
    while start < total:
        n = min(chunk, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float64)
        left = 0.3 * np.sin(2 * math.pi * 440 * t)
        right = 0.3 * np.sin(2 * math.pi * 660 * t)
        samples = (np.stack([left, right], axis=1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        yield frame
        start += n


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    fps: Fraction | int = 25,
    audio: bool = False,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    pix_fmt: str | None = None,
    crf: int = 18,
    faststart: bool = False,
) -> Path:
    """Encode RGB frames to an H.264 MP4 (yuv444p when a dimension is odd, which yuv420p cannot hold).

    `pts` with `time_base` writes variable-frame-rate timestamps; `audio` adds an AAC tone track as long as
    the video; `rotation` stores display-matrix rotation metadata (degrees, counter-clockwise, a multiple of
    90) and the pixels rotated the other way, so the frames given are what a player shows. `faststart` puts
    the MP4 index before the frames, as streaming-friendly exports do.
    """
    path = Path(path)
    fps = Fraction(fps)
    height, width = frames[0].shape[:2]
    if rotation in (90, 270):
        width, height = height, width
    if pix_fmt is None:
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        frame_time_base = time_base or 1 / fps
        video.time_base = frame_time_base  # the muxer may change the stream's time base once it starts
        video.codec_context.time_base = frame_time_base  # else the encoder rounds timestamps to 1/fps
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo") if audio else None
        for i, image in enumerate(frames):
            if rotation:  # store the pixels so that a player, applying the rotation, shows them upright
                image = np.rot90(image, k=-(rotation // 90))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = pts[i] if pts is not None else i
            frame.time_base = frame_time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            if pts is not None:
                seconds = float((pts[-1] + (pts[-1] - pts[-2])) * frame_time_base)
            else:
                seconds = len(frames) / fps
            for frame in sine_audio_frames(float(seconds)):
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def write_moving_face_clip(
    path: Path, frames: int = 24, width: int = 240, height: int = 180, fps: Fraction | int = 25,
    audio: bool = False, **kwargs,
) -> Path:
    """The standard moving-astronaut clip."""
    return write_clip(path, moving_face_frames(frames, width, height), fps=fps, audio=audio, **kwargs)


def write_no_face_clip(path: Path, frames: int = 10, fps: int = 25) -> Path:
    return write_clip(path, no_face_frames(frames), fps=fps)


def write_two_face_clip(path: Path, frames: int = 10, fps: int = 25) -> Path:
    return write_clip(path, two_face_frames(frames), fps=fps)


def write_truncated_copy(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `source`'s bytes, as an interrupted upload leaves it."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def write_decompression_bomb(path: Path, width: int = 8192, height: int = 4320, frames: int = 2) -> Path:
    """A small MP4 (about 100 KB) whose black frames are huge: 8192x4320 is just over 8K UHD, the default
    [limits] max_frame_pixels. Encoded from one YUV buffer, so writing it takes well under a second."""
    black = np.zeros((height * 3 // 2, width), np.uint8)
    black[height:] = 128  # neutral chroma
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "51"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(black, format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return Path(path)


def write_audio_only_file(path: Path, seconds: float = 1.0) -> Path:
    """An M4A with a tone and no video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for frame in sine_audio_frames(seconds):
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return Path(path)


def face_model_path() -> Path:
    """The MediaPipe face model fetched by `scripts/ensure-env` into the repository's models/ folder."""
    return FACE_MODEL
