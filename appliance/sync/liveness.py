"""Deadlines and keep-alives for the uplink's connections, and the cut when the link returns.

Every replicator talks to the centre over TCP (+TLS): the relay (SMTP), mailbox sync
(IMAP), chat and directory sync (HTTPS to the hub). A connection made while the path is
black-holed can stay silent for ever, even after the path works again (its handshake
was lost, and nothing will resend it), and a long wait on such a connection held a
replicator's round for a minute after the link was back (issue 24). Three things
bound that wait, all here:

- **Deadlines sized to the link.** Each I/O step is a `LinkWatch.step` with an *idle*
  deadline that moves forward only while bytes move (`IoStep.moved`): a TCP connect or a
  TLS handshake gets seconds (`CONNECT_DEADLINE`, `HANDSHAKE_DEADLINE`), a wait for an
  answer gets what the caller allows for a server that is thinking.
- **Keep-alives.** `open_tcp` turns on TCP keepalive with short timers
  (`KEEPALIVE_IDLE`, `KEEPALIVE_INTERVAL`, `KEEPALIVE_COUNT`), so the kernel declares a
  peer that stopped answering dead within about 11 s of silence even while the
  application waits patiently for a long answer.
- **The link's word.** The link monitor (`appliance.sync.link`) tells the watch when a
  probe gets through (`probe_succeeded`) and when gin goes down (`link_down`). Steps
  that have not moved a byte since before that probe began are cut short: a fresh
  handshake just worked, so a handshake silent since before it never will; and after a
  real outage (a failed or hung probe) no old wait is worth keeping. A cut or a missed
  deadline raises `LinkStalled` with a reason that names the step, the host and the
  seconds; each I/O layer turns it into its own "try again" error, and `returns` lets a
  replicator see that its round failed *because* the link came back, so it starts the
  next round at once instead of backing off.

A step is registered only while it waits, so the set of steps is as large as the
number of connections in flight (a few dozen at most), and nothing outlives its step.

What this is not: the probes themselves (`appliance.sync.link`), or retry policy (each
replicator keeps its own back-off).
"""

from __future__ import annotations

import enum
import math
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import trio

#: Seconds a TCP connect may take (SYN, SYN-ACK, ACK; retransmitted SYNs included).
CONNECT_DEADLINE: Final = 5.0
#: Seconds a TLS handshake (or a server's greeting line) may go without a byte.
HANDSHAKE_DEADLINE: Final = 5.0
#: TCP keepalive: first probe after this many idle seconds, then every
#: `KEEPALIVE_INTERVAL`, and the connection is dead after `KEEPALIVE_COUNT` unanswered.
KEEPALIVE_IDLE: Final = 5
KEEPALIVE_INTERVAL: Final = 2
KEEPALIVE_COUNT: Final = 3
#: A step that moved a byte this recently is alive, whatever a probe says: it is
#: never cut (a server answering a large FETCH is busy, not dead).
STUCK_AFTER: Final = 1.0


class StepKind(enum.Enum):
    #: Connect, TLS handshake, greeting: a healthy server answers at once.
    HANDSHAKE = "handshake"
    #: Waiting for an answer the server may take a while to compute, or sending one.
    EXCHANGE = "exchange"


class LinkStalled(Exception):
    """An I/O step missed its deadline or was cut short by the link's return: retry."""


class IoStep:
    """One wait for bytes on one connection: its deadline and when it last moved."""

    def __init__(self, what: str, idle: float, kind: StepKind) -> None:
        self.what = what
        self.idle = idle
        self.kind = kind
        now = trio.current_time()
        self.started = now
        #: trio time of the last byte moved (or of the start).
        self.last_progress = now
        self.scope = trio.CancelScope(deadline=now + idle)
        #: Why the watch cut this step short (None: it was not cut).
        self.cut_reason: str | None = None

    def moved(self, count: int) -> None:
        """Record *count* bytes moved: the idle deadline starts again from now."""
        if count > 0:
            now = trio.current_time()
            self.last_progress = now
            self.scope.deadline = now + self.idle

    def cut(self, why: str) -> None:
        """Cancel the wait; `LinkWatch.step` raises `LinkStalled` with *why*."""
        if self.cut_reason is None:
            silent = trio.current_time() - self.last_progress
            self.cut_reason = f"{self.what}: cut short after {silent:.1f} s without a byte: {why}"
        self.scope.cancel()

    def reason(self) -> str:
        if self.cut_reason is not None:
            return self.cut_reason
        return f"{self.what}: timed out (no byte for {self.idle:g} s)"


