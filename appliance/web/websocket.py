"""WebSocket (RFC 6455) on the HTTPS listener: the opening handshake's checks, the
connection a stream handler gets (`ServerWebSocket`), and ready-made text frames.

wsproto reads the client's frames and makes pings, pongs and close frames; a server's
text messages are framed here once per text (`text_frame`), since the chat stream sends
the same event to every member. The listener (`appliance.web.server`) routes the
upgrade request, authenticates it and then hands the stream over.

What this is not: a handler's protocol (the chat stream speaks its own JSON messages,
appliance.chat.stream) or a WebSocket client.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import h11
import trio
import wsproto.connection
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState

from appliance.net.http1 import header_tokens
from appliance.net.jsonbody import parse_json
from appliance.web.routes import JSON, ApiError, Request, StreamHandler, WebSocketClosed

log = logging.getLogger("edgebox.web")


class WebSocketLimits(Protocol):
    """The sizes and timeouts of a WebSocket (`appliance.web.server.Limits` has them)."""

    #: Largest WebSocket message either way; bigger from the client closes with 1009.
    @property
    def ws_max_message(self) -> int: ...
    #: Seconds between server pings; a client silent for two intervals is dropped.
    @property
    def ws_ping_interval(self) -> float: ...
    #: Seconds one WebSocket send may wait on a client that does not read.
    @property
    def ws_send_timeout(self) -> float: ...
    #: Seconds a stream handler gets to finish after its client has gone.
    @property
    def ws_handler_grace(self) -> float: ...
    #: Seconds to wait for the peer's close frame after ours (RFC 6455 §7.1.1).
    @property
    def ws_close_timeout(self) -> float: ...
    @property
    def receive_size(self) -> int: ...


def check_opening(method: str, headers: Mapping[str, str]) -> str:
    """Check an opening handshake's request (RFC 6455 §4.2.1); return its key, or refuse."""
    # §4.2.1: GET, HTTP/1.1, "Connection: Upgrade", a 16-byte key, version 13.
    if method != "GET":
        raise ApiError(405, "method_not_allowed", "A WebSocket opens with GET",
                       "WebSocket ต้องเปิดด้วย GET", headers={"Allow": "GET"})  # fmt: skip
    if headers.get("sec-websocket-version") != "13":
        # §4.4: say which version we speak.
        raise ApiError(426, "websocket_version", "Only WebSocket version 13 is spoken",
                       "รองรับ WebSocket รุ่น 13 เท่านั้น",
                       headers={"Sec-WebSocket-Version": "13"})  # fmt: skip
    key = headers.get("sec-websocket-key", "")
    if "upgrade" not in header_tokens(headers.get("connection")) or not _valid_key(key):
        raise ApiError(400, "bad_handshake", "Malformed WebSocket handshake",
                       "การเปิด WebSocket ไม่ถูกต้อง")  # fmt: skip
    return key


def accept(key: str) -> h11.InformationalResponse:
    """The 101 that accepts an opening handshake with *key* (RFC 6455 §4.2.2)."""
    token = wsproto.utilities.generate_accept_token(key.encode("ascii"))
    return h11.InformationalResponse(
        status_code=101,
        headers=[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", token.decode("ascii")),
        ],
    )


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeError):
        return False


#: Frames of recent server→client messages, by their text: a chat event goes to every
#: member's stream as the same `str` object, so its frame is built once, not per
#: recipient. Bounded in entries and in the size of a frame worth keeping.
_FRAME_CACHE: dict[str, bytes] = {}
_FRAME_CACHE_ENTRIES: Final = 1024
_FRAME_CACHE_LARGEST: Final = 16 * 1024


def text_frame(text: str) -> bytes:
    """Return the single unmasked text frame (RFC 6455 §5.2, §5.6) that carries *text*.

    A server never masks (§5.1), so the bytes are the same for every recipient; built
    here rather than by wsproto's per-connection machinery, which costs several times
    more and adds nothing for a whole message with no extension. wsproto still makes
    the handshake's answer, pings, pongs and close frames, and reads the client's frames.
    """
    frame = _FRAME_CACHE.get(text)
    if frame is not None:
        return frame
    payload = text.encode("utf-8")
    size = len(payload)
    # §5.2: FIN + opcode 0x1 (text), then the payload length in 7, 7+16 or 7+64 bits.
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    frame = head + payload
    if len(frame) <= _FRAME_CACHE_LARGEST:
        if len(_FRAME_CACHE) >= _FRAME_CACHE_ENTRIES:
            del _FRAME_CACHE[next(iter(_FRAME_CACHE))]  # the oldest
        _FRAME_CACHE[text] = frame
    return frame


