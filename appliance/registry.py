"""The composition root: which services the box runs in each state, and what HTTPS serves.

This is the one place that knows every capability. Everything below it is handed only
the parts it uses — the settings, the directory, the mail store, the chat… — never
the whole opened box (`appliance.box.Box`); only this module takes a part out of it.
`appliance.cli` runs what this module lists, and tests that start a service in-process
call the same functions, so a test serves what the box serves.

The box's states and what runs in each (docs/architecture.md, "The registry"):

- **Across both states** (`lifelong_services`): mDNS discovery, the front panel, the
  hardware watchdog and the USB provisioning stick. They run from `edgebox run` to its
  end: the panel shows the setup code, then the box's state; the records change, the
  announcer stays.
- **Unprovisioned** (`setup_services`): only the setup path on the HTTPS port.
- **Provisioned** (`provisioned_services`): mail, the web port, the background jobs,
  the uplink of the box's role (`uplink_services`: edge or hub), health, `/metrics`
  and the daily backup, in that start order; the supervisor starts them one by one
  and restarts one that crashes (appliance.supervisor).

The routes of the HTTPS port (`web_routes`): the JSON API first (its document is built
from them), then the pages. Adding a capability is its folder and one line here: a
service in `provisioned_services`, or a route list in `web_routes`, handed the parts
it uses.

What this is not: the state machine of the box (appliance.provisioning.lifecycle) or
the runner (appliance.cli runs the states, appliance.supervisor the services).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from appliance.admin.pages import admin_routes
from appliance.backup.hub_restore import restore_from_hub
from appliance.backup.offsite.routes import backup_hub_routes
from appliance.backup.offsite.upload import OffsiteBackup
from appliance.backup.service import DailyBackup
from appliance.box import Box
from appliance.chat import SecretSweeper
from appliance.chat.api import chat_routes
from appliance.chat.pages import chat_page_routes
from appliance.chat.store import CHAT_NOTIFY, CHAT_SCHEMA
from appliance.compliance.retention import TrafficLogRetention
from appliance.config import Config
from appliance.directory.preferences import PreferenceStore
from appliance.directory.sessions import SessionExpiry
from appliance.discovery import DiscoveryService
from appliance.health.metrics import SnapshotCollector
from appliance.health.metrics_service import MetricsService
from appliance.health.monitor import HealthMonitor
from appliance.health.readings import PsutilReadings
from appliance.mail.autoconfig_pages import autoconfig_routes
from appliance.mail.imap.server import IMAPService
from appliance.mail.indexing import SearchIndexer
from appliance.mail.smtp.budget import MessageBudget
from appliance.mail.smtp.policy import Port
from appliance.mail.smtp.pool import SMTPWorkerPool
from appliance.mail.smtp.server import SMTPService
from appliance.mail.webmail.compose_pages import compose_routes
from appliance.mail.webmail.pages import mail_routes
from appliance.panel import BoxView, BoxViewSlot, panel_service
from appliance.protection.authentication import InboundAuthenticator
from appliance.protection.engines import EngineWatch
from appliance.protection.signatures.sync import (
    SignatureUpdater,
    signature_routes,
    stick_installer,
)
from appliance.provisioning.lifecycle import Lifecycle
from appliance.provisioning.setup_api import (
    NoSessions,
    SetupApi,
    SetupHost,
    provisioned_setup_routes,
)
from appliance.provisioning.usb import usb_service
from appliance.provisioning.wizard_pages import SetupWizard
from appliance.security.guard import AuthGuard
from appliance.security.tls_renewal import TLSRenewal
from appliance.store.postgres import CommitFollower, PgStore
from appliance.supervisor import Service
from appliance.sync.central import central_client_context
from appliance.sync.chat import POLL_INTERVAL, ChatReplicator
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.directory import DirectoryReplicator
from appliance.sync.hub.admission_report import AdmissionCollector
from appliance.sync.hub.routes import hub_sync_routes
from appliance.sync.hub.server import HubSyncService
from appliance.sync.hub_client import HubClient
from appliance.sync.link import LinkMonitor
from appliance.sync.link_api import link_routes
from appliance.sync.liveness import LinkWatch
from appliance.sync.mailbox import MailboxReplicator
from appliance.sync.reconnect import StaggeredWake, box_rng
from appliance.sync.relay import OutboundRelay
from appliance.sync.renewal import CertificateRenewal, finish_renewal
from appliance.sync.share import LinkShare, SharedHubCall
from appliance.sync.status import SyncStatus
from appliance.update.channel import channel_downloads, channel_routes
from appliance.update.follow import ChannelFollower, InstallNowBell, reboot_command
from appliance.update.installer import UpdateInstaller
from appliance.update.rauc import RaucCommand
from appliance.update.report import UpdateReporter, update_report_routes
from appliance.watchdog import hardware_watchdog
from appliance.web.openapi import openapi_route
from appliance.web.pages import CommonPages, PageKit
from appliance.web.routes import Route, StreamRoute
from appliance.web.server import HTTPSService
from appliance.web.session_api import SessionApi

# --- across both states ------------------------------------------------------------------


class LifelongService(Protocol):
    """A service the runner starts in its own nursery: not supervised, never restarted."""

    async def serve(self, *, task_status: Any = ...) -> None: ...


def lifelong_services(
    config: Config, lifecycle: Lifecycle, views: BoxViewSlot
) -> list[LifelongService]:
    """The services that run in every state of the box, in start order.

    Made before any of them starts, so a bad board or watchdog setting is a plain
    `ConfigError` at start-up. Each is optional: discovery by its setting, the panel
    if the board has one, the watchdog and the USB stick service by theirs.
    """
    stick_signatures = stick_installer(config) if config.protection else None
    services: list[LifelongService | None] = [
        # The records change with the state; the announcer stays.
        DiscoveryService(config, lifecycle) if config.discovery else None,
        # The setup code while unprovisioned, the box's state (`views`) after.
        panel_service(config, lifecycle, views),
        hardware_watchdog(config),
        # A stick's system update installs the way the hub channel's does, and a
        # stick's signed set of signatures the way the hub mirror's does (offline path).
        usb_service(config, lifecycle, update_installer(config), stick_signatures),
    ]
    return [service for service in services if service is not None]


# --- unprovisioned -----------------------------------------------------------------------


def setup_services(config: Config, guard: AuthGuard, lifecycle: Lifecycle) -> list[Service]:
    """The services of an unprovisioned box: the setup path on the HTTPS port only."""
    api = SetupApi(lifecycle, guard)
    wizard = SetupWizard(config, lifecycle, api, hub_restorer=_restore_from_hub)
    routes = api.routes() + wizard.routes()
    # Nobody is signed in (there are no users yet); the device's own certificate.
    https = HTTPSService(SetupHost(config), routes, sessions=NoSessions(),
                         tls=lifecycle.device.ssl_context())  # fmt: skip
    return [https]


async def _restore_from_hub(
    staging: Path, hub_url: str, token: str, box_id: str, domain: str, key: bytes
) -> str:
    """The wizard's restore from the hub: re-enrol as the old box, fetch, restore."""
    done = await restore_from_hub(staging, hub_url, token, box_id, domain, key)
    return done.restored.name


