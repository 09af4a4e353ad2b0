"""`printable`: outside text (file names) shown without any control character acting."""

from __future__ import annotations

import pytest

from svfrd.ops.printable import printable, printable_lines


@pytest.mark.parametrize("name", ["clip.mp4", "Grand-père à l'été (2).mov", "видео 1.mp4", "视频.mp4",
                                  "[link=x]y[/link].mp4", "a\\nb.mp4"])
def test_ordinary_names_stay_as_they_are(name: str) -> None:
    assert printable(name) == name


@pytest.mark.parametrize("name, shown", [
    ("a\n<0>b", "a\\n<0>b"),
    ("a\rb", "a\\rb"),
    ("a\tb", "a\\tb"),
    ("\x1b]8;;http://x\x1b\\link", "\\x1b]8;;http://x\\x1b\\link"),
    ("a\x00\x07\x7fb", "a\\x00\\x07\\x7fb"),
    ("a\x85b\x9b31m", "a\\x85b\\x9b31m"),  # C1: next line, one-byte CSI
    ("a\u2028b\u2029", "a\\u2028b\\u2029"),
    ("evil\u202egpj.mp4", "evil\\u202egpj.mp4"),  # right-to-left override
    ("caf\udce9.mp4", "caf\\udce9.mp4"),  # a Latin-1 byte of a name that is not UTF-8, as os.fsdecode gives it
])
def test_control_characters_are_escaped(name: str, shown: str) -> None:
    assert printable(name) == shown
    printable(name).encode("utf-8")  # always writable


def test_printable_lines_keeps_line_breaks_only() -> None:
    assert printable_lines("line one\nline \x1b[2J two\r") == "line one\nline \\x1b[2J two\\r"


def test_any_object_is_shown_through_str() -> None:
    assert printable(12) == "12"
    assert printable(None) == "None"
