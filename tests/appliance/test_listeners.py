"""ConnectionGate: the per-source share beside the listener's total, on real sockets."""

from __future__ import annotations

import socket
from functools import partial

import trio
import trio.testing

from appliance.listeners import ConnectionGate

REFUSAL = b"421 busy\r\n"


async def connect_from(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def first_bytes(stream: trio.SocketStream) -> bytes:
    with trio.fail_after(10):
        return await stream.receive_some(100)


async def test_one_source_at_its_share_does_not_keep_others_out() -> None:
    gate = ConnectionGate(4, REFUSAL, per_source=2)
    release = trio.Event()

    async def serve(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"220 hello\r\n")
        await release.wait()

    async def handler(stream: trio.SocketStream) -> None:
        await gate.admit(stream, serve)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        hog = [await connect_from(port, "127.0.0.2") for _ in range(2)]
        for stream in hog:
            assert await first_bytes(stream) == b"220 hello\r\n"
        assert gate.by_source == {"127.0.0.2": 2}
        refused = await connect_from(port, "127.0.0.2")
        assert await first_bytes(refused) == REFUSAL
        other = [await connect_from(port, "127.0.0.3") for _ in range(2)]
        for stream in other:
            assert await first_bytes(stream) == b"220 hello\r\n"
        # The total still holds: a fifth source finds the listener full.
        late = await connect_from(port, "127.0.0.4")
        assert await first_bytes(late) == REFUSAL
        release.set()
        for stream in [*hog, *other, refused, late]:
            await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()  # every handler has finished
        assert gate.active == 0
        assert gate.by_source == {}, "a source leaves the map with its last connection"
        nursery.cancel_scope.cancel()
