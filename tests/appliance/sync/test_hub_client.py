"""`HubClient`: one kept-alive mutual-TLS connection, failures mapped for retries."""

from __future__ import annotations

import base64
import json
import os
import ssl
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from appliance.provisioning.enrol import enroll
from appliance.sync import hub_client
from appliance.sync.hub.server import HubLimits
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubBusy, HubRefused, HubUnavailable, Peer, SyncRoute
from tests.appliance.sync.hub.hubfixture import new_edge, running_hub
from tests.faults.proxy import FaultProxy
from tests.harness import free_port_offset

PING = "/sync/v1/ping"


async def _stall(peer: Peer, body: object) -> object:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def test_calls_share_one_connection(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=10)
        try:
            await client(PING, {})
            first = client._stream
            for _ in range(3):
                assert (await client(PING, {}))["domain"] == "moe.go.th"
            assert client._stream is first
        finally:
            await client.aclose()


async def test_a_kept_alive_connection_a_cut_reset_is_replaced_once(tmp_path: Path) -> None:
    # Issue 24: after an RST cut, directory sync's next request failed on the send
    # (not on the answer) and its round waited a full interval.
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        port = int(hub.url.rpartition(":")[2])
        async with FaultProxy(("127.0.0.1", port)) as line:
            client = HubClient(edge / "keys", f"https://127.0.0.1:{line.port}", timeout=10)
            try:
                await client(PING, {})
                first = client._stream
                line.cut()  # RST on the kept-alive connection
                await trio.sleep(0.1)
                line.restore()
                assert (await client(PING, {}))["domain"] == "moe.go.th"
                assert client._stream is not first
                assert line.connections == 2
            finally:
                await client.aclose()


async def test_a_connection_the_hub_closed_is_replaced_once(tmp_path: Path) -> None:
    async with running_hub(tmp_path, limits=HubLimits(idle_timeout=0.05)) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=10)
        try:
            await client(PING, {})
            first = client._stream
            await trio.sleep(0.5)  # the hub drops the idle connection meanwhile
            assert (await client(PING, {}))["domain"] == "moe.go.th"
            assert client._stream is not first
        finally:
            await client.aclose()


async def test_no_answer_in_time_is_unavailable(tmp_path: Path) -> None:
    async with running_hub(tmp_path, extra_routes=[SyncRoute("/sync/v1/t/stall", _stall)]) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        client = HubClient(edge / "keys", hub.url, timeout=0.5)
        try:
            with pytest.raises(HubUnavailable, match="no answer"):
                await client("/sync/v1/t/stall", {})
            assert client._stream is None  # the stalled connection is not reused
            client.timeout = 10
            assert await client(PING, {})
        finally:
            await client.aclose()


