"""A real box in tmp_path with the HTTPS service running in-process on a free port.

Clients: `http_request` drives the server with the standard library's http.client (an
HTTP implementation independent of h11) in a worker thread; `RawClient` writes raw
bytes over TLS for what http.client refuses to send; `WebSocketClient` speaks RFC 6455
with wsproto's client side. Everything connects to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import wsproto
import wsproto.events

from appliance.box import Box
from appliance.directory.sessions import Sessions
from appliance.security.tls import client_ssl_context
from appliance.web.routes import Route, StreamRoute
from appliance.web.server import HTTPSService, Limits
from tests.appliance.conftest import BoxFactory, Person

DOMAIN = "test.go.th"
ADDRESS = f"somchai@{DOMAIN}"
PASSWORD = "รหัสลับ-ทดสอบ-2567"


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    somchai = Person(ADDRESS, PASSWORD, "สมชาย ใจดี", "Somchai Jaidee")
    return await make_box(DOMAIN, people=[somchai], mailboxes=False)


@dataclass
class Server:
    box: Box
    sessions: Sessions
    service: HTTPSService
    port: int
    context: ssl.SSLContext

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        source: str | None = None,
    ) -> Reply:
        """One request; *source* is the loopback address to send it from (127.0.0.x)."""
        return await http_request(self.port, self.context, method, path, body, headers,
                                  source=source)  # fmt: skip

    async def raw(self) -> RawClient:
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", self.port, ssl_context=self.context
        )
        return RawClient(stream)


async def start_server(
    box: Box,
    nursery: trio.Nursery,
    routes: Sequence[Route | StreamRoute],
    *,
    sessions: Sessions | None = None,
    limits: Limits | None = None,
) -> Server:
    sessions = sessions or Sessions(box.directory_db)
    service = HTTPSService(box, routes, sessions=sessions, limits=limits)
    addresses = await nursery.start(service.serve)
    port = int(addresses[0].rpartition(":")[2])
    context = client_ssl_context(box.config.data_dir / "keys")
    context.set_alpn_protocols(["http/1.1"])
    return Server(box, sessions, service, port, context)


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    will_close: bool = False

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def _encode(body: Any, headers: dict[str, str]) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    headers.setdefault("Content-Type", "application/json")
    return json.dumps(body).encode()


async def http_request(
    port: int,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    source: str | None = None,
) -> Reply:
    headers = dict(headers or {})
    data = _encode(body, headers)
    bind = (source, 0) if source else None

    def run() -> Reply:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=context, timeout=30, source_address=bind
        )
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read(), response.will_close)
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run)


class RawClient:
    """Bytes in, bytes out, over TLS."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_all(self) -> bytes:
        """Read until the server closes the connection."""
        chunks = []
        with trio.fail_after(30):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    async def read_head(self) -> bytes:
        """Read until the end of one response head."""
        data = b""
        with trio.fail_after(30):
            while b"\r\n\r\n" not in data:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        return data

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class WebSocketClient:
    """The client side of RFC 6455, over a TLS stream to the server."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wsproto.events.Event] = []

    @classmethod
    async def connect(
        cls,
        server: Server,
        target: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[WebSocketClient, wsproto.events.Event]:
        """Open the handshake; return the client and AcceptConnection or RejectConnection."""
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", server.port, ssl_context=server.context
        )
        client = cls(stream)
        request = wsproto.events.Request(
            host=f"127.0.0.1:{server.port}",
            target=target,
            extra_headers=[(k.encode(), v.encode()) for k, v in headers or []],
        )
        await stream.send_all(client.ws.send(request))
        answer = await client.next_event()
        return client, answer

    async def next_event(self) -> wsproto.events.Event:
        with trio.fail_after(30):
            while not self.events:
                for event in self.ws.events():
                    self.events.append(event)
                if self.events:
                    break
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
        return self.events.pop(0)

    async def send_json(self, value: Any) -> None:
        await self.stream.send_all(self.ws.send(wsproto.events.TextMessage(json.dumps(value))))

    async def send(self, event: wsproto.events.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def receive_text(self) -> str:
        parts = []
        while True:
            event = await self.next_event()
            assert isinstance(event, wsproto.events.TextMessage), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
