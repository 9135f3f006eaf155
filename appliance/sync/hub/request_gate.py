"""The trio side of fair admission: each box request waits for its turn, or is told busy.

`RequestGate.turn` is what the hub-sync listener wraps around every request of an
enrolled box, after it knows the box from its certificate and before the route's
handler runs. The policy itself (who runs, who waits, for how long, Retry-After) is
`appliance.sync.hub.fair_queue.FairQueue`, pure; this layer only parks the waiting
request's task on an event and wakes it when the queue admits it, withdraws it at its
deadline (trio time, so tests drive it with a MockClock) or when its task is
cancelled, and turns a refusal into the 503 the box understands (`busy_error`).

While a request waits, *waiting* is called every `HEARTBEAT` seconds: the listener
sends an interim ``102 Processing`` on the connection then, so the box's client sees
bytes move and its link monitor does not take a queue for a black hole
(appliance.sync.liveness, `SUSPECT_AFTER`).

What this is not: a limit on connections (`appliance.net.listeners.ConnectionGate`),
or shared between the hub's worker processes: each process admits its own requests.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from appliance.sync.hub.errors import HubError
from appliance.sync.hub.fair_queue import (
    AdmissionPolicy,
    Busy,
    BusyReason,
    FairQueue,
    QueueFigures,
    Ticket,
)

#: Seconds between interim answers to a waiting request: below the box's
#: `appliance.sync.link.SUSPECT_AFTER`, so a queued request never looks stalled.
HEARTBEAT: Final = 1.0

#: Words for each reason, in the 503's message (the reason itself is in the body too).
_WHY: Final = {
    BusyReason.QUEUE_FULL: "the hub's queue is full",
    BusyReason.BOX_QUEUE_FULL: "this box already has as many requests waiting as it may",
    BusyReason.WAITED_TOO_LONG: "the request waited its longest without a turn",
}


def busy_error(busy: Busy) -> HubError:
    """The 503 for a request told busy: ``Retry-After`` and a JSON reason, nothing applied."""
    return HubError(
        503,
        "hub_busy",
        f"the hub is busy: {_WHY[busy.reason]}; nothing was applied, send it again in"
        f" {busy.retry_after} s",
        retry_after=busy.retry_after,
        detail={"reason": busy.reason.value, "retry_after": busy.retry_after},
    )


class RequestGate:
    """The admission of one hub process: `turn` around each request of a box."""

    def __init__(
        self,
        policy: AdmissionPolicy | None = None,
        *,
        rng: random.Random | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.queue = FairQueue(policy or AdmissionPolicy(), rng)
        self.heartbeat = heartbeat
        self._wakers: dict[int, trio.Event] = {}

    @property
    def policy(self) -> AdmissionPolicy:
        return self.queue.policy

    def figures(self, *, per_box: bool = True) -> QueueFigures:
        """The queue now (`FairQueue.figures`)."""
        return self.queue.figures(per_box=per_box)

    @asynccontextmanager
    async def turn(
        self, box: str, waiting: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        """Run the block in *box*'s turn; raise the 503 `HubError` if it gets none in time.

        A refusal is raised before the block starts, so the block (a route's handler)
        runs whole or not at all.
        """
        got = self.queue.arrive(box, trio.current_time())
        if isinstance(got, Busy):
            raise busy_error(got)
        ticket = got
        if not ticket.admitted:
            try:
                busy = await self._wait(ticket, waiting)
            except BaseException:
                # Cancelled (the listener is stopping) or the client left while we said
                # "still waiting": give the place, or the slot won meanwhile, back.
                self._leave(ticket)
                raise
            if busy is not None:
                raise busy_error(busy)
        try:
            yield
        finally:
            self._wake(self.queue.finish(ticket, trio.current_time()))

    async def _wait(
        self, ticket: Ticket, waiting: Callable[[], Awaitable[None]] | None
    ) -> Busy | None:
        """Wait until *ticket* is admitted (None) or its deadline passes (the busy answer)."""
        admitted = self._wakers[ticket.number] = trio.Event()
        try:
            with trio.move_on_at(ticket.deadline):
                while not admitted.is_set():
                    with trio.move_on_after(self.heartbeat):
                        await admitted.wait()
                    if not admitted.is_set() and waiting is not None:
                        await waiting()
        finally:
            self._wakers.pop(ticket.number, None)
        # Admitted in the same instant as the deadline: it runs (the slot is its own).
        return self.queue.withdraw(ticket, trio.current_time())

    def _leave(self, ticket: Ticket) -> None:
        if ticket.admitted:
            self._wake(self.queue.finish(ticket, trio.current_time()))
        else:
            self.queue.cancel(ticket)

    def _wake(self, tickets: list[Ticket]) -> None:
        for ticket in tickets:
            waker = self._wakers.get(ticket.number)
            if waker is not None:
                waker.set()


__all__ = ["HEARTBEAT", "RequestGate", "busy_error"]