# --- provisioned -------------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    """A provisioned box's services, and what the runner wires around them."""

    #: In start order.
    services: list[Service]
    #: Its `service_states` is set to the supervisor's once the supervisor exists.
    health: HealthMonitor
    #: What the front panel shows while these services run.
    view: BoxView


def provisioned_services(box: Box, lifecycle: Lifecycle | None = None) -> Provisioned:
    """Every service of a provisioned box, in start order; see the module docstring."""
    config = box.config
    health = HealthMonitor(box.config, box.mailstore.outbound_groups, PsutilReadings())
    box.metrics.attach(
        SnapshotCollector(
            health.latest,
            streams=box.chat.fanout.stream_count,
            refusing=lambda: box.disk_guard.refusing,
        )
    )
    # One budget for all three SMTP ports: it bounds the box's memory, not a port's.
    budget = MessageBudget()
    # The console's Install now wakes the update channel's follower through this.
    install_now = InstallNowBell()
    services: list[Service] = [
        mx_service(box, budget),
        *(smtp_service(box, port, budget) for port in (Port.SUBMISSION, Port.SUBMISSIONS)),
        imap_service(box, "imap"),
        imap_service(box, "imaps"),
        https_service(box, lifecycle, install_now),
        SearchIndexer(box.mailstore, box.disk_guard.room_for_background),
        TrafficLogRetention(box.traffic),
        SecretSweeper(box.chat),
        SessionExpiry(box.sessions),
        TLSRenewal(config.data_dir / "keys", box.tls_names, [box.identity.domain]),
        *uplink_services(box, install_now=install_now),
        health,
        MetricsService(config, box.metrics),
    ]
    if config.hub_store():
        # Workers (`edgebox hub worker`) commit boxes' events to the shared store; this
        # process's live streams hear of them through the store's notifications.
        follower = PgStore(config.hub_store(), CHAT_SCHEMA, notify=CHAT_NOTIFY)
        services.append(CommitFollower(follower, box.chat.publish_committed))
    if config.backup_target:
        services.append(
            DailyBackup(config.data_dir, Path(config.backup_target), keep=config.backup_keep)
        )
    if box.protection is not None:
        # The scanning engines first: they take longest to start (appliance.protection).
        services.insert(0, EngineWatch(config, box.protection))
    view = BoxView(box.hostname, health.findings, box.mailstore.outbound_groups)
    return Provisioned(services, health, view)


