"""The request loop both h11 listeners share (`HTTPServerConnection`), and its helpers."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from appliance.net.http1 import HTTPLimits, HTTPServerConnection, header_fields, header_tokens
from appliance.net.jsonbody import encode_json, parse_json


class Echo(HTTPServerConnection):
    """Answers each request with its target; records what the loop asked of it."""

    def __init__(self, stream: trio.abc.Stream, *, take_over: bytes = b"") -> None:
        super().__init__(stream, HTTPLimits(idle_timeout=10.0, request_timeout=5.0))
        self.take_over = take_over
        self.seen: list[bytes] = []
        self.refused: list[str] = []

    async def exchange(self, request: h11.Request) -> bool:
        self.seen.append(request.target)
        if request.target != b"/early":
            await self.reader.read_body(request, 1000)
        await self.send_response(200, [("content-length", "2")], b"ok")
        return request.target != self.take_over

    async def refuse_malformed(self, exc: h11.RemoteProtocolError) -> None:
        self.refused.append(f"malformed {exc.error_status_hint}")
        await self.send_response(exc.error_status_hint, [("content-length", "0")], b"")

    async def refuse_slow(self) -> None:
        self.refused.append("slow")


def served() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    return trio.testing.memory_stream_pair()


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


GET = b"GET %s HTTP/1.1\r\nHost: box\r\n\r\n"


async def test_requests_are_answered_in_turn_on_one_kept_alive_connection() -> None:
    client, server = served()
    connection = Echo(server)
    await client.send_all(GET % b"/a" + GET % b"/b")
    await client.send_eof()
    await connection.run()
    assert connection.seen == [b"/a", b"/b"]
    await server.aclose()
    assert (await read_all(client)).count(b"HTTP/1.1 200 OK") == 2


async def test_a_taken_over_connection_reads_no_further_request() -> None:
    client, server = served()
    connection = Echo(server, take_over=b"/ws")
    await client.send_all(GET % b"/ws" + GET % b"/never")
    await connection.run()
    assert connection.seen == [b"/ws"]


async def test_an_answer_before_the_body_was_read_closes_the_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = served()
    connection = Echo(server)
    head = b"POST /early HTTP/1.1\r\nHost: box\r\nContent-Length: 5\r\n\r\n"
    await client.send_all(head + b"hello" + GET % b"/next")
    await connection.run()  # lingers for the unread body, then ends
    assert connection.seen == [b"/early"]
    await server.aclose()
    assert b"connection: close" in (await read_all(client)).lower()


async def test_a_read_body_keeps_the_connection_alive() -> None:
    client, server = served()
    connection = Echo(server)
    head = b"POST /body HTTP/1.1\r\nHost: box\r\nContent-Length: 5\r\n\r\n"
    await client.send_all(head + b"hello" + GET % b"/next")
    await client.send_eof()
    await connection.run()
    assert connection.seen == [b"/body", b"/next"]


async def test_a_malformed_head_and_a_slow_one_are_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, server = served()
    connection = Echo(server)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: box\r\n folded\r\n\r\n")
    await connection.run()
    assert connection.refused == ["malformed 400"]
    client, server = served()
    slow = Echo(server)
    await client.send_all(b"GET / HTTP/1.1\r\nHo")
    await slow.run()
    assert slow.refused == ["slow"]
    assert slow.can_answer()  # Echo sent nothing: a listener may still answer 408


def test_repeated_fields_are_one_comma_joined_list() -> None:
    # RFC 9110 §5.3.
    fields = header_fields([(b"accept", b"a"), (b"host", b"box"), (b"accept", b"b")])
    assert fields == {"accept": "a, b", "host": "box"}
    assert header_tokens(" Upgrade , keep-alive,,") == {"upgrade", "keep-alive"}
    assert header_tokens(None) == set()


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b"[" * 100_000, b"\xff"])
def test_json_bodies_are_strict(body: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every refusal is a ValueError
        parse_json(body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists))
def test_json_bodies_round_trip(value: object) -> None:
    assert parse_json(encode_json(value)) == value
