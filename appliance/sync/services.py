"""Which uplink services a box runs, from its role and what enrolment configured.

One place decides, so `edgebox run` and the tests start the same set:

- **hub**: the mutual-TLS sync API (`HubSyncService`) serving every stream's hub routes.
  A hub is also an ordinary box for its own agencies (SMTP, IMAP, web), which is how it
  acts as the central mail server where no other exists.
- **edge**: the link monitor always (it says "not set up" until enrolment), then each
  replicator whose central end is configured — the outbound relay (``central_smtp``),
  mailbox replication (``central_imap``), directory and chat replication and the update
  outcome report (``hub_url``), and the renewal of the box's sync certificate. When GIN
  comes back up the monitor cuts short every wait on a dead connection (one `LinkWatch`
  shared by the monitor and every replicator's connections) and wakes every replicator
  at once, instead of each waiting out its time-out and back-off.
"""

from __future__ import annotations

from appliance.box import Box
from appliance.supervisor import Service
from appliance.sync.chat import POLL_INTERVAL, ChatReplicator
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.directory import DirectoryReplicator
from appliance.sync.hub.routes import hub_sync_routes
from appliance.sync.hub.server import HubSyncService
from appliance.sync.hub_client import HubClient
from appliance.sync.link import LinkMonitor
from appliance.sync.liveness import LinkWatch
from appliance.sync.mailbox import MailboxReplicator
from appliance.sync.relay import OutboundRelay
from appliance.sync.renewal import CertificateRenewal, finish_renewal
from appliance.sync.status import SyncStatus
from appliance.update.report import UpdateReporter


def uplink_services(box: Box, clock: Clock | None = None) -> list[Service]:
    """Return the uplink services *box* should run (none of them binds a LAN port)."""
    config = box.config
    clock = clock or SystemClock()
    if config.role == "hub":
        return [HubSyncService(box, hub_sync_routes(box))]
    keys = config.data_dir / "keys"
    # Before any service opens a connection with the sync key and certificate.
    finish_renewal(keys)
    status = SyncStatus(config.data_dir, clock)
    watch = LinkWatch()
    monitor = LinkMonitor(box, status, clock, watch=watch)
    services: list[Service] = [monitor]
    if config.central_smtp:
        relay = OutboundRelay(box, status, clock, watch=watch)
        monitor.on_up(relay.wake)
        services.append(relay)
    if config.central_imap:
        mailboxes = MailboxReplicator(
            box, status, clock, interval=config.sync_interval, watch=watch
        )
        monitor.on_up(mailboxes.wake)
        services.append(mailboxes)
    if config.hub_url:
        # One connection per stream, so a long chat catch-up never holds up the
        # directory (each client serialises its own requests).
        directory = DirectoryReplicator(
            box,
            HubClient(keys, config.hub_url, watch=watch),
            status,
            clock,
            interval=config.sync_interval,
        )
        monitor.on_up(directory.wake)
        services.append(directory)
        # Chat polls the hub more often than mail: people wait for a chat answer.
        chat = ChatReplicator(
            box,
            HubClient(keys, config.hub_url, watch=watch),
            status,
            clock,
            poll_interval=min(POLL_INTERVAL, config.sync_interval),
        )
        monitor.on_up(chat.wake)
        services.append(chat)
        # What became of the box's updates (rollbacks above all), once the link is up.
        reporter = UpdateReporter(
            config.data_dir, HubClient(keys, config.hub_url, watch=watch), status, clock
        )
        monitor.on_up(reporter.wake)
        services.append(reporter)
        services.append(
            CertificateRenewal(keys, HubClient(keys, config.hub_url, timeout=300), status, clock)
        )
    return services
