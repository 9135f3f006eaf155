"""The box's configuration: defaults < config file < environment < command-line flags.

Every tunable lives in `Config` with its default. The config file is the ``config``
section of ``DATA/config.json`` (TinyDB; written by the admin console or by hand), the
environment uses ``EDGEBOX_<FIELD>`` (e.g. ``EDGEBOX_PORT_OFFSET=100``), and flags win
over everything. Unknown keys are refused, so a typo in the file is an error at start-up
rather than a setting silently ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Development ports (DESIGN.md "Roles and ports"); the box itself uses the standard ones.
DEV_PORTS: Mapping[str, int] = {
    "smtp-mx": 2525,
    "smtp-submission": 2587,
    "smtp-submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "https": 8443,
    "hub-sync": 7443,
    #: Prometheus `/metrics`, always on loopback (appliance.health.metrics).
    "metrics": 7464,
}

#: The box's own ports (DESIGN.md "Roles and ports"), the image's profile
#: (``EDGEBOX_PORTS=box`` in /etc/edgebox/edgebox.env). Below 1024: the service gets
#: CAP_NET_BIND_SERVICE from systemd (image_build/systemd/edgebox.service) and nothing
#: else. The hub's sync API and the loopback-only metrics keep their numbers.
BOX_PORTS: Mapping[str, int] = {
    "smtp-mx": 25,
    "smtp-submission": 587,
    "smtp-submissions": 465,
    "imap": 143,
    "imaps": 993,
    "https": 443,
    "hub-sync": 7443,
    "metrics": 7464,
}

#: The port sets by the name the ``ports`` setting takes.
PORT_PROFILES: Mapping[str, Mapping[str, int]] = {"dev": DEV_PORTS, "box": BOX_PORTS}


class ConfigError(Exception):
    """A setting has an unknown name or a value of the wrong kind."""


@dataclass(frozen=True)
class Config:
    data_dir: Path
    #: "edge" (an office box) or "hub" (the central peer); DESIGN.md principle 7.
    role: str = "edge"
    #: Address every listener binds; loopback in development and tests.
    bind: str = "127.0.0.1"
    #: Which port set the listeners use: ``dev`` (2525, 8443 …: development and tests,
    #: no privilege needed) or ``box`` (25, 443 …: the image).
    ports: str = "dev"
    #: Added to every port so several boxes and a hub can run on one machine.
    port_offset: int = 0
    #: Name in greetings, Received fields and the TLS certificate ("" = mail.<domain>).
    hostname: str = ""
    #: RFC 1870 SIZE limit; see SessionConfig for why 40 MiB fits a 25 MB attachment.
    max_message_size: int = 40 * 1024 * 1024
    max_recipients: int = 100
    #: Simultaneous SMTP connections per listener before 421.
    max_connections: int = 200
    #: Processes serving the MX port's sessions (docs/architecture.md, "The process
    #: model"): 1 serves them in the main process; more start that many workers that
    #: share the port and hand each message to the main process's one writer.
    smtp_workers: int = 1
    #: Simultaneous HTTPS connections: every signed-in phone and browser tab holds a
    #: WebSocket stream open, so an office of 1,000 staff needs a few thousand.
    max_web_connections: int = 5000
    #: Simultaneous connections from one source (an IPv4 address or an IPv6 /64) per
    #: SMTP or IMAP listener, so one host cannot take every slot. 20 is Postfix's
    #: default concurrency towards one destination, so the centre's relay fits.
    max_connections_per_source: int = 20
    #: The same for HTTPS: a browser opens about 6 connections and each tab or phone
    #: holds a WebSocket stream.
    max_web_connections_per_source: int = 100
    #: Seconds an SMTP client may stay silent (RFC 5321 §4.5.3.2 suggests 5 minutes).
    idle_timeout: float = 300.0
    #: Seconds an IMAP client (before LOGIN) or a submission client (before AUTH) may
    #: stay silent: nobody types a password that slowly, and an idle unauthenticated
    #: connection only holds a slot (Dovecot allows 3 minutes before login).
    preauth_idle_timeout: float = 180.0

    # --- the sign-in guard (appliance.security.guard; docs/sign-in-protection.md) ---
    #: Seconds the first back-off after a wrong password waits; doubles per failure.
    auth_delay: float = 1.0
    #: The longest back-off before an attempt from a source that guessed wrong.
    auth_max_delay: float = 15.0
    #: Wrong passwords from one source within the window before it is refused.
    auth_source_limit: int = 10
    #: Wrong passwords on one account (all sources) before its attempts wait too.
    auth_account_delay_after: int = 5
    #: The longest wait an account's failures add (never a refusal).
    auth_account_max_delay: float = 4.0
    #: Seconds a wrong password is remembered.
    auth_window: float = 3600.0
    #: Seconds a source is refused the first time; doubles per refusal.
    auth_refusal: float = 900.0
    #: The longest refusal.
    auth_max_refusal: float = 4 * 3600.0
    #: Wrong passwords on one IMAP or SMTP connection before it is closed.
    auth_failures_per_connection: int = 3
    #: Refuse MAIL on the MX port until STARTTLS. Off by default: RFC 3207 §4 forbids it
    #: on a publicly referenced MX, and the centre's relay may not offer TLS.
    mx_require_tls: bool = False
    #: Addresses or networks (comma- or space-separated) that may deliver mail claiming
    #: one of the box's own domains as sender on the MX port: the hub and the central
    #: relay (enrolment adds them). Everyone else gets 550 5.7.1 for such mail.
    mx_trusted_relays: str = ""

    # --- the hub's store (appliance.store.postgres; docs/hub-postgresql.md) ------------
    #: A hub's database: "" keeps the embedded SQLite files under ``DATA/db`` (a small
    #: hub, development); ``postgresql://user@host/dbname`` puts the hub's chat and
    #: enrolment on that server, shared by every hub worker. Ignored on an edge box.
    hub_database: str = ""
    #: A hub's fair admission of boxes' requests (appliance.sync.hub.fair_queue,
    #: docs/hub.md "When many boxes call at once"), per hub process: requests running at
    #: once (size it to the store's writers), of one box, seconds a request may wait
    #: for its turn before a 503 with Retry-After, and requests waiting at once.
    hub_requests: int = 8
    hub_box_requests: int = 2
    hub_queue_wait: float = 20.0
    hub_queue: int = 2400
    #: TLS handshakes a hub process runs at once (appliance.sync.hub.handshake_gate):
    #: after a national cut, the boxes' handshakes wait for a slot rather than starve
    #: the requests in flight. Per hub process, like the four above.
    hub_handshakes: int = 16

    # --- the uplink (appliance.sync); enrolment fills these in -----------------------
    #: The hub's sync API, ``https://host:port`` ("" = not enrolled).
    hub_url: str = ""
    #: The central SMTP relay for mail to other domains: ``smtp://host:port`` (STARTTLS)
    #: or ``smtps://host:port`` ("" = the hub's own relay once enrolled).
    central_smtp: str = ""
    #: The central IMAP server mailboxes replicate with: ``imap://`` or ``imaps://``.
    central_imap: str = ""
    #: Days a message may wait in the outbound queue before it bounces. 14, not the 5 of
    #: Postfix and others: the box must outlast a 7-day cable cut (REQUIREMENTS.md §1).
    outbound_expiry_days: float = 14.0
    #: ``host:port`` the link monitor tries to reach to tell "international up" apart
    #: from "GIN up" ("" = do not probe the international link).
    international_probe: str = ""
    #: Seconds between link probes.
    link_probe_interval: float = 15.0
    #: Seconds between rounds of mailbox and directory replication when nothing wakes
    #: them earlier (the link coming back, a local change).
    sync_interval: float = 60.0
    #: MiB of memory SQLite may keep in the process, most of it page caches: a quarter
    #: for the mail, directory and sync databases, three quarters for the encrypted chat
    #: database and search index (appliance.store.sqlite_memory). Reached once the
    #: databases outgrow it, and held there; 0 = no limit (each connection's own).
    sqlite_memory_mib: int = 16
    #: Where `edgebox run` writes its daily backup (a USB disk's mount point); empty: none
    #: (docs/backup.md).
    backup_target: str = ""
    #: How many backups to keep in the target (the newest); 0 keeps every one.
    backup_keep: int = 14
    #: Back up to the hub once a day too (offsite), once the box is enrolled
    #: (``hub_url``); docs/backup.md.
    backup_offsite: bool = True
    #: Bytes a second the offsite backup may average on the uplink (it also steps aside
    #: while mail and chat use the link); 262144 = 2 Mbit/s.
    backup_offsite_rate: int = 256 * 1024
    #: On a hub: how many backup sets to keep per box (the newest).
    backup_hub_keep: int = 14
    #: On a hub: the most bytes of one box's backups it keeps (0: no limit). Beyond it the
    #: oldest sets go, never the last good one; a box still over it is refused its next
    #: upload, saying so (docs/backup.md).
    backup_hub_quota: int = 0

    # --- found on the LAN (appliance.discovery; docs/provisioning.md) -----------------
    #: Announce the box over mDNS / DNS-SD. Off in development and tests; the box's
    #: image turns it on (EDGEBOX_DISCOVERY=1).
    discovery: bool = False
    #: Interfaces never announced on, comma-separated (the uplink), e.g. "eth1,wwan0".
    discovery_exclude_interfaces: str = ""
    #: Seconds between looks at the interfaces' addresses (a change re-announces).
    discovery_poll_interval: float = 5.0

    # --- the signed USB provisioning stick (appliance.provisioning.usb) ---------------
    #: Which block devices may carry a stick: "" = none (off), ``removable`` = removable
    #: disks and their partitions (the image's setting), or device names, comma-separated
    #: (``loop7,sdb1``: tests and special set-ups).
    usb_provisioning: str = ""
    #: Where the setup wizard writes the OS's network and time files
    #: (appliance.provisioning.system_files): "" = under ``DATA/system`` (a test or
    #: developer machine's /etc is never written); ``/`` writes them in place.
    system_root: str = ""

    # --- signed A/B updates (appliance.update; docs/updates.md) -----------------------
    #: RAUC's system.conf ("" = RAUC's own default, /etc/rauc/system.conf).
    rauc_conf: str = ""
    #: Fetch and install what the hub's update channel offers. Off in development (no
    #: RAUC there); the image turns it on (EDGEBOX_UPDATES=1). Offers are shown either way.
    updates: bool = False
    #: The hub's channel this box follows.
    update_channel: str = "stable"
    #: The bundles this box takes (RAUC's ``compatible``; the image's system.conf says
    #: the same).
    update_compatible: str = "edgebox-amd64"
    #: When an offered update installs by itself: "HH:MM-HH:MM" in the box's local time
    #: (may wrap midnight; "" = only when the admin presses "install now").
    update_window: str = "01:00-05:00"
    #: Bytes a second an update download may take of the uplink (0 = no limit).
    update_download_rate: int = 256 * 1024
    #: Command that reboots into an installed update ("" = the admin reboots; the image
    #: sets ``systemctl reboot``).
    update_reboot: str = ""

    # --- health (appliance.health; docs/health.md) ---------------------------------
    #: Free bytes on the data volume below which the disk check warns.
    disk_warn_free: int = 2 * 1024**3
    #: Free bytes kept in reserve: below it new mail, uploads and chat posts get
    #: temporary refusals (SMTP 452 4.3.1, IMAP NO [LIMIT], HTTP 507).
    disk_hard_free: int = 512 * 1024**2
    #: Seconds between rounds of the health checks.
    health_interval: float = 30.0

    # --- the front panel (appliance.panel, hw/; docs/front-panel.md) -------------------
    #: The panel's serial device, e.g. ``/dev/ttyACM0`` ("" = the board profile's, and
    #: no panel service on a board without one or off the box).
    panel_device: str = ""
    #: Board profile: ``x86-rack``, ``arm64``, or "" to detect it (DMI, device tree).
    board: str = ""
    #: Seconds without a heartbeat after which the panel resets the box (0 = never).
    panel_watchdog: int = 120
    #: Seconds between heartbeats to the panel.
    panel_heartbeat: float = 2.0
    #: Seconds between looks at the link state and the outbound queue for the panel.
    panel_refresh: float = 0.5
    #: Seconds the panel's factory-reset prompt waits for the confirming press.
    panel_reset_window: float = 30.0

    # --- the kernel watchdog (appliance.watchdog, hw.watchdog; docs/front-panel.md) ------
    #: Open the board's kernel watchdog and keep it alive while the runner is alive.
    #: Off in development and tests; the box's image turns it on
    #: (EDGEBOX_HARDWARE_WATCHDOG=1) and leaves systemd's RuntimeWatchdogSec= unset.
    hardware_watchdog: bool = False
    #: The watchdog device ("" = the board profile's, else ``/dev/watchdog``).
    watchdog_device: str = ""
    #: Seconds the box may hang before the watchdog resets it (WDIOC_SETTIMEOUT).
    watchdog_timeout: int = 60

    #: Anti-virus and anti-spam scanning of everything that enters (docs/protection.md).
    protection: bool = False
    #: "box": edgebox runs clamd and rspamd itself; "system": systemd does (the image).
    protection_engines: str = "box"
    protection_clamd_socket: str = ""
    protection_clamd_database: str = "/var/lib/clamav"
    protection_rspamd_port: int = 11333
    protection_rspamd_local: str = ""
    protection_junk_score: float = 6.0
    protection_reject_score: float = 15.0
    #: What submission does when a scanner is down: "tempfail" (451) or "accept".
    protection_submission_unavailable: str = "tempfail"
    protection_scan_timeout: float = 60.0
    #: Signatures older than this many days are a health warning (docs/protection.md).
    protection_signatures_max_age_days: int = 7
    #: How often a box asks the hub for newer signatures, in seconds.
    protection_signatures_interval: float = 3600.0

    def port(self, service: str) -> int:
        """Return the port of *service* in the configured set, after the offset."""
        return PORT_PROFILES[self.ports][service] + self.port_offset

    def hub_store(self) -> str:
        """The PostgreSQL URL a hub's stores live at, or "" for the SQLite files."""
        if self.role != "hub" or not self.hub_database:
            return ""
        if urlsplit(self.hub_database).scheme not in ("postgresql", "postgres"):
            raise ConfigError("hub_database must be a postgresql:// URL (or empty for SQLite)")
        return self.hub_database


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "data_dir"}


