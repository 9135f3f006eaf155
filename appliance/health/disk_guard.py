"""The disk guard: refuse new data before the data volume is full, resume once it is not.

"OK means fsynced" (DESIGN.md principle 3) cannot be kept on a full disk, and SQLite
or a blob write failing half-way is the worst moment to find out. So SMTP, IMAP APPEND
and chat uploads and posts ask the one `DiskGuard` of the box before they accept data,
and get a temporary refusal while less than ``disk_hard_free`` bytes (plus the size of
what is offered) would be left:

- SMTP: ``452 4.3.1`` (RFC 5321 §4.2.3 "insufficient system storage", RFC 3463 §3.4
  "mail system full"), at MAIL and again at the end of DATA;
- IMAP APPEND: ``NO [LIMIT]`` (RFC 5530 §3);
- HTTP uploads and chat posts: 507 Insufficient Storage (RFC 4918 §11.5).

The guard is asked on every message, so it must be cheap: it keeps the last reading and
reads the file system again only when that reading is older than ``max_age`` seconds of
its clock (a statvfs each time, never per byte). Between readings it counts the bytes it
has let in against the cached figure, so a burst of mail within one ``max_age`` cannot
run past the reserve on a stale reading (the disk-full test saw 58 messages of 200 KB
slip through in two seconds before it did). Nothing has to notice that space came
back: the next reading after it did lets data in again.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path

from appliance.health.readings import DiskReading, SystemReadings

log = logging.getLogger("edgebox.health.disk")


class DiskGuard:
    """Say whether the data volume has room for more; see the module docstring."""

    def __init__(
        self,
        path: Path,
        readings: SystemReadings,
        hard_free: int,
        *,
        max_age: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.readings = readings
        self.hard_free = hard_free
        self.max_age = max_age
        self.clock = clock
        self._reading: DiskReading | None = None
        self._read_at = float("-inf")
        #: Bytes let in since the cached reading was taken.
        self._granted = 0
        self._refusing = False
        #: Refusals since start, for `/metrics`.
        self.refusals = 0

    def reading(self) -> DiskReading | None:
        """The cached reading, refreshed if stale; None if the volume cannot be read."""
        now = self.clock()
        if now - self._read_at >= self.max_age:
            self._read_at = now
            self._granted = 0
            try:
                self._reading = self.readings.disk(self.path)
            except OSError as exc:
                # An unreadable volume is not a full one: writes will fail on their own
                # and say why; the health check reports the reading error.
                log.warning("cannot read free space of %s: %s", self.path, exc)
                self._reading = None
        return self._reading

    def room_for(self, size: int = 0) -> bool:
        """True if *size* more bytes leave at least the hard reserve free; count them."""
        reading = self.reading()
        ok = reading is None or reading.free - self._granted - size >= self.hard_free
        if ok:
            self._granted += size
        if ok != (not self._refusing):
            self._refusing = not ok
            if ok:
                log.info("disk space back above the reserve: accepting new data again")
            else:
                log.warning("disk space below the reserve: refusing new data for now")
        if not ok:
            self.refusals += 1
        return ok

    def room_for_background(self) -> bool:
        """True while background work that grows the disk (the search index) may write.

        Such work stops at twice the reserve, well before new mail is refused, so what
        it writes can never eat the room kept for data already accepted: the disk-full
        test saw one index batch of 37 messages fill the last 7 MiB. The search index is
        a cache (SEARCH reads unindexed messages), so waiting costs only speed.
        """
        reading = self.reading()
        return reading is None or reading.free - self._granted >= 2 * self.hard_free

    @property
    def refusing(self) -> bool:
        """Whether the last question was answered no."""
        return self._refusing


def is_disk_full(exc: BaseException) -> bool:
    """Whether *exc* says the volume is full: ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    # sqlite3.OperationalError "database or disk is full"; apsw.FullError.
    return type(exc).__name__ == "FullError" or "disk is full" in str(exc)
