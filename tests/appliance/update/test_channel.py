"""The hub's update channel over the real mutual-TLS listener (tests/appliance/sync/hub):
publishing, the offer, and fetching a bundle — whole, resumed after a cut, bounded,
checked, throttled, and only by an enrolled box.
"""

from __future__ import annotations

import json
from pathlib import Path

import h11
import pytest
import trio

from appliance.provisioning.enrol import enroll
from appliance.sync.central import central_client_context
from appliance.sync.hub_client import HubClient
from appliance.update.channel import (
    BUNDLE_PREFIX,
    OFFER_PATH,
    PublishError,
    publish,
    read_channel,
)
from appliance.update.download import (
    PART,
    DownloadError,
    Expected,
    NotAsPromised,
    download,
    sha256_of,
)
from appliance.update.keyring import Keyring, ensure_keyring
from tests.appliance.sync.hub.hubfixture import Hub, new_edge, running_hub
from tests.appliance.update.channelkit import random_bundle
from tests.appliance.update.sandbox import COMPATIBLE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return ensure_keyring(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, keyring: Keyring) -> Path:
    return random_bundle(tmp_path_factory.mktemp("bundle"), keyring, "2.0")


def content(path: Path) -> bytes:
    return path.read_bytes()


async def enrolled(tmp_path: Path, hub: Hub) -> Path:
    edge = await new_edge(tmp_path, "moe.go.th")
    await enroll(edge, hub.url, await hub.token("moe.go.th"))
    return edge


async def offer(edge: Path, hub: Hub, compatible: str = COMPATIBLE) -> object:
    client = HubClient(edge / "keys", hub.url, timeout=10)
    try:
        answer = await client(OFFER_PATH, {"channel": "stable", "compatible": compatible})
    finally:
        await client.aclose()
    return answer["offer"]


async def test_a_published_bundle_is_offered_and_fetched_whole(
    tmp_path: Path, bundle: Path, keyring: Keyring
) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        assert await offer(edge, hub) is None  # nothing published yet
        hub_data = hub.box.config.data_dir
        done = await trio.to_thread.run_sync(
            lambda: publish(hub_data, bundle, "stable", keyring=keyring.ca_cert)
        )
        assert (done.version, done.compatible) == ("2.0", COMPATIBLE)
        assert read_channel(hub_data, "stable") == done
        assert await offer(edge, hub) == {"version": "2.0", "size": len(content(bundle)),
                                          "sha256": sha256_of(bundle)}  # fmt: skip
        # Another compatible (an arm64 box) is offered nothing.
        assert await offer(edge, hub, "edgebox-arm64") is None

        seen: list[tuple[int, int]] = []
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        part = await download(url, edge, central_client_context(edge / "keys"),
                              expected=Expected(done.size, done.sha256),
                              progress=lambda held, total: seen.append((held, total)))  # fmt: skip
        assert content(part) == content(bundle)
        assert seen[-1] == (done.size, done.size)
        assert all(total == done.size for _held, total in seen)


async def test_a_cut_download_goes_on_from_where_it_stopped(tmp_path: Path, bundle: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        expected = Expected(done.size, done.sha256)
        context = central_client_context(edge / "keys")

        class Cut(Exception):
            pass

        def cut_after_a_third(held: int, total: int) -> None:
            if held > done.size // 3:
                raise Cut

        with pytest.raises(Cut):
            await download(url, edge, context, expected=expected, progress=cut_after_a_third)
        held_before = (edge / PART).stat().st_size
        assert 0 < held_before < done.size

        first: list[int] = []
        part = await download(url, edge, central_client_context(edge / "keys"),
                              expected=expected,
                              progress=lambda held, total: first.append(held))  # fmt: skip
        # The first chunk of the second attempt lands on top of what was held: a range.
        assert first[0] > held_before
        assert content(part) == content(bundle)

        # A part of another bundle is never continued: it starts again.
        other = Expected(done.size, "0" * 64)
        with pytest.raises(NotAsPromised, match="SHA-256"):
            await download(url, edge, central_client_context(edge / "keys"), expected=other)
        assert not (edge / PART).exists()  # damaged bytes are not kept for a resume


async def test_a_bundle_over_the_limit_is_cut_off(tmp_path: Path, bundle: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        with pytest.raises(DownloadError, match="more than 1048576 allowed"):
            await download(url, edge, central_client_context(edge / "keys"), max_size=1 << 20)
        assert (edge / PART).stat().st_size == 0  # refused before a byte was written
        # A hub promising less than it sends is cut off at the promise.
        small = Expected(1 << 20, done.sha256)
        with pytest.raises(DownloadError, match="more than 1048576 allowed"):
            await download(url, edge, central_client_context(edge / "keys"), expected=small)


async def test_only_an_enrolled_box_fetches_and_only_bundles(tmp_path: Path, bundle: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        for name in ("../ca.pem", f"{done.sha256}.json", "x" * 64 + ".raucb"):
            with pytest.raises(DownloadError, match="HTTP 404"):
                await download(f"{hub.url}{BUNDLE_PREFIX}{name}", edge,
                               central_client_context(edge / "keys"))  # fmt: skip
        (edge / "keys" / "sync.pem").rename(edge / "keys" / "sync.pem.away")
        with pytest.raises(DownloadError, match="HTTP 401"):
            await download(url, edge, central_client_context(edge / "keys"))


async def test_the_download_keeps_to_its_rate(tmp_path: Path, bundle: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        rate = done.size  # one second's worth
        started = trio.current_time()
        await download(url, edge, central_client_context(edge / "keys"),
                       expected=Expected(done.size, done.sha256), rate=rate)  # fmt: skip
        # A lower bound only: a slow machine takes longer, never shorter.
        assert trio.current_time() - started >= 0.9


def test_publishing_refuses_what_boxes_could_not_use(tmp_path: Path, keyring: Keyring) -> None:
    junk = tmp_path / "junk.raucb"
    junk.write_bytes(b"not a bundle")
    with pytest.raises(PublishError, match="not a RAUC bundle"):
        publish(tmp_path / "hub", junk, "stable")
    with pytest.raises(PublishError, match="bad channel"):
        publish(tmp_path / "hub", junk, "../stable")
    assert read_channel(tmp_path / "hub", "stable") is None


def test_publishing_against_a_keyring_refuses_a_stranger(tmp_path: Path, bundle: Path) -> None:
    stranger = ensure_keyring(tmp_path / "stranger", "release")
    with pytest.raises(PublishError, match="not a RAUC bundle"):
        publish(tmp_path / "hub", bundle, "stable", keyring=stranger.ca_cert)
    assert not (tmp_path / "hub" / "update-channel" / "stable.json").exists()
    # Without a keyring the manifest is read unverified (the boxes verify).
    done = publish(tmp_path / "hub", bundle, "stable")
    raw = json.loads((tmp_path / "hub" / "update-channel" / "stable.json").read_text())
    assert raw["sha256"] == done.sha256 == sha256_of(bundle)


async def _get(
    hub: Hub, edge: Path, requests: list[tuple[str, str, list[tuple[str, str]]]]
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send each (method, path, headers) in turn on ONE kept-alive mutual-TLS connection."""
    context = central_client_context(edge / "keys")
    port = int(hub.url.rpartition(":")[2])
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context,
                            server_hostname="127.0.0.1")  # fmt: skip
    conn = h11.Connection(h11.CLIENT)
    answers = []
    try:
        with trio.fail_after(30):
            for method, path, headers in requests:
                request = h11.Request(method=method, target=path, headers=[("host", "h"), *headers])
                await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
                status, fields, chunks = 0, {}, []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                        fields = {n.decode(): v.decode() for n, v in event.headers}
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                answers.append((status, fields, b"".join(chunks)))
                conn.start_next_cycle()
    finally:
        await trio.aclose_forcefully(stream)
    return answers


async def test_ranges_head_and_keep_alive_on_the_bundle_route(tmp_path: Path, bundle: Path) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        path = f"{BUNDLE_PREFIX}{done.sha256}.raucb"
        whole = content(bundle)
        answers = await _get(hub, edge, [
            ("GET", path, [("range", "bytes=100-199")]),
            ("HEAD", path, []),
            ("GET", path, [("range", f"bytes={done.size}-")]),
            ("GET", path, [("range", "bytes=-10")]),
        ])  # fmt: skip
        (ranged, head, past, suffix) = answers
        assert ranged[0] == 206
        assert ranged[1]["content-range"] == f"bytes 100-199/{done.size}"
        assert ranged[2] == whole[100:200]
        assert (head[0], head[1]["content-length"], head[2]) == (200, str(done.size), b"")
        assert head[1]["accept-ranges"] == "bytes"
        assert (past[0], past[1]["content-range"]) == (416, f"bytes */{done.size}")
        assert (suffix[0], suffix[2]) == (206, whole[-10:])


async def test_a_whole_part_is_checked_as_it_is_without_fetching_again(
    tmp_path: Path, bundle: Path
) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        done = publish(hub.box.config.data_dir, bundle, "stable")
        url = f"{hub.url}{BUNDLE_PREFIX}{done.sha256}.raucb"
        await download(url, edge, central_client_context(edge / "keys"))
        # Again, no promise known: the server says there is nothing past what is held.
        seen: list[int] = []
        part = await download(url, edge, central_client_context(edge / "keys"),
                              progress=lambda held, total: seen.append(held))  # fmt: skip
        assert seen == [done.size]
        assert content(part) == content(bundle)