#: Starts one MX worker process (appliance.smtp_worker); the pool adds its descriptors.
MX_WORKER_COMMAND = (sys.executable, "-m", "appliance.smtp_worker")


def mx_service(box: Box, budget: MessageBudget | None = None) -> SMTPService | SMTPWorkerPool:
    """The MX port: in this process, or in ``smtp_workers`` worker processes.

    The workers share the port and hand every message to this process's one writer
    (appliance.mail.smtp.pool); each has its own message budget, so the box's bound
    on message bytes being checked is the budget times the number of processes.
    """
    if box.config.smtp_workers <= 1:
        return smtp_service(box, Port.MX, budget)
    return SMTPWorkerPool(
        box.config, MX_WORKER_COMMAND, delivery=box.delivery, traffic=box.traffic,
        metrics=box.metrics,
    )  # fmt: skip


def smtp_service(box: Box, port: Port, budget: MessageBudget | None = None) -> SMTPService:
    """The SMTP listener of *port* (MX, submission or submissions), sharing *budget*."""
    return SMTPService(
        port, config=box.config, hostname=box.hostname, tls=box.tls, directory=box.directory,
        mailstore=box.mailstore, delivery=box.delivery, signin=box.signin, traffic=box.traffic,
        disk_guard=box.disk_guard, metrics=box.metrics, protection=box.protection,
        authenticate=InboundAuthenticator(box.hostname) if port is Port.MX else None,
        budget=budget,
    )  # fmt: skip


def imap_service(box: Box, name: str) -> IMAPService:
    """The IMAP listener *name*: "imap" (STARTTLS) or "imaps"."""
    return IMAPService(
        name, config=box.config, tls=box.tls, signin=box.signin, mailstore=box.mailstore,
        directory=box.directory, disk_guard=box.disk_guard, metrics=box.metrics,
    )  # fmt: skip


@dataclass
class _WebSettings:
    """What the HTTPS listener needs of the box (`appliance.web.server.WebHost`)."""

    config: Config


def https_service(
    box: Box, lifecycle: Lifecycle | None = None, install_now: InstallNowBell | None = None
) -> HTTPSService:
    """The HTTPS listener of a provisioned box, serving `web_routes`."""
    routes = web_routes(box, lifecycle, install_now)
    return HTTPSService(_WebSettings(box.config), routes, sessions=box.sessions)