class LinkWatch:
    """The steps waiting on the uplink, and the link monitor's word on them.

    One per box, shared by the link monitor and every replicator (`uplink_services`).
    """

    def __init__(self) -> None:
        self._steps: set[IoStep] = set()
        #: Times the link came back (a probe got through after trouble). A replicator
        #: compares it before and after a failed round: changed means "retry now".
        self.returns = 0
        #: Steps cut short since start (tests and figures).
        self.cuts = 0
        #: trio time a step last failed on its own (refused, reset, deadline): the
        #: link monitor probes at once rather than at its next interval.
        self.failed_at: float | None = None
        #: trio time until which the hub asked not to be called (its 503's
        #: Retry-After): every client of the box holds back until then, and the link
        #: monitor does not count a failed probe of a hub that said it is busy.
        self.busy_until: float | None = None

    def hub_busy(self, retry_after: float) -> None:
        """The hub answered busy: hold every request to it back *retry_after* seconds."""
        until = trio.current_time() + max(0.0, retry_after)
        self.busy_until = until if self.busy_until is None else max(self.busy_until, until)

    def busy_for(self) -> float:
        """Seconds left of the hub's last "busy, come back later"; 0 when none is left."""
        if self.busy_until is None:
            return 0.0
        return max(0.0, self.busy_until - trio.current_time())

    @contextmanager
    def step(self, what: str, idle: float, kind: StepKind = StepKind.EXCHANGE) -> Iterator[IoStep]:
        """Wait for bytes inside the block for at most *idle* seconds between bytes.

        Raises `LinkStalled` if the deadline passes or the watch cuts the step; any
        other error of the block passes through unchanged.
        """
        io = IoStep(what, idle if math.isfinite(idle) else math.inf, kind)
        self._steps.add(io)
        try:
            with io.scope:
                yield io
        except (OSError, trio.BrokenResourceError):
            self.failed_at = trio.current_time()  # refused or reset: ask the link now
            raise
        finally:
            self._steps.discard(io)
        if io.scope.cancelled_caught:
            if io.cut_reason is None:
                self.failed_at = trio.current_time()
            raise LinkStalled(io.reason())

    @property
    def waiting(self) -> int:
        """Steps waiting now."""
        return len(self._steps)

    def stalled_since(self, seconds: float) -> float | None:
        """The oldest last-progress time among steps silent for *seconds* or more."""
        limit = trio.current_time() - seconds
        times = [s.last_progress for s in self._steps if s.last_progress <= limit]
        return min(times) if times else None

    def probe_succeeded(self, started: float, *, after_trouble: bool) -> int:
        """A probe begun at trio time *started* got through; cut what cannot recover.

        Handshakes silent since before *started* are cut always (the probe's own
        handshake just completed). After trouble (a failed or hung probe, gin down)
        every step silent since before *started* is cut. Either way, if anything was
        cut or there was trouble, `returns` counts a return of the link. Return the
        number of steps cut.
        """
        kinds = (StepKind.HANDSHAKE, StepKind.EXCHANGE) if after_trouble else (StepKind.HANDSHAKE,)
        cut = self._cut(started, kinds, "the link came back (a probe got through)")
        if after_trouble or cut:
            self.returns += 1
        return cut

    def link_down(self, since: float) -> int:
        """Gin was declared down; cut every step silent since before trio time *since*."""
        return self._cut(since, (StepKind.HANDSHAKE, StepKind.EXCHANGE), "the link is down")

    def _cut(self, before: float, kinds: tuple[StepKind, ...], why: str) -> int:
        limit = min(before, trio.current_time() - STUCK_AFTER)
        doomed = [s for s in self._steps if s.kind in kinds and s.last_progress < limit]
        for io in doomed:
            io.cut(why)
        self.cuts += len(doomed)
        return len(doomed)


def describe(exc: BaseException) -> str:
    """A reason that is never empty: the message, else the exception's type."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def set_keepalive(sock: trio.socket.SocketType) -> None:
    """Turn on TCP keepalive with the short timers above (Linux; a no-op elsewhere)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:
        pass  # a socket that will not take the option still works; the deadlines remain


async def open_tcp(
    watch: LinkWatch, host: str, port: int, *, deadline: float = CONNECT_DEADLINE
) -> trio.SocketStream:
    """Connect to *host*:*port* within *deadline* seconds, with keep-alives on.

    Raises `LinkStalled` on the deadline and OSError if the connection is refused.
    """
    with watch.step(f"TCP connect to {host}:{port}", deadline, StepKind.HANDSHAKE):
        stream = await trio.open_tcp_stream(host, port)
    set_keepalive(stream.socket)
    return stream


async def start_tls(
    watch: LinkWatch,
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    host: str,
    *,
    deadline: float = HANDSHAKE_DEADLINE,
) -> trio.SSLStream[trio.abc.Stream]:
    """Run a TLS handshake over *stream* within *deadline* seconds.

    Raises `LinkStalled` on the deadline (the stream is then closed: a handshake cut
    half-way leaves nothing usable), and what the handshake raises otherwise.
    """
    tls = trio.SSLStream(stream, context, server_hostname=host)
    try:
        with watch.step(f"TLS handshake with {host}", deadline, StepKind.HANDSHAKE):
            await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tls)
        raise
    return tls


__all__ = [
    "CONNECT_DEADLINE",
    "HANDSHAKE_DEADLINE",
    "IoStep",
    "LinkStalled",
    "LinkWatch",
    "StepKind",
    "describe",
    "open_tcp",
    "set_keepalive",
    "start_tls",
]
