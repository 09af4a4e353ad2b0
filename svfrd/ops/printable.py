"""File names and other outside text made safe to show: in logs, the STATUS line, the terminal views and notes.

A name in an inbox is chosen by whoever can write there, and may hold any character but `/` and NUL. Shown as it
is, a newline starts a line of its own (a forged journal entry: journald reads a `<0>` at the start of a line
as the emergency priority), an ESC starts a terminal escape sequence (colours, window titles, hyperlinks), and
bidirectional overrides make a name read differently from what it is. `printable` writes such characters as
Python escapes (`\\n`, `\\x1b`, `\\u202e`), so the name is still recognisable and nothing in it acts. Ordinary
letters of every script, spaces and punctuation stay as they are.
"""

from __future__ import annotations

import re

# C0 controls and DEL; C1 controls (0x80-0x9f: 0x9b is a one-byte CSI); line and paragraph separators;
# bidirectional embeddings, overrides and isolates; lone surrogates (bytes of a name that is not UTF-8, as
# os.fsdecode gives them), which would make writing the line fail.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if char == "\t":
        return "\\t"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """`text` (any object, as `str()` gives it) on one line with every control character escaped."""
    return _UNSAFE.sub(_escaped, str(text))


def printable_lines(text: object) -> str:
    """Like `printable`, but line breaks stay: for text that is meant to span lines (an error note, a
    traceback), where only what is inside each line must not act."""
    return "\n".join(printable(line) for line in str(text).split("\n"))
