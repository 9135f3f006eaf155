"""The registry composes the box: which services run, in which order, and what HTTPS serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.box import Box, configured, init_box, open_box
from appliance.mail.smtp.pool import SMTPWorkerPool
from appliance.mail.smtp.server import SMTPService
from appliance.panel import BoxViewSlot
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import Lifecycle
from appliance.registry import lifelong_services, provisioned_services, web_routes

DOMAIN = "registry.go.th"

#: The start order of a provisioned edge box with nothing of the uplink configured.
EDGE = [
    "smtp-mx", "smtp-submission", "smtp-submissions", "imap", "imaps", "https",
    "search-index", "traffic-log-retention", "chat-secret-sweeper", "session-expiry",
    "tls-renewal", "link-monitor", "health", "metrics",
]  # fmt: skip


async def opened(data: Path, **flags: object) -> AsyncIterator[Box]:
    await init_box(data, DOMAIN)
    async with open_box(configured(data, {}, flags)) as box:
        yield box


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    async for each in opened(tmp_path / "data"):
        yield each


async def test_an_edge_box_runs_its_services_in_order(box: Box) -> None:
    composed = provisioned_services(box)
    assert [service.name for service in composed.services] == EDGE
    assert composed.health in composed.services


async def test_the_uplink_and_the_backup_join_when_configured(tmp_path: Path) -> None:
    flags = {
        "central_smtp": "smtp://127.0.0.1:1",
        "central_imap": "imaps://127.0.0.1:2",
        "backup_target": str(tmp_path / "backups"),
    }
    async for box in opened(tmp_path / "data", **flags):
        names = [service.name for service in provisioned_services(box).services]
    uplink = ["link-monitor", "outbound-relay", "mailbox-sync"]
    assert names == [*EDGE[: EDGE.index("link-monitor")], *uplink, "health", "metrics", "backup"]


async def test_a_hub_serves_the_sync_api_instead_of_the_uplink(tmp_path: Path) -> None:
    async for box in opened(tmp_path / "data", role="hub"):
        names = [service.name for service in provisioned_services(box).services]
    assert names == [*EDGE[: EDGE.index("link-monitor")], "hub-sync", "health", "metrics"]


async def test_a_hub_on_postgresql_follows_its_workers_commits(tmp_path: Path, pg_url: str) -> None:
    async for box in opened(tmp_path / "data", role="hub", hub_database=pg_url):
        names = [service.name for service in provisioned_services(box).services]
    hub = [*EDGE[: EDGE.index("link-monitor")], "hub-sync", "health", "metrics"]
    assert names == [*hub, "commit-follower"]


async def test_smtp_workers_put_the_mx_port_in_a_pool_of_processes(tmp_path: Path) -> None:
    async for box in opened(tmp_path / "data", smtp_workers=2):
        services = provisioned_services(box).services
    assert [service.name for service in services] == EDGE
    mx = services[0]
    assert isinstance(mx, SMTPWorkerPool)
    assert mx.workers == 2
    # Submission stays in this process, and so does the one writer the pool hands to.
    assert isinstance(services[1], SMTPService)
    assert mx.delivery is box.delivery
    assert mx.traffic is box.traffic


async def test_one_smtp_worker_is_the_one_process_mx(box: Box) -> None:
    assert box.config.smtp_workers == 1
    mx = provisioned_services(box).services[0]
    assert isinstance(mx, SMTPService)
    assert mx.name == "smtp-mx"


async def test_the_https_port_serves_every_capability(box: Box) -> None:
    paths = {route.path for route in web_routes(box)}
    for path in (
        "/api/v1/session", "/api/v1/link", "/api/v1/openapi.json", "/signin", "/mail",
        "/mail/compose", "/chat", "/admin", "/mail/config-v1.1.xml",
    ):  # fmt: skip
        assert path in paths


def test_the_lifelong_services_start_in_order_when_turned_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lifecycle = Lifecycle(data, ensure_device(data))
    plain = configured(data, {}, {})
    assert not any(
        type(service).__name__ in ("DiscoveryService", "HardwareWatchdogService")
        for service in lifelong_services(plain, lifecycle, BoxViewSlot())
    )
    flags = {
        "discovery": True,
        "hardware_watchdog": True,
        "watchdog_device": str(tmp_path / "watchdog"),
    }
    config = configured(data, {}, flags)
    services = lifelong_services(config, lifecycle, BoxViewSlot())
    names = [type(service).__name__ for service in services]
    # The panel, if this machine has one, sits between the two.
    assert names[0] == "DiscoveryService"
    assert names[-1] == "HardwareWatchdogService"


async def test_an_enrolled_box_wakes_its_hub_streams_through_its_own_stagger(
    tmp_path: Path,
) -> None:
    """Issue 22: the link's return reaches the hub's streams after the box's delay."""
    from appliance.registry import uplink_services
    from appliance.sync.link import LinkMonitor
    from appliance.sync.reconnect import StaggeredWake

    flags = {"hub_url": "https://127.0.0.1:1", "central_smtp": "smtp://127.0.0.1:2"}
    async for box in opened(tmp_path / "data", **flags):
        services = uplink_services(box)
        monitor = next(s for s in services if isinstance(s, LinkMonitor))
        stagger = next(s for s in services if isinstance(s, StaggeredWake))
        relay = next(s for s in services if s.name == "outbound-relay")
        chat = next(s for s in services if s.name == "chat-sync")
        # The monitor wakes the relay itself, and the hub's streams only through the stagger.
        assert stagger.link_back in monitor._on_up
        assert relay.wake in monitor._on_up  # type: ignore[attr-defined]
        assert chat.wake not in monitor._on_up  # type: ignore[attr-defined]
        assert chat.wake in stagger._subscribers  # type: ignore[attr-defined]
        assert len(stagger._subscribers) >= 4  # chat, directory, update report and offers
