"""What the box announces on the LAN, for each state (no network: see tests/e2e)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio
import trio.testing

from appliance.config import load_config
from appliance.discovery import (
    EDGEBOX_TYPE,
    HTTPS_TYPE,
    IMAPS_TYPE,
    SUBMISSIONS_TYPE,
    DiscoveryService,
    InterfaceAddress,
    advertised_addresses,
    advertisements,
)
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import BoxState, Lifecycle, SetupStatus


def _status(state: BoxState, ports: dict[str, int]) -> SetupStatus:
    return SetupStatus(
        state=state, box_id="ab12cd" + "0" * 26, short_id="ab12cd",
        hostname="edgebox-ab12cd.local", fingerprint="1111-2222-3333-4444",
        setup_code="ACDEF-GHJKM" if state is BoxState.UNPROVISIONED else None,
        domain=None if state is BoxState.UNPROVISIONED else "x.go.th", ports=ports,
    )  # fmt: skip


def test_an_unprovisioned_box_announces_itself_and_its_setup_path_only() -> None:
    ads = advertisements(_status(BoxState.UNPROVISIONED, {"https": 443, "imaps": 993}), "1.2")
    assert {a.service_type for a in ads} == {EDGEBOX_TYPE, HTTPS_TYPE}
    box = next(a for a in ads if a.service_type == EDGEBOX_TYPE)
    assert box.name == "edgebox-ab12cd._edgebox._tcp.local."
    assert dict(box.txt) == {
        "state": "unprovisioned",
        "version": "1.2",
        "box_id": "ab12cd" + "0" * 26,
        "fp": "1111-2222-3333-4444",
    }
    https = next(a for a in ads if a.service_type == HTTPS_TYPE)
    assert (https.port, dict(https.txt)) == (443, {"path": "/setup"})
    # The setup code is never on the LAN.
    assert not any("ACDEF" in value for a in ads for _, value in a.txt)


def test_a_provisioned_box_adds_its_mail_services() -> None:
    ports = {"https": 443, "imaps": 993, "smtp-submissions": 465}
    ads = advertisements(_status(BoxState.PROVISIONED, ports), "1.2")
    by_type = {a.service_type: a for a in ads}
    assert set(by_type) == {EDGEBOX_TYPE, HTTPS_TYPE, IMAPS_TYPE, SUBMISSIONS_TYPE}
    assert dict(by_type[EDGEBOX_TYPE].txt)["state"] == "provisioned"
    assert by_type[IMAPS_TYPE].port == 993
    assert by_type[SUBMISSIONS_TYPE].port == 465
    assert dict(by_type[HTTPS_TYPE].txt) == {"path": "/"}


def test_nothing_is_announced_before_anything_serves() -> None:
    assert advertisements(_status(BoxState.UNPROVISIONED, {}), "1") == []


def test_only_lan_addresses_of_interfaces_that_are_up_and_not_excluded() -> None:
    found = [
        InterfaceAddress("lo", "127.0.0.1", True),
        InterfaceAddress("eth0", "192.168.1.20", True),
        InterfaceAddress("eth0", "192.168.1.9", True),
        InterfaceAddress("eth1", "10.1.2.3", True),  # the uplink
        InterfaceAddress("eth2", "172.16.0.1", False),  # down
        InterfaceAddress("eth3", "169.254.7.7", True),  # link-local
    ]
    assert advertised_addresses(found, ("eth1",)) == ("192.168.1.9", "192.168.1.20")
    assert advertised_addresses(found, ()) == ("10.1.2.3", "192.168.1.9", "192.168.1.20")
    assert advertised_addresses(found, ("eth0", "eth1")) == ()


async def test_a_failing_look_at_the_interfaces_never_stops_the_service(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = dataclasses.replace(load_config(tmp_path), discovery=True)
    lifecycle = Lifecycle(tmp_path, ensure_device(tmp_path))
    lifecycle.serving(BoxState.UNPROVISIONED, {"https": 8443})
    calls = 0

    def interfaces() -> list[InterfaceAddress]:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise OSError("netlink said no")
        return []  # no LAN address: nothing is announced, nothing is bound

    service = DiscoveryService(config, lifecycle, interfaces=interfaces)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        await trio.sleep(config.discovery_poll_interval * 10)
        lifecycle.serving(BoxState.PROVISIONED, {"https": 8443})  # a wake-up too
        await trio.sleep(config.discovery_poll_interval * 2)
        nursery.cancel_scope.cancel()
    assert calls >= 12
