"""`edgebox run` and `edgebox status` as an operator uses them."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.harness import EDGEBOX, edgebox, init_box, start_box

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_status_and_clean_stop(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "box"
    init_box(data, "run.go.th", {"a@run.go.th": "run-pass-1"})
    box = start_box(data)
    status = edgebox("status", "--data", str(data), check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.strip().endswith("healthy")
    for service in ("smtp-mx", "smtp-submission", "smtp-submissions"):
        assert f"[ok   ] {service}: listening on 127.0.0.1:{box.port(service)}" in status.stdout

    # A second box on the same ports says which port is taken, and exits 1.
    clash = subprocess.run(
        [*EDGEBOX, "run", "--data", str(data), "--port-offset", str(box.offset)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert clash.returncode == 1
    assert "cannot listen on 127.0.0.1:" in clash.stderr
    assert "Address already in use" in clash.stderr

    assert box.stop(sig) == 0
    assert "edgebox stopped" in box.output
    assert not (data / "run" / "status.json").exists()
    after = edgebox("status", "--data", str(data), check=False)
    assert after.returncode == 1
    assert "edgebox is not running" in after.stdout
