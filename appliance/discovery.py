"""Found on the LAN: the box's mDNS / DNS-SD advertisements (python-zeroconf).

What the box advertises (RFC 6762 multicast DNS, RFC 6763 DNS-SD), under the host name
``edgebox-<short id>.local``:

=====================  ===========================  ===================================
service type           when                         TXT
=====================  ===========================  ===================================
``_edgebox._tcp``      always                       state, version, box_id, fp (the
                                                    short fingerprint of the HTTPS cert)
``_https._tcp``        always                       path (``/setup`` while unprovisioned)
``_submissions._tcp``  provisioned (RFC 8314 §7.3)  -
``_imaps._tcp``        provisioned (RFC 6186 §3.3)  -
=====================  ===========================  ===================================

Only on IPv4 addresses of interfaces that are up, not loopback and not named in
``discovery_exclude_interfaces`` (the uplink: the box is found on the office LAN, not
on GIN). `advertisements` is the pure part: the records for a state, no network.
`DiscoveryService` polls the interfaces every ``discovery_poll_interval`` seconds and
wakes at every change of the box's state: a state change updates the records in place
(zeroconf re-announces them, RFC 6762 §8.4); an address change sends goodbyes for the
old records and announces them afresh on the new addresses. Stopping sends goodbyes
(RFC 6762 §10.1: TTL 0).

Off unless ``discovery`` is set: the box's image turns it on; `edgebox run` in
development, ``--demo`` and tests leave it off unless they ask (docs/provisioning.md).

What this is not: a browser for other boxes, or DNS for the agency's domain.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import psutil
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from appliance.config import Config
from appliance.provisioning.lifecycle import BoxState, Lifecycle, SetupStatus

log = logging.getLogger("edgebox.discovery")

EDGEBOX_TYPE: Final = "_edgebox._tcp.local."
HTTPS_TYPE: Final = "_https._tcp.local."
SUBMISSIONS_TYPE: Final = "_submissions._tcp.local."
IMAPS_TYPE: Final = "_imaps._tcp.local."


@dataclass(frozen=True)
class Advertisement:
    """One DNS-SD service instance: type, instance name, port and TXT."""

    service_type: str
    #: The instance label (``edgebox-ab12cd``); the full name adds the type.
    instance: str
    port: int
    txt: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.instance}.{self.service_type}"


def advertisements(status: SetupStatus, software_version: str) -> list[Advertisement]:
    """Return the records the box announces in *status* (the table above)."""
    instance = status.hostname.removesuffix(".local")
    https = status.ports.get("https")
    if https is None:
        return []  # nothing serves yet: nothing to find
    unprovisioned = status.state is BoxState.UNPROVISIONED
    out = [
        Advertisement(
            EDGEBOX_TYPE,
            instance,
            https,
            (
                ("state", status.state.value),
                ("version", software_version),
                ("box_id", status.box_id),
                ("fp", status.fingerprint),
            ),
        ),
        # RFC 6763 §6 and the DNS-SD registry's "path" key for HTTP services.
        Advertisement(HTTPS_TYPE, instance, https, (("path", "/setup" if unprovisioned else "/"),)),
    ]
    if not unprovisioned:
        for kind, port_name in ((SUBMISSIONS_TYPE, "smtp-submissions"), (IMAPS_TYPE, "imaps")):
            port = status.ports.get(port_name)
            if port is not None:
                out.append(Advertisement(kind, instance, port))
    return out


@dataclass(frozen=True)
class InterfaceAddress:
    interface: str
    address: str
    up: bool


def system_addresses() -> list[InterfaceAddress]:
    """Every IPv4 address of every interface, from psutil (the system's twin in tests)."""
    stats = psutil.net_if_stats()
    out = []
    for name, addresses in psutil.net_if_addrs().items():
        up = bool(stats.get(name) and stats[name].isup)
        for entry in addresses:
            if entry.family == socket.AF_INET:
                out.append(InterfaceAddress(name, entry.address, up))
    return out


def advertised_addresses(
    found: Sequence[InterfaceAddress], excluded: Sequence[str]
) -> tuple[str, ...]:
    """The addresses to advertise on: up, not loopback, not on an excluded interface."""
    keep = {
        a.address
        for a in found
        if a.up
        and a.interface not in excluded
        and not ipaddress.ip_address(a.address).is_loopback
        and not ipaddress.ip_address(a.address).is_link_local
    }
    return tuple(sorted(keep, key=ipaddress.ip_address))


def excluded_interfaces(config: Config) -> tuple[str, ...]:
    """``discovery_exclude_interfaces`` as a tuple of interface names."""
    return tuple(n.strip() for n in config.discovery_exclude_interfaces.split(",") if n.strip())


def software_version() -> str:
    try:
        return version("edgebox")
    except PackageNotFoundError:
        return "0"


@dataclass
class _Announcer:
    """One zeroconf instance bound to a set of addresses, and what it announces.

    Its methods block (zeroconf probes before it announces): call them in a thread.
    """

    addresses: tuple[str, ...]
    hostname: str
    zc: Zeroconf | None = None
    registered: dict[str, tuple[Advertisement, ServiceInfo]] = field(default_factory=dict)

    def apply(self, wanted: Sequence[Advertisement]) -> None:
        if not self.addresses:
            return  # no LAN address: nothing can be announced anywhere
        if self.zc is None:
            self.zc = Zeroconf(interfaces=list(self.addresses), ip_version=IPVersion.V4Only)
        by_name = {a.name: a for a in wanted}
        for name in list(self.registered):
            if name not in by_name:
                self.zc.unregister_service(self.registered.pop(name)[1])
        for name, ad in by_name.items():
            old = self.registered.get(name)
            if old is not None and old[0] == ad:
                continue
            info = ServiceInfo(
                ad.service_type,
                ad.name,
                port=ad.port,
                properties=dict(ad.txt),
                server=f"{self.hostname}.",
                parsed_addresses=list(self.addresses),
            )
            if old is None:
                self.zc.register_service(info)
            else:
                self.zc.update_service(info)
            self.registered[name] = (ad, info)

    def close(self) -> None:
        """Send goodbyes for everything announced and close the sockets."""
        if self.zc is None:
            return
        self.zc.unregister_all_services()
        self.zc.close()
        self.zc = None
        self.registered.clear()


class DiscoveryService:
    """Announce the box on the LAN for as long as `serve` runs (see the module doc)."""

    name = "discovery"

    def __init__(
        self,
        config: Config,
        lifecycle: Lifecycle,
        *,
        interfaces: Callable[[], list[InterfaceAddress]] = system_addresses,
    ) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.interfaces = interfaces
        self.version = software_version()
        self.excluded = excluded_interfaces(config)

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        hostname = self.lifecycle.device.hostname
        # The first look is the loop's: a failing one is retried, not a failed start.
        announcer = _Announcer((), hostname)
        task_status.started([f"mDNS as {hostname}"])
        try:
            while True:
                changed = self.lifecycle.changed()
                try:
                    wanted = advertisements(self.lifecycle.status(), self.version)
                    addresses = self._addresses()
                    if addresses != announcer.addresses:
                        log.info("LAN addresses now %s: announcing again", addresses or "none")
                        await _close(announcer)
                        announcer = _Announcer(addresses, hostname)
                    if announcer.addresses:
                        await trio.to_thread.run_sync(announcer.apply, wanted)
                except Exception:
                    # Being found is a convenience; mail and chat must not stop for it.
                    # Start afresh at the next look (an address gone mid-announce, a
                    # socket error).
                    log.exception("mDNS announcement failed; trying again")
                    try:
                        await _close(announcer)
                    except Exception:
                        log.exception("closing the mDNS announcer failed")
                    announcer = _Announcer((), hostname)
                with trio.move_on_after(self.config.discovery_poll_interval):
                    await changed.wait()
        finally:
            with trio.CancelScope(shield=True):
                await _close(announcer)

    def _addresses(self) -> tuple[str, ...]:
        return advertised_addresses(self.interfaces(), self.excluded)


async def _close(announcer: _Announcer) -> None:
    """Send the goodbyes of *announcer* (in a thread: zeroconf blocks), if it announced."""
    if announcer.zc is not None:
        await trio.to_thread.run_sync(announcer.close)
