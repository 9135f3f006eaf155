"""The SMTP listeners: move bytes between TCP/TLS streams and the protocol core.

This is the thin I/O layer (STYLE.md, like hypercorn's tcp_server): it owns sockets,
TLS, timeouts and the connection limit, and hands every decision to the policy and to
delivery. One `SMTPService` serves one port (MX, submission or submissions).
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime

import trio

from appliance.compliance.traffic_log import TrafficRecord
from appliance.config import Config
from appliance.directory import Directory, normalise_address
from appliance.directory.signin import Refused, SignIn
from appliance.health.disk_guard import DiskGuard, is_disk_full
from appliance.mail.delivery import Envelope, Recipient, Trace, with_protocol
from appliance.mail.mailstore import Mailstore, QuotaExceeded
from appliance.mail.smtp import protocol as smtp
from appliance.mail.smtp.authentication import (
    DMARC_REJECTED,
    Disposition,
    InboundAuthentication,
    MessageCheck,
    SpfCheck,
)
from appliance.mail.smtp.budget import MessageBudget
from appliance.mail.smtp.policy import (
    AUTHZ_DENIED,
    OVER_QUOTA,
    Port,
    SMTPPolicy,
    parse_trusted_relays,
)
from appliance.mail.smtp.pool import Deliverer, RecordLog, SMTPMetrics
from appliance.net.listeners import ConnectionGate, peer_ip, serve_tcp, start_tls
from appliance.protection import rspamd
from appliance.protection import smtp as scanning
from appliance.protection.scanner import Protection
from appliance.protection.verdict import Outcome, Verdict, strip_scan_headers
from appliance.store.database import release_free_heap

log = logging.getLogger("edgebox.smtp")


TOO_MANY_CONNECTIONS = smtp.Reply(421, "4.7.0", "Too many connections, try again later")
LOCAL_ERROR = smtp.Reply(451, "4.3.0", "Local error in processing, try again later")
#: RFC 5321 §3.8: a server that must end a session says 421 first (RFC 3463 4.3.0:
#: other or undefined mail system status).
SERVER_FAULT = "Internal error (reference {}), closing connection; try again later"
TEMPORARY_AUTH_FAILURE = smtp.Reply(454, "4.7.0", "Temporary authentication failure")
#: The sign-in guard refuses the source (RFC 5321 §3.8: 421 may answer any command).
AUTH_REFUSED = smtp.Reply(
    421, "4.7.0", "Too many failed sign-ins from your address, try again later"
)
#: Closing after this connection's own repeated 535s.
TOO_MANY_AUTH_FAILURES = smtp.Reply(421, "4.7.0", "Too many failed sign-ins, closing connection")

#: The disk guard holds the data volume's reserve (appliance.health.disk_guard).
#: RFC 5321 §4.2.3 452 "insufficient system storage", RFC 3463 §3.4 4.3.1 "mail system
#: full": temporary, so the sender keeps the message and retries.
STORAGE_FULL = smtp.Reply(452, "4.3.1", "Insufficient system storage, try again later")

RECEIVE_SIZE = 64 * 1024

#: A message at least this big gives glibc's free heap back after it is stored (below).
TRIM_AFTER_SIZE = 256 * 1024
#: ...but not more often than this (seconds): a trim walks the heaps.
TRIM_INTERVAL = 1.0


class SMTPService:
    """One SMTP listener; `serve` is started by the supervisor.

    It is handed the parts of the box it uses (appliance.registry composes them): the
    settings, the host name it greets with, the TLS context, the directory and the
    mail store (the policy's lookups), delivery, the sign-in check, the traffic log,
    the disk guard and the metrics. In an MX worker process (appliance.mail.smtp.pool)
    delivery, the traffic log and the metrics are the main process's, forwarded.
    """

    def __init__(
        self,
        port: Port,
        *,
        config: Config,
        hostname: str,
        tls: ssl.SSLContext,
        directory: Directory,
        mailstore: Mailstore,
        delivery: Deliverer,
        signin: SignIn,
        traffic: RecordLog,
        disk_guard: DiskGuard,
        metrics: SMTPMetrics,
        protection: Protection | None = None,
        authenticate: InboundAuthentication | None = None,
        budget: MessageBudget | None = None,
    ) -> None:
        self.port = port
        #: Bytes of complete messages being checked and stored, shared by the box's
        #: SMTP ports (appliance.mail.smtp.budget); a service alone gets its own.
        self.budget = budget if budget is not None else MessageBudget()
        self._trimmed_at = float("-inf")
        #: Scans every message before it is accepted (appliance.protection); None: off.
        self.protection = protection
        self.config = config
        self.hostname = hostname
        self.tls = tls
        self.delivery = delivery
        self.signin = signin
        self.traffic = traffic
        self.disk_guard = disk_guard
        self.metrics = metrics
        self.name = f"smtp-{port.value}"
        self.policy = SMTPPolicy(
            port, directory, mailstore, parse_trusted_relays(config.mx_trusted_relays)
        )
        self.gate = ConnectionGate(
            config.max_connections,
            TOO_MANY_CONNECTIONS.encode(enhanced_codes=False),
            tls if port is Port.SUBMISSIONS else None,
            service=self.name,
            per_source=config.max_connections_per_source,
        )
        #: The MX's SPF, DKIM and DMARC (appliance.protection.authentication), whose
        #: RFC 8601 field goes on top of every message; None on the other ports.
        self.authenticate = authenticate
        self.session_config = smtp.SessionConfig(
            hostname=hostname,
            max_message_size=config.max_message_size,
            max_recipients=config.max_recipients,
            starttls_available=port is not Port.SUBMISSIONS,
            require_auth=port.submission,
            require_tls=port is Port.MX and config.mx_require_tls,
            auth_offered=port.submission,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_tcp(self.name, self.config, self.handle, task_status)

    async def serve_listeners(self, listeners: list[trio.SocketListener]) -> None:
        """Serve sockets bound by another process (an MX worker's inherited listener)."""
        await trio.serve_listeners(self.handle, listeners)

    def release_free_heap(self) -> None:
        """Give glibc's free heap back after a large message, at most once a second.

        The copies of a large message are freed in the worker threads that made them;
        with the mapping threshold fixed (`limit_allocator_retention`) the largest go
        straight back, but a parse's many small pieces leave free pages inside the
        heaps that RSS keeps counting until the supervisor's trim a minute later.
        """
        now = trio.current_time()
        if now - self._trimmed_at >= TRIM_INTERVAL:
            self._trimmed_at = now
            release_free_heap()

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection from accept to close."""
        client_ip = peer_ip(stream) or "unknown"
        await self.gate.admit(stream, lambda s: SMTPSession(self, s, client_ip))


class SMTPSession:
    """One client's session: drive the core, answer its events."""

    def __init__(self, service: SMTPService, stream: trio.abc.Stream, client_ip: str) -> None:
        self.service = service
        self.stream = stream
        self.client_ip = client_ip
        self.conn = smtp.ServerConnection(
            service.session_config, tls_active=service.port is Port.SUBMISSIONS
        )
        self.recipients: list[Recipient] = []
        self.auth_failures = 0
        #: SPF's answer for this transaction's MAIL FROM (MX, untrusted clients only).
        self.spf: SpfCheck | None = None

    def _idle_timeout(self) -> float:
        config = self.service.config
        if self.service.port.submission and self.conn.authenticated_as is None:
            # Only a password is awaited; a silent client just holds a slot. The MX
            # port keeps RFC 5321 §4.5.3.2's 5 minutes: it has nobody to authenticate.
            return min(config.idle_timeout, config.preauth_idle_timeout)
        return config.idle_timeout

    async def run(self) -> None:
        conn = self.conn
        conn.greet()
        while True:
            event = conn.next_event()
            if event is smtp.NEED_DATA:
                await self._flush()
                data: bytes | bytearray = b""
                with trio.move_on_after(self._idle_timeout()) as idle:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                if idle.cancelled_caught:
                    conn.close(smtp.TIMEOUT)
                else:
                    conn.receive_data(data)
            elif event is smtp.CLOSED:
                await self._flush()
                return
            elif isinstance(event, smtp.StartTLS):
                await self._flush()
                self.stream = await start_tls(self.stream, self.service.tls)
                conn.tls_started()
                self.recipients = []
            elif isinstance(event, smtp.AuthAttempt):
                await self._authenticate(event)
            elif isinstance(event, smtp.MailFrom):
                self.recipients = []
                self._answer(await self._sender(event))
            elif isinstance(event, smtp.RcptTo):
                await self._recipient(event)
            elif isinstance(event, smtp.MessageData):
                await self._message(event)

    async def fault(self, reference: str) -> None:
        """End the session with 421 4.3.0 after a server bug; nothing pending was taken."""
        self.conn.close(smtp.Reply(421, "4.3.0", SERVER_FAULT.format(reference)))
        await self._flush()

    async def _authenticate(self, event: smtp.AuthAttempt) -> None:
        signin = self.service.signin
        try:
            user = await signin.check(
                self.service.name, event.authcid, event.password, self.client_ip
            )
        except Exception:
            log.exception("authentication backend failed")
            self.conn.reject(TEMPORARY_AUTH_FAILURE)
            return
        if isinstance(user, Refused):
            # The guard has logged it; a refused source gets nothing more here.
            self.conn.close(AUTH_REFUSED)
            return
        if user is None:
            # `SignIn` has logged who and from where (never the password).
            self.conn.reject(smtp.AUTH_FAILED)
            self.auth_failures += 1
            limit = self.service.config.auth_failures_per_connection
            if self.auth_failures >= limit and self.conn.state is not smtp.State.CLOSED:
                self.conn.close(TOO_MANY_AUTH_FAILURES)
            return
        if event.authzid and _same_address(event.authzid) != user.address:
            # Acting for another user is for service accounts (sync), not people.
            await self._record("auth-failed", user=user.address, result="535 5.7.8 authzid")
            self.conn.reject(AUTHZ_DENIED)
            return
        log.info("auth ok user=%s ip=%s", user.address, self.client_ip)
        # The directory's normalised form, so sender checks compare like with like.
        self.conn.accept(identity=user.address)

    async def _sender(self, event: smtp.MailFrom) -> smtp.Reply | None:
        # Refused before the client sends a byte of DATA when the disk is at its
        # reserve; RFC 1870 SIZE, when given, is counted against it too.
        size = event.params.get("SIZE")
        announced = int(size) if size and size.isdigit() else 0
        if not self.service.disk_guard.room_for(announced):
            self.service.metrics.storage_refusals.labels(self.service.name).inc()
            return STORAGE_FULL
        service = self.service
        self.spf = None
        if service.authenticate is not None and not service.policy.trusted_relay(self.client_ip):
            # RFC 7208 §2.4: SPF belongs to MAIL FROM (for a null reverse-path, to the
            # HELO name). Kept for DMARC at the end of DATA.
            self.spf = await service.authenticate.check_sender(
                self.client_ip if self.client_ip != "unknown" else None,
                self.conn.helo_name,
                event.reverse_path,
            )
        refusal = await service.policy.check_sender(
            event, self.conn.authenticated_as, self.client_ip, self.spf
        )
        if refusal is not None and self.spf is not None:
            await self._record(
                "sender-rejected",
                sender=event.reverse_path[:320],
                result=f"{refusal.code} {refusal.enhanced} spf={self.spf.result}",
            )
        return refusal

    async def _recipient(self, event: smtp.RcptTo) -> None:
        mail = self.conn.mail_from
        size = mail.params.get("SIZE") if mail else None
        refusal, recipient = await self.service.policy.check_recipient(
            event, int(size) if size else None
        )
        if recipient is not None:
            self.recipients.append(recipient)
        else:
            assert refusal is not None
            await self._record(
                "rcpt-rejected",
                sender=mail.reverse_path if mail else None,
                recipients=(event.forward_path[:320],),
                result=f"{refusal.code} {refusal.enhanced}",
            )
        self._answer(refusal)

    async def _message(self, event: smtp.MessageData) -> None:
        # The copies and parses a message costs from here to the reply are bounded
        # box-wide; a session beyond the budget waits here, before its reply.
        size = len(event.content)
        async with self.service.budget.hold(size):
            await self._check_and_store(event)
        if size >= TRIM_AFTER_SIZE:
            self.service.release_free_heap()

    async def _check_and_store(self, event: smtp.MessageData) -> None:
        protection = self.service.protection
        if protection is None:
            await self._decide(event, None)
            return
        # The scan starts at DATA's end, beside DKIM/DMARC and the policy: all of them
        # mostly wait on others (DNS, clamd, rspamd), and the verdict is needed only
        # after them. A message refused before then has its scan cancelled.
        envelope, domains = self._scan_request(event)
        scan = _PendingScan()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scan.run, protection, event.content, envelope, domains)
            try:
                await self._decide(event, scan)
            finally:
                nursery.cancel_scope.cancel()

    async def _decide(self, event: smtp.MessageData, scan: _PendingScan | None) -> None:
        """Accept (deliver, then 250) or refuse the message of *event*."""
        conn = self.conn
        service = self.service
        check: MessageCheck | None = None
        if service.authenticate is not None:
            # DKIM, and DMARC with this transaction's SPF answer (None from a trusted
            # relay: DKIM only). RFC 7489 §6.6.4: p=reject is refused here, at DATA.
            check = await service.authenticate.check_message(event.content, self.spf)
        if check is not None and check.disposition is Disposition.REFUSE:
            refusal: smtp.Reply | None = DMARC_REJECTED
        else:
            refusal = await service.policy.check_message(
                event.content, conn.authenticated_as, event.reverse_path, self.client_ip,
                authentication=check,
            )  # fmt: skip
        if refusal is not None:
            await self._record_message(event, refusal, authentication=check)
            conn.reject(refusal)
            return
        if not service.disk_guard.room_for(len(event.content)):
            service.metrics.storage_refusals.labels(self.service.name).inc()
            await self._record_message(event, STORAGE_FULL)
            conn.reject(STORAGE_FULL)
            self.recipients = []
            return
        content, folder = event.content, "INBOX"
        #: Fields that go on top, built into the stored form once by delivery.
        on_top: tuple[bytes, ...] = ()
        protection = service.protection
        verdict = await scan.verdict() if scan is not None else None
        if protection is not None and verdict is not None:
            reply = scanning.refusal(
                verdict, submission=self.service.port.submission,
                submission_unavailable=protection.submission_unavailable,
            )  # fmt: skip
            if reply is not None:
                await self._record_message(event, reply, verdict=verdict, authentication=check)
                conn.reject(reply)
                self.recipients = []
                return
        if check is not None:
            # RFC 8601: our verdicts on top, for the recipients' clients and filters.
            content, on_top = check.body, (check.field,)
            if check.disposition is Disposition.JUNK:
                folder = "Junk"  # RFC 7489 §6.6.4 p=quarantine, or SPF fail
        if protection is not None and verdict is not None and verdict.accepted:
            # A sender's own X-Spam-* fields go: only the box's may say "scanned".
            content = strip_scan_headers(content)
            on_top = (protection.headers(verdict), *on_top)
            if verdict.outcome is Outcome.JUNK:
                folder = "Junk"
        envelope = Envelope(
            sender=event.reverse_path,
            recipients=tuple(self.recipients),
            trace=Trace(
                helo=conn.helo_name or "unknown",
                client_ip=self.client_ip,
                protocol=with_protocol(
                    extended=conn.extended,
                    tls=conn.tls_active,
                    auth=conn.authenticated_as is not None,
                    utf8="SMTPUTF8" in event.mail_params,
                ),
            ),
            ret=event.mail_params.get("RET"),
            envid=event.mail_params.get("ENVID"),
        )
        try:
            queue_id = await self.service.delivery.deliver(
                envelope, content, folder=folder, on_top=on_top
            )
        except QuotaExceeded as exc:
            log.info("over quota owner=%s", exc.owner)
            await self._record_message(event, OVER_QUOTA)
            conn.reject(OVER_QUOTA)
        except Exception as exc:
            # The guard's reserve makes a full disk here rare; if it fills anyway the
            # store kept nothing durable and the sender will retry on the 4xx.
            log.exception("delivery failed")
            reply = STORAGE_FULL if is_disk_full(exc) else LOCAL_ERROR
            await self._record_message(event, reply)
            conn.reject(reply)
        else:
            accepted = smtp.Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
            await self._record_message(
                event, accepted, queue_id, verdict=verdict, authentication=check
            )
            log.info(
                "accepted id=%s from=<%s> rcpts=%d size=%d ip=%s",
                queue_id, event.reverse_path, len(self.recipients), len(event.content),
                self.client_ip,
            )  # fmt: skip
            conn.accept(accepted)
        self.recipients = []

    def _scan_request(self, event: smtp.MessageData) -> tuple[rspamd.Envelope, list[str]]:
        """What the scan of *event*'s message is told, and whose thresholds judge it."""
        user = self.conn.authenticated_as
        if self.service.port.submission:
            # The sender's agency sets the thresholds of what its users send.
            domains = [user.rpartition("@")[2]] if user else []
        else:
            domains = [r.address.rpartition("@")[2] for r in self.recipients if r.local]
        envelope = rspamd.Envelope(
            client_ip=self.client_ip if self.client_ip != "unknown" else None,
            helo=self.conn.helo_name, sender=event.reverse_path,
            recipients=[r.forward_path for r in event.recipients], user=user,
        )  # fmt: skip
        return envelope, domains

    async def _record(self, event: str, **fields: object) -> None:
        """Write one traffic-log line (REQUIREMENTS.md §2: kept 90 days)."""
        record = TrafficRecord(
            time=datetime.now(UTC),
            service=self.service.name,
            event=event,
            client_ip=self.client_ip if self.client_ip != "unknown" else None,
            **fields,  # type: ignore[arg-type]
        )
        try:
            await self.service.traffic.append(record)
        except Exception:
            # A full log disk must not turn into lost mail; the operator sees it here
            # and in `edgebox status` (free disk).
            log.exception("traffic log write failed")

    async def _record_message(
        self,
        event: smtp.MessageData,
        reply: smtp.Reply,
        queue_id: str | None = None,
        *,
        verdict: Verdict | None = None,
        authentication: MessageCheck | None = None,
    ) -> None:
        result = "accepted" if reply.code < 400 else "deferred" if reply.code < 500 else "refused"
        # With scanning on, the verdict follows the reply: "250 2.0.0 junk score=8.10";
        # on the MX, the authentication verdicts after it: "spf=pass dkim=none dmarc=none".
        outcome = f"{reply.code} {reply.enhanced}"
        if verdict is not None:
            outcome += f" {verdict.log_result()}"
        if authentication is not None:
            outcome += f" {authentication.summary}"
            if reply.code < 400 and authentication.disposition is Disposition.JUNK:
                outcome += " to-junk"
        self.service.metrics.smtp_messages.labels(self.service.port.value, result).inc()
        await self._record(
            "accepted" if reply.code < 400 else "rejected",
            sender=event.reverse_path,
            recipients=tuple(r.forward_path for r in event.recipients),
            user=self.conn.authenticated_as,
            message_id=queue_id,
            size=len(event.content),
            result=outcome,
        )

    def _answer(self, refusal: smtp.Reply | None) -> None:
        if refusal is None:
            self.conn.accept()
        else:
            self.conn.reject(refusal)

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            await self.stream.send_all(out)


def _same_address(address: str) -> str | None:
    try:
        return normalise_address(address)
    except Exception:
        return None


class _PendingScan:
    """A scan started at DATA's end (appliance.protection); its verdict awaited when needed."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._verdict: Verdict | None = None

    async def run(
        self, protection: Protection, content: bytes, envelope: rspamd.Envelope, domains: list[str]
    ) -> None:
        self._verdict = await protection.scan_message(content, envelope, domains)
        self._done.set()

    async def verdict(self) -> Verdict:
        """Wait for the scan; an engine's failure is a verdict too (never an exception)."""
        await self._done.wait()
        assert self._verdict is not None
        return self._verdict
