"""The wall clock that retry schedules, expiry and link probes read.

Sync code never calls `time.time()` or `trio.sleep()` directly: it asks a `Clock`. The box
runs on `SystemClock`; tests hand a `ManualClock` to the same code and move time forward by
days in microseconds, so "a 7-day outage, then the queue expires the mail" is a fast,
exact test rather than a week of waiting (issue 5, "injectable clock").
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds, UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after *seconds* of this clock's time (at once if <= 0)."""
        ...


class SystemClock:
    """The real wall clock and trio's sleep."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when a test calls `advance`.

    Sleepers wake in deadline order when time passes their deadline; `advance` lets them
    run (`trio.testing.wait_all_tasks_blocked`) before returning, so after
    ``await clock.advance(3600)`` everything due within that hour has happened.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, trio.Event]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await trio.lowlevel.checkpoint()
            return
        wake = trio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), wake))
        await wake.wait()

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Move time forward by *seconds*, waking sleepers as their deadlines pass.

        With *step*, time moves in steps of that size and tasks run after each, so work
        that re-arms a timer (a retry loop) gets every wake-up it would have had.
        """
        import trio.testing  # only tests advance a clock

        target = self._now + seconds
        while True:
            await trio.testing.wait_all_tasks_blocked()
            due = self._sleepers[0][0] if self._sleepers else None
            next_time = target if step is None else min(target, self._now + step)
            if due is not None and due <= next_time:
                next_time = due
            self._now = max(self._now, next_time)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                heapq.heappop(self._sleepers)[2].set()
            if self._now >= target:
                await trio.testing.wait_all_tasks_blocked()
                if not (self._sleepers and self._sleepers[0][0] <= self._now):
                    return
