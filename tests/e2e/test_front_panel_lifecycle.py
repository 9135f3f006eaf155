"""The front panel across the box's life: a real `edgebox run` and the real firmware.

The firmware runs under the MicroPython unix port on a pty (`hw.twins.PanelSimulator`),
opened by the box as ``EDGEBOX_PANEL_DEVICE``. An unprovisioned box shows the setup
code its console printed and blinks "unprovisioned"; provisioning through
``/api/v1/setup/provision`` turns the panel to the provisioned pages without a restart.
On a provisioned box the 10-s hold asks for a factory reset, the panel shows the
prompt, and a short press resets the box through the admin console's path: the box
comes back unprovisioned and the panel shows the new setup code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hw.twins import LED_GPIO, PanelSimulator
from tests.e2e.panel import showing
from tests.e2e.test_provisioning import (
    GUARD_ENV,
    console_value,
    provision_body,
    setup_request,
    wait_for_line,
)
from tests.e2e.uplink import PASSWORDS, wait_for
from tests.harness import init_box, start_box

pytestmark = pytest.mark.slow

#: The firmware's notice for the host's reset prompt (appliance.panel.RESET_PROMPT,
#: wrapped to the display's 16 columns).
PROMPT = ["HOST SAYS", "erase ALL mail", "and reset? press", "button = yes"]
#: Long enough for the firmware's LONG_HOLD_MS (10 s), with room for a busy machine.
HOLD_SECONDS = 11.0
#: The confirm window of the box that waits for no press (``panel_reset_window``; 30 s
#: by default, tested as a constant in tests/appliance/provisioning/test_lifecycle.py).
#: Longer than the firmware's 5 s notice, so the prompt is seen to be repeated.
RESET_WINDOW = 8.0


def setup_page(code: str, fingerprint: str) -> list[str]:
    return ["SETUP CODE", code, "open https://", "127.0.0.1", fingerprint.replace("-", "")]


def led_periods(panel: PanelSimulator, since: int) -> list[tuple[int, int]]:
    """Return (value, ms it lasted) for each completed LED level after *since* changes."""
    log = panel.pin_log(LED_GPIO)[since:]
    return [(value, log[i + 1][0] - at) for i, (at, value) in enumerate(log[:-1])]


def test_unprovisioned_shows_the_setup_code_then_provisioned_pages(
    tmp_path: Path, panel: PanelSimulator
) -> None:
    box = start_box(tmp_path / "blank", env={**GUARD_ENV,
                    "EDGEBOX_PANEL_DEVICE": str(panel.host_path)})  # fmt: skip
    try:
        code = console_value(box, "setup code")
        # The code the console printed is the one on the display, the first page shown.
        fingerprint = console_value(box, "certificate fingerprint")
        showing(panel, setup_page(code, fingerprint), "setup code page")
        # The LED blinks "unprovisioned": long on (1.5 s), short off (0.5 s), in the
        # panel's own milliseconds (sleeps are minimums: a busy machine only stretches).
        seen = len(panel.pin_log(LED_GPIO))
        wait_for("LED blinking", lambda: len(led_periods(panel, seen)) >= 4, timeout=60)
        periods = led_periods(panel, seen)
        on = [ms for value, ms in periods if value == 1]
        off = [ms for value, ms in periods if value == 0]
        assert on, periods
        assert off, periods
        assert min(on) >= 1500, periods
        assert min(off) >= 500, periods

        status, done = setup_request(box, "POST", "/api/v1/setup/provision",
                                     provision_body(code))  # fmt: skip
        assert status == 200, done
        wait_for_line(box, "ready", 2)
        # No setup page once provisioned: the panel falls back to the box page.
        showing(panel, ["EDGEBOX", "mail.setup.go.th", "LAN", "127.0.0.1"], "box page")
        panel.press()
        showing(panel, ["LINKS", "GIN: unknown", "INTL: unknown", "Queue: 0"], "links page")
    finally:
        assert box.stop() == 0


def test_the_hold_and_a_confirm_on_the_panel_reset_a_provisioned_box(
    tmp_path: Path, panel: PanelSimulator
) -> None:
    data = tmp_path / "a"
    init_box(data, "a.go.th", {"somchai@a.go.th": PASSWORDS["somchai@a.go.th"]})
    box = start_box(data, env={"EDGEBOX_PANEL_DEVICE": str(panel.host_path)})
    try:
        showing(panel, ["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"], "box page")
        panel.press(HOLD_SECONDS)
        showing(panel, PROMPT, "reset prompt")
        assert box.process.poll() is None
        assert "factory reset done; the box is unprovisioned" not in box.output
        panel.press()
        wait_for_line(box, "ready", 2, timeout=120)
        assert "factory reset done; the box is unprovisioned" in box.output
        assert any("front panel confirmed the factory reset" in line for line in box.output)
        new_code = console_value(box, "setup code")
        fingerprint = console_value(box, "certificate fingerprint")
        showing(panel, setup_page(new_code, fingerprint), "new setup code")
        # The agency is gone: the setup path serves again.
        status, state = setup_request(box, "GET", "/api/v1/setup")
        assert status == 200
        assert state["state"] == "unprovisioned"
    finally:
        assert box.stop() == 0


def test_a_hold_without_a_confirm_resets_nothing(tmp_path: Path, panel: PanelSimulator) -> None:
    data = tmp_path / "a"
    init_box(data, "a.go.th", {"somchai@a.go.th": PASSWORDS["somchai@a.go.th"]})
    box = start_box(data, env={"EDGEBOX_PANEL_DEVICE": str(panel.host_path),
                               "EDGEBOX_PANEL_RESET_WINDOW": str(RESET_WINDOW)})  # fmt: skip
    try:
        showing(panel, ["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"], "box page")
        panel.press(HOLD_SECONDS)
        showing(panel, PROMPT, "reset prompt")
        # The window passes with no press: the panel says so and nothing changes.
        showing(panel, ["HOST SAYS", "reset not", "confirmed;", "nothing changed"],
                "not confirmed", timeout=90)  # fmt: skip
        showing(panel, ["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"], "box page again")
        assert "factory reset done; the box is unprovisioned" not in box.output
    finally:
        assert box.stop() == 0