def uplink_services(
    box: Box, clock: Clock | None = None, *, install_now: InstallNowBell | None = None
) -> list[Service]:
    """Return the uplink services of the box's role (none of them binds a LAN port).

    - **hub**: the mutual-TLS sync API (`HubSyncService`) serving every stream's hub
      routes. A hub is also an ordinary box for its own agencies (SMTP, IMAP, web),
      which is how it acts as the central mail server where no other exists.
    - **edge**: the link monitor always (it says "not set up" until enrolment), then
      each replicator whose central end is configured — the outbound relay
      (``central_smtp``), mailbox replication (``central_imap``), directory and chat
      replication and the update outcome report (``hub_url``), the renewal of the
      box's sync certificate, and the daily offsite backup to the hub
      (``backup_offsite``), which steps aside while the replicators use the link
      (`LinkShare`).
      When GIN comes back up the monitor cuts short every wait on a dead connection
      (one `LinkWatch` shared by the monitor and every replicator's connections) and
      wakes the replicators instead of each waiting out its time-out and back-off: the
      central mail ones at once, the hub's through `StaggeredWake` after this box's
      own delay (a national cut's boxes do not all reach the hub in one second).
    """
    config = box.config
    clock = clock or SystemClock()
    if config.role == "hub":
        routes = [
            *hub_sync_routes(box.chat, box.directory, box.mailstore),
            # The boxes' reports of what became of their updates.
            *update_report_routes(config.data_dir),
            # The signature sets it mirrors for the boxes (docs/protection.md).
            *signature_routes(config.data_dir),
            # The update channel's offers; its bundles are downloads.
            *channel_routes(config.data_dir),
            # Each box's offsite backup sets and its escrowed backup key.
            *backup_hub_routes(config.data_dir, config.backup_hub_keep, config.backup_hub_quota),
        ]
        hub = HubSyncService(
            routes, config=config, hostname=box.hostname, directory=box.directory,
            mailstore=box.mailstore, downloads=channel_downloads(config.data_dir),
        )  # fmt: skip
        # The fair admission's queue and each box's wait on /metrics (docs/hub.md).
        box.metrics.attach(AdmissionCollector(hub.request_gate, hub.handshakes))
        return [hub]
    keys = config.data_dir / "keys"
    # Before any service opens a connection with the sync key and certificate.
    finish_renewal(keys)
    status = SyncStatus(config.data_dir, clock)
    watch = LinkWatch()
    monitor = LinkMonitor(config, status, clock, watch=watch)
    services: list[Service] = [monitor]
    if config.central_smtp:
        relay = OutboundRelay(
            status, clock, config=config, hostname=box.hostname, directory=box.directory,
            mailstore=box.mailstore, watch=watch,
        )  # fmt: skip
        monitor.on_up(relay.wake)
        services.append(relay)
    if config.central_imap:
        mailboxes = MailboxReplicator(
            status, clock, config=config, directory=box.directory, mailstore=box.mailstore,
            interval=config.sync_interval, watch=watch, protection=box.protection,
        )  # fmt: skip
        monitor.on_up(mailboxes.wake)
        services.append(mailboxes)
    if config.hub_url:
        # "The link is back" reaches the hub's streams after this box's own delay, so
        # the boxes of a national cut do not all shake hands with the hub in one second
        # (appliance.sync.reconnect); the central mail streams above keep theirs at once.
        rng = box_rng(box.identity.box_id)
        stagger = StaggeredWake(rng, clock, watch, cut_length=lambda: monitor.last_cut)
        monitor.on_up(stagger.link_back)
        services.append(stagger)
        # What the offsite backup steps aside for: the replicators' requests to the hub
        # and mail waiting to leave.
        share = LinkShare(_mail_waiting(box) if config.central_smtp else None)
        # One connection per stream, so a long chat catch-up never holds up the
        # directory (each client serialises its own requests).
        directory = DirectoryReplicator(
            box.directory,
            box.identity.domain,
            SharedHubCall(HubClient(keys, config.hub_url, watch=watch), share),
            status,
            clock,
            interval=config.sync_interval,
        )
        stagger.subscribe(directory.wake)
        services.append(directory)
        # Chat polls the hub more often than mail: people wait for a chat answer.
        chat = ChatReplicator(
            box.chat,
            box.identity.domain,
            SharedHubCall(HubClient(keys, config.hub_url, watch=watch), share),
            status,
            clock,
            poll_interval=min(POLL_INTERVAL, config.sync_interval),
            rng=rng,
        )
        stagger.subscribe(chat.wake)
        services.append(chat)
        # What became of the box's updates (rollbacks above all), once the link is up.
        reporter = UpdateReporter(
            config.data_dir,
            HubClient(keys, config.hub_url, watch=watch),
            status,
            clock,
            interval=config.sync_interval,
        )
        stagger.subscribe(reporter.wake)
        services.append(reporter)
        # The hub's update channel: offers, the bundle's download while the link is up,
        # the install in the maintenance window or when the admin asks.
        follower = ChannelFollower(
            config.data_dir, HubClient(keys, config.hub_url, watch=watch), config.hub_url,
            lambda: central_client_context(keys), update_rauc(config), status, clock,
            channel=config.update_channel, compatible=config.update_compatible,
            installs=config.updates, window=config.update_window,
            rate=config.update_download_rate, reboot=reboot_command(config.update_reboot),
            interval=config.sync_interval, on_outcome=reporter.wake,
        )  # fmt: skip
        stagger.subscribe(follower.wake)
        if install_now is not None:
            install_now.listen(follower.wake)
        services.append(follower)
        if box.protection is not None:
            # Newer ClamAV databases and rspamd rules from the hub's mirror, over GIN.
            signatures = SignatureUpdater(
                config, box.protection.clamd, HubClient(keys, config.hub_url, watch=watch),
                status, clock,
            )  # fmt: skip
            stagger.subscribe(signatures.wake)
            services.append(signatures)
        services.append(
            CertificateRenewal(keys, HubClient(keys, config.hub_url, timeout=300), status, clock)
        )
        if config.backup_offsite:
            # Daily to the hub, throttled, on a connection of its own.
            offsite = OffsiteBackup(
                config.data_dir, HubClient(keys, config.hub_url, timeout=120, watch=watch),
                status, rate=config.backup_offsite_rate, share=share,
            )  # fmt: skip
            stagger.subscribe(offsite.wake)
            services.append(offsite)
    return services


