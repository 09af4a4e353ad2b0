"""When is a file in an inbox complete? When it has stopped changing.

Copies into an inbox (scp, SMB, a browser download renamed at the end, a phone sync) give no "finished" signal
that works everywhere, so a file counts as complete once its size and mtime have stayed the same for
`quiet_period` seconds. A video without a sidecar then waits `sidecar_grace` more, as a sidecar may be copied in
after its video; a sidecar that is there must itself be quiet for `quiet_period` before it is read.

Time comes from an injected clock (monotonic seconds), so tests advance it instead of sleeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

MonotonicSeconds = Callable[[], float]

#: What a listing knows of a file: (size in bytes, mtime in ns).
Signature = tuple[int, int]


@dataclass
class _Seen:
    signature: Signature
    unchanged_since: float


class StabilityTracker:
    """Remembers since when each listed file looks the same, and says how long a video still has to wait."""

    def __init__(self, quiet_period: float, sidecar_grace: float, clock: MonotonicSeconds = time.monotonic):
        self.quiet_period, self.sidecar_grace, self.clock = quiet_period, sidecar_grace, clock
        self._seen: dict[Path, _Seen] = {}

    def observe(self, listing: Mapping[Path, Signature]) -> None:
        """Record one complete listing of every inbox; files no longer listed are forgotten (a file that comes
        back starts its quiet period again)."""
        now = self.clock()
        for path, signature in listing.items():
            known = self._seen.get(path)
            if known is None or known.signature != signature:
                self._seen[path] = _Seen(signature, now)
        for path in set(self._seen) - set(listing):
            del self._seen[path]

    def quiet_for(self, path: Path) -> float:
        """Seconds since `path` last changed (0 for a file not seen yet)."""
        known = self._seen.get(path)
        return 0.0 if known is None else self.clock() - known.unchanged_since

    def seconds_until_ready(self, video: Path, sidecar: Path | None) -> float:
        """0 when `video` may be taken; else how long until it may be. `sidecar` is its sidecar if listed."""
        video_wait = self.quiet_period - self.quiet_for(video)
        if video_wait > 0:
            return video_wait
        if sidecar is not None:
            return max(0.0, self.quiet_period - self.quiet_for(sidecar))
        # No sidecar yet: the grace period counts from the moment the video became quiet.
        quiet_beyond_period = self.quiet_for(video) - self.quiet_period
        return max(0.0, self.sidecar_grace - quiet_beyond_period)
