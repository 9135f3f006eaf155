"""The real panel firmware under the MicroPython unix port, driven by `hw.panel` on a pty.

The simulated board (firmware/sim/machine.py) fakes only the hardware: the display's
RAM is compared byte for byte with MicroPython's own framebuf drawing the expected
lines. No wall-clock assertions: every wait is for an outcome, with a generous bound.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from hw.panel import ButtonPressed, HostWasReset, PanelClient, PanelEvent, TTYPort
from hw.twins import HOST_RESET_GPIO, LED_GPIO, PanelSimulator
from tests.hw.conftest import render

pytestmark = pytest.mark.slow

STATE = {
    "name": "box1.demo.go.th",
    "lan": "192.168.1.10",
    "prov": "yes",
    "gin": "up",
    "intl": "up",
    "queue": "0",
    "urgent": "",
    "health": "ok",
    "check": "",
}


async def eventually(condition: Callable[[], bool], seconds: float = 20) -> None:
    # The simulator is another process writing files: polling is the only way to see it.
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_pages_are_drawn_from_the_host_state(panel: PanelSimulator) -> None:
    events: list[PanelEvent] = []
    client = PanelClient(TTYPort(panel.host_path), events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        assert client.panel_software.startswith("edgebox-panel 0.1.0")
        client.show(STATE)
        box_page = render(["EDGEBOX", "box1.demo.go.th", "LAN", "192.168.1.10"])
        await eventually(lambda: panel.display() == box_page)

        # The uplink goes: the panel turns to the links page by itself.
        client.show({**STATE, "gin": "down", "queue": "3", "urgent": "most urgent"})
        links = render(["LINKS", "GIN: down", "INTL: up", "Queue: 3"])
        await eventually(lambda: panel.display() == links)

        # A short press walks on to the queue page and reaches the host as an event.
        await trio.to_thread.run_sync(panel.press)
        queue = render(["OUTBOUND QUEUE", "3 waiting", "most urgent:", "most urgent"])
        await eventually(lambda: panel.display() == queue)
        await eventually(lambda: ButtonPressed("next") in events)

        # Unprovisioned: the panel turns to the setup code; a press walks on to the links.
        client.show({**STATE, "prov": "no", "setup": "482-913"})
        setup = render(["SETUP CODE", "482-913", "open https://", "192.168.1.10"])
        await eventually(lambda: panel.display() == setup)
        await trio.to_thread.run_sync(panel.press)
        await eventually(
            lambda: panel.display() == render(["LINKS", "GIN: up", "INTL: up", "Queue: 0"])
        )
        nursery.cancel_scope.cancel()
    assert not any(isinstance(e, HostWasReset) for e in events)


async def test_watchdog_fires_when_heartbeats_stop_and_reports_after_reboot(
    panel: PanelSimulator,
) -> None:
    events: list[PanelEvent] = []
    port = TTYPort(panel.host_path)
    client = PanelClient(port, events.append, heartbeat_s=0.2, watchdog_s=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        # Heartbeats flow for well past the watchdog time: nothing resets.
        client.show(STATE)
        await trio.sleep(5)
        assert panel.host_resets() == 0
        # The host hangs: heartbeats stop without the clean stop's disarm.
        client.watchdog_s = 0
        nursery.cancel_scope.cancel()
    await eventually(lambda: panel.host_resets() == 1)
    # The line is pulsed, not held: released after the pulse.
    await eventually(lambda: panel.pin_log(HOST_RESET_GPIO)[-1][1] == 1)

    # The host "reboots": a new client, a new session; the panel says why it reset.
    events.clear()
    client = PanelClient(port, events.append, heartbeat_s=0.2, watchdog_s=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await eventually(lambda: any(isinstance(e, HostWasReset) for e in events))
        nursery.cancel_scope.cancel()
    [report] = [e for e in events if isinstance(e, HostWasReset)]
    assert report.reason.startswith("no heartbeat for")
    assert panel.host_resets() == 1
    port.close()


async def test_a_clean_stop_disarms_the_watchdog(panel: PanelSimulator) -> None:
    port = TTYPort(panel.host_path)
    client = PanelClient(port, lambda e: None, heartbeat_s=0.2, watchdog_s=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        client.show(STATE)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # Well past the watchdog time after a clean stop: the host is not reset.
    await trio.sleep(4)
    assert panel.host_resets() == 0
    port.close()


async def test_garbage_on_the_line_does_not_stop_the_panel(panel: PanelSimulator) -> None:
    client = PanelClient(TTYPort(panel.host_path), lambda e: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        rng = random.Random(7)
        for n in range(20):
            panel.inject(rng.randbytes(rng.randrange(1, 300)))
            client.show({**STATE, "queue": str(n)})
            await trio.sleep(0.05)
        client.show({**STATE, "gin": "down", "queue": "42"})
        links = render(["LINKS", "GIN: down", "INTL: up", "Queue: 42"])
        await eventually(lambda: panel.display() == links)
        nursery.cancel_scope.cancel()
    assert "Traceback" not in panel.output()


async def test_a_ten_second_hold_asks_for_factory_reset(panel: PanelSimulator) -> None:
    events: list[PanelEvent] = []
    client = PanelClient(TTYPort(panel.host_path), events.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        client.show(STATE)
        panel.set_button(True)
        await eventually(lambda: ButtonPressed("factory-reset") in events, seconds=30)
        asked = render(["FACTORY RESET", "asked the host", "release button"])
        await eventually(lambda: panel.display() == asked)
        panel.set_button(False)
        client.confirm("reset noted")
        await eventually(lambda: panel.display() == render(["HOST SAYS", "reset noted"]))
        nursery.cancel_scope.cancel()
    # The hold was no page press.
    assert ButtonPressed("next") not in events


async def test_held_at_power_on_asks_for_recovery(tmp_path: Path, firmware: Path) -> None:
    events: list[PanelEvent] = []
    with PanelSimulator(tmp_path / "panel", firmware) as panel:
        panel.set_button(True)  # before start: `with` started it already, so restart
        panel.stop()
        panel.start()
        client = PanelClient(TTYPort(panel.host_path), events.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await eventually(lambda: ButtonPressed("recovery") in events)
            await eventually(lambda: panel.display() == render(["RECOVERY", "asked the host"]))
            nursery.cancel_scope.cancel()


async def test_the_led_blinks_while_booting_and_in_error_and_is_steady_when_ok(
    panel: PanelSimulator,
) -> None:
    def changes() -> int:
        return len(panel.pin_log(LED_GPIO))

    # Booting (no word from the host): blinking.
    await eventually(lambda: changes() >= 6)
    client = PanelClient(TTYPort(panel.host_path), lambda e: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        client.show(STATE)
        # OK: the LED settles on and stays on (no more changes).
        await eventually(lambda: panel.pin_log(LED_GPIO)[-1][1] == 1)
        await trio.sleep(2.5)
        settled = changes()
        await trio.sleep(2.5)
        assert changes() == settled
        assert panel.pin_log(LED_GPIO)[-1][1] == 1
        # A failing check: blinking again.
        client.show({**STATE, "health": "error", "check": "disk: 0.1 GB free"})
        await eventually(lambda: changes() >= settled + 6)
        nursery.cancel_scope.cancel()


async def test_the_update_page_follows_the_host_through_an_update(panel: PanelSimulator) -> None:
    client = PanelClient(TTYPort(panel.host_path), lambda e: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(20):
            await client.wait_connected()
        client.show(STATE)
        await eventually(lambda: panel.display() == render(["EDGEBOX", "box1.demo.go.th", "LAN",
                                                            "192.168.1.10"]))  # fmt: skip
        # The host starts installing: the panel turns to the UPDATE page by itself.
        update = {**STATE, "uphase": "installing", "update": "40", "uver": "2026.12.2"}
        client.show(update)
        forty = ["UPDATE 2026.12.2", "installing 40%", "[#####.........]", "do not unplug"]
        await eventually(lambda: panel.display() == render(forty))
        # The percentage moves on the same page.
        client.show({**update, "update": "99"})
        almost = ["UPDATE 2026.12.2", "installing 99%", "[#############.]", "do not unplug"]
        await eventually(lambda: panel.display() == render(almost))
        client.show({**update, "uphase": "rebooting", "update": ""})
        await eventually(lambda: panel.display() == render(
            ["UPDATE 2026.12.2", "rebooting", "do not unplug"]))  # fmt: skip
        # After the reboot, the old release came back: the page says so and why.
        client.show({**STATE, "health": "warn", "uphase": "rolled-back", "uver": "2026.12.2",
                     "uwhy": "health gate failed: store"})  # fmt: skip
        await eventually(lambda: panel.display() == render(
            ["UPDATE 2026.12.2", "ROLLED BACK", "health gate", "failed: store"]))  # fmt: skip
        # A short press walks on, as on every page.
        await trio.to_thread.run_sync(panel.press)
        await eventually(lambda: panel.display() == render(["EDGEBOX", "box1.demo.go.th", "LAN",
                                                            "192.168.1.10"]))  # fmt: skip
        nursery.cancel_scope.cancel()