def _coerce(name: str, value: Any) -> Any:
    """Return *value* as the type of setting *name*; strings (env, flags) are parsed."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r}")
    kind = type(getattr(Config(Path()), name))
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
        else:
            try:
                return kind(text)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    # Values from the JSON file must already have the right type: 1.5 is not a port
    # offset and true is not a number, even though Python would convert them.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
    return value


def load_config(
    data_dir: Path,
    *,
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration from its four layers."""
    values: dict[str, Any] = {}
    for name, value in (file_values or {}).items():
        values[name] = _coerce(name, value)
    for key, value in (environ or {}).items():
        if key.startswith("EDGEBOX_") and key != "EDGEBOX_DATA":
            name = key.removeprefix("EDGEBOX_").lower()
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {key}")
            values[name] = _coerce(name, value)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    if values.get("role", "edge") not in ("edge", "hub"):
        raise ConfigError(f"role must be edge or hub, not {values['role']!r}")
    if values.get("ports", "dev") not in PORT_PROFILES:
        raise ConfigError(f"ports must be {' or '.join(PORT_PROFILES)}, not {values['ports']!r}")
    _check_port_offset(values.get("port_offset", 0), PORT_PROFILES[values.get("ports", "dev")])
    _check_protection(values)
    _check_updates(values)
    _check_hub_admission(values)
    if values.get("smtp_workers", 1) < 1:
        raise ConfigError("smtp_workers must be at least 1")
    for entry in str(values.get("mx_trusted_relays", "")).replace(",", " ").split():
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"mx_trusted_relays: {entry!r} is not an IP address or network"
            ) from None
    return Config(data_dir=data_dir, **values)


