"""`edgebox run --demo` starts from an empty directory with no network at all.

The box is run inside a fresh network namespace that has only a loopback interface, so
any attempt to download something at start-up (certificates, packages, time) would
fail. Needs root for `unshare --net`, which CI and `make test` have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import missing_prerequisite, require_tool

pytestmark = pytest.mark.slow


def test_demo_boots_without_network(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_prerequisite("unshare --net needs root")
    unshare, ip = require_tool("unshare"), require_tool("ip")
    data = tmp_path / "empty"
    probe = Path(__file__).with_name("demo_probe.py")
    result = subprocess.run(
        [unshare, "--net", "--", "sh", "-c",
         f'{ip} link set lo up && exec "$0" "$1" "$2"', sys.executable, str(probe), str(data)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for service in ("smtp-mx", "smtp-submission", "smtp-submissions", "imap", "imaps"):
        assert f"\n{service} " in "\n" + result.stdout
    assert result.stdout.count("answered") == 7
    # The namespace really had no way out: only loopback.
    check = subprocess.run([unshare, "--net", "--", ip, "-o", "link"], capture_output=True,
                           text=True, timeout=30)  # fmt: skip
    assert [line.split(":")[1].strip() for line in check.stdout.splitlines()] == ["lo"]
