"""HTTP/1.1 on a server connection: what every h11 listener shares.

The HTTPS listener (`appliance.web.server`) and the hub's sync listener
(`appliance.sync.hub.server`) answer differently but run the same loop
(`HTTPServerConnection`: request, response, keep-alive; a whole response written by
`send_response`) and read the same way (`RequestReader`): an idle deadline while
waiting for a request, a request deadline from its first byte to its last (the
slow-loris guard), a body limit checked against the declared length before reading and
against the bytes as they come, and a bounded linger after an early answer. Each
listener turns `TooSlow` and `BodyTooLarge` into its own error answer.

Two framing rules h11 leaves to us are kept here, so both listeners keep them:

- RFC 9112 §6.1: a request with both Content-Length and Transfer-Encoding is what
  request smuggling through a proxy looks like. h11 reads it as chunked and keeps the
  connection; we refuse it with 400 (the RFC allows that) and close.
- RFC 9112 §5.2: obsolete line folding (a header line starting with a space or tab)
  must be rejected with 400 or replaced; h11 quietly unfolds it, which would let a
  folded ``Transfer-Encoding`` mean one thing here and another to a proxy in front. We
  reject it in every header, by looking at the raw head before h11 parses it.
"""

from __future__ import annotations

import abc
import http
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import h11
import trio


class ReadLimits(Protocol):
    """The sizes and timeouts a listener's limits must name."""

    #: Request line plus headers; h11 answers 431 beyond it (RFC 6585 §5).
    @property
    def max_header_bytes(self) -> int: ...
    #: Seconds a kept-alive connection may wait for its next request.
    @property
    def idle_timeout(self) -> float: ...
    #: Seconds from a request's first byte to its last.
    @property
    def request_timeout(self) -> float: ...
    @property
    def receive_size(self) -> int: ...


@dataclass(frozen=True)
class HTTPLimits:
    """The sizes and timeouts every HTTP/1.1 listener has; each listener's limits add theirs."""

    #: Request line plus headers; h11 answers 431 beyond it (RFC 6585 §5).
    max_header_bytes: int = 16 * 1024
    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 60.0
    #: Seconds from a request's first byte to its last (slow-loris guard); 408 after.
    request_timeout: float = 30.0
    receive_size: int = 64 * 1024


class TooSlow(TimeoutError):
    """The client was too slow mid-request (RFC 9110 §15.5.9 allows a 408 and a close)."""


