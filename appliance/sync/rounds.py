"""The rounds of a service that talks to the hub: one now, then one every interval, or at
once when woken (the link came back).

The directory replicator, the update reporter and channel follower, the signature
updater and the offsite backup all run this loop; it lives here, in the uplink layer,
at or below each of them (docs/architecture.md, "Layers"). It is not a retry policy:
how long to wait is *interval*'s answer (a callable may read a setting, or the outcome
of the last round), and what a round does with a failure is the round's own business.
An exception that escapes a round is logged with its reason and the loop goes on after
the interval: one bad round must not stop the service.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

log = logging.getLogger("edgebox.sync.rounds")


class Rounds:
    """Run a service's rounds: one now, then one per interval, at once when woken."""

    def __init__(
        self,
        name: str,
        interval: float | Callable[[], float],
        *,
        sleep: Callable[[float], Awaitable[object]] = trio.sleep,
    ) -> None:
        #: The service's name, for the log.
        self.name = name
        #: Seconds between the end of a round and the next; a callable is asked at each
        #: wait, so a setting or a back-off read there holds from the next wait on.
        self.interval = interval
        #: trio's sleep, or the `Clock`'s of a service that tests drive by its clock.
        self.sleep = sleep
        self._woken = trio.Event()
        self._held = 0.0

    def wake(self) -> None:
        """Start the next round now; during a round, as soon as it ends."""
        self._woken.set()

    def hold(self, seconds: float) -> None:
        """Wait at least *seconds* after this round, and let no wake cut it short.

        For a round the hub answered "busy, come back in so long" (503, Retry-After):
        the link is up, so the link monitor's wake must not send the round back early.
        """
        self._held = max(self._held, seconds)

    async def run(self, round_: Callable[[], Awaitable[object]]) -> NoReturn:
        """Run *round_* now and after every wait, until cancelled."""
        while True:
            # Reset before the round: a wake during it (the link came back and cut its
            # dead wait short) starts the next round at once.
            self._woken = trio.Event()
            self._held = 0.0
            try:
                await round_()
            except Exception as exc:  # one bad round must not stop the service
                log.error("%s: the round failed: %s: %s", self.name, type(exc).__name__, exc,
                          exc_info=exc)  # fmt: skip
            await self._wait()

    async def _wait(self) -> None:
        seconds = self.interval() if callable(self.interval) else self.interval
        async with trio.open_nursery() as nursery:

            async def woken() -> None:
                await self._woken.wait()
                nursery.cancel_scope.cancel()

            if self._held:
                seconds = max(seconds, self._held)
            else:
                nursery.start_soon(woken)
            # trio.sleep refuses a negative time; a deadline already past is "now".
            await self.sleep(max(0.0, seconds))
            nursery.cancel_scope.cancel()
