"""Human-readable logs on stderr, where journald picks them up.

At a terminal lines are formatted by rich; anywhere else they are plain text, one record per line. Under
systemd (stderr connected to the journal, `$JOURNAL_STREAM`) the timestamp is left out, because the journal
stamps every line itself, and the level is sent as a `<N>` syslog prefix so `journalctl -p err` works.

Every line about a job carries its id (`job 12: ...`): use `job_logger(job_id)`, or log with
`extra={"job_id": id}`.

A record is one line: control characters in the message (a file name with a newline or an ESC in it) are
escaped by `EscapingFormatter`, the formatter of every handler here, so no call site can forge a line or a
journal priority (see `svfrd.ops.printable`). A traceback keeps its line breaks; under systemd each of its
lines carries the record's `<N>` prefix, so no line starts with a priority of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, MutableMapping, TextIO

from svfrd.ops.printable import printable, printable_lines

JOB_LOGGER_NAME = "svfrd.job"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(syslog_prefix)s%(levelname)s %(name)s: %(message)s"

# Libraries that are chatty below WARNING (watchdog logs every inotify event at DEBUG, alembic lists its
# plugins at INFO); their warnings always come through, their INFO lines with --verbose.
NOISY_LOGGERS = ("PIL", "urllib3", "filelock", "alembic.runtime.plugins", "watchdog", "diffusers", "matplotlib")

# logging level -> syslog priority (sd-daemon(3) `<N>` prefixes).
_SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JobIdFilter(logging.Filter):
    """Prefixes `job N: ` to records that carry a `job_id` attribute and have not been prefixed yet."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None)
        if job_id is not None and not getattr(record, "job_prefixed", False):
            record.msg = f"job {job_id}: {record.msg}"
            record.job_prefixed = True
        return True


class SyslogPrefixFilter(logging.Filter):
    """Adds `syslog_prefix` (`<3>` for errors, ...) for the journal format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.syslog_prefix = f"<{syslog_priority(record.levelno)}>"
        return True


class EscapingFormatter(logging.Formatter):
    """A `logging.Formatter` whose records cannot break out of their line (module docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        first, newline, rest = super().format(record).partition("\n")
        if not newline:
            return first
        prefix = getattr(record, "syslog_prefix", "")  # set by SyslogPrefixFilter under the journal only
        return first + "".join(f"\n{prefix}{line}" for line in printable_lines(rest).split("\n"))


class JobLogger(logging.LoggerAdapter):
    """A logger whose every line names one job, so a job's history can be grepped from the journal."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        job_id = self.extra["job_id"]
        extra = dict(kwargs.get("extra") or {})
        extra.update(job_id=job_id, job_prefixed=True)
        kwargs["extra"] = extra
        return f"job {job_id}: {msg}", kwargs


def job_logger(job_id: int, name: str = JOB_LOGGER_NAME) -> JobLogger:
    return JobLogger(logging.getLogger(name), {"job_id": job_id})


def syslog_priority(levelno: int) -> int:
    for level in sorted(_SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return _SYSLOG_PRIORITY[level]
    return _SYSLOG_PRIORITY[logging.DEBUG]


def stderr_is_journal(stream: TextIO | None = None, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected us to (`$JOURNAL_STREAM` = `dev:inode`).

    The variable is inherited by child processes whose stderr may go elsewhere, so the device and inode
    are compared, as systemd.exec(5) advises.
    """
    stream = stream if stream is not None else sys.stderr
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(inode)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def make_handler(stream: TextIO | None = None) -> logging.Handler:
    """The handler for `stream` (stderr by default): rich at a terminal, journal format under systemd,
    plain timestamped lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    handler: logging.Handler
    if _is_terminal(stream):
        from rich.console import Console
        from rich.logging import RichHandler

        # Not rich's own tracebacks: they print an exception's message as it is (an ESC in a file name would
        # act); without them the traceback goes through EscapingFormatter like everything else.
        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
        handler.setFormatter(EscapingFormatter("%(name)s: %(message)s"))
    elif stderr_is_journal(stream):
        handler = logging.StreamHandler(stream)
        handler.addFilter(SyslogPrefixFilter())
        handler.setFormatter(EscapingFormatter(JOURNAL_FORMAT))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(EscapingFormatter(PLAIN_FORMAT))
    handler.addFilter(JobIdFilter())
    handler.set_name("svfrd")
    return handler


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Route all logging to stderr (or `stream`) at INFO, or DEBUG when `verbose`. Safe to call again:
    the handler from an earlier call is replaced, not doubled."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "svfrd"]:
        root.removeHandler(old)
    handler = make_handler(stream)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    return handler
