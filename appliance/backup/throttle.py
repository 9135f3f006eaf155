"""A token bucket: the offsite backup's rate limit on the uplink.

Sans-I/O, like the protocol cores: the caller passes the time and is told how long to
wait, so the rule is tested without a clock and the backup's trio loop sleeps on trio's
clock (which tests replace). *rate* bytes a second on average; at most *burst* bytes
may go at once after a quiet spell, so a piece of the backup never lands on the line as
a long burst that a chat message would queue behind.
"""

from __future__ import annotations


class TokenBucket:
    """Allow *rate* bytes a second on average, *burst* at most at once."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a rate limit needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def delay(self, now: float, size: int) -> float:
        """Take *size* bytes at *now*; return the seconds to wait before sending them.

        A piece larger than the burst is allowed (it waits until the bucket is full and
        leaves it in debt), so any piece size works with any burst.
        """
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= size
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate
