"""`edgebox update install` and `edgebox update confirm` from outside, against a running
box and the real RAUC of tests/appliance/update/sandbox.py: with the uplink to the
centre down the new slot is still committed, and a box that does not come up falls back.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sync.link import read_link_state
from appliance.update import outcome
from appliance.update.bundle import make_bundle
from appliance.update.keyring import ensure_keyring
from appliance.update.manifest import Manifest
from tests.appliance.update.sandbox import COMPATIBLE, RaucSandbox, make_rootfs
from tests.harness import edgebox, init_box, start_box

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RaucSandbox]:
    box = RaucSandbox.create(tmp_path / "rauc", ensure_keyring(tmp_path / "keys", "release"))
    for name, value in box.env.items():
        monkeypatch.setenv(name, value)  # `edgebox` finds the sandbox's RAUC through these
    try:
        yield box
    finally:
        box.close()


def box_args(sandbox: RaucSandbox, data: Path) -> tuple[str, ...]:
    # --boot-id: the sandbox plays the reboots; the kernel's boot id never changes here.
    return ("--data", str(data), "--rauc-conf", str(sandbox.conf), "--boot-id", sandbox.boot_id)


def installed(sandbox: RaucSandbox, tmp_path: Path, data: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs.ext4", "2.0")
    bundle = make_bundle(rootfs, sandbox.keyring, tmp_path / "edgebox-2.0.raucb",
                         Manifest(COMPATIBLE, "2.0", bundle_format="plain"))  # fmt: skip
    done = edgebox("update", "install", str(bundle), *box_args(sandbox, data))
    assert "written to slot B" in done.stdout
    assert sandbox.boot() == "B"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_new_slot_commits_with_the_uplink_down(sandbox: RaucSandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_box(data, "update.go.th", {"admin@update.go.th": "admin-pass-2026"})
    installed(sandbox, tmp_path, data)
    # The centre is unreachable for the whole check: GIN down.
    box = start_box(data, env={"EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{closed_port()}"})
    try:
        deadline = time.monotonic() + 60
        while (link := read_link_state(data)) is None or link.gin.state.value != "down":
            assert time.monotonic() < deadline, f"the link monitor never saw GIN down: {link}"
            time.sleep(0.2)
        done = edgebox("update", "confirm", *box_args(sandbox, data), "--wait", "30",
                       "--no-reboot")  # fmt: skip
        assert done.stdout.splitlines()[-1] == "commit", done.stdout
        assert "[ok   ] store" in done.stdout
        status = edgebox("status", "--data", str(data), check=False)
        assert "update: running edgebox 2.0, committed" in status.stdout
    finally:
        box.stop()
    assert sandbox.bootloader()["B"] == {"ok": True, "tries": 0}
    assert outcome.read_state(data).events[-1].event == "good"


def test_a_box_that_does_not_come_up_falls_back(sandbox: RaucSandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_box(data, "update.go.th", {})
    installed(sandbox, tmp_path, data)
    done = edgebox("update", "confirm", *box_args(sandbox, data), "--wait", "0", "--no-reboot",
                   check=False)  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("fall-back: health gate failed")
    assert sandbox.boot() == "A"
    history = edgebox("update", "status", "--data", str(data)).stdout
    assert "rolled_back" in history
    assert "edgebox is not running" in history
    # Installed and rolled back, neither acknowledged by a hub: both wait in the queue.
    assert "not yet reported to the hub: 2 events" in history
