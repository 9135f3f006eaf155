"""The box-wide budget of message bytes being checked and stored at once.

A message received whole is not yet stored: DKIM and DMARC read it, the scanners may,
delivery puts the trace fields on top, parses the header, hashes, encrypts and indexes
it. Each of those holds a copy or a parse of the message for a while, in worker
threads, so a message in that stage costs several times its size (about five for a
1 MiB message, docs/BENCHMARKS.md issue 21). Twenty sessions finishing 1 MiB messages
together put over 100 MB in flight, and glibc's heaps keep much of it after.

So every SMTP listener of the box shares one `MessageBudget`: a session whose message
is complete holds the message's size of the budget from its first check until its
reply, and waits (in trio, reading nothing more from its client: it is blocked before
its reply) while the others' messages fill the budget. The waiters go in the order
they came, so a large message is not overtaken for ever by small ones; a message
larger than the whole budget waits until it is alone and then holds all of it.

Why a budget on the checking and storing stage rather than on bytes still arriving:
a session's buffer of a message in transit is one copy and is already bounded per
session (the SIZE limit) and in number (the connection limit), and a budget there
can deadlock (sessions each holding part of a message, all waiting for more). Here a
session holds nothing of the budget while it waits, so it cannot.

What this is not: a limit on the size of one message (SIZE, RFC 1870) or on the
connections (`ConnectionGate`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

#: The default: three or four 1 MiB messages, or about four hundred typical 10 KiB
#: ones, being checked and stored at once, which keeps two cores busy. Measured in
#: process (tests/bench/probe_smtp_memory.py, 20 sessions x 1 MiB at once): the
#: process's RSS grew by 78 MB without a budget, 75 MB with 16 MiB, 46 MB with this;
#: what remains is mostly the waiting sessions' own received copies.
DEFAULT_BUDGET = 4 * 1024 * 1024


class MessageBudget:
    """Bytes of complete messages in the checking and storing stage, box-wide."""

    def __init__(self, limit: int = DEFAULT_BUDGET) -> None:
        if limit <= 0:
            raise ValueError("the budget must be positive")
        self.limit = limit
        #: Bytes held now.
        self.in_use = 0
        #: The most ever held at once (for tests and the benchmark's notes).
        self.peak = 0
        #: Messages that had to wait for room, since start.
        self.waited = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    def _share(self, size: int) -> int:
        # A message larger than the budget takes all of it: it runs alone.
        return max(1, min(size, self.limit))

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold *size* bytes of the budget for the body of the block, waiting in turn."""
        share = self._share(size)
        if self._waiters or self.in_use + share > self.limit:
            entry = (share, trio.Event())
            self._waiters.append(entry)
            self.waited += 1
            try:
                await entry[1].wait()
            except BaseException:
                if entry[1].is_set():
                    # Granted just as it was cancelled: give the share back.
                    self._release(share)
                else:
                    self._waiters.remove(entry)
                    # It may have been the head that kept smaller ones waiting.
                    self._grant()
                raise
        else:
            self._take(share)
        try:
            yield
        finally:
            self._release(share)

    def _take(self, share: int) -> None:
        self.in_use += share
        self.peak = max(self.peak, self.in_use)

    def _release(self, share: int) -> None:
        self.in_use -= share
        self._grant()

    def _grant(self) -> None:
        # First come, first served: the head of the queue goes first, and nobody
        # behind it jumps ahead even if it would fit.
        while self._waiters and self.in_use + self._waiters[0][0] <= self.limit:
            share, event = self._waiters.popleft()
            self._take(share)
            event.set()
