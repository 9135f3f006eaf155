"""Signed A/B updates against the real RAUC (see sandbox.py): what installs, what is
refused with nothing written, and how the boot after an install commits or falls back.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.health.snapshot import ServiceState
from appliance.update import outcome
from appliance.update.bundle import make_bundle
from appliance.update.confirm import Action, confirm_boot
from appliance.update.gate import GateReading
from appliance.update.install import UpdateError, install_bundle
from appliance.update.keyring import Keyring
from appliance.update.manifest import Manifest
from tests.appliance.update.sandbox import (
    COMPATIBLE,
    MAX_TRIES,
    RaucSandbox,
    keyrings,
    make_rootfs,
    release_of,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Keyring]:
    return keyrings(tmp_path_factory.mktemp("keyrings"))


@pytest.fixture
def box(tmp_path: Path, keys: dict[str, Keyring]) -> Iterator[RaucSandbox]:
    """A release box: it trusts the release keyring only."""
    sandbox = RaucSandbox.create(tmp_path / "box", keys["release"])
    try:
        yield sandbox
    finally:
        sandbox.close()


def bundle(tmp_path: Path, keyring: Keyring, version: str = "2.0") -> Path:
    rootfs = make_rootfs(tmp_path / f"rootfs-{version}-{keyring.folder.parent.name}.ext4", version)
    out = tmp_path / f"edgebox-{version}-{keyring.channel}-{keyring.folder.parent.name}.raucb"
    # "plain": the sandbox kernel has no device-mapper for verity bundles (TESTING.md).
    return make_bundle(rootfs, keyring, out, Manifest(COMPATIBLE, version, bundle_format="plain"))


def install(box: RaucSandbox, data: Path, path: Path) -> None:
    install_bundle(data, box.rauc(), path, now=time.time, this_boot=box.boot_id)


def healthy(now: float, data: Path) -> GateReading:
    web = ServiceState(running=True, addresses=("127.0.0.1:8443",))
    return GateReading(data, now, box_running=True, services={"https": web},
                       schemas={"mail": (9, 9)}, store_error="")  # fmt: skip


async def confirm(box: RaucSandbox, data: Path, reading: object, reboots: list[str]) -> Action:
    async def gather(now: float) -> GateReading:
        return reading(now, data)  # type: ignore[operator, no-any-return]

    done = await confirm_boot(data, box.rauc(), gather, now=time.time, this_boot=box.boot_id,
                              wait=0, reboot=lambda: reboots.append("reboot"))  # fmt: skip
    return done.verdict.action


async def test_signed_bundle_installs_into_the_other_slot_and_commits_after_boot(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    data = tmp_path / "data"
    slot_a = box.fingerprint()[0]
    install(box, data, bundle(tmp_path, keys["release"]))
    assert release_of(box.slot("B")) == "2.0"
    assert box.fingerprint()[0] == slot_a, "the running slot was written"
    state = outcome.read_state(data)
    assert state.pending is not None
    assert state.pending.to_slot == "B"
    assert [e.event for e in state.events] == ["installed"]

    # Before the reboot there is nothing to judge.
    assert await confirm(box, data, healthy, []) is Action.WAIT_FOR_REBOOT
    assert box.boot() == "B"
    assert await confirm(box, data, healthy, []) is Action.COMMIT
    assert box.rauc().status().booted == "B"
    assert box.bootloader()["B"] == {"ok": True, "tries": 0}
    state = outcome.read_state(data)
    assert state.pending is None
    assert [(e.event, e.version, e.slot) for e in state.events][-1] == ("good", "2.0", "B")
    # Committed: the next boots stay on B.
    assert box.boot() == "B"


@pytest.mark.parametrize(
    ("signer", "why"),
    [
        ("development", "unable to get local issuer certificate"),
        ("stranger", "signature verification failed"),
    ],
)
async def test_bundle_from_another_keyring_is_refused_with_nothing_written(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring], signer: str, why: str
) -> None:
    data = tmp_path / "data"
    path = bundle(tmp_path, keys[signer])
    before = box.fingerprint()
    with pytest.raises(UpdateError, match=why):
        install(box, data, path)
    assert box.fingerprint() == before
    state = outcome.read_state(data)
    assert state.pending is None
    assert [e.event for e in state.events] == ["refused"]
    assert why in state.events[0].reason


async def test_tampered_bundle_is_refused_with_nothing_written(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    data = tmp_path / "data"
    path = bundle(tmp_path, keys["release"])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x01  # inside the squashfs payload the signature covers
    path.write_bytes(bytes(raw))
    before = box.fingerprint()
    with pytest.raises(UpdateError, match="signature"):
        install(box, data, path)
    assert box.fingerprint() == before
    assert outcome.read_state(data).pending is None


async def test_failing_health_gate_marks_the_new_slot_bad_and_the_old_one_boots(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    data = tmp_path / "data"
    install(box, data, bundle(tmp_path, keys["release"]))
    assert box.boot() == "B"

    def broken(now: float, data: Path) -> GateReading:
        return GateReading(data, now, box_running=False, open_error="migration 7 failed")

    reboots: list[str] = []
    assert await confirm(box, data, broken, reboots) is Action.FALL_BACK
    assert reboots == ["reboot"]
    assert box.bootloader()["B"]["ok"] is False  # type: ignore[index]
    assert box.boot() == "A"
    last = outcome.read_state(data).events[-1]
    assert (last.event, last.slot) == ("rolled_back", "B")
    assert "migration 7 failed" in last.reason
    assert "edgebox is not running" in last.reason
    # The old release keeps its slot good and records nothing more.
    assert await confirm(box, data, healthy, []) is Action.KEEP
    assert outcome.read_state(data).events[-1] == last


async def test_new_slot_that_never_confirms_falls_back_by_the_boot_counter(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    data = tmp_path / "data"
    install(box, data, bundle(tmp_path, keys["release"]))
    # The new system hangs before its confirm step, MAX_TRIES times.
    assert [box.boot() for _ in range(MAX_TRIES)] == ["B"] * MAX_TRIES
    assert box.boot() == "A"
    assert await confirm(box, data, healthy, []) is Action.FELL_BACK
    last = outcome.read_state(data).events[-1]
    assert (last.event, last.slot) == ("rolled_back", "A")
    assert "never passed its health gate" in last.reason
    assert outcome.read_state(data).pending is None


async def test_uplink_down_during_the_gate_still_commits(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    """The gate reads no link state at all; the uplink services' failures are ignored."""
    data = tmp_path / "data"
    install(box, data, bundle(tmp_path, keys["release"]))
    box.boot()
    (data / "run").mkdir(parents=True)
    (data / "run" / "link.json").write_text('{"gin": {"state": "down", "since": 0}}')

    def link_down(now: float, data: Path) -> GateReading:
        reading = healthy(now, data)
        # The replicators keep failing against the dead link: no LAN port, not gated.
        chat_sync = ServiceState(running=False, restarts=9, last_error="hub unreachable")
        return GateReading(data, now, box_running=True,
                           services={**reading.services, "chat-sync": chat_sync},
                           schemas=reading.schemas, store_error="")  # fmt: skip

    assert await confirm(box, data, link_down, []) is Action.COMMIT
    assert outcome.read_state(data).events[-1].event == "good"


