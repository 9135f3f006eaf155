"""`edgebox run` with the kernel watchdog turned on but not openable: the box serves.

The watchdog's own behaviour (WDIOC_SETTIMEOUT, keep-alives, the magic close) is tested
against the twin in tests/appliance/test_watchdog.py; a real ``/dev/watchdog`` is never
armed here, as it would reset the machine the tests share.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_provisioning import console_value
from tests.e2e.uplink import wait_for
from tests.harness import start_box

pytestmark = pytest.mark.slow


def test_a_watchdog_that_cannot_be_opened_never_keeps_the_box_down(tmp_path: Path) -> None:
    env = {
        "EDGEBOX_HARDWARE_WATCHDOG": "1",
        "EDGEBOX_WATCHDOG_DEVICE": str(tmp_path / "no-such-watchdog"),
    }
    box = start_box(tmp_path / "blank", env=env)
    try:
        assert set(box.listeners) == {"https"}
        assert console_value(box, "setup code")
        wait_for(
            "the log line",
            lambda: any("cannot open the kernel watchdog" in line for line in box.output),
            timeout=30,
        )
    finally:
        assert box.stop() == 0
