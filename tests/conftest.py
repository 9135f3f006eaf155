"""Fixtures shared across test folders: the front-panel firmware, built once per session,
a simulated panel per test (tests/hw and tests/e2e drive the same firmware), and DNS
on loopback for every in-process test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest

from hw.twins import PanelSimulator, build_firmware
from tests.peers.dns_stub import no_records


@pytest.fixture(autouse=True, scope="session")
def loopback_dns() -> Iterator[None]:
    """Point dnspython's default resolver at a loopback server that knows no names.

    The MX asks DNS for SPF and DMARC on every message (appliance.protection); tests
    talk only to 127.0.0.0/8, so in-process boxes ask this server unless a test sets
    its own records.
    """
    port, _ = no_records()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.timeout = resolver.lifetime = 5
    previous = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    yield
    dns.resolver.default_resolver = previous


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("firmware")
    build_firmware(out)
    return out


@pytest.fixture
def panel(tmp_path: Path, firmware: Path) -> Iterator[PanelSimulator]:
    simulator = PanelSimulator(tmp_path / "panel", firmware)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.close()
        print(simulator.output())
