"""The box's side of the sync API: `HubClient`, one kept-alive HTTPS connection to the hub.

Implements `HubCall` (appliance.sync.transport): ``await hub(path, body)`` posts a JSON
object and returns the hub's JSON object. h11 (RFC 9112) over trio TLS with the box's
sync certificate (`central_client_context`: trusts ``central-ca.pem``, checks the host
name, presents ``sync.pem``).

How failures map, so each replicator knows whether to retry:

- no connection, TLS failure, a cut mid-answer, the time-out, a 5xx, or an answer that
  is not a JSON object → `HubUnavailable` (try again later; nothing was promised);
- a 4xx → `HubRefused` with the hub's error code (the request as sent never works);
- a 503 with ``Retry-After`` (the hub's fair admission, docs/hub.md "When many boxes call
  at once") → `HubBusy`, a `HubUnavailable` that says when: the hub is there, only
  busy. The client tells the box's `LinkWatch` (`LinkWatch.hub_busy`), so every client
  of the box, not only this one, sends nothing to the hub until then (a call meanwhile
  raises `HubBusy` at once, without a connection), and the link monitor does not take
  the busy hub for a cut link. The connection is kept: no reconnect storm either.

While a request waits for its turn at a busy hub, the hub sends ``102 Processing``
every second (interim answers, RFC 9110 §15.2, read past here): bytes that keep the
wait from looking like a black hole to the link watch.

Requests go one at a time over one connection, reused while it lives: a cut or an error
closes it and the next call opens a new one. A request on a reused connection that the
hub had meanwhile closed (its idle time-out) gets no answer at all; that one case is
retried once on a fresh connection, and so is one that fails while the request is being
sent (a cut reset the kept-alive connection). Every sync route is idempotent (a cursor or a batch
applied twice is applied once), so sending it twice is safe.

Bodies go gzip'ed (RFC 9110 §8.4) once the hub has said it takes gzip (its answers carry
``Accept-Encoding: gzip``, §12.5.3), so the first request to a hub, and every request
to an older hub, is identity; a 415 to a gzip'ed request (a hub that stopped taking it)
sends it again as identity. Each request says ``Accept-Encoding: gzip`` and a gzip'ed
answer is inflated within `MAX_RESPONSE` (`appliance.sync.content_coding`). On a
10 Mbit/s line shared with the mail backlog, chat events shrink about tenfold.

Bodies are never logged: they hold directory rows and chat messages.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from pathlib import Path
from typing import Any, Final

import h11
import trio

from appliance.sync import content_coding
from appliance.sync.central import central_client_context, parse_endpoint
from appliance.sync.liveness import (
    CONNECT_DEADLINE,
    HANDSHAKE_DEADLINE,
    LinkStalled,
    LinkWatch,
    describe,
    open_tcp,
    start_tls,
)
from appliance.sync.transport import JSON, HubBusy, HubRefused, HubUnavailable

log = logging.getLogger("edgebox.sync.hub")

#: Largest answer accepted: a pull batch is bounded by the hub well below this.
MAX_RESPONSE: Final = 64 * 1024 * 1024
#: Bytes a second a request's body and its answer are each given on top of the time
#: limit: a chat file (up to 34 MB as JSON, either way) needs minutes on a 1 Mbit/s
#: provincial line, a batch of events seconds.
SLOWEST_LINE: Final = 128 * 1024
_RECEIVE: Final = 64 * 1024
#: The longest Retry-After honoured, in seconds: a hub that asks for more (a bug, a
#: typo in its settings) must not silence the box for days.
MAX_RETRY_AFTER: Final = 900.0


class _NoAnswer(Exception):
    """The connection ended before a single byte of the answer arrived."""


class HubClient:
    """`HubCall` over HTTPS with mutual TLS to *hub_url* (``https://host:port``)."""

    def __init__(
        self,
        keys_dir: Path,
        hub_url: str,
        timeout: float = 60.0,
        *,
        context: ssl.SSLContext | None = None,
        watch: LinkWatch | None = None,
    ) -> None:
        self.keys_dir = Path(keys_dir)
        #: Shared with the link monitor, which cuts waits short when the link returns.
        self.watch = watch or LinkWatch()
        self.endpoint = parse_endpoint(hub_url, ("https",))
        self.timeout = timeout
        #: Fixed context (enrolment pins a CA); else one is made per connection from the
        #: files in keys_dir, so a certificate installed meanwhile is used at once.
        self._context = context
        self._stream: trio.SSLStream[trio.abc.Stream] | None = None
        self._conn: h11.Connection | None = None
        self._lock = trio.Lock()
        #: The hub said it takes gzip request bodies (kept across connections).
        self.hub_takes_gzip = False
        #: The last answer's ``Retry-After`` header, as sent.
        self._retry_after: str | None = None
        #: Interim answers (1xx: the hub's ``102 Processing`` while a request waits for
        #: its turn) read since start, for figures.
        self.interim_answers = 0

    async def __call__(self, path: str, body: JSON) -> JSON:
        if not path.startswith("/sync/v1/"):
            raise ValueError(f"not a sync route: {path!r}")
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        async with self._lock:
            wait = self.watch.busy_for()
            if wait > 0:
                # The hub asked this box to come back later: not before then, on any stream.
                raise HubBusy(f"{path}: the hub is busy; next try in {wait:.0f} s", wait)
            retried = identity = False
            while True:
                gzipped = (
                    self.hub_takes_gzip and not identity and len(payload) >= content_coding.MIN_SIZE
                )
                reused = self._stream is not None
                timeout = self.timeout + len(payload) / SLOWEST_LINE
                try:
                    with trio.fail_after(timeout) as limit:
                        status, raw = await self._exchange(path, payload, limit, gzipped=gzipped)
                except _NoAnswer as exc:
                    await self.aclose()
                    if reused and not retried:
                        retried = True
                        continue
                    why = str(exc) or "the hub closed the connection"
                    raise HubUnavailable(f"{path}: {why}") from None
                except HubUnavailable:
                    await self.aclose()
                    raise
                except trio.TooSlowError:
                    await self.aclose()
                    raise HubUnavailable(
                        f"{path}: no answer in time (limit {timeout:.1f} s)"
                    ) from None
                except LinkStalled as exc:
                    await self.aclose()
                    raise HubUnavailable(f"{path}: {exc}") from None
                except (OSError, ssl.SSLError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                    await self.aclose()
                    raise HubUnavailable(f"{path}: {type(exc).__name__}: {exc}") from None
                if status == 415 and gzipped:
                    # RFC 9110 §15.5.16: this hub does not take gzip (any more).
                    self.hub_takes_gzip, identity = False, True
                    continue
                try:
                    return _interpret(path, status, raw, self._retry_after)
                except HubBusy as busy:
                    self.watch.hub_busy(busy.retry_after)
                    raise

    async def aclose(self) -> None:
        """Close the connection (the next call opens a new one)."""
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _connect(self) -> tuple[trio.SSLStream[trio.abc.Stream], h11.Connection]:
        if self._stream is not None and self._conn is not None:
            return self._stream, self._conn
        context = self._context or central_client_context(self.keys_dir)
        context.set_alpn_protocols(["http/1.1"])
        host, port = self.endpoint.host, self.endpoint.port
        # Seconds for the set-up, whatever the request's own limit: a handshake lost in
        # a black hole is never answered, and the next try should start soon.
        tcp = await open_tcp(self.watch, host, port, deadline=min(self.timeout, CONNECT_DEADLINE))
        deadline = min(self.timeout, HANDSHAKE_DEADLINE)
        stream = await start_tls(self.watch, tcp, context, host, deadline=deadline)
        self._stream, self._conn = stream, h11.Connection(h11.CLIENT)
        return stream, self._conn

    async def _exchange(
        self, path: str, payload: bytes, limit: trio.CancelScope, *, gzipped: bool
    ) -> tuple[int, bytes]:
        stream, conn = await self._connect()
        self._retry_after = None
        host = str(self.endpoint)[len("https://") :]
        headers = [
            ("host", host),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("accept-encoding", content_coding.GZIP),
        ]
        if gzipped:
            payload = content_coding.encode(payload)
            headers.append(("content-encoding", content_coding.GZIP))
        headers.append(("content-length", str(len(payload))))
        request = h11.Request(method="POST", target=path, headers=headers)
        message = conn.send(request) + conn.send(h11.Data(data=payload))
        wire = message + conn.send(h11.EndOfMessage())
        try:
            with self.watch.step(f"sending {path} to {host}", limit.deadline - trio.current_time()):
                await stream.send_all(wire)
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            # A kept-alive connection that died meanwhile (a cut reset it) fails on
            # the send as often as on the answer: the same one retry on a fresh one.
            raise _NoAnswer(f"sending failed: {describe(exc)}") from None
        status = 0
        encoding: str | None = None
        chunks: list[bytes] = []
        size = 0
        got_any = False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    with self.watch.step(f"waiting for {path} from {host}", self.timeout):
                        data = await stream.receive_some(_RECEIVE)
                except (trio.BrokenResourceError, ssl.SSLError, OSError):
                    if not got_any:
                        raise _NoAnswer from None
                    raise
                if not data and not got_any:
                    raise _NoAnswer
                got_any = got_any or bool(data)
                # A long answer (a chat file) earns its time as it arrives.
                limit.deadline += len(data) / SLOWEST_LINE
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.InformationalResponse):
                self.interim_answers += 1  # RFC 9110 §15.2: read past it, the answer follows
            elif isinstance(event, h11.Response):
                status = event.status_code
                fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
                self._retry_after = next((v for n, v in fields if n == "retry-after"), None)
                codings = [v for n, v in fields if n == "content-encoding"]
                encoding = ", ".join(codings) if codings else None
                if content_coding.accepts_gzip(
                    ", ".join(v for n, v in fields if n == "accept-encoding")
                ):
                    self.hub_takes_gzip = True
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE:
                    raise HubUnavailable(f"{path}: answer larger than {MAX_RESPONSE} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the hub closed mid-answer")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()  # "connection: close", or an early answer
        try:
            return status, content_coding.decode(b"".join(chunks), encoding, MAX_RESPONSE)
        except ValueError as exc:  # unknown coding, corrupt gzip, a bomb
            raise HubUnavailable(f"{path}: answer {status} not readable: {exc}") from None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds in a ``Retry-After`` of delay-seconds (RFC 9110 §10.2.3), else None.

    The hub sends seconds; the other form, an HTTP-date, would need the wall clock to
    agree with the hub's and is left to the body's ``retry_after`` or the caller's own
    back-off.
    """
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        return None
    return float(int(text))


def _interpret(path: str, status: int, raw: bytes, retry_after: str | None = None) -> JSON:
    try:
        body: Any = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        body = None
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise HubUnavailable(f"{path}: answer {status} is not a JSON object")
        return body
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else ""
    if 400 <= status < 500:
        raise HubRefused(status, code or "refused", message or f"HTTP {status}")
    if status == 503:
        wait = retry_after_seconds(retry_after)
        if wait is None and isinstance(error, dict):
            said = error.get("retry_after")
            if isinstance(said, int | float) and not isinstance(said, bool) and math.isfinite(said):
                wait = max(0.0, float(said))
        if wait is not None:
            wait = min(wait, MAX_RETRY_AFTER)
            reason = str(error.get("reason", "")) if isinstance(error, dict) else ""
            why = f"{code or 'busy'} {reason}".strip()
            raise HubBusy(f"{path}: hub busy ({why}); retry after {wait:g} s", wait, reason)
    raise HubUnavailable(f"{path}: HTTP {status} {code} {message}".rstrip())
