"""The WebSocket send path: frames built once per message, and `try_send_text`.

Frames are compared byte for byte with what wsproto would send; `try_send_text` is
driven over a real connection, read by wsproto's client side (conftest).
"""

from __future__ import annotations

import pytest
import trio
import wsproto.connection
import wsproto.events

from appliance.box import Box
from appliance.directory.sessions import Sessions
from appliance.web.routes import Request, StreamRoute, WebSocket
from appliance.web.websocket import text_frame
from tests.appliance.web.conftest import WebSocketClient, start_server


@pytest.mark.parametrize(
    "text",
    ["", "a", "x" * 125, "x" * 126, "ข" * 100, "y" * 65535, "y" * 65536, "ก" * 30_000],
)
def test_text_frame_is_what_wsproto_sends(text: str) -> None:
    # RFC 6455 §5.2: the 7-bit, 16-bit and 64-bit length forms, ASCII and Thai (UTF-8).
    ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
    assert text_frame(text) == ws.send(wsproto.events.TextMessage(data=text))


def test_text_frame_is_built_once_for_the_same_text() -> None:
    text = '{"type":"event","cursor":1}' + "ก" * 10
    assert text_frame(text) is text_frame(text)


async def _collect(client: WebSocketClient, count: int) -> list[str]:
    return [await client.receive_text() for _ in range(count)]


async def test_try_send_text_writes_in_order_with_send_text(
    box: Box, nursery: trio.Nursery
) -> None:
    done = trio.Event()
    taken: list[bool] = []

    async def stream(request: Request, socket: WebSocket) -> None:
        taken.append(socket.try_send_text(["1", "2"]))
        await socket.send_text("3")
        taken.append(socket.try_send_text([]))
        taken.append(socket.try_send_text(["4"]))
        await done.wait()

    server = await start_server(
        box, nursery, [StreamRoute("/s", stream, "s", "t", auth=False)],
        sessions=Sessions(box.directory_db),
    )  # fmt: skip
    client, answer = await WebSocketClient.connect(server, "/s")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    assert await _collect(client, 4) == ["1", "2", "3", "4"]
    assert taken == [True, True, True]
    done.set()
    await client.aclose()


async def test_try_send_text_queues_what_the_socket_cannot_take(
    box: Box, nursery: trio.Nursery
) -> None:
    # A client that reads late: the first message fills the socket, its tail is
    # queued (and still accepted); while it is queued nothing more is taken, and
    # send_text waits behind it. Everything arrives, whole and in order.
    big = "ก" * 200_000  # 600 KB of UTF-8
    done = trio.Event()
    taken: list[bool] = []

    async def stream(request: Request, socket: WebSocket) -> None:
        for i in range(20):
            taken.append(socket.try_send_text([f"{i}:{big}"]))
            if not taken[-1]:
                await socket.send_text(f"{i}:{big}")
        await done.wait()

    server = await start_server(
        box, nursery, [StreamRoute("/s", stream, "s", "t", auth=False)],
        sessions=Sessions(box.directory_db),
    )  # fmt: skip
    client, answer = await WebSocketClient.connect(server, "/s")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    await trio.sleep(0.3)  # let the server's socket fill up
    got = await _collect(client, 20)
    assert got == [f"{i}:{big}" for i in range(20)]
    assert True in taken
    assert False in taken  # refused while a tail was queued
    done.set()
    await client.aclose()


async def test_try_send_text_refuses_once_the_socket_is_closing(
    box: Box, nursery: trio.Nursery
) -> None:
    results: list[bool] = []
    finished = trio.Event()

    async def stream(request: Request, socket: WebSocket) -> None:
        await socket.close(1000)
        results.append(socket.try_send_text(["late"]))
        finished.set()

    server = await start_server(
        box, nursery, [StreamRoute("/s", stream, "s", "t", auth=False)],
        sessions=Sessions(box.directory_db),
    )  # fmt: skip
    client, answer = await WebSocketClient.connect(server, "/s")
    assert isinstance(answer, wsproto.events.AcceptConnection)
    event = await client.next_event()
    assert isinstance(event, wsproto.events.CloseConnection)
    await client.send(event.response())
    with trio.fail_after(30):
        await finished.wait()
    assert results == [False]
    await client.aclose()