def _check_hub_admission(values: Mapping[str, Any]) -> None:
    """Refuse fair-admission bounds that would admit nothing, naming the setting."""
    for name in ("hub_requests", "hub_box_requests", "hub_queue", "hub_handshakes"):
        if values.get(name, getattr(Config, name)) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if not values.get("hub_queue_wait", Config.hub_queue_wait) > 0:
        raise ConfigError("hub_queue_wait must be more than 0 seconds")


def _check_protection(values: Mapping[str, Any]) -> None:
    """Refuse protection settings that cannot work, naming the setting."""
    if values.get("protection_engines", "box") not in ("box", "system"):
        raise ConfigError("protection_engines must be box or system")
    if values.get("protection_submission_unavailable", "tempfail") not in ("tempfail", "accept"):
        raise ConfigError("protection_submission_unavailable must be tempfail or accept")
    junk = values.get("protection_junk_score", Config.protection_junk_score)
    if junk > values.get("protection_reject_score", Config.protection_reject_score):
        raise ConfigError("protection_junk_score must not be above protection_reject_score")


def _check_updates(values: Mapping[str, Any]) -> None:
    """Refuse an update channel or window the box could not follow, naming the setting."""
    if not re.fullmatch(r"[a-z0-9-]{1,32}", values.get("update_channel", "stable")):
        raise ConfigError("update_channel: a-z, 0-9 and '-' only")
    window = values.get("update_window", Config.update_window)
    if window and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", window):
        raise ConfigError(f"update_window: expected HH:MM-HH:MM, got {window!r}")
    if values.get("update_download_rate", 0) < 0:
        raise ConfigError("update_download_rate must not be negative")


def _check_port_offset(offset: int, ports: Mapping[str, int]) -> None:
    """Refuse an offset that would push a port outside 1-65535.

    The kernel takes a port modulo 65536 where a program packs it into 16 bits, so an
    offset of 60000 would otherwise put HTTPS on 2907 without a word.
    """
    low, high = min(ports.values()), max(ports.values())
    if low + offset < 1 or high + offset > 65535:
        raise ConfigError(
            f"port_offset {offset} puts ports outside 1-65535 "
            f"(allowed: {1 - low} to {65535 - high})"
        )
