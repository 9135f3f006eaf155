"""The IMAP listeners: move bytes between TCP/TLS streams and the protocol core.

The thin I/O layer (STYLE.md): sockets, TLS, the connection limits and the idle
timers live here; parsing lives in protocol.py and the meaning of commands in
session.py. One `IMAPService` serves one port: "imap" (STARTTLS; LOGIN refused until
TLS, RFC 3501 §6.2.3 LOGINDISABLED) or "imaps" (implicit TLS, RFC 8314).
"""

from __future__ import annotations

import logging
import ssl
from typing import cast

import trio

from appliance.config import Config
from appliance.directory import Directory, User
from appliance.directory.signin import Refused, SignIn
from appliance.health.disk_guard import DiskGuard
from appliance.health.metrics import BoxMetrics
from appliance.mail.imap import protocol as imap
from appliance.mail.imap.session import ImapSession
from appliance.mail.mailstore import Mailstore
from appliance.net.listeners import ConnectionGate, peer_ip, serve_tcp, start_tls

log = logging.getLogger("edgebox.imap")

#: RFC 9051 §5.4 (and RFC 3501 §5.4): once authenticated, an inactivity autologout
#: timer of at least 30 minutes. Before login the shorter `preauth_idle_timeout`
#: applies (the RFC allows any timer then).
AUTOLOGOUT = 30 * 60.0
RECEIVE_SIZE = 64 * 1024
#: Responses to pipelined commands are sent together, at the latest once this many
#: bytes are queued: fewer TLS records and send calls, and a bounded outbox.
SEND_AT = 64 * 1024


class IMAPService:
    """One IMAP listener; `serve` is started by the supervisor.

    It is handed the parts of the box it uses (appliance.registry composes them): the
    settings, the TLS context, the sign-in check, the mail store, the directory (whom
    a delegate may act for), the disk guard and the metrics.
    """

    def __init__(
        self,
        name: str,
        *,
        config: Config,
        tls: ssl.SSLContext,
        signin: SignIn,
        mailstore: Mailstore,
        directory: Directory,
        disk_guard: DiskGuard,
        metrics: BoxMetrics,
    ) -> None:
        if name not in ("imap", "imaps"):
            raise ValueError(f"unknown IMAP listener {name!r}")
        self.name = name
        self.config = config
        self.tls = tls
        self.signin = signin
        self.mailstore = mailstore
        self.directory = directory
        self.disk_guard = disk_guard
        self.metrics = metrics
        self.gate = ConnectionGate(
            config.max_connections,
            b"* BYE too many connections, try again later\r\n",
            tls if name == "imaps" else None,
            service=name,
            per_source=config.max_connections_per_source,
        )

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_tcp(self.name, self.config, self.handle, task_status)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection from accept to close."""
        client_ip = peer_ip(stream) or "unknown"
        # Counted from admission: a refused client holds its place for a moment only.
        sessions = self.metrics.imap_sessions.labels(self.name)
        sessions.inc()
        try:
            await self.gate.admit(stream, lambda s: Connection(self, s, client_ip))
        finally:
            sessions.dec()


class Connection:
    """Drives one client's protocol core and session."""

    def __init__(self, service: IMAPService, stream: trio.abc.Stream, client_ip: str) -> None:
        self.service = service
        self.stream = stream
        self.send_lock = trio.Lock()
        self.conn = imap.ServerConnection(imap.ImapConfig(), tls_active=service.name == "imaps")

        async def authenticate(user: str, password: str) -> User | Refused | None:
            return await service.signin.check(service.name, user, password, client_ip)

        self.session = ImapSession(
            conn=self.conn,
            mailstore=service.mailstore,
            authenticate=authenticate,
            act_as=service.directory.act_as,
            flush=self.flush,
            client_ip=client_ip,
            max_auth_failures=service.config.auth_failures_per_connection,
            room_for=self._room_for,
        )

    def _room_for(self, size: int) -> bool:
        service = self.service
        if service.disk_guard.room_for(size):
            return True
        service.metrics.storage_refusals.labels(self.service.name).inc()
        return False

    async def flush(self) -> None:
        async with self.send_lock:
            out = self.conn.data_to_send()
            if out:
                await self.stream.send_all(out)

    async def next_event(self) -> imap.Event | None:
        """The next command, reading from the client as needed; None at the end."""
        while True:
            event = self.conn.next_event()
            if event is imap.CLOSED:
                return None
            if event is not imap.NEED_DATA:
                if self.conn.queued >= SEND_AT:
                    await self.flush()
                return cast(imap.Event, event)
            await self.flush()
            data: bytes | bytearray = b""
            idle = self.service.config.preauth_idle_timeout
            with trio.move_on_after(AUTOLOGOUT if self.session.user else idle) as timer:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if timer.cancelled_caught:
                self.conn.bye("autologout: idle for too long")
                return None
            self.conn.receive_data(data)

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            # Shielded and short: the session's hold on expunged messages must go even
            # when a cancel or a fault ends the connection (mail/reclamation.py).
            with trio.CancelScope(shield=True):
                await self.session.close()

    async def fault(self, reference: str) -> None:
        """Say goodbye after a server bug (RFC 3501 §7.1.5 BYE, RFC 5530 SERVERBUG)."""
        self.conn.bye(f"[SERVERBUG] internal error (reference {reference}); please reconnect")
        await self.flush()

    async def _serve(self) -> None:
        self.conn.untagged(f"OK [CAPABILITY {self.session.capability()}] edgebox IMAP ready")
        while True:
            event = await self.next_event()
            if event is None:
                await self.flush()
                return
            if isinstance(event, imap.BadCommand):
                continue  # the core has answered it
            if isinstance(event, imap.StartTls):
                self.conn.tagged(event.tag, "OK", "begin TLS negotiation now")
                await self.flush()
                self.stream = await start_tls(self.stream, self.service.tls)
                self.conn.tls_started()
                continue
            if isinstance(event, imap.Idle):
                await self._idle(event)
                continue
            self.service.metrics.imap_commands.labels(type(event).__name__.upper()).inc()
            await self.session.handle(event)
            if isinstance(event, imap.Logout):
                await self.flush()
                return

    async def _idle(self, command: imap.Idle) -> None:
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.session.idle, command, done)
            event = await self.next_event()
            done.set()
        if event is None:
            return
        # DONE (or anything else, which the core answered BAD) ends IDLE.
        await self.session.report_changes(expunges=True)
        self.conn.tagged(command.tag, "OK", "IDLE terminated")
