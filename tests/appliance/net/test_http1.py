"""The shared HTTP/1.1 request reader, over an in-memory stream pair."""

from __future__ import annotations

from dataclasses import dataclass

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from appliance.net.http1 import BodyTooLarge, RequestReader, TooSlow, check_head


@dataclass(frozen=True)
class _Limits:
    max_header_bytes: int = 4096
    idle_timeout: float = 10.0
    request_timeout: float = 5.0
    receive_size: int = 1024


def _pair() -> tuple[trio.abc.Stream, RequestReader]:
    client, server = trio.testing.memory_stream_pair()
    return client, RequestReader(server, _Limits())


HEAD = b"POST /x HTTP/1.1\r\nHost: box\r\nContent-Length: %d\r\n\r\n"


async def test_a_request_and_its_body_are_read() -> None:
    client, reader = _pair()
    await client.send_all(HEAD % 5 + b"hello")
    request = await reader.next_request()
    assert isinstance(request, h11.Request)
    assert request.target == b"/x"
    assert await reader.read_body(request, 5) == b"hello"


async def test_an_idle_client_is_let_go_quietly(autojump_clock: trio.abc.Clock) -> None:
    _, reader = _pair()
    started = trio.current_time()
    assert await reader.next_request() is None
    assert trio.current_time() - started == pytest.approx(10.0)


async def test_a_head_that_stops_halfway_is_too_slow(autojump_clock: trio.abc.Clock) -> None:
    client, reader = _pair()
    await client.send_all(b"POST /x HTTP/1.1\r\nHo")
    with pytest.raises(TooSlow):
        await reader.next_request()


async def test_a_closed_connection_ends_the_loop() -> None:
    client, reader = _pair()
    await client.aclose()
    assert await reader.next_request() is None


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    client, reader = _pair()
    await client.send_all(HEAD % 1_000_000)
    request = await reader.next_request()
    assert request is not None
    with pytest.raises(BodyTooLarge) as caught:
        await reader.read_body(request, 1000)
    assert caught.value.limit == 1000
    assert reader.conn.their_state is h11.SEND_BODY  # nothing of the body was consumed
    assert not reader.finished_exchange()


async def test_a_chunked_body_growing_past_the_limit_is_refused() -> None:
    client, reader = _pair()
    head = b"POST /x HTTP/1.1\r\nHost: box\r\nTransfer-Encoding: chunked\r\n\r\n"
    await client.send_all(head + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    request = await reader.next_request()
    assert request is not None
    with pytest.raises(BodyTooLarge):
        await reader.read_body(request, 10)


async def test_a_body_that_stalls_is_too_slow(autojump_clock: trio.abc.Clock) -> None:
    client, reader = _pair()
    await client.send_all(HEAD % 10 + b"abc")
    request = await reader.next_request()
    assert request is not None
    with pytest.raises(TooSlow):
        await reader.read_body(request, 100)


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    client, reader = _pair()
    await client.send_all(
        b"POST /x HTTP/1.1\r\nHost: box\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    request = await reader.next_request()
    assert request is not None

    async def client_side() -> None:
        interim = await client.receive_some(1024)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await client.send_all(b"ok")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        assert await reader.read_body(request, 10) == b"ok"


async def test_linger_drains_a_client_still_sending_then_stops(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, reader = _pair()
    await client.send_all(HEAD % 100_000)
    request = await reader.next_request()
    assert request is not None
    # The early answer, as the listeners send it: complete, "Connection: close", with the
    # request body unread.
    headers = [("content-length", "0"), ("connection", "close")]
    reader.conn.send(h11.Response(status_code=413, headers=headers))
    reader.conn.send(h11.EndOfMessage())
    await client.send_all(b"x" * 5000)
    started = trio.current_time()
    await reader.linger()
    # The client never stopped nor closed: linger gives up at its time bound.
    assert trio.current_time() - started == pytest.approx(2.0)


async def test_linger_does_nothing_before_an_answer_was_sent(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, reader = _pair()
    await client.send_all(HEAD % 10)
    assert await reader.next_request() is not None
    with trio.fail_after(1):
        await reader.linger()


# --- issue 16: RFC 9112 §6.1 and §5.2 -----------------------------------------------


async def test_content_length_with_transfer_encoding_is_refused() -> None:
    client, reader = _pair()
    await client.send_all(
        b"POST /x HTTP/1.1\r\nHost: box\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: box\r\n\r\n"
    )
    with pytest.raises(h11.RemoteProtocolError, match="both Content-Length") as caught:
        await reader.next_request()
    assert caught.value.error_status_hint == 400


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nHost: box\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: box\r\nTransfer-Encoding: gzip,\r\n\tchunked\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: box\r\nX-Note: a\r\n b\r\n\r\n",
        b"GET /x HTTP/1.1\nHost: box\nX-Note: a\n b\n\n",
    ],
)
async def test_obs_fold_is_refused(head: bytes) -> None:
    client, reader = _pair()
    await client.send_all(head)
    with pytest.raises(h11.RemoteProtocolError, match="line folding") as caught:
        await reader.next_request()
    assert caught.value.error_status_hint == 400


async def test_obs_fold_split_across_reads_is_refused() -> None:
    # Seven bytes a read: the fold is seen whichever read completes it.
    client, server = trio.testing.memory_stream_pair()
    reader = RequestReader(server, _Limits(receive_size=7))
    await client.send_all(
        b"POST /x HTTP/1.1\r\nHost: box\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n"
    )
    with pytest.raises(h11.RemoteProtocolError, match="line folding"):
        await reader.next_request()


async def test_a_body_may_hold_anything() -> None:
    # Spaces after line breaks in a body, which arrives in the same read as the head,
    # are not folding: only the head is looked at.
    client, reader = _pair()
    body = b"a\r\n b\r\n\tc"
    await client.send_all(HEAD % len(body) + body)
    request = await reader.next_request()
    assert request is not None
    assert await reader.read_body(request, 100) == body


@given(st.binary(max_size=300))
def test_check_head_takes_any_bytes(data: bytes) -> None:
    refused: h11.RemoteProtocolError | None = None
    try:
        check_head(data)
    except h11.RemoteProtocolError as exc:
        refused = exc
    assert refused is None or refused.error_status_hint == 400


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ;=,", max_size=20).map(str.strip)


@given(st.lists(st.tuples(_TOKEN, _VALUE), max_size=8), st.binary(max_size=50))
def test_check_head_passes_unfolded_heads_whatever_the_body(
    fields: list[tuple[str, str]], body: bytes
) -> None:
    head = b"POST /x HTTP/1.1\r\n" + b"".join(
        f"{name}: {value}\r\n".encode() for name, value in fields
    )
    check_head(head + b"\r\n" + body)  # a body may hold " " after a line break
    check_head(head)  # an incomplete head, as it arrives
