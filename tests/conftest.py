"""Fixtures shared across test folders: the front-panel firmware, built once per session,
a simulated panel per test (tests/hw and tests/e2e drive the same firmware), DNS on
loopback for every in-process test, a private PostgreSQL for the hub's store, a check
that no test leaves password hashing replaced, and rspamd's compiled rules kept for the
session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest

from appliance.security import passwords
from hw.twins import PanelSimulator, build_firmware
from tests.appliance.protection.engines import CompiledRules
from tests.peers.dns_stub import no_records
from tests.postgres import PrivatePostgres


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


@pytest.fixture(autouse=True)
def password_hashing_left_alone() -> Iterator[None]:
    """Fail the test that leaves `passwords.hash_password` replaced, and put it back.

    Benchmarks' set-up skips scrypt for hundreds of users (`passwords_unhashed` in
    tests/bench/common.py). One left it replaced for good, and a later test in the same
    pytest worker made a user whose right password was then refused (535), depending on
    which worker ran which file.
    """
    real = passwords.hash_password
    yield
    if passwords.hash_password is not real:
        passwords.hash_password = real
        pytest.fail("the test left passwords.hash_password replaced; use passwords_unhashed")


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


@pytest.fixture(scope="session")
def postgresql() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL server for the session (tests/postgres.py)."""
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgresql: PrivatePostgres) -> str:
    """The URL of a new, empty database on the session's private PostgreSQL."""
    return postgresql.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_store(request: pytest.FixtureRequest) -> str:
    """Run the test on each of the hub's stores: "" (SQLite files) or a PostgreSQL URL."""
    if request.param == "sqlite":
        return ""
    server: PrivatePostgres = request.getfixturevalue("postgresql")
    return server.new_database()


@pytest.fixture(scope="session")
def compiled_rules(tmp_path_factory: pytest.TempPathFactory) -> CompiledRules:
    """rspamd's compiled hyperscan databases, kept for every rspamd of the session.

    Under pytest-xdist each worker has its own temporary folder; the folder above them
    is the session's, so both workers share one set (the first rspamd compiles it).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return CompiledRules(base / "rspamd-hyperscan")
