"""`POST /api/jobs`: a multipart upload streamed to disk, checked, and put into the inbox like `svfrd submit`.

The body is parsed as it arrives (python-multipart's streaming parser): each file part goes straight into a
new hidden temporary file in the inbox (`.upload-<random>.part`: intake skips hidden names), counted against
`[web] max_upload_mb`, so no upload is ever held in memory. Then the upload is checked (a readable video, known
tasks, a mask of the frame's size or 512x512, a readable reference picture) and answered with a 4xx naming what
to change; a good one enters the inbox through `svfrd.service.submission.submit_to_inbox`, the code of
`svfrd submit`, so intake checks and deduplicates it as any dropped file.

No part of the request becomes a path: the inbox name is built from the uploaded file name's letters and
digits only (`safe_video_name`), and the temporary names are random.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from svfrd.config import Config, parse_tasks
from svfrd.domain import option_problem
from svfrd.errors import BadInputError
from svfrd.files.atomic import create_temp, fsync_file, fsync_folder
from svfrd.service.intake import VIDEO_SUFFIXES
from svfrd.service.submission import Submission, SubmissionError, mask_rule_error, submit_to_inbox

FILE_FIELDS = ("video", "mask", "reference")
TEXT_FIELDS = ("tasks", "seed", "options")
#: Text fields are small: a task list, a seed, a JSON object of options.
MAX_FIELD_BYTES = 16 * 1024
#: All text fields together and the number of parts: what is kept in memory (python-multipart bounds each
#: part's headers itself).
MAX_TEXT_BYTES = 64 * 1024
MAX_PARTS = 64
#: The boundaries and part headers around the files (a browser's are a few hundred bytes).
MAX_OVERHEAD_BYTES = 1 << 20
#: Masks and references are pictures; the sidecar reader caps them the same way (svfrd.service.sidecar).
MAX_IMAGE_BYTES = 64 << 20
IMAGE_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


class UploadError(Exception):
    """An upload refused with an HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class UploadedFile:
    path: Path
    filename: str
    size: int = 0


@dataclass
class UploadedForm:
    files: dict[str, UploadedFile] = field(default_factory=dict)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def remove_files(self) -> None:
        for upload in self.files.values():
            upload.path.unlink(missing_ok=True)


def temp_upload_path(inbox: Path) -> Path:
    return inbox / f".upload-{secrets.token_hex(8)}.part"


