"""Bound the TLS handshakes one hub process runs at once, so a reconnect storm cannot
starve the requests already in flight.

After a national cut hundreds of boxes open mutual-TLS connections to the hub in the same
seconds. Each handshake costs the hub CPU (a key exchange, a signature, the check of the
box's certificate chain) before fair admission (`request_gate`) ever sees a request: the
accept loop starts a task per connection, and with six hundred handshakes runnable at
once trio's scheduler gives the requests already admitted one turn in six hundred. This
gate sits between accept and TLS (`ConnectionGate`'s TLS starter), so:

- at most `HandshakePolicy.limit` handshakes run at once; a connection beyond that waits
  for a slot *before* the hub reads its ClientHello, which costs nothing but a socket;
- a connection that waited `HandshakePolicy.max_wait` seconds without a slot, or that
  arrives while `HandshakePolicy.max_waiting` already wait, is closed before TLS (shed).
  `max_wait` is below the box's own handshake deadline
  (`appliance.sync.liveness.HANDSHAKE_DEADLINE`): past it the box has given up and closed,
  and a handshake computed for it would be CPU spent on nobody.

A shed connection costs the box one failed attempt: it backs off with its own per-box
jitter (appliance.sync.reconnect). Nothing was said or applied. The box side spreads its
reconnects in the first place; this is the bound that holds whatever the boxes do.

What this is not: the limit on connections (`ConnectionGate`), or the fair admission of
requests (`request_gate`). Like those, it counts per process: each hub worker has its own.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from appliance.net.listeners import start_tls

#: Seconds a connection may wait for a handshake slot: below the box's 5 s handshake
#: deadline, so what the hub computes still has someone to answer.
MAX_WAIT: Final = 4.0


@dataclass(frozen=True)
class HandshakePolicy:
    """The bounds of `HandshakeGate` (``hub_handshakes``, docs/hub.md)."""

    #: Handshakes running at once in this process.
    limit: int = 16
    #: Connections waiting for a slot at once; more are closed at once.
    max_waiting: int = 2000
    #: Seconds a connection may wait for a slot before it is closed.
    max_wait: float = MAX_WAIT

    def __post_init__(self) -> None:
        if self.limit < 1 or self.max_waiting < 0 or not self.max_wait > 0:
            raise ValueError("handshake bounds: limit at least 1, max_wait positive")


@dataclass(frozen=True)
class HandshakeFigures:
    """The gate now, and since start (`HandshakeGate.figures`)."""

    limit: int
    running: int
    waiting: int
    #: Handshakes completed, and ones that failed (bad certificate, client left).
    done: int
    failed: int
    #: Connections closed before TLS: too many waiting, or waited too long.
    shed_queue_full: int
    shed_waited_too_long: int
    #: The longest a connection waited for its slot, in seconds.
    longest_wait: float


class HandshakeShed(TimeoutError):
    """A connection closed before its handshake: the hub had no slot for it in time.

    A `TimeoutError`, so the listener's `ConnectionGate` ends it quietly (a client that
    went away), not as a fault of the session.
    """


class HandshakeGate:
    """A TLS starter for `ConnectionGate` that runs at most so many handshakes at once."""

    def __init__(
        self,
        context: ssl.SSLContext,
        policy: HandshakePolicy | None = None,
        *,
        handshake: Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self.policy = policy or HandshakePolicy()
        #: The handshake itself: TLS with *context* (tests pass a stand-in).
        self._handshake = handshake or (lambda stream: start_tls(stream, context))
        self._slots = trio.Semaphore(self.policy.limit)
        self.running = 0
        self.waiting = 0
        self.done = 0
        self.failed = 0
        self.shed_queue_full = 0
        self.shed_waited_too_long = 0
        self.longest_wait = 0.0

    async def __call__(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Wait for a slot, then run *stream*'s handshake; `HandshakeShed` if no slot in time."""
        try:
            self._slots.acquire_nowait()  # a free slot: no wait, and no place in the line
            free = True
        except trio.WouldBlock:
            free = False
        if not free:
            await self._wait_for_slot()
        self.running += 1
        try:
            tls = await self._handshake(stream)
        except BaseException:
            self.failed += 1
            raise
        finally:
            self.running -= 1
            self._slots.release()
        self.done += 1
        return tls

    async def _wait_for_slot(self) -> None:
        """Take a slot within `max_wait`, first come first served; else `HandshakeShed`."""
        policy = self.policy
        if self.waiting >= policy.max_waiting:
            self.shed_queue_full += 1
            raise HandshakeShed("too many connections wait for a TLS handshake")
        arrived = trio.current_time()
        self.waiting += 1
        try:
            # trio's Semaphore wakes its waiters in the order they came.
            with trio.move_on_after(policy.max_wait) as timer:
                await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.longest_wait = max(self.longest_wait, trio.current_time() - arrived)
        if timer.cancelled_caught:  # no slot was taken: nothing to give back
            self.shed_waited_too_long += 1
            raise HandshakeShed(f"no TLS handshake slot within {policy.max_wait:g} s")

    def figures(self) -> HandshakeFigures:
        """The gate's counts now."""
        return HandshakeFigures(
            limit=self.policy.limit,
            running=self.running,
            waiting=self.waiting,
            done=self.done,
            failed=self.failed,
            shed_queue_full=self.shed_queue_full,
            shed_waited_too_long=self.shed_waited_too_long,
            longest_wait=self.longest_wait,
        )


__all__ = ["MAX_WAIT", "HandshakeFigures", "HandshakeGate", "HandshakePolicy", "HandshakeShed"]