class BodyTooLarge(Exception):
    """The request body is (declared or found) larger than *limit* bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


#: A header line that continues the one before it: a line break then a space or tab.
_OBS_FOLD = re.compile(rb"\n[ \t]")
#: The end of a request head (RFC 9112 §2.1; a bare LF ends lines too, as h11 reads them).
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


def check_framing(request: h11.Request) -> None:
    """Refuse a request with both Content-Length and Transfer-Encoding (RFC 9112 §6.1)."""
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise h11.RemoteProtocolError(
            "a request may not carry both Content-Length and Transfer-Encoding",
            error_status_hint=400,
        )


def check_head(pending: bytes) -> None:
    """Refuse obsolete line folding in the head at the start of *pending* (RFC 9112 §5.2).

    *pending* is what h11 holds unparsed while it waits for a request; it begins with
    the next request's head (after any empty lines RFC 9112 §2.2 lets a server skip).
    """
    pending = pending.lstrip(b"\r\n")
    end = _END_OF_HEAD.search(pending)
    head = pending if end is None else pending[: end.start() + 1]
    if _OBS_FOLD.search(head):
        raise h11.RemoteProtocolError(
            "obsolete line folding (a header line starting with a space or tab)",
            error_status_hint=400,
        )


#: How long, and how much, a connection keeps reading after an answer that left the
#: request body unread (see `RequestReader.linger`).
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class RequestReader:
    """The reading half of one server connection, over its h11 state machine."""

    def __init__(self, stream: trio.abc.Stream, limits: ReadLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.deadline = 0.0

    async def next_request(self) -> h11.Request | None:
        """Wait for the next request head.

        None when the client closed or stayed idle past the idle timeout; `TooSlow`
        when a request had started but its head did not arrive in time.
        """
        self.deadline = trio.current_time() + self.limits.idle_timeout
        started = False
        while True:
            check_head(self.conn.trailing_data[0])
            event = self.conn.next_event()
            if isinstance(event, h11.Request):
                check_framing(event)
                return event
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
            try:
                more = await self.receive()
            except TooSlow:
                if started:
                    raise
                return None
            if more and not started:
                started = True
                self.deadline = trio.current_time() + self.limits.request_timeout

    async def read_body(self, request: h11.Request, limit: int) -> bytes:
        """The whole body of *request*, at most *limit* bytes, by the request deadline.

        A declared Content-Length over the limit is refused before anything is read.
        """
        declared = dict(request.headers).get(b"content-length")
        if declared is not None and int(declared) > limit:
            raise BodyTooLarge(limit)
        if self.conn.they_are_waiting_for_100_continue:
            # RFC 9110 §10.1.1: the client waits for this before sending its body.
            await self.stream.send_all(
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise BodyTooLarge(limit)
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise trio.BrokenResourceError("client closed mid-request")

    async def next_event(self) -> Any:
        """The next h11 event, reading until `deadline`; `TooSlow` after it."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.receive()

    async def receive(self) -> bool:
        """Feed h11 one read; return whether it held data (not end of stream)."""
        data: bytes | bytearray = b""
        with trio.move_on_at(self.deadline) as timer:
            data = await self.stream.receive_some(self.limits.receive_size)
        if timer.cancelled_caught:
            raise TooSlow("the request took too long")
        self.conn.receive_data(bytes(data))
        return bool(data)

    def finished_exchange(self) -> bool:
        """Whether request and response are both complete, so keep-alive may go on."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    async def linger(self) -> None:
        """Read and drop what the client still sends, briefly, before closing.

        After an early answer (413 before the body was read) a close at once leaves
        unread bytes behind; the kernel then resets the connection and the client,
        still writing its body, may never read the answer (RFC 9112 §9.6). Bounded in
        time and bytes so a client cannot hold the connection open this way.
        """
        # The early answer carries "Connection: close", after which h11 says MUST_CLOSE
        # rather than DONE; before an answer was sent there is nothing to linger for.
        if self.conn.our_state not in (h11.DONE, h11.MUST_CLOSE):
            return
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                try:
                    data = await self.stream.receive_some(self.limits.receive_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                drained += len(data)


def header_fields(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request header fields by (lower-case) name; repeated ones joined with commas.

    RFC 9110 §5.3: a field sent on several lines means the comma-joined list, so
    ``Content-Encoding: gzip`` twice is gzip applied twice, not once. h11 lower-cases
    names; values are latin-1 (RFC 9110 §5.5 obs-text).
    """
    found: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


class HTTPServerConnection(abc.ABC):
    """One client connection of an h11 listener: request → response, keep-alive between.

    A listener says how to answer a request (`exchange`) and how to refuse a head that
    is malformed or came too slowly (`refuse_malformed`, `refuse_slow`); the loop,
    keep-alive and the linger after an answer that left a body unread are shared.
    """

    def __init__(self, stream: trio.abc.Stream, limits: ReadLimits) -> None:
        self.stream = stream
        self.reader = RequestReader(stream, limits)
        self.conn = self.reader.conn

    async def run(self) -> None:
        """Serve requests until the client leaves or the connection cannot go on."""
        while True:
            try:
                request = await self.reader.next_request()
            except h11.RemoteProtocolError as exc:
                await self.refuse_malformed(exc)
                return
            except TooSlow:
                await self.refuse_slow()
                return
            if request is None:
                return
            if not await self.exchange(request):
                return
            if not self.reader.finished_exchange():
                await self.reader.linger()
                return
            self.conn.start_next_cycle()

    @abc.abstractmethod
    async def exchange(self, request: h11.Request) -> bool:
        """Answer *request*; False if the connection was taken over (a WebSocket)."""

    @abc.abstractmethod
    async def refuse_malformed(self, exc: h11.RemoteProtocolError) -> None:
        """Answer a malformed head (``exc.error_status_hint``); the connection ends."""

    @abc.abstractmethod
    async def refuse_slow(self) -> None:
        """Answer a head that did not arrive in time (408); the connection ends."""

    def can_answer(self) -> bool:
        """Whether a response may still be started on this connection."""
        return self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def send_response(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        head: bool = False,
    ) -> None:
        """Send one whole response (no body for HEAD); h11 errors are the caller's."""
        fields = list(headers)
        if self.conn.their_state is not h11.DONE:
            # The body was not read (an early 4xx): the rest of it would be taken for
            # the next request, so this connection ends here (RFC 9112 §9.6).
            fields.append(("connection", "close"))
        data = self.conn.send(
            h11.Response(
                status_code=status,
                headers=fields,
                reason=http.HTTPStatus(status).phrase.encode("ascii"),
            )
        )
        if body and not head:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)


def header_tokens(value: str | None) -> set[str]:
    """The comma-separated tokens of a header field, lower case (``Connection: Upgrade``)."""
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}