def hooked_bundle(tmp_path: Path, keyring: Keyring, started: Path) -> Path:
    """A bundle whose post-install hook says it started and then waits to be killed: the
    image is written, RAUC has not yet made the slot primary."""
    content = tmp_path / "hooked"
    content.mkdir()
    make_rootfs(content / "rootfs.ext4", "3.0-killed")
    hook = content / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
    hook.chmod(0o755)
    (content / "manifest.raucm").write_text(
        Manifest(COMPATIBLE, "3.0-killed", bundle_format="plain").render()
        + "hooks=post-install\n\n[hooks]\nfilename=hook.sh\n"
    )
    out = tmp_path / "hooked.raucb"
    subprocess.run(["rauc", "bundle", f"--cert={keyring.signing_cert}",
                    f"--key={keyring.signing_key}", str(content), str(out)],
                   check=True, capture_output=True)  # fmt: skip
    return out


def test_sigkill_during_install_leaves_the_running_slot_and_the_boot_order(
    box: RaucSandbox, tmp_path: Path, keys: dict[str, Keyring]
) -> None:
    data = tmp_path / "data"
    started = tmp_path / "hook-started"
    path = hooked_bundle(tmp_path, keys["release"], started)
    slot_a = box.fingerprint()[0]
    client = subprocess.Popen(["rauc", f"--conf={box.conf}", "install", str(path)],
                              env={**os.environ, **box.env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the install never reached its hook"
            time.sleep(0.05)
        box.kill_service()
    finally:
        output, _ = client.communicate(timeout=60)
    assert client.returncode != 0, output
    assert box.fingerprint()[0] == slot_a
    state = box.bootloader()
    assert state["order"][0] == "A"  # type: ignore[index]
    assert state["B"]["ok"] is False  # type: ignore[index]
    # The power comes back: the half-installed slot is never started.
    assert box.boot() == "A"
    assert release_of(box.slot("A")) == "slot-A-factory"
    # And a fresh install over it works.
    install(box, data, bundle(tmp_path, keys["release"], "3.1"))
    assert box.boot() == "B"
    assert release_of(box.slot("B")) == "3.1"
