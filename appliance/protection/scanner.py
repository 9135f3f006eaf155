"""Ask the engines: thin trio clients for clamd and rspamd, and the `Protection` façade.

The clients only move bytes between a socket and the sans-I/O codecs
(`appliance.protection.clamd`, `appliance.protection.rspamd`); time-outs live here.
Any failure to get an answer — no socket, a refused connection, a time-out, a reply
that is not one — is `ScannerUnavailable`: the caller must then not accept the
message (docs/protection.md, "When a scanner is down").

`Protection` is what the entry points (SMTP, webmail, replication, chat uploads) call:
`scan_message` runs both engines at once and decides with the recipient agencies'
thresholds; `scan_file` asks clamd alone (a chat file is not mail).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from appliance.protection import clamd, rspamd
from appliance.protection.notice import pending_virus_notice, virus_notice
from appliance.protection.verdict import (
    Outcome,
    SenderLists,
    Thresholds,
    Verdict,
    decide,
    scan_headers,
)

log = logging.getLogger("edgebox.protection")

RECEIVE_SIZE = 64 * 1024


class ScannerUnavailable(Exception):
    """An engine gave no verdict; the message must not be accepted unscanned."""


#: Idle clamd sessions kept open at most (clamd's MaxThreads is 4 in the box's config).
MAX_IDLE_SESSIONS = 8
#: A session idle longer than this is closed, not reused: below clamd's default
#: ``IdleTimeout`` (30 s), after which clamd ends it on its side.
SESSION_IDLE = 20.0


@dataclass
class _ClamdSession:
    """One open ``IDSESSION`` connection and how many commands it has carried."""

    stream: trio.SocketStream
    commands: int = 0
    idle_since: float = 0.0


def _discard(stream: trio.SocketStream) -> None:
    # Synchronous close: also safe in a cancelled scope, where ``aclose`` would raise.
    stream.socket.close()


@dataclass
class ClamdClient:
    """clamd over its unix socket.

    Inside `keep_connections` (the box's protection service) a scan reuses an idle clamd
    session (``zIDSESSION``) rather than connecting afresh; elsewhere (tests, commands)
    each scan has its own connection, closed after the reply.
    """

    socket_path: Path
    timeout: float = 60.0
    _idle: list[_ClamdSession] | None = field(default=None, init=False, repr=False)

    @asynccontextmanager
    async def keep_connections(self) -> AsyncIterator[None]:
        """Keep idle clamd sessions for reuse until the block ends; then close them."""
        self._idle = []
        try:
            yield
        finally:
            idle, self._idle = self._idle, None
            for session in idle:
                _discard(session.stream)

    async def scan(self, content: bytes) -> str | None:
        """Return the matched signature, or None if *content* is clean."""
        try:
            with trio.fail_after(self.timeout):
                result = await self._scan(content)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise ScannerUnavailable(f"clamd: {type(exc).__name__}: {exc}") from exc
        except clamd.ClamdProtocolError as exc:
            raise ScannerUnavailable(f"clamd: {exc}") from exc
        if isinstance(result, clamd.ScanFailed):
            raise ScannerUnavailable(f"clamd: {result.reason}")
        if isinstance(result, clamd.Infected):
            return result.signature
        return None

    async def _scan(self, content: bytes) -> clamd.ClamdResult:
        session = self._take_idle()
        if session is not None:
            try:
                return await self._instream(session, content)
            except (OSError, trio.BrokenResourceError, clamd.ClamdProtocolError) as exc:
                # clamd ended the session (idle too long, restarted, reloading) before
                # answering; the scan has no verdict yet, so it goes once more afresh.
                log.debug("clamd session ended (%s); scanning on a new connection", exc)
        stream = await trio.open_unix_socket(str(self.socket_path))
        if self._idle is None:
            async with stream:
                return await self._exchange(stream, content, None)
        try:
            await stream.send_all(clamd.SESSION_COMMAND)
        except BaseException:
            _discard(stream)
            raise
        return await self._instream(_ClamdSession(stream), content)

    def _take_idle(self) -> _ClamdSession | None:
        """The most recently used idle session still worth trying, or None."""
        now = trio.current_time()
        while self._idle:
            session = self._idle.pop()
            if now - session.idle_since < SESSION_IDLE:
                return session
            _discard(session.stream)
        return None

    async def _instream(self, session: _ClamdSession, content: bytes) -> clamd.ClamdResult:
        """One INSTREAM inside *session*; keep the session for the next scan if it is sound."""
        session.commands += 1
        keep = False
        try:
            result = await self._exchange(session.stream, content, session.commands)
            # After a failed scan (size limit, ...) clamd may end the session: do not reuse.
            keep = not isinstance(result, clamd.ScanFailed)
            return result
        finally:
            if keep and self._idle is not None and len(self._idle) < MAX_IDLE_SESSIONS:
                session.idle_since = trio.current_time()
                self._idle.append(session)
            else:
                _discard(session.stream)

    @staticmethod
    async def _exchange(
        stream: trio.SocketStream, content: bytes, session: int | None
    ) -> clamd.ClamdResult:
        for piece in clamd.instream_request(content):
            await stream.send_all(piece)
        reader = clamd.ReplyReader(session)
        result = None
        while result is None:
            result = reader.receive_data(await stream.receive_some(RECEIVE_SIZE))
        return result

    async def ping(self) -> bool:
        """Return whether clamd answers ``zPING`` with ``PONG``."""
        try:
            with trio.fail_after(5):
                stream = await trio.open_unix_socket(str(self.socket_path))
                async with stream:
                    await stream.send_all(b"zPING\0")
                    reply = await stream.receive_some(64)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError):
            return False
        return reply.rstrip(b"\0\n") == b"PONG"

    async def version(self) -> clamd.EngineVersion:
        """Return clamd's engine and loaded database version (``zVERSION``)."""
        return clamd.parse_version(await self._command(clamd.VERSION_COMMAND))

    async def reload(self) -> None:
        """Make clamd read its databases again (``zRELOAD``); it answers ``RELOADING``."""
        reply = await self._command(clamd.RELOAD_COMMAND)
        if reply.strip() != b"RELOADING":
            raise ScannerUnavailable(f"clamd: RELOAD answered {reply[:80]!r}")

    async def _command(self, command: bytes) -> bytes:
        """Send one NUL-terminated control command; return the reply before its NUL."""
        try:
            with trio.fail_after(self.timeout):
                stream = await trio.open_unix_socket(str(self.socket_path))
                async with stream:
                    await stream.send_all(command)
                    reply = bytearray()
                    while b"\0" not in reply:
                        data = await stream.receive_some(RECEIVE_SIZE)
                        if not data or len(reply) > clamd.MAX_REPLY:
                            raise clamd.ClamdProtocolError("clamd reply cut short or too long")
                        reply += data
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise ScannerUnavailable(f"clamd: {type(exc).__name__}: {exc}") from exc
        except clamd.ClamdProtocolError as exc:
            raise ScannerUnavailable(f"clamd: {exc}") from exc
        return bytes(reply[: reply.index(b"\0")])


@dataclass
class RspamdClient:
    """rspamd's normal worker over HTTP/1.1 (h11), one connection per scan.

    rspamd 3.4 closes each connection after its reply, whatever the request asks.
    """

    host: str
    port: int
    timeout: float = 60.0

    async def check(self, content: bytes, envelope: rspamd.Envelope) -> rspamd.SpamReport:
        """Return rspamd's verdict on *content*."""
        try:
            with trio.fail_after(self.timeout):
                return await self._check(content, envelope)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            raise ScannerUnavailable(f"rspamd: {type(exc).__name__}: {exc}") from exc
        except rspamd.RspamdProtocolError as exc:
            raise ScannerUnavailable(f"rspamd: {exc}") from exc

    async def _check(self, content: bytes, envelope: rspamd.Envelope) -> rspamd.SpamReport:
        conn = h11.Connection(h11.CLIENT)
        stream = await self._connect()
        async with stream:
            request = rspamd.check_request(f"{self.host}:{self.port}", len(content), envelope)
            # The head, then the message itself: h11's passthrough hands the body back
            # uncopied (a plain send() joins head and body into one new bytes object).
            await stream.send_all(conn.send(request) or b"")
            for piece in conn.send_with_data_passthrough(h11.Data(data=content)) or ():
                await stream.send_all(piece)
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            status = 0
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > rspamd.MAX_REPLY:
                        raise rspamd.RspamdProtocolError("rspamd reply too long")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        return rspamd.parse_verdict(status, bytes(body))

    async def _connect(self) -> trio.SocketStream:
        """Open a new connection to rspamd's worker.

        rspamd (3.4) answers every scan with ``Connection: close``, so there is no
        connection to keep. For an address literal (the box's own rspamd) the socket is
        made directly: ``open_tcp_stream``'s resolving and happy-eyeballs nursery are a
        measurable part of a small message's scan.
        """
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return await trio.open_tcp_stream(self.host, self.port)
        family = trio.socket.AF_INET6 if address.version == 6 else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            await sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def ping(self) -> bool:
        """Return whether rspamd answers ``GET /ping``."""
        try:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(self.host, self.port)
                async with stream:
                    await stream.send_all(
                        b"GET /ping HTTP/1.1\r\nHost: rspamd\r\nConnection: close\r\n\r\n"
                    )
                    reply = await stream.receive_some(1024)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError):
            return False
        return reply.startswith(b"HTTP/1.") and b"pong" in reply


