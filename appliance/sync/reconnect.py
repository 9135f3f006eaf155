"""When a box calls the hub again after a cut: spread over boxes, never in step.

A national cut ends for 600 boxes in the same second. Every box's link monitor sees the
return within a second (appliance.sync.link) and wakes its streams, and every stream
that talks to the hub (chat, directory, update reports and offers, signatures, the
offsite backup) opens a mutual-TLS connection at once: thousands of handshakes the hub
pays for in CPU before its fair admission (appliance.sync.hub.request_gate) sees a
request. Boxes that failed together also back off together (1, 2, 4 ... s) and come back
together. Two things here keep them apart:

- `box_rng`: each box's random source for its waits, seeded with its box id, so two
  boxes never draw the same sequence (two boxes cloned from one image, or started in the
  same instant, still differ) and a box's draws can be replayed in a test;
- `StaggeredWake`: the link monitor's "the link is back" reaches the hub's streams after
  a delay drawn from ``[0, spread)`` for each return, not at once. With `RECONNECT_SPREAD`
  of 10 s, 600 boxes arrive at about 60 a second instead of 600 in one. The window is
  at most a quarter of the cut that just ended (`CUT_SHARE`): a national cut lasts
  minutes to days and gets the whole 10 s, while one office's blip of a few seconds,
  which nobody else shares, gets a second or so, and its chat and directory are back
  within seconds of the link (issue 24: p99 under 5 s after a cut). If the hub has
  meanwhile said "busy, come back in N s" (`LinkWatch.busy_for`), the wake waits for that
  too: a wake never sends a stream to a hub before the Retry-After it gave.

The streams' own back-off after a failure is jittered from the same source
(`jittered`), and a 503's Retry-After is already spread by the hub.

What this is not: the central mail streams (the relay, mailbox replication), which reach
the centre's SMTP and IMAP servers, not the hub's sync API, and keep their wake at once
(docs/link-monitor.md, issue 24's "back within seconds"); nor the hub's own bound on handshakes
(appliance.sync.hub.handshake_gate), which holds whatever boxes do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Final

import trio

from appliance.sync.clock import Clock
from appliance.sync.liveness import LinkWatch

log = logging.getLogger("edgebox.sync.reconnect")

#: Seconds over which the boxes' hub streams are spread after the link returns.
RECONNECT_SPREAD: Final = 10.0
#: The spread is at most this share of the cut that just ended.
CUT_SHARE: Final = 0.25
#: A back-off after a failure is stretched by up to this share, at random.
BACKOFF_JITTER: Final = 0.25


def box_rng(box_id: str) -> random.Random:
    """This box's random source for its waits: the same box id, the same draws."""
    return random.Random(f"edgebox-reconnect:{box_id}")  # noqa: S311 - jitter, not a secret


def jittered(seconds: float, rng: random.Random, share: float = BACKOFF_JITTER) -> float:
    """*seconds*, stretched by up to *share* of itself at random (never shortened)."""
    return seconds * (1.0 + share * rng.random())


class StaggeredWake:
    """The ``hub-reconnect`` service: pass "the link is back" on after this box's delay."""

    name = "hub-reconnect"

    def __init__(
        self,
        rng: random.Random,
        clock: Clock,
        watch: LinkWatch | None = None,
        *,
        spread: float = RECONNECT_SPREAD,
        cut_length: Callable[[], float] | None = None,
    ) -> None:
        self.rng = rng
        self.clock = clock
        self.watch = watch
        self.spread = spread
        #: Seconds the cut that just ended lasted (`LinkMonitor.last_cut`); None: the
        #: whole spread at every return.
        self.cut_length = cut_length
        self._subscribers: list[Callable[[], None]] = []
        self._returned = trio.Event()
        #: Returns passed on since start, and the last delay drawn (tests, figures).
        self.passed_on = 0
        self.last_delay: float | None = None

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call *wake* (a stream's ``wake()``) this box's delay after each return."""
        self._subscribers.append(wake)

    def link_back(self) -> None:
        """The link monitor's `on_up` callback: the link returned (does not block)."""
        self._returned.set()

    def window(self) -> float:
        """The spread for this return: the whole of it, or a share of a short cut."""
        if self.cut_length is None:
            return self.spread
        return min(self.spread, CUT_SHARE * self.cut_length())

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            await self._returned.wait()
            delay = self.rng.uniform(0.0, self.window())
            busy = self.watch.busy_for() if self.watch is not None else 0.0
            self.last_delay = max(delay, busy)
            await self.clock.sleep(self.last_delay)
            # Returns while this one was waited out (a flapping link) are passed on with
            # it: the streams are woken once.
            self._returned = trio.Event()
            self.passed_on += 1
            for wake in list(self._subscribers):
                try:
                    wake()
                except Exception:
                    # One stream's bug must not keep the others asleep.
                    log.exception("hub stream wake failed")


__all__ = [
    "BACKOFF_JITTER",
    "CUT_SHARE",
    "RECONNECT_SPREAD",
    "StaggeredWake",
    "box_rng",
    "jittered",
]