class ServerWebSocket:
    """An accepted WebSocket (RFC 6455): the `routes.WebSocket` a stream handler gets.

    A reader task answers pings, collects messages (at most `Limits.ws_max_message`
    bytes, text only, JSON only) and hands them to `receive_json` through a short
    queue: a handler that stops reading stops the reader too, so a fast client cannot
    fill memory. `send_json` waits for the stream (backpressure) at most
    `Limits.ws_send_timeout`; a send the socket takes at once does not pass through
    the scheduler (it is no checkpoint: a handler's schedule points are its own
    waits, as the chat stream's wait for news). When the client has gone,
    `receive_json` answers None and the handler has `Limits.ws_handler_grace` seconds
    to return before it is cancelled.
    """

    def __init__(self, stream: trio.abc.Stream, trailing: bytes, limits: WebSocketLimits) -> None:
        self._stream = stream
        #: `SocketTLSStream.send_nowait`, when the stream has it.
        self._send_nowait: Callable[[bytes], int] | None = getattr(stream, "send_nowait", None)
        self._limits = limits
        self._ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
        self._trailing = trailing
        self._send_lock = trio.Lock()
        #: The unsent tail of a `try_send_text`: written before anything else.
        self._backlog = b""
        self._backlog_queued = trio.Event()
        self._inbox_in, self._inbox = trio.open_memory_channel[JSON](16)
        #: Set once no more frames will come: close handshake done or stream broken.
        self._finished = trio.Event()
        self._broken = False
        #: The frame reader failed on a bug of ours: the close says 1011, not 1000.
        self._faulted = False
        self._last_heard = trio.current_time()
        #: When the send under way began (None: not sending); see `_keep_alive`.
        self._sending_since: float | None = None

    # the WebSocket protocol of routes.py

    async def send_json(self, message: JSON) -> None:
        await self.send_text(json.dumps(message, ensure_ascii=False))

    async def send_text(self, *messages: str) -> None:
        for text in messages:
            if len(text) > self._limits.ws_max_message // 4 and (
                len(text.encode("utf-8")) > self._limits.ws_max_message
            ):
                raise ValueError("message larger than the WebSocket limit")
        await self._write((), b"".join([text_frame(text) for text in messages]))

    def try_send_text(self, messages: list[str]) -> bool:
        # Free means: no send under way (the lock), no tail of an earlier message
        # still queued, and the socket can be written without waiting.
        if (
            self._send_nowait is None
            or self._broken
            or self._backlog
            or self._send_lock.locked()
            or self._ws.state is not ConnectionState.OPEN
        ):
            return False
        if any(len(text) > self._limits.ws_max_message // 4 for text in messages):
            return False  # maybe too big: `send_text` checks it properly
        data = b"".join([text_frame(text) for text in messages])
        try:
            sent = self._send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            self._finished.set()
            return False
        if sent < len(data):
            # The socket took part: the rest must be the next bytes on the wire, so
            # it waits here, and `_flush` (or whichever send comes first) writes it.
            self._backlog = data[sent:]
            self._backlog_queued.set()
        return True

    async def receive_json(self) -> JSON | None:
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            return None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        # §5.5.1: a close reason is at most 123 bytes of UTF-8.
        reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        if self._ws.state is ConnectionState.OPEN and not self._broken:
            try:
                await self._send(wsproto.events.CloseConnection(code=code, reason=reason))
            except WebSocketClosed:
                pass
        # §7.1.1: wait for the client's close frame, then the server closes TCP first.
        with trio.move_on_after(self._limits.ws_close_timeout):
            await self._finished.wait()

    # machinery

    async def _send(self, *events: wsproto.events.Event) -> None:
        """Send control frames (ping, pong, close) through wsproto."""
        await self._write(events, b"")

    async def _write(self, events: tuple[wsproto.events.Event, ...], frames: bytes) -> None:
        """Send wsproto *events*, or else ready-made text *frames* (`text_frame`)."""
        # The lock keeps frames whole when tasks send at once. Taken without a
        # checkpoint when free, as it nearly always is: at thousands of sends a
        # second the scheduler round trips of `async with lock` are a large share.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self._write_locked(events, frames)
        finally:
            self._send_lock.release()

    async def _write_locked(self, events: tuple[wsproto.events.Event, ...], frames: bytes) -> None:
        if self._broken:
            raise WebSocketClosed("the connection is broken")
        if events:
            try:
                data = b"".join([self._ws.send(event) for event in events])
            except wsproto.utilities.LocalProtocolError:
                raise WebSocketClosed("the WebSocket is closing or closed") from None
        elif not frames:
            data = b""
        elif self._ws.state is ConnectionState.OPEN:
            # What wsproto itself allows: messages only while open (not after either
            # side's close frame, RFC 6455 §5.5.1). No extension is ever negotiated
            # here, so its frames would be these very bytes.
            data = frames
        else:
            raise WebSocketClosed("the WebSocket is closing or closed")
        if self._backlog:
            data, self._backlog = self._backlog + data, b""
        if not data:
            return
        try:
            if self._send_nowait is not None:
                # Most sends fit in the socket at once: then no trip through the
                # scheduler (the handler's own waits are its schedule points).
                sent = self._send_nowait(data)
                if sent == len(data):
                    return
                data = data[sent:]  # the rest must be the very next bytes sent
            # No cancel scope per send (at thousands of sends a second it is a good
            # part of the cost): `_keep_alive` watches this mark instead and drops a
            # client that has not taken a frame for `ws_send_timeout`.
            self._sending_since = trio.current_time()
            try:
                await self._stream.send_all(data)
            finally:
                self._sending_since = None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = True
            self._finished.set()
            raise WebSocketClosed("the client has gone") from exc

    async def serve(self, handler: StreamHandler, request: Request) -> None:
        handler_done = trio.Event()
        handler_scope = trio.CancelScope()

        async def run_handler() -> None:
            code = 1000
            with handler_scope:
                try:
                    await handler(request, self)
                except WebSocketClosed:
                    pass
                except Exception:
                    code = 1011  # §7.4.1: an unexpected condition on the server
                    log.exception("stream handler failed: %s ip=%s", request.path,
                                  request.client_ip)  # fmt: skip
            handler_done.set()
            self._inbox.close()
            await self.close(1011 if self._faulted else code)
            nursery.cancel_scope.cancel()

        async def reader() -> None:
            await self._read()
            with trio.move_on_after(self._limits.ws_handler_grace):
                await handler_done.wait()
            handler_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(self._keep_alive, nursery.cancel_scope)
            nursery.start_soon(self._flush)
            nursery.start_soon(run_handler)

    async def _flush(self) -> None:
        """Write what `try_send_text` left queued, unless another send does it first."""
        while True:
            await self._backlog_queued.wait()
            self._backlog_queued = trio.Event()
            try:
                await self._write((), b"")
            except WebSocketClosed:
                return

    async def _keep_alive(self, scope: trio.CancelScope) -> None:
        interval = self._limits.ws_ping_interval
        send_timeout = self._limits.ws_send_timeout
        tick = min(interval, send_timeout / 2)
        last_ping = trio.current_time()
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            sending_since = self._sending_since
            if sending_since is not None and now - sending_since > send_timeout:
                # Part of a frame may be on the wire: nothing more can be sent.
                log.debug("websocket client stopped reading; dropping it")
                self._broken = True
                self._finished.set()
                scope.cancel()
                return
            if now - self._last_heard > 2 * interval:
                log.debug("websocket client silent; dropping it")
                scope.cancel()
                return
            if now - last_ping < interval:
                continue
            last_ping = now
            if self._ws.state is ConnectionState.OPEN:
                try:
                    await self._send(wsproto.events.Ping())
                except WebSocketClosed:
                    return

    async def _read(self) -> None:
        """Read frames until the close handshake ends or the stream breaks."""
        parts: list[str] = []
        size = 0
        data: bytes | bytearray = self._trailing
        try:
            while True:
                if data:
                    self._ws.receive_data(bytes(data))
                    self._last_heard = trio.current_time()
                for event in self._ws.events():
                    if isinstance(event, wsproto.events.Ping):
                        if self._ws.state is ConnectionState.OPEN:
                            await self._send(event.response())
                    elif isinstance(event, wsproto.events.CloseConnection):
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send(event.response())  # §5.5.1: echo the close
                        elif self._ws.state is ConnectionState.OPEN:
                            # wsproto reports a malformed frame as a close it has not
                            # sent (§7.1.7 fail the connection): send it, then stop.
                            await self._send(event)
                        return
                    elif isinstance(event, wsproto.events.BytesMessage):
                        await self._fail(1003, "only JSON text messages")  # §7.4.1
                    elif isinstance(event, wsproto.events.TextMessage):
                        if self._ws.state is not ConnectionState.OPEN:
                            continue  # we are closing; late messages are dropped
                        parts.append(event.data)
                        size += len(event.data.encode("utf-8"))
                        if size > self._limits.ws_max_message:
                            await self._fail(1009, "message too big")
                            parts, size = [], 0
                        elif event.message_finished:
                            text, parts, size = "".join(parts), [], 0
                            try:
                                value = parse_json(text.encode("utf-8"))
                            except ValueError:
                                await self._fail(1007, "message is not JSON")
                            else:
                                await self._deliver(value)
                data = await self._stream.receive_some(self._limits.receive_size)
                if not data:
                    self._ws.receive_data(None)  # §7.1.5: closed without a close frame
                    return
        except WebSocketClosed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
        except Exception:
            # A bug of ours, not the client's: the handler sees the end of the stream,
            # the close says 1011 (RFC 6455 §7.4.1), and the error goes on to the
            # listener, which logs it (appliance.net.listeners).
            self._faulted = True
            raise
        finally:
            self._finished.set()
            self._inbox_in.close()

    async def _deliver(self, value: JSON) -> None:
        try:
            await self._inbox_in.send(value)
        except trio.BrokenResourceError:
            pass  # the handler has returned; nobody will read it

    async def _fail(self, code: int, reason: str) -> None:
        """Start the close handshake for a client's fault; keep reading for its reply."""
        if self._ws.state is ConnectionState.OPEN:
            await self._send(wsproto.events.CloseConnection(code=code, reason=reason))
