"""Fixtures shared across test folders: the front-panel firmware, built once per session,
and a simulated panel per test (tests/hw and tests/e2e drive the same firmware)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hw.twins import PanelSimulator, build_firmware


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
