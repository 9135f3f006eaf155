"""`HubClient`: one kept-alive mutual-TLS connection, failures mapped for retries."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import trio

from appliance.provisioning.enrol import enroll
from appliance.sync import hub_client
from appliance.sync.hub.server import HubLimits
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubRefused, HubUnavailable, Peer, SyncRoute
from tests.appliance.sync.hub.hubfixture import new_edge, running_hub
from tests.faults.proxy import Bandwidth, FaultProxy
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


async def _big_answer(peer: Peer, body: object) -> object:
    # Incompressible, so gzip does not shrink it: ~1.3 MB on the line.
    return {"content": base64.b64encode(os.urandom(1_000_000)).decode()}


@pytest.mark.parametrize("earned", [True, False], ids=["long answer earns time", "it does not"])
async def test_a_long_answer_earns_time_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, earned: bool
) -> None:
    # Each byte earns 1/SLOWEST_LINE s. Through a 5 Mbit/s line the 1.3 MB answer
    # takes ~2.1 s, far past the 0.4 s limit: at 256 KB/s of credit it earns ~5 s
    # and arrives; at 20 MB/s it earns ~0.07 s and the call gives up.
    monkeypatch.setattr(hub_client, "SLOWEST_LINE", 2**18 if earned else 20 * 2**20)
    routes = [SyncRoute("/sync/v1/t/big", _big_answer)]
    async with running_hub(tmp_path, extra_routes=routes) as hub:
        edge = await new_edge(tmp_path, "moe.go.th")
        await enroll(edge, hub.url, await hub.token("moe.go.th"))
        port = int(hub.url.rpartition(":")[2])
        async with FaultProxy(("127.0.0.1", port)) as line:
            line.set(Bandwidth(5_000_000))
            client = HubClient(edge / "keys", f"https://127.0.0.1:{line.port}", timeout=0.4)
            try:
                if earned:
                    answer = await client("/sync/v1/t/big", {})
                    assert len(base64.b64decode(answer["content"])) == 1_000_000
                else:
                    with pytest.raises(HubUnavailable, match="no answer in time"):
                        await client("/sync/v1/t/big", {})
            finally:
                await client.aclose()


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
