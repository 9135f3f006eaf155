"""The sign-in guard: one count of wrong passwords for every protocol, and its answers.

Every password check on the box (web and API sign-in, IMAP LOGIN/AUTHENTICATE, SMTP
AUTH; later DAV and app passwords) asks this one object first and tells it the outcome,
so a guesser cannot move to another protocol to start afresh. The rules, like Dovecot's
auth penalty rather than a lock an attacker could pull on someone else's account:

- **Per source** (an IPv4 address, or an IPv6 /64: one host holds a whole /64). Each
  failure within `GuardPolicy.window` makes the next attempt from that source wait
  before its password is even checked: ``delay`` seconds after the first failure,
  doubling with each one, at most ``max_delay``. Once a source has failed, attempts
  already in flight from it count as failures for this purpose, so opening many
  connections at once buys no parallel guesses; a source with no failures is never
  slowed, however many sign-ins it runs at once (clients open several connections).
  After ``source_limit`` failures the source is *refused*: no password from it is
  checked (not even the right one) for ``refusal`` seconds; each further refusal after
  more failures doubles that, at most ``max_refusal``.
- **Per account**, from every source together. After ``account_delay_after`` failures
  within the window every attempt on the account waits a modest delay (doubling from
  ``delay``, at most ``account_max_delay``), which slows a guesser spread over many
  addresses. An account is *never* refused: its owner signing in from a source that
  has not guessed wrong always gets their password checked.
- A correct password forgets that source's failures *for that account* (the owner's
  own typos), never its failures for other accounts (one known password must not
  launder a spray), and forgets the account's failures.

Counts live in memory only: a restart forgets them, and a failed disk never locks
anybody out. Memory is bounded (`GuardPolicy.max_keys`; the oldest go first).

What this is not: password checking (`appliance.directory`), the sleeping and the
traffic log (`appliance.directory.signin`), or any protocol's answer. Pure and
synchronous, no trio and no I/O; the clock is injected (trio's clock in the server, so
tests run it on trio's MockClock).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

#: Sources and accounts tracked at once; beyond it the least recently failed are forgotten.
MAX_KEYS: Final = 100_000
#: The source of a connection whose address is unknown (not a socket: tests, pipes).
UNKNOWN_SOURCE: Final = "unknown"


@dataclass(frozen=True)
class GuardPolicy:
    """The guard's numbers; `appliance.config.Config` holds the box's settings."""

    #: Seconds the first back-off waits; it doubles with every further failure.
    delay: float = 1.0
    #: The longest back-off before a source's attempt (Dovecot's penalty stops at 15 s).
    max_delay: float = 15.0
    #: Failures from one source within the window before it is refused.
    source_limit: int = 10
    #: Failures on one account (all sources) within the window before its delay starts.
    account_delay_after: int = 5
    #: The longest delay an account's failures add to anybody's attempt on it.
    account_max_delay: float = 4.0
    #: Seconds a failure is remembered.
    window: float = 3600.0
    #: Seconds a source is refused the first time; doubles on each refusal.
    refusal: float = 900.0
    #: The longest refusal.
    max_refusal: float = 4 * 3600.0
    max_keys: int = MAX_KEYS


@dataclass(frozen=True)
class Admission:
    """The guard's answer before a password is checked."""

    #: Seconds to wait before checking the password (0: at once).
    delay: float = 0.0
    #: Seconds the source stays refused; > 0 means: do not check the password at all.
    refused_for: float = 0.0

    @property
    def refused(self) -> bool:
        return self.refused_for > 0


@dataclass(frozen=True)
class SourceState:
    """A source with recent failures, as the admin console shows it."""

    source: str
    #: Failures within the window that count toward the next refusal.
    failures: int
    #: Seconds it stays refused (0: not refused).
    refused_for: float
    #: Seconds since its last failure.
    idle_for: float
    #: The accounts it tried and failed on, with how many times, most first.
    accounts: tuple[tuple[str, int], ...]
    #: Attempts refused without checking, since it was first seen.
    refused_attempts: int


@dataclass(frozen=True)
class AccountState:
    """An account with recent failures, as the admin console shows it."""

    account: str
    failures: int
    #: Seconds every attempt on it waits now.
    delay: float
    idle_for: float
    #: The sources that failed on it, with how many times, most first.
    sources: tuple[tuple[str, int], ...]


