"""Reading the simulated front panel in end-to-end tests (fixtures: tests/e2e/conftest.py)."""

from __future__ import annotations

from hw.twins import PanelSimulator
from tests.e2e.uplink import wait_for
from tests.hw.conftest import render


def showing(panel: PanelSimulator, lines: list[str], what: str, timeout: float = 60) -> None:
    """Wait until the panel's display RAM shows exactly *lines*."""
    expected = render(lines)
    wait_for(what, lambda: panel.display() == expected, timeout=timeout)
