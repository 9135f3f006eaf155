"""The outbound relay: sends the outbound queue to the central SMTP relay.

Mail for other domains waits in the mail database's ``outbound`` table (one row per
recipient, written by `Delivery` in the same transaction as the 250 to the user). This
service takes due rows most urgent first (ด่วนที่สุด, ด่วนมาก, ด่วน, then normal;
older first within a level: REQUIREMENTS.md §4), sends each message once for all its
due recipients over an authenticated TLS session to ``config.central_smtp``, and
settles every recipient by the reply that decides it (`client.Transaction`). A
backlog (`PARALLEL_FROM` messages of a level or more, as after a cut) goes over up to
`SESSIONS` sessions at once, so the line is not idle while the relay commits each
message; each urgency level still finishes before the next starts:

- 2xx: the row is deleted, in the writer transaction right after the relay's 250 for
  the content (committed while the session sends its next message: `SettleBehind`),
  so a restart resends nothing the relay has accepted;
- 4xx: the row waits, 1 minute doubling to 1 hour with jitter, and counts an attempt;
- 5xx: the row is deleted and the sender gets a bounce (appliance.mail.dsn);
- queued longer than ``outbound_expiry_days`` (14): bounced as expired (4.4.7).

A relay that cannot be reached, times out, hangs up, refuses TLS or authentication, or
answers 421 is *the uplink* failing, not the message: no row counts an attempt, the
whole queue waits with its own back-off (15 s doubling to 5 min), and `wake()` (called
by the link monitor when the link comes back) tries again at once. No delay notices are
sent while the link is down; `status()` and ``edgebox status`` show the queue instead.

The one case that can send a message twice is the one SMTP cannot avoid (RFC 5321
§6.1, RFC 1047): the link dies after the content was sent and before the relay's
reply arrived. The row is still here, so the message goes again.

What this is not: the SMTP protocol (mail.smtp.client, sans-I/O) or building bounces
(mail.dsn). This file is the thin trio layer plus the queue's rules.
"""

from __future__ import annotations

import hashlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import trio

from appliance.config import Config
from appliance.directory import Directory
from appliance.mail import dsn, headers
from appliance.mail.delivery import new_queue_id
from appliance.mail.mailstore import (
    LocalCopy,
    Mailstore,
    NewMessage,
    OutboundCopy,
    QuotaExceeded,
)
from appliance.mail.smtp import client as smtp
from appliance.protection import dkim
from appliance.security.keys import KeyMaterialError
from appliance.store.blobs import BlobCorrupt, BlobMissing
from appliance.sync.central import (
    CentralCredentials,
    CentralError,
    Endpoint,
    central_client_context,
    load_credentials,
    parse_endpoint,
)
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.liveness import (
    CONNECT_DEADLINE,
    HANDSHAKE_DEADLINE,
    LinkStalled,
    LinkWatch,
    open_tcp,
    start_tls,
)
from appliance.sync.status import SyncStatus

T = TypeVar("T")

log = logging.getLogger("edgebox.relay")

STREAM = "outbound"
#: RFC 5321 §4.5.3.1.8: a server must take 100 recipients per transaction; more are
#: sent in further transactions of the same message.
MAX_RECIPIENTS = 100
#: Messages of one urgency level from which a round uses several sessions at once.
PARALLEL_FROM = 20
#: Sessions a backlog uses at once. Each message costs a session a round trip or two
#: and the relay's fsyncs before its 250; over a 10 Mbit/s line to the centre four
#: sessions left the line idle a third of the time (tests/bench/bench_relay.py).
SESSIONS = 8
#: Messages larger than this go one at a time (across sessions): a session holds its
#: message in memory, so eight 40 MB attachments at once would be 320 MB.
LARGE_MESSAGE = 1024 * 1024
RECEIVE_SIZE = 64 * 1024
SEND_CHUNK = 64 * 1024