@dataclass
class _Source:
    #: (time, account) of each failure within the window.
    failures: deque[tuple[float, str]] = field(default_factory=deque)
    refused_until: float = 0.0
    #: Refusals imposed without a quiet window in between (for the doubling).
    strikes: int = 0
    in_flight: int = 0
    last_failure: float = 0.0
    #: Failures per account since the record was made (for the admin console).
    tried: dict[str, int] = field(default_factory=dict)
    refused_attempts: int = 0


@dataclass
class _Account:
    failures: deque[float] = field(default_factory=deque)
    last_failure: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)


def source_key(ip: str | None) -> str:
    """The source an address counts as: the IPv4 address, or the IPv6 /64 it is in."""
    if not ip or ip == UNKNOWN_SOURCE:
        return UNKNOWN_SOURCE
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return UNKNOWN_SOURCE
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # RFC 4291 §2.5.4: a host's interface identifier is the low 64 bits; a LAN
        # gives every host a whole /64, and privacy addresses (RFC 8981) roam in it.
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class AuthGuard:
    """Failure counts per source and per account; see the module docstring for the rules.

    For each attempt the caller asks `admit`; when it is not refused, the caller waits
    its delay, asks `refused_for` again (the source may have been refused meanwhile)
    and then reports exactly one of `succeeded`, `failed` or `abandoned`.
    """

    def __init__(self, policy: GuardPolicy | None = None, *, clock: Callable[[], float]) -> None:
        self.policy = policy or GuardPolicy()
        self._clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()

    # --- one attempt --------------------------------------------------------------

    def admit(self, account: str, source: str | None) -> Admission:
        """Say whether *account* may be tried from *source* now, and after what wait."""
        now = self._clock()
        key = source_key(source)
        record = self._sources.get(key)
        if record is not None:
            self._expire(record, now)
            if record.refused_until > now:
                record.refused_attempts += 1
                return Admission(refused_for=record.refused_until - now)
        pending = 0
        if record is not None:
            # Attempts in flight count only once the source has failed: a phone or an
            # office behind one address opening several connections at once (Thunderbird
            # opens five) must not wait, but a source that guessed wrong gets no parallel
            # guesses for free.
            if record.failures:
                pending = len(record.failures) + record.in_flight
            record.in_flight += 1
        else:
            # Tracked from its first attempt, so parallel first attempts see each other.
            record = self._sources[key] = _Source(in_flight=1)
        delay = self._backoff(pending)
        account_record = self._accounts.get(account)
        if account_record is not None:
            self._expire_account(account_record, now)
            over = len(account_record.failures) - self.policy.account_delay_after
            if over >= 0:
                delay = max(delay, min(self._backoff(over + 1), self.policy.account_max_delay))
        return Admission(delay=delay)

    def refused_for(self, source: str | None) -> float:
        """Seconds *source* stays refused; 0 if it is not."""
        record = self._sources.get(source_key(source))
        if record is None:
            return 0.0
        return max(0.0, record.refused_until - self._clock())

    def failed(self, account: str, source: str | None) -> None:
        """The password was wrong (or the account unknown or disabled): count it."""
        now = self._clock()
        key = source_key(source)
        record = self._settle(key)
        self._expire(record, now)
        record.failures.append((now, account))
        record.last_failure = now
        record.tried[account] = record.tried.get(account, 0) + 1
        self._sources.move_to_end(key)
        if len(record.failures) >= self.policy.source_limit and record.refused_until <= now:
            refusal = min(
                self.policy.refusal * 2.0 ** min(record.strikes, 64), self.policy.max_refusal
            )
            record.strikes += 1
            record.refused_until = now + refusal
            record.failures.clear()
        account_record = self._accounts.pop(account, None) or _Account()
        self._accounts[account] = account_record  # to the end: most recent failure
        self._expire_account(account_record, now)
        account_record.failures.append(now)
        account_record.last_failure = now
        account_record.sources[key] = account_record.sources.get(key, 0) + 1
        self._forget_old(now)

    def succeeded(self, account: str, source: str | None) -> None:
        """The password was right: forget the owner's own failures (see the rules)."""
        key = source_key(source)
        record = self._settle(key)
        kept = deque(entry for entry in record.failures if entry[1] != account)
        record.failures = kept
        record.tried.pop(account, None)
        if not record.tried and record.refused_until <= self._clock() and not record.in_flight:
            del self._sources[key]
        self._accounts.pop(account, None)

    def abandoned(self, source: str | None) -> None:
        """The attempt ended without an answer (client gone, server error)."""
        key = source_key(source)
        record = self._settle(key)
        if not record.failures and not record.tried and not record.in_flight:
            del self._sources[key]

    # --- the admin console --------------------------------------------------------

    def sources(self) -> list[SourceState]:
        """Sources with failures or a refusal, the most recently failed first."""
        now = self._clock()
        found = []
        for key, record in reversed(self._sources.items()):
            self._expire(record, now)
            if not record.tried:
                continue
            found.append(
                SourceState(
                    source=key,
                    failures=len(record.failures),
                    refused_for=max(0.0, record.refused_until - now),
                    idle_for=now - record.last_failure,
                    accounts=_most_first(record.tried),
                    refused_attempts=record.refused_attempts,
                )
            )
        return found

    def accounts(self) -> list[AccountState]:
        """Accounts with failures within the window, the most recently failed first."""
        now = self._clock()
        found = []
        for account, record in reversed(self._accounts.items()):
            self._expire_account(record, now)
            if not record.failures:
                continue
            over = len(record.failures) - self.policy.account_delay_after
            delay = min(self._backoff(over + 1), self.policy.account_max_delay) if over >= 0 else 0
            found.append(
                AccountState(
                    account=account,
                    failures=len(record.failures),
                    delay=delay,
                    idle_for=now - record.last_failure,
                    sources=_most_first(record.sources),
                )
            )
        return found

    def tried_from(self, source: str) -> frozenset[str]:
        """The accounts *source* (a key as `sources` shows it) failed on."""
        record = self._sources.get(source)
        return frozenset(record.tried) if record is not None else frozenset()

    def unlock_source(self, source: str) -> bool:
        """Forget a source's failures and refusal (the admin's unlock); False if unknown."""
        record = self._sources.get(source)
        if record is None:
            return False
        if record.in_flight:
            # Attempts still running report back to a fresh record.
            self._sources[source] = _Source(in_flight=record.in_flight)
        else:
            del self._sources[source]
        return True

    def unlock_account(self, account: str) -> bool:
        """Forget an account's failures, ending its delay; False if it had none."""
        return self._accounts.pop(account, None) is not None

    def __len__(self) -> int:
        return len(self._sources) + len(self._accounts)

    # --- inside -------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # The exponent is capped: 2.0**n overflows a float after about a thousand.
        doubled: float = self.policy.delay * 2.0 ** min(failures - 1, 64)
        return min(doubled, self.policy.max_delay)

    def _settle(self, key: str) -> _Source:
        record = self._sources.get(key)
        if record is None:
            # Unlocked (or forgotten) while the attempt ran.
            record = self._sources[key] = _Source()
        elif record.in_flight > 0:
            record.in_flight -= 1
        return record

    def _expire(self, record: _Source, now: float) -> None:
        failures = record.failures
        while failures and failures[0][0] <= now - self.policy.window:
            failures.popleft()
        if record.strikes and record.refused_until <= now - self.policy.window:
            record.strikes = 0  # a quiet window: the next refusal starts short again

    def _expire_account(self, record: _Account, now: float) -> None:
        failures = record.failures
        while failures and failures[0] <= now - self.policy.window:
            failures.popleft()

    def _forget_old(self, now: float) -> None:
        horizon = now - self.policy.window
        for table in (self._sources, self._accounts):
            while len(table) > self.policy.max_keys:
                table.popitem(last=False)
        # Ordered by latest failure, so the stale ones are at the front. A source is kept
        # a window past its refusal, so that failing again straight after doubles it.
        while self._sources:
            key, source = next(iter(self._sources.items()))
            if source.in_flight or max(source.last_failure, source.refused_until) > horizon:
                break
            del self._sources[key]
        while self._accounts:
            account, record = next(iter(self._accounts.items()))
            if record.last_failure > horizon:
                break
            del self._accounts[account]


def _most_first(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
