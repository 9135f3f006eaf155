"""SocketTLSStream: the HTTPS server's TLS stream, against trio's own TLS client.

Each test accepts one connection on 127.0.0.1, moves it under `start_socket_tls` and
drives it from a `trio.SSLStream` client, so the two sides share no code.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from appliance.net import tls_stream
from appliance.net.tls_stream import SocketTLSStream, start_socket_tls
from appliance.security.tls import client_ssl_context, ensure_tls_material, server_ssl_context


@dataclass
class Keys:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    ensure_tls_material(tmp_path / "keys", ["box.test.go.th", "localhost"])
    server = server_ssl_context(tmp_path / "keys")
    server.set_alpn_protocols(["http/1.1"])
    client = client_ssl_context(tmp_path / "keys")
    client.set_alpn_protocols(["http/1.1"])
    return Keys(server, client)


@dataclass
class Pair:
    server: SocketTLSStream
    client: trio.SSLStream[trio.SocketStream]
    raw_client: trio.SocketStream


async def _accepted(keys: Keys, *, handshake: bool = True) -> AsyncIterator[Pair]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    raw_client = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listeners[0].accept()
    client = trio.SSLStream(raw_client, keys.client, server_hostname="localhost")
    server: SocketTLSStream | None = None
    async with trio.open_nursery() as nursery:
        if handshake:
            nursery.start_soon(client.do_handshake)
        server = await start_socket_tls(accepted, keys.server)
    try:
        yield Pair(server, client, raw_client)
    finally:
        await trio.aclose_forcefully(server)
        await trio.aclose_forcefully(client)
        await listeners[0].aclose()


@pytest.fixture
async def pair(keys: Keys) -> AsyncIterator[Pair]:
    async for made in _accepted(keys):
        yield made


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, "stream ended early"
        data += chunk
    return bytes(data)


async def test_bytes_go_both_ways_and_alpn_is_http11(pair: Pair) -> None:
    assert pair.server.selected_alpn_protocol == "http/1.1"
    await pair.client.send_all(b"GET / HTTP/1.1\r\n\r\n")
    assert await _receive_exactly(pair.server, 18) == b"GET / HTTP/1.1\r\n\r\n"
    await pair.server.send_all("สวัสดี".encode())
    assert (await _receive_exactly(pair.client, 18)).decode() == "สวัสดี"


async def test_peer_address_is_the_client(pair: Pair) -> None:
    assert pair.server.socket.getpeername() == pair.raw_client.socket.getsockname()


async def test_a_large_send_waits_for_a_slow_reader_and_arrives_whole(pair: Pair) -> None:
    # 8 MB is far more than the socket buffers hold: send_all must wait for the reader
    # (SSLWantWriteError and the I/O loop) and resume with the same bytes.
    payload = bytes(range(256)) * (8 * 4096)
    got = b""

    async def read_late() -> None:
        nonlocal got
        await trio.sleep(0.2)
        got = await _receive_exactly(pair.client, len(payload))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_late)
        await pair.server.send_all(payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


async def test_send_nowait_takes_what_fits_and_send_all_finishes_it(pair: Pair) -> None:
    payload = b"".join(i.to_bytes(4, "big") for i in range(2_000_000))  # 8 MB
    sent = pair.server.send_nowait(payload)
    # The socket filled up and nothing waited. (What OpenSSL took of a write it could
    # not finish is not counted: it goes out when the same bytes are offered again.)
    assert sent < len(payload)
    got = b""

    async def read_all() -> None:
        nonlocal got
        got = await _receive_exactly(pair.client, len(payload))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await pair.server.send_all(memoryview(payload)[sent:])
    assert got == payload


async def test_send_nowait_of_a_small_message_writes_it_all(pair: Pair) -> None:
    assert pair.server.send_nowait(b"hello") == 5
    assert await _receive_exactly(pair.client, 5) == b"hello"


async def test_cancelled_mid_write_breaks_the_stream(pair: Pair) -> None:
    # Cancelled while OpenSSL may hold part of a record: later writes of other bytes
    # would corrupt the stream, so they are refused.
    with trio.move_on_after(0.2):
        await pair.server.send_all(b"x" * (16 * 1024 * 1024))
    with pytest.raises(trio.BrokenResourceError):
        await pair.server.send_all(b"more")


async def test_two_senders_at_once_is_an_error(pair: Pair) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pair.server.send_all, b"x" * (16 * 1024 * 1024))
        await trio.sleep(0.1)
        with pytest.raises(trio.BusyResourceError):
            await pair.server.send_all(b"y")
        with pytest.raises(trio.BusyResourceError):
            pair.server.send_nowait(b"y")
        nursery.cancel_scope.cancel()


async def test_close_notify_from_the_client_reads_as_end_of_stream(pair: Pair) -> None:
    await pair.client.send_all(b"bye")
    await pair.client.aclose()
    assert await _receive_exactly(pair.server, 3) == b"bye"
    assert await pair.server.receive_some(100) == b""


async def test_tcp_close_without_close_notify_is_a_broken_stream(pair: Pair) -> None:
    # A truncation (RFC 8446 §6.1): the end of the data is not authenticated.
    await pair.raw_client.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await pair.server.receive_some(100)


async def test_aclose_sends_close_notify(pair: Pair) -> None:
    await pair.server.aclose()
    assert await pair.client.receive_some(100) == b""  # clean: no BrokenResourceError
    with pytest.raises(trio.ClosedResourceError):
        await pair.server.send_all(b"late")


async def test_aclose_wakes_a_blocked_receiver(pair: Pair) -> None:
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await pair.server.receive_some(100)

        nursery.start_soon(receive)
        await trio.sleep(0.05)
        await pair.server.aclose()


async def test_receive_is_cancellable(pair: Pair) -> None:
    with trio.move_on_after(0.05) as scope:
        await pair.server.receive_some(100)
    assert scope.cancelled_caught
    await pair.client.send_all(b"still fine")
    assert await _receive_exactly(pair.server, 10) == b"still fine"


async def test_handshake_that_stalls_times_out_and_closes(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_stream, "TLS_HANDSHAKE_TIMEOUT", 0.2)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    silent = await trio.open_tcp_stream("127.0.0.1", port)  # never says hello
    accepted = await listeners[0].accept()
    with pytest.raises(TimeoutError):
        await start_socket_tls(accepted, keys.server)
    assert await silent.receive_some(100) == b""  # the server closed it
    await silent.aclose()
    await listeners[0].aclose()


async def test_plain_text_instead_of_tls_fails_the_handshake(keys: Keys) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listeners[0].accept()
    await plain.send_all(b"GET / HTTP/1.1\r\nHost: box\r\n\r\n")
    with pytest.raises(ssl.SSLError):
        await start_socket_tls(accepted, keys.server)
    await plain.aclose()
    await listeners[0].aclose()


async def test_the_accepted_trio_stream_gives_up_its_socket(keys: Keys) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    raw_client = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listeners[0].accept()
    client = trio.SSLStream(raw_client, keys.client, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        server = await start_socket_tls(accepted, keys.server)
    assert accepted.socket.fileno() == -1
    await accepted.aclose()  # closing the old wrapper leaves the connection alone
    assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await client.send_all(b"ok")
    assert await _receive_exactly(server, 2) == b"ok"
    await server.aclose()
    await client.aclose()
    await listeners[0].aclose()