class RelayUnavailable(Exception):
    """The central relay cannot be used now (link, TLS, auth, 421): the queue waits."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait at each step (RFC 5321 §4.5.3.2 gives the minimums)."""

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    data_start: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a deferred recipient and a downed link wait before the next try."""

    #: First wait after a 4xx for a recipient; doubled per attempt up to *cap*.
    first: float = 60.0
    cap: float = 3600.0
    #: First wait after the relay could not be used; doubled up to *link_cap*.
    link_first: float = 15.0
    link_cap: float = 300.0
    #: Longest pause between looks at the queue for new mail.
    poll: float = 5.0

    def recipient_delay(self, attempts: int, rng: random.Random) -> float:
        """Delay after the (*attempts*+1)-th transient failure, with jitter."""
        return _jittered(min(self.cap, self.first * 2 ** min(attempts, 30)), rng)

    def link_delay(self, failures: int, rng: random.Random) -> float:
        """Delay after the *failures*-th consecutive failure to use the relay."""
        return _jittered(min(self.link_cap, self.link_first * 2 ** min(failures - 1, 30)), rng)


def _jittered(delay: float, rng: random.Random) -> float:
    # Up to 20 % shorter, never longer: boxes that lost the link together do not all
    # come back in the same second, and the cap stays a cap.
    return delay * rng.uniform(0.8, 1.0)


@dataclass(frozen=True)
class QueuedRecipient:
    """One row of the outbound queue (`Mailstore.OUTBOUND_COLUMNS`)."""

    id: int
    queue_id: str
    blob_id: str
    sender: str
    recipient: str
    notify: str | None
    orcpt: str | None
    ret: str | None
    envid: str | None
    urgency: int
    created_at: int
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class QueuedMessage:
    """The due recipients of one accepted message: one SMTP transaction (or a few)."""

    recipients: tuple[QueuedRecipient, ...]

    @property
    def first(self) -> QueuedRecipient:
        return self.recipients[0]


def by_urgency(messages: Sequence[QueuedMessage]) -> list[list[QueuedMessage]]:
    """Split messages (most urgent first, as the queue hands them out) by urgency level."""
    levels: list[list[QueuedMessage]] = []
    for message in messages:
        if levels and levels[-1][0].first.urgency == message.first.urgency:
            levels[-1].append(message)
        else:
            levels.append([message])
    return levels


def group_messages(rows: Sequence[tuple[Any, ...]]) -> list[QueuedMessage]:
    """Group queue rows by message, keeping the order of each message's first row."""
    grouped: dict[str, list[QueuedRecipient]] = {}
    for row in rows:
        recipient = QueuedRecipient(*row)
        grouped.setdefault(recipient.queue_id, []).append(recipient)
    return [QueuedMessage(tuple(recipients)) for recipients in grouped.values()]


@dataclass(frozen=True)
class RelayState:
    """A read-only picture of the queue and the link, for status pages."""

    #: "up" (the last session worked), "down" (it failed), "unknown" (none yet).
    link: str
    #: Recipients waiting, by urgency level (3 = ด่วนที่สุด ... 0 = normal).
    queued: dict[int, int] = field(default_factory=dict)
    #: Unix time the oldest waiting message was accepted (None: queue empty).
    oldest_created_at: int | None = None
    #: Why the relay could not be used last time (None after a success).
    last_error: str | None = None
    #: When the relay will be tried again after a link failure (None: no back-off).
    link_retry_at: float | None = None


# ---------------------------------------------------------------------------------------
# One SMTP session with the relay: the thin I/O layer over `client.ClientConnection`