def update_rauc(config: Config) -> RaucCommand:
    """RAUC as the box's settings name it (``rauc_conf``)."""
    return RaucCommand(Path(config.rauc_conf) if config.rauc_conf else None)


def update_installer(config: Config) -> UpdateInstaller:
    """The box's installer for updates that arrive on a stick."""
    return UpdateInstaller(
        config.data_dir, update_rauc(config), reboot_command(config.update_reboot)
    )


def _mail_waiting(box: Box) -> Any:
    """Whether mail waits in the outbound queue (it needs the link before a backup does)."""

    async def waiting() -> bool:
        return any(group[2] > 0 for group in await box.mailstore.outbound_groups())

    return waiting


# --- the HTTPS port ----------------------------------------------------------------------


def page_kit(box: Box) -> PageKit:
    """The pages' shared renderer, handed what every page shows."""
    return PageKit(
        directory=box.directory,
        sessions=box.sessions,
        preferences=PreferenceStore(box.directory_db),
        identity=box.identity,
        hostname=box.hostname,
    )


def session_api(box: Box) -> SessionApi:
    """``/api/v1/session``: sign-in under the guard; a sign-in joins the chat audiences."""
    return SessionApi(box.sessions, box.signin, box.traffic, box.chat.join_audiences)


def web_routes(
    box: Box, lifecycle: Lifecycle | None = None, install_now: InstallNowBell | None = None
) -> list[Route | StreamRoute]:
    """Return every route of the HTTPS port of a provisioned box.

    *lifecycle* is the running box's state (appliance.provisioning.lifecycle): the admin
    console's factory reset asks it to reset; without one (tests that serve the routes
    in-process) that page says the reset is not available. *install_now* is rung by
    the console's Install now (the update channel's follower listens).
    """
    sessions = session_api(box)
    kit = page_kit(box)
    api: list[Route | StreamRoute] = [
        *sessions.routes(),
        *chat_routes(box.chat, box.disk_guard, box.metrics, box.protection, box.traffic),
        *link_routes(box.config.data_dir, box.directory, box.mailstore),
    ]
    api.append(openapi_route(api, title="edgebox API", version=_version()))
    pages: list[Route | StreamRoute] = [
        *CommonPages(kit, sessions).routes(),
        *mail_routes(box.mailstore, kit),
        *compose_routes(
            kit,
            directory=box.directory,
            mailstore=box.mailstore,
            delivery=box.delivery,
            traffic=box.traffic,
            disk_guard=box.disk_guard,
            hostname=box.hostname,
            max_recipients=box.config.max_recipients,
            protection=box.protection,
        ),
        *chat_page_routes(box.chat, box.directory, kit),
        *autoconfig_routes(
            kit,
            config=box.config,
            directory=box.directory,
            identity=box.identity,
            hostname=box.hostname,
        ),
        *admin_console(box, kit, lifecycle, install_now),
        # The setup path's pages answer "already set up" on a provisioned box.
        *provisioned_setup_routes(),
    ]
    return [*api, *pages]


def admin_console(
    box: Box,
    kit: PageKit,
    lifecycle: Lifecycle | None = None,
    install_now: InstallNowBell | None = None,
) -> list[Route]:
    """The admin console's pages: they read and change most of the box."""
    return admin_routes(
        kit, config=box.config, identity=box.identity, directory=box.directory,
        mailstore=box.mailstore, sessions=box.sessions, signin=box.signin, guard=box.guard,
        traffic=box.traffic, status_file=box.status_file, lifecycle=lifecycle,
        rauc=update_rauc(box.config), install_now_bell=install_now,
    )  # fmt: skip


def _version() -> str:
    try:
        return version("edgebox")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0"
