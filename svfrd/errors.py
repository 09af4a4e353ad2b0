"""Error kinds that decide what happens to a job.

Every message is written for the person who dropped the file: it says what went wrong and what to do.
"""

from __future__ import annotations


class SvfrdError(Exception):
    """Base class: `str(err)` is a complete, human-readable message."""

    kind = "error"


class BadInputError(SvfrdError):
    """The input itself is wrong (corrupt video, no face, bad sidecar, ...). Never retried."""

    kind = "bad_input"


class TransientError(SvfrdError):
    """Something that may work next time (GPU out of memory, disk full, worker crash). Retried with backoff."""

    kind = "transient"


class ConfigError(SvfrdError):
    """The service configuration is invalid; the daemon refuses to start."""

    kind = "config"


class JobCancelled(SvfrdError):
    """Raised from a progress report when the job was cancelled by the user."""

    kind = "cancelled"
