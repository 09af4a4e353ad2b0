"""Logging an error that repeats: the first time in full, then only a count.

The main loop carries on after an error and tries again after a pause; an error that persists (a full disk,
a broken database) would otherwise put the same traceback into the journal every few seconds, burying
everything else (it once wrote 60 MB in four minutes).
"""

from __future__ import annotations

import logging
import traceback

#: Counts at which a persisting error is mentioned again: 10, 100, 1000, ...
REMINDER_BASE = 10


class RepeatedErrors:
    """Errors in a row of attempts; `failed` for each failed attempt, `succeeded` when one works again."""

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.last: str | None = None
        self.repeats = 0

    def failed(self, error: BaseException, pause: float) -> None:
        """`error`: what this attempt raised; one with the same traceback counts as the same error. It is
        logged with its traceback as such (`exc_info`), whose lines the log formatter keeps apart: inside a
        message they would be escaped into one unreadable line (`svfrd.ops.logs`)."""
        text = "".join(traceback.format_exception(error))
        if text == self.last:
            self.repeats += 1
            if _is_reminder(self.repeats):
                self.log.error("the main loop hit the same error again (%d times in a row now); still carrying "
                               "on every %.0f s", self.repeats + 1, pause)
            return
        self._summarise()
        self.last, self.repeats = text, 0
        self.log.error("the main loop hit an error; carrying on in %.0f s (the same error again is only "
                       "counted)", pause, exc_info=error)

    def succeeded(self) -> None:
        if self.last is not None:
            self._summarise()
            self.log.info("the main loop works again")
            self.last, self.repeats = None, 0

    def _summarise(self) -> None:
        if self.repeats:
            self.log.error("the error above happened %d times in a row", self.repeats + 1)


def _is_reminder(repeats: int) -> bool:
    """Whether the error has now happened 10, 100, 1000, ... times."""
    count = repeats + 1
    while count % REMINDER_BASE == 0:
        count //= REMINDER_BASE
    return count == 1
