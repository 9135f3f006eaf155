"""The box following the hub's update channel, against the real RAUC of sandbox.py and a
real mutual-TLS hub listener: fetch while the link is up, install only in the window or
on the admin's "install now", never backwards, and a refusal that says why.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from appliance.provisioning.enrol import enroll
from appliance.sync.central import central_client_context
from appliance.sync.clock import SystemClock
from appliance.sync.hub_client import HubClient
from appliance.sync.status import SyncStatus
from appliance.update import outcome, progress
from appliance.update.channel import publish
from appliance.update.confirm import Action
from appliance.update.follow import (
    READY_DIR,
    ChannelFollower,
    install_requested,
    read_offer_state,
    request_install_now,
)
from appliance.update.keyring import Keyring
from tests.appliance.sync.hub.hubfixture import Hub, new_edge, running_hub
from tests.appliance.update.channelkit import random_bundle
from tests.appliance.update.sandbox import COMPATIBLE, RaucSandbox, keyrings, release_of
from tests.appliance.update.test_rauc import confirm, healthy

pytestmark = pytest.mark.slow

NOON = time.struct_time((2026, 12, 7, 12, 0, 0, 0, 341, 0))
TWO_AM = time.struct_time((2026, 12, 8, 2, 0, 0, 1, 342, 0))


#: Every test's hub connections, closed after it.
CLIENTS: list[HubClient] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while CLIENTS:
        await CLIENTS.pop().aclose()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keyring]:
    return keyrings(tmp_path_factory.mktemp("keyrings"))


@pytest.fixture
def box(tmp_path: Path, keys: dict[str, Keyring]) -> Iterator[RaucSandbox]:
    sandbox = RaucSandbox.create(tmp_path / "box", keys["release"])
    try:
        yield sandbox
    finally:
        sandbox.close()


def follower(
    edge: Path, hub: Hub, box: RaucSandbox, reboots: list[str], *, local: time.struct_time
) -> ChannelFollower:
    release = edge / "edgebox-release"
    release.write_text("1.0\n")  # what the image says it is, before RAUC installed anything
    client = HubClient(edge / "keys", hub.url, timeout=30)
    CLIENTS.append(client)
    return ChannelFollower(
        edge, client, hub.url,
        lambda: central_client_context(edge / "keys"), box.rauc(),
        SyncStatus(edge, SystemClock()), SystemClock(), compatible=COMPATIBLE, installs=True,
        window="01:00-05:00", reboot=lambda: reboots.append("reboot"), release_file=release,
        localtime=lambda _t: local,
    )  # fmt: skip


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def enrolled(tmp_path: Path, hub: Hub) -> Path:
    edge = await new_edge(tmp_path, "moe.go.th")
    await enroll(edge, hub.url, await hub.token("moe.go.th"))
    return edge


async def test_an_offer_is_fetched_at_once_and_installed_when_the_admin_asks(
    tmp_path: Path, box: RaucSandbox, keys: dict[str, Keyring]
) -> None:
    bundle = random_bundle(tmp_path, keys["release"], "2.0")
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        published = publish(hub.box.config.data_dir, bundle, "stable")
        reboots: list[str] = []
        follow = follower(edge, hub, box, reboots, local=NOON)
        untouched = box.fingerprint()
        # An older offer's bundle still lying there goes when the newer one is fetched.
        stale = edge / READY_DIR / f"{'c' * 64}.raucb"
        write(stale, b"an older offer")

        # Noon: outside the window. Fetched and checked, not installed.
        state = await follow.round()
        assert not stale.exists()
        assert (state.decision, state.stage, state.running) == ("newer", "ready", "1.0")
        assert (edge / READY_DIR / f"{published.sha256}.raucb").exists()
        assert box.fingerprint() == untouched

        assert reboots == []
        # A second round changes nothing and fetches nothing again.
        assert (await follow.round()).stage == "ready"

        # The admin presses "install now" in the console.
        request_install_now(edge, "admin@moe.go.th", time.time())
        state = await follow.round()
        assert (state.stage, reboots) == ("installed", ["reboot"])
        assert release_of(box.slot("B")) == "2.0"
        assert install_requested(edge) is None  # the request was answered
        shown = progress.read_progress(edge, time.time())
        assert shown is not None
        assert (shown.phase, shown.version) == (progress.REBOOTING, "2.0")
        assert not (edge / READY_DIR / f"{published.sha256}.raucb").exists()
        pending = outcome.read_state(edge).pending
        assert pending is not None
        assert pending.version == "2.0"
        # Waiting for its reboot: the same offer is not installed twice.
        assert (await follow.round()).decision == "installed"
        assert reboots == ["reboot"]

        # The reboot: the new slot passes its gate; the channel now offers what runs.
        assert box.boot() == "B"
        assert await confirm(box, edge, healthy, []) is Action.COMMIT
        state = await follow.round()
        assert (state.decision, state.running) == ("up-to-date", "2.0")


async def test_a_release_older_than_the_running_one_is_refused_once_with_the_reason(
    tmp_path: Path, box: RaucSandbox, keys: dict[str, Keyring]
) -> None:
    older = random_bundle(tmp_path, keys["release"], "0.9", size=1 << 20)
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        publish(hub.box.config.data_dir, older, "stable")
        follow = follower(edge, hub, box, [], local=TWO_AM)
        untouched = box.fingerprint()
        request_install_now(edge, "admin@moe.go.th", time.time())  # not even on request
        state = await follow.round()
        assert (state.decision, state.stage) == ("older", "refused")
        assert state.reason == "the hub offers 0.9, older than the running 1.0"
        await follow.round()
        [refused] = outcome.read_state(edge).events  # recorded once, for the hub's report
        assert (refused.event, refused.version, refused.reason) == ("refused", "0.9", state.reason)
        assert box.fingerprint() == untouched
        assert install_requested(edge) is None
        assert not (edge / "update" / "incoming.part").exists()  # nothing fetched


async def test_a_bundle_rauc_refuses_changes_nothing_says_why_and_is_not_retried(
    tmp_path: Path, box: RaucSandbox, keys: dict[str, Keyring]
) -> None:
    # Signed, but by a keyring this box does not trust.
    stranger = random_bundle(tmp_path, keys["stranger"], "2.0", size=1 << 20)
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        publish(hub.box.config.data_dir, stranger, "stable")
        reboots: list[str] = []
        # Two in the morning: inside the window, so it installs without being asked.
        follow = follower(edge, hub, box, reboots, local=TWO_AM)
        untouched = box.fingerprint()
        state = await follow.round()
        assert state.stage == "refused"
        assert "RAUC" in state.reason
        assert box.fingerprint() == untouched
        assert reboots == []
        shown = progress.read_progress(edge, time.time())
        assert shown is not None
        assert shown.phase == progress.REFUSED
        assert "RAUC" in shown.reason
        # The next round in the window does not try the same bundle again.
        assert (await follow.round()).stage == "refused"
        events = outcome.read_state(edge).events
        assert [e.event for e in events] == ["refused"]
        assert "RAUC" in events[0].reason


async def test_no_offer_and_no_hub_leave_the_box_alone(tmp_path: Path, box: RaucSandbox) -> None:
    async with running_hub(tmp_path) as hub:
        edge = await enrolled(tmp_path, hub)
        follow = follower(edge, hub, box, [], local=TWO_AM)
        assert (await follow.round()).decision == "none"
    # The hub is gone: the round says so in the sync status and keeps what it knew.
    state = await follow.round()
    assert state.decision == "none"
    saved = read_offer_state(edge)
    assert saved is not None
    assert saved.offer is None
