"""The hub's sync listener: JSON over HTTPS with mutual TLS (DESIGN.md "Roles and ports").

A thin trio layer (STYLE.md) on the box's network layer (`appliance.net`: the
connection gate, TLS, the HTTP/1.1 request loop over h11, RFC 9112), and the rules every
sync request shares, in this order, before a route's handler runs:

1. only ``POST`` (405 with Allow, RFC 9110 §15.5.6) to a known path (404);
2. who is calling: ``/sync/v1/ca`` and ``/sync/v1/enroll`` need nobody (a box being
   enrolled has no certificate yet). Every other path needs a client certificate that
   TLS verified against the hub's sync CA (`ca`), naming a box that `Enrolment` knows
   with that very certificate serial and has not revoked; no certificate → 401, a
   certificate of a box not enrolled (any more) → 403. A certificate from another CA
   fails the TLS handshake itself;
3. ``application/json`` (415), in content coding ``gzip`` or identity (other codings
   415 with ``Accept-Encoding: gzip``, RFC 9110 §15.5.16);
4. size: a declared Content-Length over the route's ``max_body`` gets 413 before the
   body is read, and a body that grows past it is cut off the same way. A gzip body's
   limit is on what it inflates to: it is inflated a step at a time and refused 413
   one byte past ``max_body``, so a small "bomb" never inflates whole; a gzip stream
   that is corrupt or cut short is 400 (`appliance.sync.content_coding`);
5. a JSON object (400);
6. its turn: every request of an enrolled box (step 2) waits for its box's turn in the
   hub's fair admission (`request_gate`, policy in `fair_queue`: a bounded number
   running per box and overall, round robin over box identities, a bounded wait), with
   an interim ``102 Processing`` every second while it waits; beyond the bound it is
   answered ``503`` with ``Retry-After`` and ``{"error": {"code": "hub_busy",
   "reason", "retry_after", "message"}}`` before its handler ever runs, so nothing is
   half applied. The server's own enrolment paths and downloads take no turn.

Every answer says ``Accept-Encoding: gzip``: that is how a box learns it may send
gzip bodies (RFC 9110 §12.5.3). An answer is gzip'ed when the request's
``Accept-Encoding`` takes gzip and the answer is not tiny; a request without it (an
older box) gets identity, as before.

Answers are JSON objects; errors are ``{"error": {"code", "message"}}`` (`HubError`).
A handler's unexpected exception is logged with a reference and answered 500, without
detail. A request that meets the hub's PostgreSQL store gone (restarting, or the primary
dead and its replica not yet promoted) is answered 503 with ``Retry-After``
(`store_unavailable`): nothing of it was promised stored, and the box sends it again.
Keep-alive is on: a box's replicators send many small requests in a row.

The listener asks for a client certificate (CERT_OPTIONAL) rather than requiring one,
so that enrolment works on the same port; the check of step 2 is what enforces it.

Downloads (`SyncDownload`: the update channel's bundles) are the one exception to POST
and JSON: ``GET``/``HEAD`` under a download prefix, by an enrolled box (step 2 as
above), answered with the file streamed in chunks, one byte range when asked
(appliance.net.ranges, RFC 9110 §14), each chunk sent within the idle time-out so a box
that stopped reading does not hold the connection.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import h11
import trio
from cryptography import x509

from appliance.config import Config
from appliance.directory import Directory
from appliance.mail.mailstore import Mailstore
from appliance.net.http1 import (
    BodyTooLarge,
    HTTPLimits,
    HTTPServerConnection,
    TooSlow,
    header_fields,
)
from appliance.net.jsonbody import encode_json, parse_json
from appliance.net.listeners import ConnectionGate, peer_ip, serve_tcp
from appliance.net.ranges import Unsatisfiable, requested_range
from appliance.security.tls import server_ssl_context
from appliance.store.postgres import PostgreSQLUnavailable
from appliance.sync import content_coding
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.hub.admission import admit_box, central_endpoints, renew_box, url_host
from appliance.sync.hub.admission_report import keep_reporting
from appliance.sync.hub.ca import SYNC_CA_CERT, SyncCA, box_id_of, ensure_sync_ca
from appliance.sync.hub.enrolment import Enrolment, open_hub_database
from appliance.sync.hub.errors import HubError, bad_request
from appliance.sync.hub.fair_queue import AdmissionPolicy
from appliance.sync.hub.handshake_gate import HandshakeGate, HandshakePolicy
from appliance.sync.hub.request_gate import RequestGate
from appliance.sync.transport import Peer, SyncDownload, SyncRoute

log = logging.getLogger("edgebox.hub")

CA_PATH: Final = "/sync/v1/ca"
ENROLL_PATH: Final = "/sync/v1/enroll"
#: A box's new certificate, asked for with its current one (`renew_box`).
RENEW_PATH: Final = "/sync/v1/renew"
#: The paths the server answers itself, before any stream's routes.
_SERVER_PATHS: Final = (CA_PATH, ENROLL_PATH, RENEW_PATH)
#: Enrolment bodies are a token, an id and a CSR: a few KiB.
ENROLL_MAX_BODY: Final = 64 * 1024
#: Bytes of a download read and sent at a time.
DOWNLOAD_CHUNK: Final = 256 * 1024
#: Seconds a box is asked to wait while the hub's database is away, drawn from this
#: range: a restart or a promotion takes seconds; a box that comes back too early is
#: only told again.
STORE_RETRY_AFTER: Final = (2, 5)
#: Seconds between two log lines about the store being away (one per request would
#: flood the log while hundreds of boxes retry).
_STORE_LOG_EVERY: Final = 10.0


@dataclass(frozen=True)
class HubLimits(HTTPLimits):
    """Sizes and timeouts of the hub-sync listener."""

    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 120.0
    #: Seconds from a request's first byte to its last. Generous: a batch of chat
    #: events over a congested GIN link at a few hundred kbit/s takes a while.
    request_timeout: float = 300.0
    #: Simultaneous connections: a few per enrolled box.
    max_connections: int = 2000
    #: From one source (address or IPv6 /64): boxes behind one NAT share it, so this
    #: is generous; it still keeps one flooding host from taking all 2000.
    max_connections_per_source: int = 100


class HubSyncService:
    """The hub-sync listener of a hub (``config.role == "hub"``)."""

    name = "hub-sync"

    def __init__(
        self,
        routes: Sequence[SyncRoute],
        *,
        config: Config,
        hostname: str,
        directory: Directory,
        mailstore: Mailstore,
        clock: Clock | None = None,
        limits: HubLimits | None = None,
        downloads: Sequence[SyncDownload] = (),
        admission: AdmissionPolicy | None = None,
    ) -> None:
        # The hub's settings and name (TLS, the enrol answer), and where admission
        # makes each box's service account.
        self.config = config
        self.hostname = hostname
        self.directory = directory
        self.mailstore = mailstore
        self.routes = {route.path: route for route in routes}
        self.downloads = tuple(downloads)
        if any(path in self.routes for path in _SERVER_PATHS):
            raise ValueError("the enrolment and renewal routes belong to the server")
        self.clock = clock or SystemClock()
        self.limits = limits or HubLimits()
        keys_dir = config.data_dir / "keys"
        self.ca: SyncCA = ensure_sync_ca(keys_dir)
        self.tls = _server_context(config, self.ca)
        #: TLS handshakes run a bounded number at once (a reconnect storm's handshakes
        #: must not starve the requests in flight; handshake_gate).
        self.handshakes = HandshakeGate(self.tls, handshake_policy(config))
        # Over the limit a client is closed without a word: the refusal would be
        # written before TLS.
        self.gate = ConnectionGate(
            self.limits.max_connections,
            b"",
            self.handshakes,
            service=self.name,
            per_source=self.limits.max_connections_per_source,
        )
        #: Every enrolled box's request waits here for its turn (rule 6).
        self.request_gate = RequestGate(admission or admission_policy(config))
        self.enrolment: Enrolment | None = None

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[HubSyncService]:
        """Open the hub database for the block (tests drive `handle` directly)."""
        async with open_hub_database(self.config.data_dir, self.config.hub_store()) as db:
            self.enrolment = Enrolment(db, self.clock)
            try:
                yield self
            finally:
                self.enrolment = None

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with self.opened(), trio.open_nursery() as nursery:
            # The queue and each box's wait, for `edgebox status` (admission_report).
            run_dir = self.config.data_dir / "run"
            nursery.start_soon(
                partial(
                    keep_reporting, self.request_gate, run_dir, self.clock,
                    handshakes=self.handshakes,
                )
            )  # fmt: skip
            # On PostgreSQL every worker process of the hub listens on the one port
            # (docs/hub-postgresql.md "Workers"); on SQLite the hub is one process.
            shared = bool(self.config.hub_store())
            await serve_tcp(self.name, self.config, self.handle, task_status, shared=shared)

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection from accept to close."""
        client_ip = peer_ip(stream) or "unknown"
        await self.gate.admit(stream, lambda s: _Connection(self, s, client_ip))

    # what a request is answered with

    async def answer(
        self,
        path: str,
        stream: trio.abc.Stream,
        host: str,
        body: Any,
        *,
        waiting: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Run the route at *path* for the caller on *stream*; `HubError` to refuse.

        An enrolled box's request runs in its turn (*waiting* is called while it waits).
        """
        enrolment = self.enrolment
        assert enrolment is not None, "serve() or opened() first"
        if path == CA_PATH:
            ca = (self.config.data_dir / "keys" / "ca.pem").read_text("ascii")
            # The centre's mail servers too: the setup wizard checks them before enrolling.
            where = url_host(host or self.hostname)
            return {"ca": ca, **central_endpoints(self.config, where)}
        if path == ENROLL_PATH:
            return await admit_box(
                enrolment, self.ca, self.clock, body, host, config=self.config,
                hostname=self.hostname, directory=self.directory, mailstore=self.mailstore,
            )  # fmt: skip
        peer, cert = await self.authenticate(stream)
        async with self.request_gate.turn(peer.box_id, waiting):
            if path == RENEW_PATH:
                return await renew_box(
                    enrolment, self.ca, self.clock, peer, cert.serial_number, body
                )
            result = await self.routes[path].handler(peer, body)
        if not isinstance(result, dict):
            raise TypeError(f"route {path} answered {type(result).__name__}, not an object")
        return result

    async def authenticate(self, stream: trio.abc.Stream) -> tuple[Peer, x509.Certificate]:
        """The enrolled box behind *stream*'s verified client certificate, or refuse."""
        assert self.enrolment is not None
        der = _peer_certificate(stream)
        if der is None:
            raise HubError(401, "certificate_required", "present the box's sync certificate")
        cert = x509.load_der_x509_certificate(der)
        box_id = box_id_of(cert)
        peer = None if box_id is None else await self.enrolment.peer(box_id, cert.serial_number)
        if peer is None:
            raise HubError(
                403,
                "not_enrolled",
                "this certificate does not belong to an enrolled box (revoked or replaced);"
                " enrol the box again",
            )
        return peer, cert

    def download(self, path: str) -> tuple[SyncDownload, str] | None:
        """The download *path* falls under, and the name after its prefix; or None."""
        for download in self.downloads:
            if path.startswith(download.prefix) and len(path) > len(download.prefix):
                return download, path[len(download.prefix) :]
        return None

    def max_body(self, path: str) -> int:
        if path in _SERVER_PATHS:
            return ENROLL_MAX_BODY
        return self.routes[path].max_body

    def known(self, path: str) -> bool:
        return path in _SERVER_PATHS or path in self.routes


def admission_policy(config: Config) -> AdmissionPolicy:
    """The fair admission's bounds from the hub's ``hub_*`` settings (docs/hub.md)."""
    return AdmissionPolicy(
        capacity=config.hub_requests,
        per_box=config.hub_box_requests,
        max_wait=config.hub_queue_wait,
        max_queue=config.hub_queue,
    )


def handshake_policy(config: Config) -> HandshakePolicy:
    """The bound on TLS handshakes at once from the hub's ``hub_handshakes`` setting."""
    return HandshakePolicy(limit=config.hub_handshakes)


def _server_context(config: Config, ca: SyncCA) -> ssl.SSLContext:
    context = server_ssl_context(config.data_dir / "keys")
    # Only the sync CA is trusted for client certificates; not the box CA, and never
    # the system CAs.
    context.load_verify_locations(cafile=config.data_dir / "keys" / SYNC_CA_CERT)
    context.verify_mode = ssl.CERT_OPTIONAL
    # Our own context (not box.tls), so ALPN is offered on this port only (ALPACA).
    context.set_alpn_protocols(["http/1.1"])
    return context


def _peer_certificate(stream: trio.abc.Stream) -> bytes | None:
    getpeercert = getattr(stream, "getpeercert", None)
    if getpeercert is None:
        return None
    der = getpeercert(binary_form=True)
    return bytes(der) if der else None


# --- one connection ----------------------------------------------------------------


class _Connection(HTTPServerConnection):
    """A loop of request → response on one TLS connection, keep-alive between."""

    def __init__(self, service: HubSyncService, stream: trio.abc.Stream, client_ip: str) -> None:
        super().__init__(stream, service.limits)
        self.service = service
        self.client_ip = client_ip

    async def refuse_malformed(self, exc: h11.RemoteProtocolError) -> None:
        await self._send(exc.error_status_hint, _error("bad_request", str(exc)))

    async def refuse_slow(self) -> None:
        await self._send(408, _error("timeout", "the request took too long"))

    async def fault(self, reference: str) -> None:
        """Answer 500 after a server bug, if no answer to this request was started."""
        if self.can_answer():
            body = _error("internal", f"hub error (reference {reference})")
            # `send_response` says "close" itself when the request's body was not read.
            close = [("connection", "close")] if self.conn.their_state is h11.DONE else []
            await self._send(500, body, close)

    async def exchange(self, request: h11.Request) -> bool:
        await self._exchange(request)
        return True

    async def _exchange(self, request: h11.Request) -> None:
        method = request.method.decode("ascii", "replace")
        path = request.target.partition(b"?")[0].decode("ascii", "replace")
        headers = header_fields(request.headers)
        gzip_answer = content_coding.accepts_gzip(headers.get("accept-encoding"))
        extra: list[tuple[str, str]] = []
        found = self.service.download(path) if method in ("GET", "HEAD") else None
        if found is not None:
            await self._download(request, method, *found, headers)
            return
        try:
            status, body = 200, await self._route(request, method, path, headers)
        except HubError as exc:
            status, body = exc.status, exc.body()
            if exc.status == 405:
                extra.append(("allow", "POST"))
            if exc.retry_after is not None:
                # RFC 9110 §10.2.3: delay-seconds; the box waits at least this long.
                extra.append(("retry-after", str(exc.retry_after)))
        except h11.RemoteProtocolError as exc:
            status, body = exc.error_status_hint, _error("bad_request", str(exc))
        except _BoxLeft:
            raise  # it hung up while waiting for its turn: nobody to answer, no bug
        except Exception:
            reference = secrets.token_hex(4)
            # Detail to the log only (CWE-209).
            log.exception("internal error ref=%s %s ip=%s", reference, path, self.client_ip)
            status, body = 500, _error("internal", f"hub error (reference {reference})")
        log.debug("%s %s %s %d", self.client_ip, method, path, status)
        await self._send(status, body, extra, gzip_answer=gzip_answer)

    async def _route(
        self, request: h11.Request, method: str, path: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        service = self.service
        if not service.known(path):
            raise HubError(404, "not_found", f"no sync route {path}")
        if method != "POST":
            raise HubError(405, "method_not_allowed", "sync routes take POST only")
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HubError(415, "unsupported_media_type", "send the body as application/json")
        encoding = headers.get("content-encoding")
        if any(name != content_coding.GZIP for name in content_coding.codings(encoding)):
            raise HubError(
                415, "unsupported_encoding", "send the body as identity or gzip (RFC 9110 §8.4)"
            )
        limit = service.max_body(path)
        try:
            # A gzip body is smaller than what it inflates to: the same limit holds
            # for the bytes on the line, then for what they inflate to.
            raw = await self.reader.read_body(request, limit)
        except BodyTooLarge as exc:
            raise HubError(413, "too_large", str(exc)) from None
        except TooSlow:
            raise HubError(408, "timeout", "the request took too long") from None
        try:
            raw = content_coding.decode(raw, encoding, limit)
        except content_coding.TooLarge as exc:
            raise HubError(413, "too_large", str(exc)) from None
        except content_coding.BadCoding as exc:
            raise bad_request(str(exc), "bad_encoding") from None
        try:
            body = parse_json(raw)
        except ValueError as exc:
            raise bad_request(f"the body is not JSON: {exc}", "bad_json") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        try:
            return await service.answer(
                path, self.stream, headers.get("host", ""), body, waiting=self._still_waiting
            )
        except PostgreSQLUnavailable as exc:
            raise store_unavailable(exc) from None

    async def _still_waiting(self) -> None:
        """Tell the box its request waits for its turn: ``102 Processing`` (RFC 2518 §10.1).

        Any 1xx is a valid interim answer a client must read past (RFC 9110 §15.2);
        its bytes show the box's link watch that the hub is there, only busy.
        """
        interim = h11.InformationalResponse(status_code=102, headers=[], reason=b"Processing")
        try:
            await self._send_within(self.conn.send(interim))
        except (trio.BrokenResourceError, trio.ClosedResourceError, TimeoutError) as exc:
            raise _BoxLeft(f"the box left while its request waited: {exc}") from None

    async def _download(
        self, request: h11.Request, method: str, download: SyncDownload, name: str,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        """Answer a GET or HEAD of a file: whole, or the one range asked for."""
        try:
            await self.reader.read_body(request, 0)  # a GET has none; h11 wants its end
            peer, _cert = await self.service.authenticate(self.stream)
            path = download.locate(peer, name)
            if path is None:
                raise HubError(404, "not_found", f"no file {name}")
            handle = await trio.open_file(path, "rb")
        except HubError as exc:
            await self._send(exc.status, exc.body())
            return
        except PostgreSQLUnavailable as exc:
            error = store_unavailable(exc)
            await self._send(error.status, error.body(), [("retry-after", str(error.retry_after))])
            return
        except BodyTooLarge:
            await self._send(413, _error("too_large", "a download request has no body"))
            return
        except OSError:
            await self._send(404, _error("not_found", f"no file {name}"))
            return
        async with handle:
            size = os.fstat(handle.fileno()).st_size
            try:
                wanted = requested_range(headers.get("range"), size)
            except Unsatisfiable:
                # RFC 9110 §15.5.17: say how big the file is.
                await self.send_response(416, [("content-range", f"bytes */{size}"),
                                               ("content-length", "0")], b"")  # fmt: skip
                return
            status, first, length = (200, 0, size) if wanted is None else (
                206, wanted.first, wanted.length)  # fmt: skip
            fields = [("content-type", "application/octet-stream"),
                      ("content-length", str(length)), ("accept-ranges", "bytes")]  # fmt: skip
            if wanted is not None:
                fields.append(("content-range", wanted.content_range()))
            await self._stream_file(status, fields, handle, first, length, head=method == "HEAD")

    async def _stream_file(
        self, status: int, fields: list[tuple[str, str]], handle: Any, first: int, length: int,
        *, head: bool,
    ) -> None:  # fmt: skip
        conn = self.conn
        reason = b"Partial Content" if status == 206 else b"OK"
        await self._send_within(conn.send(h11.Response(status_code=status, headers=fields,
                                                       reason=reason)))  # fmt: skip
        if not head:
            await handle.seek(first)
            left = length
            while left:
                chunk = await handle.read(min(DOWNLOAD_CHUNK, left))
                if not chunk:
                    # The file shrank under us (a publish replaced it): end the
                    # connection; the box resumes and checks the hash.
                    raise trio.BrokenResourceError("the file shrank while being sent")
                left -= len(chunk)
                await self._send_within(conn.send(h11.Data(data=chunk)))
        await self._send_within(conn.send(h11.EndOfMessage()))

    async def _send_within(self, data: bytes | None) -> None:
        # A box that stopped reading must not hold a connection for ever. TimeoutError
        # (not trio's TooSlowError): the listener ends a gone client quietly.
        with trio.move_on_after(self.service.limits.idle_timeout) as timer:
            await self.stream.send_all(data or b"")
        if timer.cancelled_caught:
            raise TimeoutError("the box stopped reading its download")

    async def _send(
        self,
        status: int,
        body: dict[str, Any],
        extra: Sequence[tuple[str, str]] = (),
        *,
        gzip_answer: bool = False,
    ) -> None:
        payload = encode_json(body)
        # The answer may differ by the request's Accept-Encoding (RFC 9110 §12.5.5).
        headers = [("content-type", "application/json"), ("vary", "accept-encoding")]
        if gzip_answer and len(payload) >= content_coding.MIN_SIZE:
            payload = content_coding.encode(payload)
            headers.append(("content-encoding", content_coding.GZIP))
        headers += [
            ("content-length", str(len(payload))),
            # What this hub takes in requests (RFC 9110 §12.5.3): boxes gzip theirs.
            ("accept-encoding", content_coding.GZIP),
            *extra,
        ]
        if status == 401:
            # RFC 9110 §15.5.2 wants a challenge; the "scheme" here is the TLS layer.
            headers.append(("www-authenticate", 'Mutual realm="edgebox-hub"'))
        try:
            await self.send_response(status, headers, payload)
        except h11.LocalProtocolError:
            return  # the connection is already past answering (h11 says ERROR)


_store_logged_at: float | None = None


def store_unavailable(exc: PostgreSQLUnavailable) -> HubError:
    """The answer to a request that found the hub's store away: 503 with Retry-After.

    RFC 9110 §15.6.4 (503) and §10.2.3 (Retry-After, in seconds), in the shape of the
    fair admission's "busy" (the seconds in the body too, a ``reason``): the box holds
    its requests back that long and does not take the hub for a cut link. The wait is
    spread over `STORE_RETRY_AFTER` so that boxes do not all come back at one instant
    when the promoted replica answers. Nothing of the request was promised stored.
    """
    global _store_logged_at
    now = time.monotonic()  # one clock for every trio run in the process
    if _store_logged_at is None or now - _store_logged_at >= _STORE_LOG_EVERY:
        _store_logged_at = now
        log.warning("hub store unavailable, answering 503: %s", exc)
    wait = random.randint(*STORE_RETRY_AFTER)  # noqa: S311 - jitter, not a secret
    return HubError(
        503, "store_unavailable", "the hub's database is not reachable; try again later",
        retry_after=wait, detail={"reason": "store", "retry_after": wait},
    )  # fmt: skip


class _BoxLeft(trio.BrokenResourceError):
    """The box went away while its request waited for its turn (the listener ends quietly)."""


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
