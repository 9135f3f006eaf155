"""Sign-in lock-out: too many wrong passwords for one address, or from one IP, waits.

The rules (REQUIREMENTS.md §2, sign-in security):

- 5 failures for one address within 15 minutes lock that address for 15 minutes. This
  slows a guesser aiming at one account without letting them lock it for ever: the
  lock ends on its own, and each later lock while failures continue doubles (at most
  4 hours).
- 20 failures from one IP address within 15 minutes lock that IP for 15 minutes (same
  doubling). This slows a guesser spraying one password over many accounts.
- A successful sign-in clears the address's failures (not the IP's: one good account
  must not launder a spray).

Counts live in memory only: a restart forgets them, which costs an attacker a reboot
of the box per 5 guesses, and keeps a failed disk from locking everybody out. Memory is
bounded: old entries are dropped, and at most `MAX_KEYS` are tracked.

What this is not: password checking (directory), the HTTP 429 answer (web/session_api),
or a general rate limiter. Pure and synchronous, no trio; the clock is injectable.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

ADDRESS_LIMIT: Final = 5
IP_LIMIT: Final = 20
WINDOW: Final = 15 * 60.0
LOCK: Final = 15 * 60.0
MAX_LOCK: Final = 4 * 60 * 60.0
#: Addresses plus IPs tracked at once; beyond it the least recently failed are forgotten.
MAX_KEYS: Final = 100_000


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    #: Locks imposed so far without a quiet window in between (for the doubling).
    strikes: int = 0


class Lockout:
    """Failure counts per address and per IP; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        address_limit: int = ADDRESS_LIMIT,
        ip_limit: int = IP_LIMIT,
        window: float = WINDOW,
        lock: float = LOCK,
        max_lock: float = MAX_LOCK,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._clock = clock
        self._limits = {"address": address_limit, "ip": ip_limit}
        self._window = window
        self._lock = lock
        self._max_lock = max_lock
        self._max_keys = max_keys
        # Insertion order = order of the latest failure, so the oldest is first to go.
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def retry_after(self, address: str, ip: str | None) -> float:
        """Seconds until *address* may try again from *ip*; 0 if it may try now."""
        now = self._clock()
        wait = 0.0
        for key in self._keys(address, ip):
            record = self._records.get(key)
            if record is not None and record.locked_until > now:
                wait = max(wait, record.locked_until - now)
        return wait

    def failure(self, address: str, ip: str | None) -> float:
        """Count one failed sign-in; return the wait it triggers (0 if none yet)."""
        now = self._clock()
        for key in self._keys(address, ip):
            record = self._records.pop(key, None) or _Record()
            self._records[key] = record  # move to the end: most recent failure
            failures = record.failures
            while failures and failures[0] <= now - self._window:
                failures.popleft()
            if not failures and record.locked_until <= now - self._window:
                record.strikes = 0  # a quiet window: the next lock starts short again
            failures.append(now)
            if len(failures) >= self._limits[key[0]] and record.locked_until <= now:
                lock = min(self._lock * 2**record.strikes, self._max_lock)
                record.strikes += 1
                record.locked_until = now + lock
                failures.clear()
        self._forget_old(now)
        return self.retry_after(address, ip)

    def success(self, address: str) -> None:
        """Forget *address*'s failures and lock after a correct password."""
        self._records.pop(("address", address), None)

    def __len__(self) -> int:
        return len(self._records)

    def _keys(self, address: str, ip: str | None) -> list[tuple[str, str]]:
        keys = [("address", address)]
        if ip:
            keys.append(("ip", ip))
        return keys

    def _forget_old(self, now: float) -> None:
        while len(self._records) > self._max_keys:
            self._records.popitem(last=False)
        # Entries are ordered by latest failure, so stale ones sit at the front (roughly:
        # a doubled lock may outlast a later entry, which then waits for its turn).
        while self._records:
            key, record = next(iter(self._records.items()))
            last = record.failures[-1] if record.failures else 0.0
            # Kept a window past its lock, so a lock that is followed by more failures
            # straight away is remembered and the next one doubles.
            if max(last, record.locked_until) + self._window > now:
                break
            del self._records[key]
