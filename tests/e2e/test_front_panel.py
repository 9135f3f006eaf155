"""The front panel end to end: a real `edgebox run` and the real firmware on a pty.

The box's panel service opens the simulator's tty as it opens ``/dev/ttyACM0`` on the
box (``EDGEBOX_PANEL_DEVICE``). Cutting the uplink (the fault proxy in front of a
second edgebox acting as the central SMTP relay) must put "GIN: down" and the queued
count on the display; freezing the box (SIGSTOP) past the panel's watchdog time must
pulse the host's reset line, and a shorter freeze must not.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from hw.twins import PanelSimulator
from tests.e2e.panel import showing
from tests.e2e.uplink import FAST, PASSWORDS, submit, wait_for
from tests.faults.proxy import ProxyProcess
from tests.harness import RunningBox, init_box, start_box

pytestmark = pytest.mark.slow


def box_a(tmp_path: Path, panel: PanelSimulator, **settings: str) -> RunningBox:
    data = tmp_path / "a"
    init_box(data, "a.go.th", {"somchai@a.go.th": PASSWORDS["somchai@a.go.th"]})
    env = {**FAST, "EDGEBOX_PANEL_DEVICE": str(panel.host_path), **settings}
    return start_box(data, env=env)


def test_a_cut_uplink_shows_gin_down_and_the_queue(tmp_path: Path, panel: PanelSimulator) -> None:
    centre = start_box(tmp_path / "centre", demo=True)
    try:
        with ProxyProcess(("127.0.0.1", centre.port("smtp-mx"))) as proxy:
            box = box_a(tmp_path, panel, EDGEBOX_CENTRAL_SMTP=f"smtp://127.0.0.1:{proxy.port}")
            try:
                showing(panel, ["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"], "box page")
                panel.press()
                showing(panel, ["LINKS", "GIN: up", "INTL: unknown", "Queue: 0"], "GIN up")
                proxy.control.cut()
                for n in range(3):
                    submit(box, "somchai@a.go.th", "dara@b.go.th", f"waits {n}")
                showing(panel, ["LINKS", "GIN: down", "INTL: unknown", "Queue: 3"], "GIN down")
            finally:
                box.stop()
    finally:
        centre.stop()


def test_a_frozen_box_is_reset_and_a_short_pause_is_not(
    tmp_path: Path, panel: PanelSimulator
) -> None:
    box = box_a(tmp_path, panel, EDGEBOX_PANEL_WATCHDOG="4", EDGEBOX_PANEL_HEARTBEAT="0.5")
    try:
        showing(panel, ["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"], "box page")
        # Heartbeats flow for well past the watchdog time: nothing resets.
        time.sleep(6)
        assert panel.host_resets() == 0
        # Frozen for less than the watchdog time: nothing resets.
        os.kill(box.process.pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(box.process.pid, signal.SIGCONT)
        time.sleep(6)
        assert panel.host_resets() == 0
        # Frozen past it: the panel pulls the reset line (the twin records it).
        os.kill(box.process.pid, signal.SIGSTOP)
        try:
            wait_for("host reset", lambda: panel.host_resets() == 1, timeout=60)
        finally:
            os.kill(box.process.pid, signal.SIGCONT)
        # Nothing really rebooted here: the thawed box hears the reason and records it.
        requests = box.data / "run" / "panel-requests.jsonl"
        entry = wait_for(
            "reset reason",
            lambda: requests.exists() and json.loads(requests.read_text().splitlines()[0]),
            timeout=60,
        )
        assert entry["what"] == "host-was-reset"
        assert entry["reason"].startswith("no heartbeat for")
        assert panel.host_resets() == 1
    finally:
        box.stop()
