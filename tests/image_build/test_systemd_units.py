"""The box's systemd unit: `systemd-analyze verify` accepts it, its sandbox holds.

systemd-analyze works on unit files without systemd as PID 1 (a container, this VM).
`verify` checks that ExecStart= is executable, so the test points it at this checkout's
own `edgebox` (the image installs it as /usr/bin/edgebox); otherwise the file is
checked as shipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import require_tool

UNIT = Path(__file__).parents[2] / "image_build" / "systemd" / "edgebox.service"
#: The `systemd-analyze security` exposure recorded in docs/health.md (0-10, lower is
#: better); a change that loosens the sandbox must update both.
EXPOSURE = 1.9


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    edgebox = shutil.which("edgebox") or str(Path(sys.executable).parent / "edgebox")
    assert Path(edgebox).exists(), "pip install -e . provides the edgebox command"
    copy = tmp_path / "edgebox.service"
    copy.write_text(UNIT.read_text().replace("/usr/bin/edgebox", edgebox))
    return copy


def _settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verify_accepts_the_unit_without_a_word(unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    # verify exits 0 on unknown keys and only warns: any output is a finding.
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    assert done.stdout.strip() == "", done.stdout


def test_verify_would_catch_a_misspelt_setting(unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert "Unknown key 'NoNewPrivilege'" in done.stderr


def test_the_unit_is_notify_watched_and_sandboxed() -> None:
    settings = _settings()
    assert settings["Type"] == ["notify"]
    assert int(settings["WatchdogSec"][0]) > 0
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/var/lib/edgebox"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert settings["User"] != ["root"]
    assert "--data /var/lib/edgebox" in settings["ExecStart"][0]


def test_the_security_exposure_is_the_one_recorded(unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= EXPOSURE
    docs = (Path(__file__).parents[2] / "docs" / "health.md").read_text()
    assert f"exposure level {EXPOSURE}" in docs


def test_the_hub_worker_template_verifies_as_an_instance(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    edgebox = shutil.which("edgebox") or str(Path(sys.executable).parent / "edgebox")
    template = UNIT.with_name("edgebox-hub-worker@.service")
    # An instance name, as `systemctl enable edgebox-hub-worker@2` makes it.
    instance = tmp_path / "edgebox-hub-worker@2.service"
    instance.write_text(template.read_text().replace("/usr/bin/edgebox", edgebox))
    done = subprocess.run([analyze, "verify", str(instance)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    # edgebox.service, named in After=/PartOf=, is not beside the copy: that one line only.
    lines = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "edgebox.service" not in line and "postgresql.service" not in line
    ]
    assert done.returncode == 0, done.stderr
    assert lines == []
