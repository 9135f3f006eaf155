"""An in-process hub for tests: a real data directory, a real mutual-TLS listener."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography import x509

from appliance.box import Box, init_box, open_box
from appliance.config import load_config
from appliance.sync.clock import ManualClock
from appliance.sync.hub.ca import fingerprint
from appliance.sync.hub.fair_queue import AdmissionPolicy
from appliance.sync.hub.routes import hub_sync_routes
from appliance.sync.hub.server import HubLimits, HubSyncService
from appliance.sync.transport import SyncRoute
from appliance.update.channel import channel_downloads, channel_routes
from appliance.update.report import update_report_routes
from tests.harness import free_port_offset

HUB_DOMAIN = "hub.go.th"


@dataclass
class Hub:
    box: Box
    service: HubSyncService
    clock: ManualClock
    url: str

    @property
    def ca_fingerprint(self) -> bytes:
        keys = self.box.config.data_dir / "keys"
        return fingerprint(x509.load_pem_x509_certificate((keys / "ca.pem").read_bytes()))

    async def token(self, agency: str, ttl: float = 24 * 3600) -> str:
        assert self.service.enrolment is not None
        return str(await self.service.enrolment.issue_token(agency, self.ca_fingerprint, ttl))


@asynccontextmanager
async def running_hub(
    root: Path,
    *,
    extra_routes: Sequence[SyncRoute] = (),
    limits: HubLimits | None = None,
    hub_database: str = "",
    admission: AdmissionPolicy | None = None,
) -> AsyncIterator[Hub]:
    """Make and start a hub under *root*/hub on free ports; stop it after the block.

    With *hub_database* (a PostgreSQL URL) its chat and enrolment live there.
    """
    data = root / "hub"
    await init_box(data, HUB_DOMAIN)
    flags = {"port_offset": free_port_offset(), "role": "hub", "hub_database": hub_database}
    config = load_config(data, flags=flags)
    # Real time as the start: the certificates the hub signs must be valid now.
    clock = ManualClock(start=time.time())
    async with open_box(config) as box:
        routes = [
            *hub_sync_routes(box.chat, box.directory, box.mailstore),
            *update_report_routes(box.config.data_dir),
            *channel_routes(box.config.data_dir),
            *extra_routes,
        ]
        service = HubSyncService(
            routes, config=box.config, hostname=box.hostname, directory=box.directory,
            mailstore=box.mailstore, clock=clock, limits=limits,
            downloads=channel_downloads(box.config.data_dir), admission=admission,
        )  # fmt: skip
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve)
            yield Hub(box, service, clock, f"https://127.0.0.1:{config.port('hub-sync')}")
            nursery.cancel_scope.cancel()


async def new_edge(root: Path, domain: str, name: str = "edge") -> Path:
    data = root / name
    await init_box(data, domain)
    return data
