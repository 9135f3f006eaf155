"""Recently verified passwords, so a client that reconnects does not pay scrypt again.

Passwords are stored as scrypt hashes that take tens of milliseconds to check, on
purpose. Phones and sync clients (mbsync, Outlook) log in again and again with the
same password — every poll, every folder connection — and each login would pay that
cost. Like Dovecot's ``auth_cache``, a successful verification is remembered for a few
minutes, in memory only:

- The key is an HMAC of address and password under a key made fresh for each process,
  so neither is kept, and the entry is useless outside this process.
- The entry remembers *which* stored hash it was verified against; the caller hands
  the current stored hash to `matches`, so a password change (or a rehash) takes effect
  at once, without anyone having to invalidate anything.
- Failures are never remembered: every wrong guess pays full price.

What this is not: a session store (directory/sessions.py) or the sign-in guard (guard.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

#: How long a verified password is trusted without hashing again.
TTL: Final = 10 * 60.0
#: Entries kept at most (least recently verified dropped first).
MAX_ENTRIES: Final = 10_000


class VerifiedCredentials:
    """An in-memory set of (address, password, stored hash) checked recently."""

    def __init__(
        self,
        *,
        ttl: float = TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = os.urandom(32)
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()

    def _id(self, address: str, password: str) -> bytes:
        message = address.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def matches(self, address: str, password: str, stored_hash: str) -> bool:
        """True if this password was verified against *stored_hash* within the TTL."""
        key = self._id(address, password)
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires, verified_hash = entry
        if expires <= self._clock() or not hmac.compare_digest(verified_hash, stored_hash):
            del self._entries[key]
            return False
        return True

    def remember(self, address: str, password: str, stored_hash: str) -> None:
        """Record a successful verification of *password* against *stored_hash*."""
        key = self._id(address, password)
        self._entries[key] = (self._clock() + self._ttl, stored_hash)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
