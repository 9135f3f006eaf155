"""The after-boot unit: `systemd-analyze verify` accepts it and it runs the gate after
edgebox, with time for the gate's retries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.harness import require_tool

UNITS = Path(__file__).parents[2] / "image_build" / "systemd"


def test_the_confirm_unit_verifies_and_waits_for_edgebox(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    edgebox = shutil.which("edgebox") or str(Path(sys.executable).parent / "edgebox")
    for name in ("edgebox.service", "edgebox-update-confirm.service"):
        text = (UNITS / name).read_text().replace("/usr/bin/edgebox", edgebox)
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", str(tmp_path / "edgebox-update-confirm.service")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    unit = (UNITS / "edgebox-update-confirm.service").read_text()
    assert "After=edgebox.service" in unit
    assert "update confirm --data /var/lib/edgebox --wait 300 --no-reboot" in unit
    # Exit 1 (slot marked bad) reboots into the other slot; exit 2 (RAUC unreachable) not.
    assert "FailureAction=reboot" in unit
    assert "SuccessExitStatus=2" in unit
    # The gate writes into the store: never as root.
    assert "User=edgebox" in unit
    # The gate may retry for 300 s: systemd must not kill it before.
    assert "TimeoutStartSec=420" in unit