class Protection:
    """The box's scanning: what every entry point asks before it accepts data."""

    def __init__(
        self,
        clamd_client: ClamdClient,
        rspamd_client: RspamdClient,
        thresholds_for: Callable[[str], Thresholds] = lambda domain: Thresholds(),
        *,
        lists_for: Callable[[str], SenderLists] = lambda domain: SenderLists(),
        submission_unavailable: str = "tempfail",
        hostname: str = "edgebox",
    ) -> None:
        self.clamd = clamd_client
        #: The box's name, in the headers and notices it adds.
        self.hostname = hostname
        self.rspamd = rspamd_client
        self.thresholds_for = thresholds_for
        #: An agency's allow and block lists of senders (the admin console sets them).
        self.lists_for = lists_for
        #: "tempfail" (default) or "accept": what submission does when a scanner is down.
        self.submission_unavailable = submission_unavailable

    async def scan_message(
        self, content: bytes, envelope: rspamd.Envelope, domains: Iterable[str]
    ) -> Verdict:
        """Scan *content* with both engines; judge it with the strictest of *domains*'
        thresholds. Never raises for an engine's failure: that is `Outcome.UNAVAILABLE`.
        """
        domains = set(domains)
        thresholds = Thresholds.strictest([self.thresholds_for(d) for d in domains])
        listing = SenderLists.listing([self.lists_for(d) for d in domains], envelope.sender)
        results: dict[str, Any] = {}

        async def run(name: str, job: Callable[[], Any]) -> None:
            try:
                results[name] = await job()
            except ScannerUnavailable as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "clamd", lambda: self.clamd.scan(content))
            nursery.start_soon(run, "rspamd", lambda: self.rspamd.check(content, envelope))
        for name in ("clamd", "rspamd"):
            if isinstance(results[name], ScannerUnavailable):
                log.warning("scanner unavailable: %s", results[name])
                return Verdict(Outcome.UNAVAILABLE, str(results[name]), thresholds=thresholds)
        return decide(results["clamd"], results["rspamd"], thresholds, listing)

    def headers(self, verdict: Verdict) -> bytes:
        """The scan header fields to put on top of an accepted message."""
        return scan_headers(verdict, self.hostname)

    def virus_notice(self, content: bytes, signature: str) -> bytes:
        """The message kept in place of replicated *content* holding *signature*."""
        return virus_notice(content, signature, self.hostname)

    def pending_virus_notice(self, header: bytes, signature: str) -> bytes:
        """The body filled in for a listed message whose body holds *signature*."""
        return pending_virus_notice(header, signature, self.hostname)

    async def scan_file(self, data: bytes) -> str | None:
        """Return the virus signature in *data*, or None; raises `ScannerUnavailable`."""
        return await self.clamd.scan(data)
