"""The engine clients: clamd's sessions (reused while the box runs, renewed when clamd
ends one) and the rspamd request as it goes on the wire.

A small clamd stand-in on a unix socket speaks the two forms the client uses —
``zINSTREAM`` on a connection of its own, and ``zIDSESSION`` followed by numbered
INSTREAMs — and counts the connections it accepted.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.protection import rspamd
from appliance.protection.scanner import (
    SESSION_IDLE,
    ClamdClient,
    RspamdClient,
    ScannerUnavailable,
)

VIRUS = b"edgebox-test-virus"


@dataclass
class FakeClamd:
    """clamd's INSTREAM, with sessions; *end_after* ends a session after that many scans."""

    path: Path
    end_after: int | None = None
    connections: int = 0
    scans: int = 0
    open_now: int = 0
    closed: int = 0
    seen: list[bytes] = field(default_factory=list)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(self.path))
        listener.listen()
        async with trio.open_nursery() as nursery:
            task_status.started()
            with listener:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._connection, trio.SocketStream(sock))

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open_now += 1
        buffer = bytearray()

        async def read(n: int) -> bytes | None:
            while len(buffer) < n:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buffer.extend(data)
            out = bytes(buffer[:n])
            del buffer[:n]
            return out

        async def read_command() -> bytes | None:
            while b"\0" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buffer.extend(data)
            end = buffer.index(b"\0")
            out = bytes(buffer[:end])
            del buffer[: end + 1]
            return out

        try:
            async with stream:
                command = await read_command()
                session = command == b"zIDSESSION"
                number = 0
                if session:
                    command = await read_command()
                while command == b"zINSTREAM":
                    content = bytearray()
                    while (head := await read(4)) is not None:
                        (length,) = struct.unpack("!I", head)
                        if length == 0:
                            break
                        chunk = await read(length)
                        if chunk is None:
                            return
                        content += chunk
                    else:
                        return
                    number += 1
                    self.scans += 1
                    self.seen.append(bytes(content))
                    reply = b"stream: Test.Virus FOUND" if VIRUS in content else b"stream: OK"
                    prefix = f"{number}: ".encode() if session else b""
                    await stream.send_all(prefix + reply + b"\0")
                    if not session or (self.end_after is not None and number >= self.end_after):
                        return
                    command = await read_command()
        except trio.BrokenResourceError:
            pass
        finally:
            self.open_now -= 1
            self.closed += 1


