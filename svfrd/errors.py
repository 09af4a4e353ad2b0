"""Error kinds that decide what happens to a job.

Every message is written for the person who dropped the file: it says what went wrong and what to do.
"""

from __future__ import annotations


class SvfrdError(Exception):
    """Base class: `str(err)` is a complete, human-readable message."""

    kind = "error"


class BadInputError(SvfrdError):
    """The input itself is wrong (corrupt video, no face, bad sidecar, ...), or the job would fail the same way
    however often it ran (`ResourceError`). Never retried."""

    kind = "bad_input"


class ResourceError(BadInputError):
    """The job needs more than this machine has (it does not fit the GPU's memory even at the smallest calls):
    it would fail the same way however often it ran, so it is treated as bad input (failed for good, inputs to
    failed/, `svfrd retry` runs it again), but it is recorded as what it is: the input itself is fine."""

    kind = "resource"


class TransientError(SvfrdError):
    """Something that may work next time (GPU out of memory, disk full, worker crash). Retried with backoff."""

    kind = "transient"


class ConfigError(SvfrdError):
    """The service configuration is invalid; the daemon refuses to start."""

    kind = "config"


class JobCancelled(SvfrdError):
    """Raised from a progress report when the job was cancelled by the user."""

    kind = "cancelled"


#: What CUDA says when its context is broken for good: every later call in this process fails too.
FATAL_GPU_ERROR_SIGNS = (
    "illegal memory access",
    "unspecified launch failure",
    "device-side assert",
    "uncorrectable ECC error",
    "misaligned address",
    "illegal instruction",
    "CUDA error: unknown error",
    "GPU has fallen off the bus",
)


def is_fatal_gpu_error(err: BaseException) -> bool:
    """A CUDA error after which the process's GPU context is unusable (an Xid from the driver): only a new
    process recovers, so the worker exits and the supervisor starts a fresh one."""
    text = str(err)
    return "CUDA" in text and any(sign.lower() in text.lower() for sign in FATAL_GPU_ERROR_SIGNS)