async def _slow_hub(
    stream: trio.abc.Stream, answer: bytes, bits_per_s: int, chunk: int = 16_384
) -> None:
    """Read one request; answer 200 with *answer*, paced like a line of *bits_per_s*."""
    conn = h11.Connection(h11.SERVER)
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65_536))
    head = h11.Response(
        status_code=200,
        headers=[("content-type", "application/json"), ("content-length", str(len(answer)))],
    )
    try:
        await stream.send_all(conn.send(head))
        for start in range(0, len(answer), chunk):
            await trio.sleep(chunk * 8 / bits_per_s)
            await stream.send_all(conn.send(h11.Data(data=answer[start : start + chunk])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client gave up


@pytest.mark.parametrize("earned", [True, False], ids=["long answer earns time", "it does not"])
async def test_a_long_answer_earns_time_as_it_arrives(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.abc.Clock,
    earned: bool,
) -> None:
    # Each byte earns 1/SLOWEST_LINE s. Through a 5 Mbit/s line the 1.3 MB answer
    # takes ~2.1 s, far past the 0.4 s limit: at 256 KB/s of credit it earns ~5 s
    # and arrives; at 20 MB/s it earns ~0.07 s and the call gives up.
    # The line is faked below the client's TLS (a memory stream) and time is trio's
    # mock clock: only the line's pacing takes time, so a busy machine cannot turn
    # "arrives" into "gives up". The real transport is tested above.
    monkeypatch.setattr(hub_client, "SLOWEST_LINE", 2**18 if earned else 20 * 2**20)
    content = os.urandom(1_000_000)  # incompressible: ~1.3 MB as base64 in JSON
    answer = json.dumps({"content": base64.b64encode(content).decode()}).encode()
    ours, hubs = trio.testing.memory_stream_pair()

    async def line_to_the_hub(*args: object, **kwargs: object) -> trio.abc.Stream:
        return ours

    async def no_tls(watch: object, stream: trio.abc.Stream, *args: object, **kw: object) -> object:
        return stream

    monkeypatch.setattr(hub_client, "open_tcp", line_to_the_hub)
    monkeypatch.setattr(hub_client, "start_tls", no_tls)
    client = HubClient(
        tmp_path, "https://hub.gin.go.th:7443", timeout=0.4, context=ssl.create_default_context()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_slow_hub, hubs, answer, 5_000_000)
        try:
            if earned:
                answer_json = await client("/sync/v1/t/big", {})
                assert len(base64.b64decode(answer_json["content"])) == 1_000_000
            else:
                with pytest.raises(HubUnavailable, match="no answer in time"):
                    await client("/sync/v1/t/big", {})
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_hub_down_is_unavailable(tmp_path: Path) -> None:
    edge = await new_edge(tmp_path, "moe.go.th")
    port = 7443 + free_port_offset()
    client = HubClient(edge / "keys", f"https://127.0.0.1:{port}", timeout=10)
    with pytest.raises(HubUnavailable):
        await client(PING, {})


async def test_not_enrolled_is_refused_not_retried(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        # Trusts the hub (the CA file) but has no certificate of its own.
        (edge / "keys" / "central-ca.pem").write_bytes(
            (hub.box.config.data_dir / "keys" / "ca.pem").read_bytes()
        )
        client = HubClient(edge / "keys", hub.url, timeout=10)
        with pytest.raises(HubRefused) as refused:
            await client(PING, {})
        assert refused.value.status == 401
        await client.aclose()


async def test_a_hub_with_an_untrusted_certificate_is_unavailable(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        # The box trusts its own CA only, not the hub's: the handshake must fail.
        (edge / "keys" / "central-ca.pem").write_bytes((edge / "keys" / "ca.pem").read_bytes())
        client = HubClient(edge / "keys", hub.url, timeout=10)
        with pytest.raises(HubUnavailable):
            await client(PING, {})


def test_only_sync_paths_are_called(tmp_path: Path) -> None:
    client = HubClient(tmp_path, "https://127.0.0.1:1")
    with pytest.raises(ValueError, match="sync route"):
        trio.run(client, "/admin", {})


def test_retry_after_is_read_as_seconds_and_bounded() -> None:
    # RFC 9110 §10.2.3: delay-seconds; an HTTP-date (wall clocks that may disagree) or
    # garbage is not a delay, and the body's retry_after is used instead.
    assert hub_client.retry_after_seconds("12") == 12.0
    assert hub_client.retry_after_seconds(" 7 ") == 7.0
    for text in (None, "", "-3", "1.5", "Wed, 21 Oct 2015 07:28:00 GMT", "9" * 12, "١٢"):
        assert hub_client.retry_after_seconds(text) is None
    body = json.dumps({"error": {"code": "hub_busy", "reason": "queue_full", "retry_after": 9}})
    with pytest.raises(HubBusy) as busy:
        hub_client._interpret("/sync/v1/ping", 503, body.encode(), "4")
    assert (busy.value.retry_after, busy.value.reason) == (4.0, "queue_full")
    with pytest.raises(HubBusy) as busy:
        hub_client._interpret("/sync/v1/ping", 503, body.encode(), None)
    assert busy.value.retry_after == 9.0
    with pytest.raises(HubBusy) as busy:
        hub_client._interpret("/sync/v1/ping", 503, b"{}", "99999999")
    assert busy.value.retry_after == hub_client.MAX_RETRY_AFTER
    # A 503 that says nothing of when is the plain "unavailable" it always was.
    with pytest.raises(HubUnavailable) as plain:
        hub_client._interpret("/sync/v1/ping", 503, b"{}", None)
    assert not isinstance(plain.value, HubBusy)


@given(st.text(max_size=40), st.binary(max_size=200))
def test_any_retry_after_and_503_body_is_busy_or_unavailable(header: str, raw: bytes) -> None:
    # Whatever a hub (or something in its place) sends, the box gets one of its two
    # "try again" errors, with a wait that is a number of seconds within the bound.
    seconds = hub_client.retry_after_seconds(header)
    assert seconds is None or seconds >= 0
    with pytest.raises(HubUnavailable) as told:
        hub_client._interpret("/sync/v1/chat/push", 503, raw, header)
    if isinstance(told.value, HubBusy):
        assert 0 <= told.value.retry_after <= hub_client.MAX_RETRY_AFTER