@asynccontextmanager
async def fake_clamd(tmp_path: Path, **kwargs: int) -> AsyncIterator[FakeClamd]:
    server = FakeClamd(tmp_path / "clamd.sock", **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


async def test_without_sessions_each_scan_has_its_own_connection(tmp_path: Path) -> None:
    async with fake_clamd(tmp_path) as server:
        client = ClamdClient(server.path, timeout=30)
        assert await client.scan(b"hello") is None
        assert await client.scan(b"x" + VIRUS) == "Test.Virus"
        assert server.connections == 2
        assert server.seen == [b"hello", b"x" + VIRUS]


async def test_while_the_box_runs_scans_reuse_one_session(tmp_path: Path) -> None:
    async with fake_clamd(tmp_path) as server:
        client = ClamdClient(server.path, timeout=30)
        async with client.keep_connections():
            for n in range(5):
                assert await client.scan(b"message %d" % n) is None
            assert await client.scan(VIRUS) == "Test.Virus"
            assert server.connections == 1
            assert server.scans == 6
        # The service's end closes what it kept: clamd sees the session end.
        await trio.testing.wait_all_tasks_blocked()
        assert server.open_now == 0


async def test_concurrent_scans_each_take_a_session_of_their_own(tmp_path: Path) -> None:
    async with fake_clamd(tmp_path) as server:
        client = ClamdClient(server.path, timeout=30)
        verdicts: dict[int, str | None] = {}

        async def scan(n: int) -> None:
            verdicts[n] = await client.scan(VIRUS if n % 2 else b"clean %d" % n)

        async with client.keep_connections():
            for _ in range(3):
                async with trio.open_nursery() as nursery:
                    for n in range(4):
                        nursery.start_soon(scan, n)
                assert verdicts == {0: None, 1: "Test.Virus", 2: None, 3: "Test.Virus"}
            # At most one per scan at a time, and then reused.
            assert server.connections <= 4
            assert server.scans == 12


async def test_a_session_clamd_ended_is_replaced_and_the_scan_still_answered(
    tmp_path: Path,
) -> None:
    # As clamd does after IdleTimeout, or when it restarts: the kept session is dead.
    async with fake_clamd(tmp_path, end_after=1) as server:
        client = ClamdClient(server.path, timeout=30)
        async with client.keep_connections():
            for _ in range(4):
                assert await client.scan(VIRUS) == "Test.Virus"
                await trio.sleep(0.01)  # clamd's close reaches the client's socket
        assert server.scans == 4
        assert server.connections >= 4


async def test_a_session_idle_too_long_is_not_reused(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with fake_clamd(tmp_path) as server:
        client = ClamdClient(server.path, timeout=30)
        async with client.keep_connections():
            assert await client.scan(b"one") is None
            # Past the point where clamd (IdleTimeout) may already have ended it.
            mock_clock.jump(SESSION_IDLE + 1)
            assert await client.scan(b"two") is None
            assert await client.scan(b"three") is None
        assert server.connections == 2


async def test_no_clamd_is_unavailable_with_or_without_sessions(tmp_path: Path) -> None:
    client = ClamdClient(tmp_path / "missing.sock", timeout=5)
    with pytest.raises(ScannerUnavailable):
        await client.scan(b"hello")
    async with client.keep_connections():
        with pytest.raises(ScannerUnavailable):
            await client.scan(b"hello")


async def test_clamd_gone_while_a_session_is_kept_is_unavailable(tmp_path: Path) -> None:
    client = ClamdClient(tmp_path / "clamd.sock", timeout=5)
    async with client.keep_connections():
        async with fake_clamd(tmp_path) as server:
            assert await client.scan(b"hello") is None
        # The kept session's peer is gone and nothing listens: 451 territory, never clean.
        server.path.unlink()
        with pytest.raises(ScannerUnavailable):
            await client.scan(b"hello")


VERDICT = {"score": 3.5, "required_score": 15.0, "action": "no action", "symbols": {}}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_rspamd_gets_the_message_whole_with_its_envelope(host: str) -> None:
    received: list[bytes] = []

    async def rspamd_worker(stream: trio.SocketStream) -> None:
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
        received.extend([head, body])
        reply = json.dumps(VERDICT).encode()
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))  # fmt: skip
        await stream.aclose()

    try:
        listeners = await trio.open_tcp_listeners(0, host=host)
    except OSError:
        pytest.skip(f"no {host} here")
    port = listeners[0].socket.getsockname()[1]
    content = b"Subject: big\r\n\r\n" + bytes(range(256)) * 4096  # 1 MiB, every byte value
    envelope = rspamd.Envelope(client_ip="192.0.2.7", helo="mx.example", sender="a@example.org",
                               recipients=["b@scan.go.th"])  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, rspamd_worker, listeners)
        report = await RspamdClient(host, port, timeout=30).check(content, envelope)
        nursery.cancel_scope.cancel()
    assert report.score == 3.5
    head, body = received
    assert head.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    assert b"\r\nRcpt: b@scan.go.th" in head
    assert b"\r\nIP: 192.0.2.7" in head
    assert body == content


async def test_rspamd_not_listening_is_unavailable() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connect is refused
        with pytest.raises(ScannerUnavailable):
            await RspamdClient("127.0.0.1", port, timeout=5).check(b"x", rspamd.Envelope())
