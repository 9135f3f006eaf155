"""Fair admission of boxes' requests at the hub: who runs now, who waits, who comes back later.

After a national cut hundreds of boxes reconnect at once, each with a day or a week of
backlog. Served first come, first served over connections, a box with a week of chat
keeps its connections full and the 599 others wait behind it until their requests time
out, and they all retry at once. This is the policy that prevents it, as a pure state
machine (STYLE.md "sans-I/O"): no trio, no clock, no sockets; times are seconds passed
in by the caller (`appliance.sync.hub.request_gate` is the trio layer), so it is tested
by feeding it arrival patterns.

The rules, in the order a request meets them:

1. **Bounded work.** At most `AdmissionPolicy.capacity` requests run at once, sized to
   the store's writers (a push is one job of the chat writer), and at most
   `AdmissionPolicy.per_box` of any one box (the box identity of its client
   certificate, not the connection or the address).
2. **Bounded queue.** A request that cannot run now waits, unless `max_queue` requests
   already wait (all boxes) or `box_queue` of its own box do: then it is told *busy*
   at once.
3. **Turns by box.** Each box with a waiting request has a place in a ring. When a slot
   frees, the first box in the ring that is below `per_box` runs its oldest request
   and goes to the back of the ring; a box that starts waiting joins at the back. So
   while a box waits (and is not already running `per_box` requests), every other box
   runs at most one request before it: round robin over box identities, and a box
   with a week of backlog cannot starve the others, whatever its number of
   connections. Within one box, first come, first served.
4. **Bounded wait.** A request still waiting `max_wait` seconds after it arrived is
   withdrawn and told *busy*; the hub answers it before the box's own time-out.
5. **Busy says when.** Every *busy* carries a Retry-After: the time the requests now
   ahead would take at the measured service time (a moving average of how long
   requests run), within ``[min_retry, max_retry]``, stretched by a random factor
   between 1 and 2 so the boxes told at the same moment do not all come back at the
   same moment.

Nothing here runs or cancels a request: a request is either run to its end or refused
before it starts, so a *busy* never leaves anything half applied.

Invariant (checked by the tests): no slot stays free while a box below `per_box` has a
request waiting (`dispatch` runs after every change).
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

#: Weight of the newest service time in the moving average of service times.
_SERVICE_WEIGHT: Final = 0.1
#: The service time assumed before any request has finished, in seconds.
_FIRST_SERVICE_GUESS: Final = 0.1


class BusyReason(enum.Enum):
    """Why a request was told to come back later (the ``reason`` of the 503 body)."""

    #: `AdmissionPolicy.max_queue` requests were waiting already.
    QUEUE_FULL = "queue_full"
    #: `AdmissionPolicy.box_queue` requests of the same box were waiting already.
    BOX_QUEUE_FULL = "box_queue_full"
    #: It waited `AdmissionPolicy.max_wait` seconds without its turn.
    WAITED_TOO_LONG = "waited_too_long"


@dataclass(frozen=True)
class AdmissionPolicy:
    """The bounds of `FairQueue` (the hub's ``hub_*`` settings, docs/hub.md)."""

    #: Requests running at once, all boxes (``hub_requests``).
    capacity: int = 8
    #: Requests running at once for one box (``hub_box_requests``).
    per_box: int = 2
    #: Seconds a request may wait for its turn (``hub_queue_wait``).
    max_wait: float = 20.0
    #: Requests waiting at once, all boxes (``hub_queue``).
    max_queue: int = 2400
    #: Requests waiting at once for one box: a box runs one request per stream (chat,
    #: directory, updates, signatures, backup...), fewer than this.
    box_queue: int = 8
    #: Bounds of the Retry-After before its jitter, in whole seconds.
    min_retry: int = 1
    max_retry: int = 120

    def __post_init__(self) -> None:
        if min(self.capacity, self.per_box, self.max_queue, self.box_queue, self.min_retry) < 1:
            raise ValueError("admission bounds must be at least 1")
        if not self.max_wait > 0 or self.max_retry < self.min_retry:
            raise ValueError("max_wait must be positive and max_retry at least min_retry")


@dataclass(eq=False)
class Ticket:
    """One request of one box, from its arrival to its end."""

    number: int
    box: str
    #: When it arrived, and the last moment it may still be admitted.
    arrived: float
    deadline: float
    #: When it started to run; None while it waits (or after it was told busy).
    admitted_at: float | None = None

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None


@dataclass(frozen=True)
class Busy:
    """A request told to come back later: why, and after how many seconds."""

    reason: BusyReason
    retry_after: int


@dataclass
class BoxFigures:
    """What one box met at the hub since it started (for the status and /metrics)."""

    running: int = 0
    waiting: int = 0
    served: int = 0
    busy: int = 0
    #: Seconds its last admitted request waited, and the longest wait of any.
    last_wait: float = 0.0
    max_wait: float = 0.0
    total_wait: float = 0.0


@dataclass
class QueueFigures:
    """The whole queue's figures (`FairQueue.figures`)."""

    running: int
    waiting: int
    #: Boxes with a request waiting.
    boxes_waiting: int
    served: int
    busy: dict[str, int]
    #: The moving average of how long a request runs, in seconds.
    service_time: float
    #: The longest any admitted request waited, in seconds.
    max_wait: float
    boxes: dict[str, BoxFigures] = field(default_factory=dict)


class FairQueue:
    """The admission state of one hub process (rules in the module docstring)."""

    def __init__(self, policy: AdmissionPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._numbers = itertools.count()
        self._lines: dict[str, deque[Ticket]] = {}
        #: Boxes with a waiting request, in turn order (the values are unused).
        self._ring: OrderedDict[str, None] = OrderedDict()
        self._boxes: dict[str, BoxFigures] = {}
        self.running = 0
        self.waiting = 0
        self.served = 0
        self.busy: dict[str, int] = {reason.value: 0 for reason in BusyReason}
        self.service_time = _FIRST_SERVICE_GUESS
        self.max_wait_seen = 0.0

    # --- what the trio layer calls ------------------------------------------------------

    def arrive(self, box: str, now: float) -> Ticket | Busy:
        """Take a request of *box*: a ticket (admitted at once, or waiting), or busy."""
        policy, figures = self.policy, self._figures(box)
        ticket = Ticket(next(self._numbers), box, now, now + policy.max_wait)
        if self.running < policy.capacity and figures.running < policy.per_box:
            # A free slot and a box below its share: nobody eligible is waiting (the
            # invariant), so running now jumps no queue.
            self._admit(ticket, now)
            return ticket
        if self.waiting >= policy.max_queue:
            return self._refuse(box, BusyReason.QUEUE_FULL)
        if figures.waiting >= policy.box_queue:
            return self._refuse(box, BusyReason.BOX_QUEUE_FULL)
        self._lines.setdefault(box, deque()).append(ticket)
        figures.waiting += 1
        self.waiting += 1
        if box not in self._ring:
            self._ring[box] = None  # joins at the back
        return ticket

    def withdraw(self, ticket: Ticket, now: float) -> Busy | None:
        """Take back a waiting *ticket* (its deadline passed, or its client left).

        Returns the busy answer for it, or None if it was admitted meanwhile (then it
        must run, and `finish` be called as for any other).
        """
        if ticket.admitted:
            return None
        self._remove(ticket)
        return self._refuse(ticket.box, BusyReason.WAITED_TOO_LONG)

    def cancel(self, ticket: Ticket) -> bool:
        """Forget a waiting *ticket* whose client left; False if it was admitted meanwhile."""
        if ticket.admitted:
            return False
        self._remove(ticket)
        return True

    def finish(self, ticket: Ticket, now: float) -> list[Ticket]:
        """Record that admitted *ticket* ended; return the tickets admitted in its place."""
        if ticket.admitted_at is None:
            raise ValueError("finish() of a ticket that never ran")
        self.running -= 1
        self._boxes[ticket.box].running -= 1
        ran = max(0.0, now - ticket.admitted_at)
        self.service_time += _SERVICE_WEIGHT * (ran - self.service_time)
        return self.dispatch(now)

    def dispatch(self, now: float) -> list[Ticket]:
        """Fill free slots from the ring, one request per box per turn; return them."""
        admitted: list[Ticket] = []
        while self.running < self.policy.capacity and self._ring:
            box = next(
                (b for b in self._ring if self._boxes[b].running < self.policy.per_box), None
            )
            if box is None:
                break  # every waiting box is running its share already
            line = self._lines[box]
            ticket = line.popleft()
            self._boxes[box].waiting -= 1
            self.waiting -= 1
            if line:
                self._ring.move_to_end(box)  # its turn is over: to the back
            else:
                del self._lines[box]
                del self._ring[box]
            self._admit(ticket, now)
            admitted.append(ticket)
        return admitted

    def retry_after(self) -> int:
        """Seconds a box told busy now should wait: the queue's drain time, jittered."""
        policy = self.policy
        ahead = self.waiting + self.running
        drain = ahead * self.service_time / policy.capacity
        base = min(float(policy.max_retry), max(float(policy.min_retry), drain))
        # Spread over [base, 2 base): the boxes refused together come back apart.
        return math.ceil(base * (1.0 + self._rng.random()))

    def figures(self, *, per_box: bool = True) -> QueueFigures:
        """The queue now; with *per_box*, a copy of every box's figures too."""
        boxes = (
            {box: BoxFigures(**vars(each)) for box, each in self._boxes.items()} if per_box else {}
        )
        return QueueFigures(
            running=self.running,
            waiting=self.waiting,
            boxes_waiting=len(self._ring),
            served=self.served,
            busy=dict(self.busy),
            service_time=self.service_time,
            max_wait=self.max_wait_seen,
            boxes=boxes,
        )

    # --- inside ------------------------------------------------------------------------

    def _figures(self, box: str) -> BoxFigures:
        figures = self._boxes.get(box)
        if figures is None:
            figures = self._boxes[box] = BoxFigures()
        return figures

    def _remove(self, ticket: Ticket) -> None:
        line = self._lines.get(ticket.box)
        if line is None or ticket not in line:
            raise ValueError("not a waiting ticket of this queue")
        line.remove(ticket)
        self._boxes[ticket.box].waiting -= 1
        self.waiting -= 1
        if not line:
            del self._lines[ticket.box]
            del self._ring[ticket.box]

    def _admit(self, ticket: Ticket, now: float) -> None:
        ticket.admitted_at = now
        waited = max(0.0, now - ticket.arrived)
        figures = self._boxes[ticket.box]
        figures.running += 1
        figures.served += 1
        figures.last_wait = waited
        figures.max_wait = max(figures.max_wait, waited)
        figures.total_wait += waited
        self.running += 1
        self.served += 1
        self.max_wait_seen = max(self.max_wait_seen, waited)

    def _refuse(self, box: str, reason: BusyReason) -> Busy:
        self._figures(box).busy += 1
        self.busy[reason.value] += 1
        return Busy(reason, self.retry_after())


__all__ = [
    "AdmissionPolicy",
    "BoxFigures",
    "Busy",
    "BusyReason",
    "FairQueue",
    "QueueFigures",
    "Ticket",
]