class _StreamingForm:
    """The callbacks of python-multipart's parser: parts go to temporary files or small text buffers."""

    def __init__(self, inbox: Path, max_bytes: int):
        self.inbox, self.max_bytes = inbox, max_bytes
        self.form = UploadedForm()
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._file = None
        self._text: bytearray | None = None
        self._text_bytes = self._parts = 0

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data, "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers, self._header_field, self._name = {}, b"", None
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise UploadError(400, f"the form has over {MAX_PARTS} parts; send a video, tasks and the optional "
                                   "mask, reference, seed and options once each")

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        name = self._header_field.lower()
        self._headers[name] = self._headers.get(name, b"") + data[start:end]

    def _header_end(self) -> None:
        self._header_field = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name in FILE_FIELDS and filename is not None:
            if name in self.form.files:
                raise UploadError(400, f"the form has two `{name}` files; send one")
            path = temp_upload_path(self.inbox)
            self._file = create_temp(path)
            self.form.files[name] = UploadedFile(path, filename.decode("utf-8", "replace"))
            self._name = name
        elif name in TEXT_FIELDS:
            self._text, self._name = bytearray(), name
        else:
            known = ", ".join(FILE_FIELDS + TEXT_FIELDS)
            raise UploadError(400, f"unknown form field {name!r} (a file: {filename is not None}); the fields are "
                                   f"{known}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            upload = self.form.files[self._name]
            upload.size += end - start
            limit = MAX_IMAGE_BYTES if self._name != "video" else self.max_bytes
            if upload.size > limit:
                raise UploadError(413, _too_large(self._name, limit))
            self._file.write(data[start:end])
        elif self._text is not None:
            self._text += data[start:end]
            self._text_bytes += end - start
            if len(self._text) > MAX_FIELD_BYTES or self._text_bytes > MAX_TEXT_BYTES:
                raise UploadError(413, f"the field {self._name} is over {MAX_FIELD_BYTES} bytes (or the text fields "
                                       f"over {MAX_TEXT_BYTES} together); they hold a few words at most")

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
            self._file = None
        elif self._text is not None:
            self.form.fields.setdefault(self._name, []).append(self._text.decode("utf-8", "replace"))
            self._text = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _too_large(what: str, limit: int) -> str:
    if what == "video":
        return (f"the video is over the upload limit of {limit // (1 << 20)} MB ([web] max_upload_mb in "
                "config.toml); raise it, or copy the file into an inbox folder instead")
    return f"the {what} picture is over {limit >> 20} MB; a mask or photo is far smaller: save it as a PNG or JPEG"


async def receive_form(request, inbox: Path, max_bytes: int) -> UploadedForm:
    """Stream the multipart body of `request` into temporary files in `inbox`. On any error the temporary
    files are removed."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, "send the job as multipart/form-data (an HTML form with enctype=multipart/form-data, "
                               "or `curl -F video=@clip.mp4 -F tasks=bfr`)")
    body_limit = max_bytes + 2 * MAX_IMAGE_BYTES + MAX_TEXT_BYTES + MAX_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise UploadError(413, _too_large("video", max_bytes))
    inbox.mkdir(parents=True, exist_ok=True)
    receiver = _StreamingForm(inbox, max_bytes)
    parser = MultipartParser(options[b"boundary"], receiver.callbacks())
    received = 0
    try:
        async for chunk in request.stream():  # counted here too: a chunked body declares no length
            received += len(chunk)
            if received > body_limit:
                raise UploadError(413, _too_large("video", max_bytes))
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        receiver.close()
        receiver.form.remove_files()
        raise UploadError(400, f"the multipart body cannot be read ({err}); send it as a browser form or curl -F "
                               "does") from None
    except ClientDisconnect:  # the browser tab was closed, or the network went: nobody reads the answer
        receiver.close()
        receiver.form.remove_files()
        raise UploadError(400, "the upload was broken off before its end; send it again") from None
    except BaseException:
        receiver.close()
        receiver.form.remove_files()
        raise
    return receiver.form


# ---------------------------------------------------------------------------------------------------------------
# Checking the upload.


def safe_video_name(filename: str) -> str:
    """An inbox name made from the uploaded name's last component: letters, digits, `-`, `_` and `.` only, no
    leading dot, at most 100 characters of stem; its suffix must be a video's."""
    base = re.split(r"[\\/]", filename)[-1]
    suffix = Path(base).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        known = " ".join(sorted(VIDEO_SUFFIXES))
        raise UploadError(415, f"{base!r} does not have a video's suffix; upload one of {known} (an MP4 is safest)")
    stem = re.sub(r"[^\w.-]+", "_", Path(base).stem, flags=re.ASCII).strip("._")[:100] or "upload"
    return stem + suffix


def parse_form_tasks(values: list[str]) -> frozenset | None:
    items: list[int | str] = []
    for value in values:
        items += [int(i) if i.strip().isdigit() else i.strip() for i in value.split(",") if i.strip()]
    if not items:
        return None
    try:
        return parse_tasks(items)
    except ValueError as err:
        raise UploadError(400, f"{err}; tick one or more of the tasks, or send tasks=bfr,inpaint") from None


def parse_form_seed(values: list[str]) -> int | None:
    text = (values[-1] if values else "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UploadError(400, f"the seed {text!r} is not a whole number; leave it empty or give e.g. 77") from None


def parse_form_options(values: list[str], accepted: frozenset[str]) -> dict[str, Any]:
    import json

    text = (values[-1] if values else "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise UploadError(400, 'options must be a JSON object, e.g. {"steps": 20}')
    for name, value in options.items():
        problem = option_problem(name, value, accepted)
        if problem:
            raise UploadError(400, f"option {name}: {problem}")
    return options


def check_video(config: Config, upload: UploadedFile):
    """The facts of the uploaded video (its frame size for the mask); a file that is no readable video is a 415."""
    from svfrd.media.video_io import probe

    if upload.size == 0:
        raise UploadError(400, "the video is empty; choose the video file again")
    try:
        return probe(upload.path, config.limits)
    except BadInputError as err:
        raise UploadError(415, f"{upload.filename!r} is not a video svfrd can read: {err}") from None


def image_suffix(upload: UploadedFile, what: str) -> str:
    """The suffix for the picture's format, read from its header (a PNG named .jpg is still a PNG)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(upload.path) as picture:
            fmt = picture.format
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        fmt = None
    if fmt not in IMAGE_SUFFIXES:
        raise UploadError(415, f"the {what} {upload.filename!r} is not a picture svfrd reads; save it as a PNG")
    return IMAGE_SUFFIXES[fmt]


def check_mask(config: Config, upload: UploadedFile, frame_size: tuple[int, int]) -> str:
    from svfrd.media.masks import load_mask

    suffix = image_suffix(upload, "mask")
    try:
        with open(upload.path, "rb") as f:
            load_mask(f, frame_size, config.limits.max_mask_pixels)
    except BadInputError as err:
        message = str(err).replace("the mask (unnamed)", "the mask").replace(str(upload.path), "the mask")
        raise UploadError(422, message.replace(upload.path.name, repr(upload.filename))) from None
    return suffix


@dataclass
class CheckedUpload:
    video_name: str
    video: Path
    submission: Submission


def check_upload(config: Config, form: UploadedForm) -> CheckedUpload:
    """Everything a dropped file's sidecar would be checked for, answered now instead of as a failed job."""
    video = form.files.get("video")
    if video is None:
        raise UploadError(400, "no video in the upload; send the file in the field `video`")
    name = safe_video_name(video.filename)
    tasks = parse_form_tasks(form.fields.get("tasks", []))
    problem = mask_rule_error(tasks, "mask" in form.files)
    if problem is not None:
        fix = "add a mask (a file, or draw it)" if "mask" not in form.files else "tick inpaint too"
        raise UploadError(400, f"{problem}: {fix}")
    seed = parse_form_seed(form.fields.get("seed", []))
    options = parse_form_options(form.fields.get("options", []), config.engine.option_names)
    info = check_video(config, video)
    suffixes = {}
    if "mask" in form.files:
        suffixes["mask"] = check_mask(config, form.files["mask"], info.size)
    if "reference" in form.files:
        suffixes["reference"] = image_suffix(form.files["reference"], "reference photo")
    submission = Submission(tasks=tasks, seed=seed, options=options, suffixes=suffixes,
                            mask=_path(form, "mask"), reference=_path(form, "reference"))
    return CheckedUpload(name, video.path, submission)


def _path(form: UploadedForm, what: str) -> Path | None:
    return form.files[what].path if what in form.files else None


def place_upload(temp: Path, target: Path) -> None:
    """Give a finished temporary upload its inbox name, never replacing a file (a hard link, then unlink)."""
    fsync_file(temp)
    try:
        os.link(temp, target)
    except FileExistsError:
        raise SubmissionError(f"{target.name} appeared in the inbox meanwhile; send the upload again") from None
    os.unlink(temp)
    fsync_folder(target.parent)


def enter_inbox(inbox: Path, checked: CheckedUpload) -> Path:
    """The upload's files under their inbox names (extras and sidecar first, the video last)."""
    try:
        return submit_to_inbox(inbox, checked.video, checked.video_name, checked.submission, place=place_upload)
    except SubmissionError as err:
        raise UploadError(409, str(err)) from None
