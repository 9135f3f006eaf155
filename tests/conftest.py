"""Fixtures shared across test folders: the front-panel firmware, built once per session,
and a simulated panel per test (tests/hw and tests/e2e drive the same firmware)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.twins import PanelSimulator, build_firmware
from tests.postgres import PrivatePostgres


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