class RelaySession:
    """An open, TLS-protected, authenticated session with the central relay."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: smtp.ClientConnection,
        timeouts: Timeouts,
        watch: LinkWatch | None = None,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.timeouts = timeouts
        self.watch = watch or LinkWatch()
        self.host = ""
        self.transactions = 0
        self.last_reply: smtp.Reply | None = None
        #: No transaction is open at the server: the last one ended with the reply to
        #: its content (RFC 5321 §4.1.1.4), or none was started. Otherwise (MAIL taken
        #: but every RCPT or DATA refused) the next one starts with RSET.
        self.clean = True

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        ehlo_name: str,
        credentials: CentralCredentials | None,
        timeouts: Timeouts,
        watch: LinkWatch | None = None,
    ) -> RelaySession:
        """Connect, secure and authenticate; RelayUnavailable if any step fails."""
        watch = watch or LinkWatch()
        deadline = min(timeouts.connect, CONNECT_DEADLINE)
        try:
            stream: trio.abc.Stream = await open_tcp(
                watch, endpoint.host, endpoint.port, deadline=deadline
            )
        except (OSError, LinkStalled) as exc:
            raise RelayUnavailable(f"cannot connect to {endpoint}: {_describe(exc)}") from None
        session = cls(stream, smtp.ClientConnection(tls_active=False), timeouts, watch)
        session.host = endpoint.host
        try:
            await session._start(endpoint, context, ehlo_name, credentials)
        except BaseException:
            await session.abort()
            raise
        return session

    async def _start(
        self,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        ehlo_name: str,
        credentials: CentralCredentials | None,
    ) -> None:
        if endpoint.implicit_tls:
            # smtps:// (RFC 8314 §3.3): TLS before the greeting.
            await self._wrap_tls(endpoint, context)
            self.conn = smtp.ClientConnection(tls_active=True)
        greeting = await self._guarded(self._read_greeting())
        if greeting.code != 220:
            raise RelayUnavailable(f"relay greeting: {greeting}")
        await self._ehlo(ehlo_name)
        if not self.conn.tls_active:
            # RFC 3207: the box never sends mail or credentials in clear text, so a
            # relay without STARTTLS is a relay we cannot use (and maybe an attack).
            if "STARTTLS" not in self.conn.extensions:
                raise RelayUnavailable("relay does not offer STARTTLS; not sending in clear")
            reply = await self.command(smtp.StartTLS(), self.timeouts.command)
            if reply.code != 220:
                raise RelayUnavailable(f"STARTTLS refused: {reply}")
            await self._wrap_tls(endpoint, context)
            self.conn.tls_started()
            await self._ehlo(ehlo_name)
        if credentials is not None:
            # RFC 4954 §4 AUTH PLAIN, only now that TLS is up (RFC 4616 §6).
            if "PLAIN" not in self.conn.extensions.auth_mechanisms:
                raise RelayUnavailable("relay does not offer AUTH PLAIN")
            command = smtp.AuthPlain(credentials.username, credentials.password)
            reply = await self.command(command, self.timeouts.command)
            if reply.code != 235:
                raise RelayUnavailable(f"relay refused the box's credentials: {reply}")

    async def _wrap_tls(self, endpoint: Endpoint, context: ssl.SSLContext) -> None:
        deadline = min(self.timeouts.greeting, HANDSHAKE_DEADLINE)
        try:
            self.stream = await start_tls(
                self.watch, self.stream, context, endpoint.host, deadline=deadline
            )
        except (OSError, trio.BrokenResourceError, LinkStalled) as exc:
            raise RelayUnavailable(f"TLS with {endpoint} failed: {_describe(exc)}") from None

    async def _ehlo(self, name: str) -> None:
        reply = await self.command(smtp.Ehlo(name), self.timeouts.command)
        if not reply.positive:
            raise RelayUnavailable(f"EHLO refused: {reply}")

    async def _read_greeting(self) -> smtp.Reply:
        while True:
            event = self.conn.next_event()
            if isinstance(event, smtp.Greeting):
                return event.reply
            if event is smtp.CLOSED:
                raise RelayUnavailable("relay closed the connection before greeting")
            await self._receive(self.timeouts.greeting)

    async def command(self, command: smtp.Command, seconds: float) -> smtp.Reply:
        """Send one command and return its reply."""
        self.conn.send(command)
        await self._guarded(self._flush(seconds))
        return await self._guarded(self._reply(seconds))

    async def deliver(
        self, message: QueuedMessage, recipients: Sequence[QueuedRecipient], content: bytes
    ) -> list[smtp.Reply]:
        """Run one mail transaction; return the deciding reply for each recipient.

        Raises RelayUnavailable if the session breaks or the relay answers 421.
        """
        first = message.first
        if not self.clean:
            # Only after a transaction that did not end with the reply to its content:
            # after that reply the server is ready for MAIL again, so an RSET per
            # message would cost a round trip for nothing.
            reply = await self.command(smtp.Rset(), self.timeouts.command)
            if not reply.positive:
                raise RelayUnavailable(f"RSET refused: {reply}")
            self.clean = True
        self.transactions += 1
        addresses = [first.sender, *(r.recipient for r in recipients)]
        params = [first.ret, first.envid, *(v for r in recipients for v in (r.notify, r.orcpt))]
        refusal = self._cannot_send(len(content), addresses, params)
        if refusal is not None:
            return [refusal] * len(recipients)
        mail = smtp.Mail(
            first.sender,
            size=len(content),
            body_8bit=not content.isascii(),
            smtputf8=not all(a.isascii() for a in addresses),
            ret=first.ret,
            envid=first.envid,
        )
        commands: list[smtp.Command] = [mail]
        commands += [smtp.Rcpt(r.recipient, r.notify, r.orcpt) for r in recipients]
        extensions = self.conn.extensions
        chunking = "CHUNKING" in extensions and "PIPELINING" in extensions
        # RFC 3030 with RFC 2920: MAIL, the RCPTs and the message as one BDAT chunk go in
        # one write: one round trip per message instead of two (no wait for 354), and
        # no dot-stuffing on either side. (If every RCPT is refused the content has
        # crossed the line for nothing; for a relay taking the box's mail that is rare.)
        commands.append(smtp.Bdat(content) if chunking else smtp.Data())
        transaction = smtp.Transaction([r.recipient for r in recipients])
        self.clean = False
        await self._guarded(self._exchange(commands, transaction))
        if chunking:
            # A refused chunk may leave the relay's transaction open: RSET before the next.
            self.clean = transaction.final is not None and transaction.final.positive
        elif transaction.content_wanted:
            # RFC 2920 §3.1: a server that said 354 with no recipient gets an empty
            # message, which it must then refuse.
            body = content if transaction.accepted_any else b""
            self.conn.send(smtp.Content(body))
            await self._guarded(self._flush(self.timeouts.data_block, chunked=True))
            reply = await self._guarded(self._reply(self.timeouts.data_end))
            transaction.record(smtp.Content(b""), reply)
            self.clean = True
        results = transaction.outcome()
        if any(reply.code == 421 for reply in results):
            raise RelayUnavailable(f"relay is closing: {next(r for r in results if r.code == 421)}")
        return results

    def _cannot_send(
        self, size: int, addresses: Sequence[str], params: Sequence[str | None] = ()
    ) -> smtp.Reply | None:
        if any(_unsafe(value) for value in (*addresses, *params) if value):
            # Checked when the mail was accepted; a row that still has one (edited by
            # hand, an older version) must bounce, not crash the service on every round.
            return smtp.Reply(553, "5.1.3", ("address or parameter has control characters",))
        limit = self.conn.extensions.size_limit
        if limit is not None and size > limit:
            # RFC 1870 §6: the relay said in advance it will never take this.
            return smtp.Reply(552, "5.3.4", (f"message of {size} bytes exceeds relay limit",))
        smtputf8 = not all(a.isascii() for a in addresses)
        if smtputf8 and "SMTPUTF8" not in self.conn.extensions:
            # RFC 6531 §3.2: a non-ASCII address cannot go to a server without SMTPUTF8.
            return smtp.Reply(553, "5.6.7", ("relay does not support SMTPUTF8 addresses",))
        return None

    async def _exchange(self, commands: list[smtp.Command], transaction: smtp.Transaction) -> None:
        if "PIPELINING" in self.conn.extensions:
            # RFC 2920: MAIL, every RCPT and DATA in one write, then all their replies.
            for command in commands:
                self.conn.send(command)
            if isinstance(commands[-1], smtp.Bdat):
                await self._flush(self.timeouts.data_block, chunked=True)
            else:
                await self._flush(self.timeouts.command)
            for command in commands:
                transaction.record(command, await self._reply(self._reply_timeout(command)))
            return
        for command in commands:
            if isinstance(command, smtp.Rcpt) and not (
                transaction.mail and transaction.mail.positive
            ):
                return
            if isinstance(command, smtp.Data) and not transaction.accepted_any:
                return
            self.conn.send(command)
            await self._flush(self.timeouts.command)
            transaction.record(command, await self._reply(self._reply_timeout(command)))

    def _reply_timeout(self, command: smtp.Command) -> float:
        """RFC 5321 §4.5.3.2: DATA's 354 and the outcome of the content wait longer."""
        if isinstance(command, smtp.Data):
            return self.timeouts.data_start
        if isinstance(command, smtp.Bdat):
            return self.timeouts.data_end
        return self.timeouts.command

    async def _reply(self, seconds: float) -> smtp.Reply:
        while True:
            event = self.conn.next_event()
            if isinstance(event, smtp.Replied):
                self.last_reply = event.reply
                return event.reply
            if event is smtp.CLOSED:
                # With PIPELINING a 421 may come before the replies still awaited.
                last = self.last_reply
                after = f" after {last}" if last is not None and last.code == 421 else ""
                raise RelayUnavailable(f"relay closed the connection{after}")
            await self._receive(seconds)

    async def _receive(self, seconds: float) -> None:
        with self.watch.step(f"waiting for the relay {self.host}", seconds):
            data = await self.stream.receive_some(RECEIVE_SIZE)
        self.conn.receive_data(data)

    async def _flush(self, seconds: float, *, chunked: bool = False) -> None:
        out = self.conn.data_to_send()
        step = SEND_CHUNK if chunked else max(len(out), 1)
        # Each chunk gets its own time limit (RFC 5321 §4.5.3.2.5: "data block").
        for start in range(0, len(out), step):
            with self.watch.step(f"sending to the relay {self.host}", seconds):
                await self.stream.send_all(out[start : start + step])

    async def _guarded(self, work: Awaitable[T]) -> T:
        """Await *work*, turning every way a session can break into RelayUnavailable."""
        try:
            return await work
        except (
            OSError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
            LinkStalled,
            smtp.SMTPProtocolError,
        ) as exc:
            raise RelayUnavailable(f"session with the relay broke: {_describe(exc)}") from None

    async def quit(self) -> None:
        """Say QUIT (briefly); `abort` then closes the stream."""
        try:
            if self.conn.state not in (smtp.State.CLOSED, smtp.State.CONTENT):
                with trio.move_on_after(5):
                    await self.command(smtp.Quit(), 5)
        except (RelayUnavailable, RuntimeError):
            pass

    async def abort(self) -> None:
        """Close the stream without a word (the session is broken, cancelled or done).

        Closing twice is harmless, so this is safe in any ``finally``.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.stream.aclose()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


def _unsafe(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, LinkStalled):
        return str(exc)  # names the step, the host and the seconds
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SettleBehind:
    """Commit one session's replies while it sends its next message.

    Settling a message (deleting its rows, fsynced) takes the box's writer a commit;
    waiting for it before the next MAIL left the session idle for that long. The
    settle runs one message behind instead, never more (a session's settles stay in
    order and hold at most one message's content). A crash in between sends that
    message again, the window SMTP always has between the relay's 250 and our commit
    (module docstring); the receiving box drops such a resend (`Delivery.resend_key`).
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._previous: trio.Event | None = None

    async def start(self, settle: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Wait for this session's previous settle, then start *settle* in the background."""
        if self._previous is not None:
            await self._previous.wait()
        finished = self._previous = trio.Event()

        async def run() -> None:
            try:
                await settle(*args)
            finally:
                finished.set()

        self._nursery.start_soon(run)


# ---------------------------------------------------------------------------------------
# The service


class OutboundRelay:
    """Send the outbound queue through the central relay; `serve` runs until cancelled.

    It is handed the parts of the box it uses: the settings (the relay's address, the
    expiry), the host name it greets with, the directory (local domains and users, for
    bounces) and the mail store (the queue).
    """

    name = "outbound-relay"

    def __init__(
        self,
        status: SyncStatus,
        clock: Clock | None = None,
        *,
        config: Config,
        hostname: str,
        directory: Directory,
        mailstore: Mailstore,
        retry: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        rng: random.Random | None = None,
        batch: int = 500,
        sessions: int = SESSIONS,
        watch: LinkWatch | None = None,
    ) -> None:
        self.config = config
        self.hostname = hostname
        self.directory = directory
        self.mailstore = mailstore
        self.sync_status = status
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.batch = batch
        #: Shared with the link monitor, which cuts waits short when the link returns.
        self.watch = watch or LinkWatch()
        #: Most SMTP sessions used at once for a large backlog (`PARALLEL_FROM`).
        self.sessions = max(1, sessions)
        #: Rounds finished (a round: expire, then send what is due). Tests wait on it.
        self.rounds = 0
        self._link_failures = 0
        self._link_retry_at = 0.0
        self._link: str = "unknown"
        self._last_error: str | None = None
        self._woken = False
        self._pause_scope: trio.CancelScope | None = None
        #: Held while a `LARGE_MESSAGE` is read and sent: one at a time.
        self._large = trio.Lock()
        self._dkim_lock = trio.Lock()

    @property
    def keys_dir(self) -> Any:
        return self.config.data_dir / "keys"

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            delay = await self.run_once()
            await self._pause(delay)

    def wake(self) -> None:
        """Try the relay now, even during a link back-off (the link came back)."""
        self._link_retry_at = 0.0
        self._woken = True
        if self._pause_scope is not None:
            self._pause_scope.cancel()

    async def _pause(self, seconds: float) -> None:
        if self._woken:
            self._woken = False
            return
        with trio.CancelScope() as scope:
            self._pause_scope = scope
            await self.clock.sleep(seconds)
        self._pause_scope = None
        self._woken = False

    async def status(self) -> RelayState:
        """Return the queue by urgency, its oldest message, and the link as last seen."""
        queued: dict[int, int] = {}
        oldest: int | None = None
        for urgency, _sender, count, created in await self.mailstore.outbound_groups():
            queued[urgency] = queued.get(urgency, 0) + count
            oldest = created if oldest is None else min(oldest, created)
        retry_at = self._link_retry_at if self._link_retry_at > self.clock.now() else None
        return RelayState(self._link, queued, oldest, self._last_error, retry_at)

    # -- one round ---------------------------------------------------------------------

    async def run_once(self) -> float:
        """Expire, then send what is due; return the seconds until the next round."""
        try:
            return await self._round()
        finally:
            self.rounds += 1

    async def _round(self) -> float:
        now = self.clock.now()
        await self._expire(now)
        if now < self._link_retry_at:
            return min(self._link_retry_at - now, self.retry.link_cap)
        rows = await self.mailstore.outbound_due(int(now), self.batch)
        if not rows:
            upcoming = await self.mailstore.outbound_next_attempt()
            wait = self.retry.poll if upcoming is None else upcoming - now
            return max(0.0, min(self.retry.poll, wait))
        try:
            endpoint = parse_endpoint(self.config.central_smtp, ("smtp", "smtps"))
        except CentralError as exc:
            reason = (
                "no central SMTP relay configured" if not self.config.central_smtp else str(exc)
            )
            self._link_down(reason, now, quiet=reason == self._last_error)
            return self._link_retry_at - now
        returns = self.watch.returns
        try:
            counts = await self._send(endpoint, group_messages(rows))
        except RelayUnavailable as exc:
            self._link_down(str(exc), now)
            if self.watch.returns != returns:
                # The link came back meanwhile and cut this round's dead waits
                # short: the next round goes at once, not after a back-off.
                self._link_retry_at = now
            return self._link_retry_at - now
        self._link_failures = 0
        self._link = "up"
        self._last_error = None
        queued = await self.mailstore.outbound_length()
        self.sync_status.success(STREAM, queued=queued, **counts)
        return 0.0  # look again at once: more may be due, or arrived meanwhile

    def _link_down(self, reason: str, now: float, *, quiet: bool = False) -> None:
        self._link_failures += 1
        self._link = "down"
        self._last_error = reason
        self._link_retry_at = now + self.retry.link_delay(self._link_failures, self.rng)
        if not quiet:
            log.warning("outbound relay unavailable (queue waits): %s", reason)
            self.sync_status.failure(STREAM, reason)

    async def _send(self, endpoint: Endpoint, messages: list[QueuedMessage]) -> dict[str, int]:
        counts = {"sent": 0, "deferred": 0, "bounced": 0}
        context = central_client_context(self.keys_dir)
        credentials = load_credentials(self.keys_dir)

        async def open_session() -> RelaySession:
            return await RelaySession.open(
                endpoint, context, self.hostname, credentials, self.timeouts, self.watch
            )

        sessions = [await open_session()]
        # Every session is closed on the way out, whatever happens: a cancel that lands
        # in the first QUIT must not leave the others' sockets to the garbage collector.
        try:
            for level in by_urgency(messages):
                # A catch-up runs on several sessions, so the line carries the next
                # message while the relay commits the last one (one session leaves it
                # idle for a round trip and a commit per message). A few messages go
                # on one session, strictly in queue order.
                wanted = self.sessions if len(level) >= PARALLEL_FROM else 1
                while len(sessions) < wanted:
                    try:
                        sessions.append(await open_session())
                    except RelayUnavailable as exc:
                        log.info(
                            "outbound relay: going on with %d sessions: %s", len(sessions), exc
                        )
                        wanted = len(sessions)
                await self._send_level(sessions[:wanted], level, counts)
            for session in sessions:
                await session.quit()
        finally:
            for session in sessions:
                await session.abort()
        return counts

    async def _send_level(
        self, sessions: list[RelaySession], level: list[QueuedMessage], counts: dict[str, int]
    ) -> None:
        """Send one urgency level's messages, each session taking the next in queue order.

        The level is done before the next, less urgent one starts. If a session breaks,
        the others finish the message in hand and stop (cancelling them mid-message
        would risk sending those twice); the failure is then raised.
        """
        waiting = iter(level)
        failures: list[RelayUnavailable] = []

        async def work(session: RelaySession, settling: trio.Nursery) -> None:
            behind = SettleBehind(settling)
            for message in waiting:  # shared: the next message in queue order
                try:
                    await self._send_message(session, message, counts, behind)
                except RelayUnavailable as exc:
                    failures.append(exc)
                if failures:
                    return

        # Settles run in their own nursery, so the level (and the round) ends only once
        # every reply has been committed, including after a session broke.
        async with trio.open_nursery() as settling:
            if len(sessions) == 1:
                # A few messages: one session, strictly in queue order.
                await work(sessions[0], settling)
            else:
                async with trio.open_nursery() as nursery:
                    for session in sessions:
                        nursery.start_soon(work, session, settling)
        if failures:
            raise failures[0]

    async def _send_message(
        self,
        session: RelaySession,
        message: QueuedMessage,
        counts: dict[str, int],
        behind: SettleBehind,
    ) -> None:
        blobs = self.mailstore.blobs
        blob_id = message.first.blob_id

        def load(limit: int | None) -> bytes | None:
            # One thread hop for the usual small message: the size is in the header.
            if limit is not None and blobs.size(blob_id) > limit:
                return None
            return blobs.get(blob_id)

        try:
            content = await trio.to_thread.run_sync(load, LARGE_MESSAGE)
            if content is None:
                async with self._large:
                    content = await trio.to_thread.run_sync(load, None)
                    assert content is not None
                    content = await self._dkim_signed(content)
                    await self._deliver_chunks(session, message, content, counts, behind)
                return
        except (BlobMissing, BlobCorrupt) as exc:
            # Not the relay's fault and never going to improve: tell the sender.
            log.error("outbound id=%s: content unreadable (%s)", message.first.queue_id, exc)
            failures = [
                (r, "5.3.0", "local error: message content unreadable") for r in message.recipients
            ]
            await self._bounce(message, failures, b"")
            counts["bounced"] += len(failures)
            return
        content = await self._dkim_signed(content)
        await self._deliver_chunks(session, message, content, counts, behind)

    async def _dkim_signed(self, content: bytes) -> bytes:
        """Sign *content* for its author's agency (RFC 6376), making the key if need be.

        Signed here, where mail leaves the box, from the stored blob, which is never
        changed: a resend is signed afresh from the same bytes, not signed twice.
        Mail whose author is not of an agency this box serves goes as it came.
        """
        domain = dkim.author_domain(content)
        if domain is None or await self.directory.agency(domain) is None:
            return content
        keyring = dkim.DkimKeyring(self.keys_dir)
        today = datetime.now(UTC).date()

        def signed() -> bytes:
            try:
                return dkim.sign_outbound(keyring, content)
            except (dkim.DkimKeyError, KeyMaterialError) as exc:
                # A damaged key must not hold the agency's mail: it goes unsigned, and
                # loudly (receivers may then treat it as unauthenticated).
                log.error("DKIM: cannot sign for %s, sending unsigned: %s", domain, exc)
                return content

        try:
            # One at a time: sessions sending at once must not both make an agency's
            # first key. Once it exists this is one small file read.
            async with self._dkim_lock:
                await trio.to_thread.run_sync(keyring.ensure, domain, today)
        except (dkim.DkimKeyError, KeyMaterialError, OSError) as exc:
            log.error("DKIM: no key for %s, sending unsigned: %s", domain, exc)
            return content
        return await trio.to_thread.run_sync(signed)

    async def _deliver_chunks(
        self,
        session: RelaySession,
        message: QueuedMessage,
        content: bytes,
        counts: dict[str, int],
        behind: SettleBehind,
    ) -> None:
        recipients = message.recipients
        for start in range(0, len(recipients), MAX_RECIPIENTS):
            chunk = recipients[start : start + MAX_RECIPIENTS]
            replies = await session.deliver(message, chunk, content)
            await behind.start(self._settle, message, chunk, replies, content, counts)

    async def _settle(
        self,
        message: QueuedMessage,
        recipients: Sequence[QueuedRecipient],
        replies: Sequence[smtp.Reply],
        content: bytes,
        counts: dict[str, int],
    ) -> None:
        now = self.clock.now()
        done = [r.id for r, reply in zip(recipients, replies, strict=True) if reply.positive]
        deferred = [
            (r.id, int(now + self.retry.recipient_delay(r.attempts, self.rng)), str(reply))
            for r, reply in zip(recipients, replies, strict=True)
            if reply.transient
        ]
        failed = [
            (r, reply.status(), str(reply))
            for r, reply in zip(recipients, replies, strict=True)
            if reply.permanent
        ]
        # Deleted right after the 250: a restart from here on resends nothing accepted.
        await self.mailstore.outbound_settle(done=done, deferred=deferred)
        first = message.first
        if done:
            log.info("relayed id=%s from=<%s> rcpts=%d", first.queue_id, first.sender, len(done))
        for row_id, _, error in deferred:
            log.info("deferred id=%s row=%d: %s", first.queue_id, row_id, error)
        if failed:
            await self._bounce(message, failed, content)
        counts["sent"] += len(done)
        counts["deferred"] += len(deferred)
        counts["bounced"] += len(failed)

    # -- expiry and bounces ------------------------------------------------------------

    async def _expire(self, now: float) -> None:
        days = self.config.outbound_expiry_days
        cutoff = int(now - days * 86400)
        for _ in range(1000):  # bounded: each pass removes the rows it read
            rows = await self.mailstore.outbound_expired(cutoff, self.batch)
            if not rows:
                return
            for message in group_messages(rows):
                try:
                    content = await trio.to_thread.run_sync(
                        self.mailstore.blobs.get, message.first.blob_id
                    )
                except (BlobMissing, BlobCorrupt):
                    content = b""
                failures = [
                    (r, dsn.EXPIRED_STATUS, r.last_error or "delivery time expired")
                    for r in message.recipients
                ]
                log.warning(
                    "expired id=%s after %g days: %d recipients bounced",
                    message.first.queue_id, days, len(failures),
                )  # fmt: skip
                await self._bounce(message, failures, content, expired_after_days=days)

    async def _bounce(
        self,
        message: QueuedMessage,
        failures: Sequence[tuple[QueuedRecipient, str, str]],
        content: bytes,
        *,
        expired_after_days: float | None = None,
    ) -> None:
        """Drop the failed rows and, in the same transaction, give the sender a DSN."""
        first = message.first
        ids = [r.id for r, _, _ in failures]
        # A 5xx was just received; an expired row's last try is not recorded.
        attempted = None if expired_after_days is not None else self.clock.now()
        noticed = [
            dsn.FailedRecipient(r.recipient, status, diagnostic, r.orcpt, last_attempt=attempted)
            for r, status, diagnostic in failures
            if dsn.wants_failure_notice(r.notify)
        ]  # fmt: skip
        if not first.sender or not noticed:
            # RFC 5321 §4.5.5: never a bounce for a bounce; RFC 3461 §4.1: NOTIFY.
            await self.mailstore.outbound_settle(done=ids)
            return
        local, outbound = await self._bounce_route(first.sender)
        if not local and not outbound:
            log.warning(
                "bounce for id=%s dropped: sender <%s> is gone", first.queue_id, first.sender
            )
            await self.mailstore.outbound_settle(done=ids)
            return
        report = dsn.build_bounce(
            reporting_mta=self.hostname,
            sender=first.sender,
            recipients=noticed,
            original=content,
            arrival=first.created_at,
            now=self.clock.now(),
            ret=first.ret,
            envid=first.envid,
            expired_after_days=expired_after_days,
        )
        blobs = self.mailstore.blobs
        blob_id = await trio.to_thread.run_sync(blobs.put, report)
        message_id = headers.message_id(headers.parse_headers(report))
        new = NewMessage(
            queue_id=new_queue_id(),
            blob_id=blob_id,
            size=len(report),
            content_hash=hashlib.sha256(report).hexdigest(),
            message_id_digest=None if message_id is None else blobs.digest(message_id.encode()),
            sender="",
            classification=0,
            urgency=first.urgency,
            internal_date=int(self.clock.now()),
        )
        try:
            await self.mailstore.outbound_settle(
                done=ids, report=new, report_local=local, report_outbound=outbound,
                report_content=report,
            )  # fmt: skip
        except QuotaExceeded:
            log.warning(
                "bounce for id=%s dropped: <%s> is over quota", first.queue_id, first.sender
            )
            await self.mailstore.outbound_settle(done=ids)
            await self.mailstore.release_blobs([blob_id])
            return
        log.info("bounced id=%s to <%s>: %d recipients", first.queue_id, first.sender, len(ids))

    async def _bounce_route(self, sender: str) -> tuple[list[LocalCopy], list[OutboundCopy]]:
        """Where the bounce for *sender* goes: their mailbox here, or out through the queue."""
        domain = sender.rpartition("@")[2].lower()
        if domain in await self.directory.local_domains():
            user = await self.directory.user(sender)
            if user is None:
                return [], []
            return [LocalCopy(owner=user.address, quota_bytes=user.quota_bytes)], []
        return [], [OutboundCopy(sender)]


__all__ = [
    "OutboundRelay",
    "QueuedMessage",
    "QueuedRecipient",
    "RelaySession",
    "RelayState",
    "RelayUnavailable",
    "RetryPolicy",
    "Timeouts",
    "by_urgency",
    "group_messages",
]
