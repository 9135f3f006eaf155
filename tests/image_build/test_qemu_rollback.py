"""Bad updates of the amd64 image under qemu: the box falls back to the old slot by itself.

The same machine as test_qemu_update.py (``$EDGEBOX_TEST_IMAGE``, ``$EDGEBOX_TEST_ROOTFS``,
``$EDGEBOX_TEST_KEYS``; TCG; the bundle on a second disk; the technician's script from the
kernel command line), but the release on the stick is broken. Each bundle is properly
signed (the keyring the image trusts) and RAUC installs it: nothing but the box's own
health can refuse it. Two ways a release can be broken, one test each:

1. **It fails its gate** (`BROKEN`): its ``/etc/edgebox/edgebox.env`` names a port
   profile that does not exist (``EDGEBOX_PORTS=standard``), so ``edgebox run`` exits at
   every start. GRUB tries slot B; ``edgebox-update-confirm`` finds edgebox not running,
   retries its gate for its wait (``--wait 300``: a new system may be slow to start),
   marks slot B bad through RAUC, records ``rolled_back`` with the gate's findings and
   fails, so systemd reboots (FailureAction=reboot, a power cycle here as in
   test_qemu_update.py); GRUB skips the bad slot and boots A, which keeps itself.
2. **It never reaches its gate** (`UNBOOTABLE`): a module is missing from its venv, so
   edgebox and ``edgebox update confirm`` both die at import; the failed confirm reboots,
   nothing marks slot B good or bad, and GRUB's try counter (image_build/grub.cfg: 3
   tries) runs out; slot A boots, and its release records the rollback (``fell-back``).

The uplink is down all along (``systemd.setenv=EDGEBOX_CENTRAL_SMTP=…``: a central relay
the guest cannot reach, QEMU's ``restrict=on``), so gin is probed and down while the
gates run and is never what they judge.

Afterwards, as the admin would see it: slot A serves mail, the console's system updates
page lists the rollback and why; after an ACPI power-off the disk's ``update/state.json``
holds it, still waiting to be reported to the hub (the report queue), and the grubenv
shows how GRUB got back to A. The boots, the time to fall back and the time without
mail are printed (docs/BENCHMARKS.md).

Root and the tools of test_qemu_update.py: markers ``qemu`` and ``slow``; each run is
about half an hour under TCG.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.update import outcome
from tests.harness import missing_prerequisite, require_tool
from tests.image_build.test_qemu_boot import (
    ADMIN,
    BOOT_TIMEOUT,
    DOMAIN,
    GROW,
    OVMF,
    PASSWORD,
    Console,
    free_port,
    https_request,
    monitor_command,
    partitions,
    set_cmdline,
)
from tests.image_build.test_qemu_update import (
    answers,
    partition_device,
    put_script,
    release_bundle,
    start_machine,
    stick,
    technician_script,
)

#: A release whose edgebox cannot start (its gate runs and fails).
BROKEN = "2026.12.3"
#: A release that never gets as far as its gate (edgebox's Python is broken).
UNBOOTABLE = "2026.12.4"
#: Unreachable from the guest (restrict=on lets it reach nothing): gin is probed, and down.
CENTRE = "smtp://10.0.2.2:2525"
CMDLINE = (
    "systemd.journald.forward_to_console=1 systemd.mask=clamav-freshclam.service "
    f"systemd.setenv=EDGEBOX_CENTRAL_SMTP={CENTRE} "
    "systemd.run=/data/qemu-test/run.sh "
    "systemd.run_success_action=none systemd.run_failure_action=none"
)
BOOTED = re.compile(r"qemu-test: booted rauc\.slot=([AB])")


def break_release(root: Path) -> None:
    """Make the release's edgebox unable to start: a port profile that does not exist."""
    env = root / "etc" / "edgebox" / "edgebox.env"
    text = env.read_text()
    assert "EDGEBOX_PORTS=box\n" in text, text
    env.write_text(text.replace("EDGEBOX_PORTS=box\n", "EDGEBOX_PORTS=standard\n"))


def remove_a_module(root: Path) -> None:
    """Make the release's Python unable to start edgebox at all: a module left out of its
    venv, so both ``edgebox run`` and ``edgebox update confirm`` exit at import."""
    package = root / "usr" / "lib" / "edgebox" / "lib" / "python3.11" / "site-packages"
    (package / "appliance" / "config.py").unlink()
    # Byte code in __pycache__ is used only beside its source: with config.py gone, the
    # import fails (PEP 3147).


def grubenv(disk: Path, tmp: Path) -> dict[str, str]:
    """The variables of the grubenv on the EFI partition (RAUC's slot state, GRUB's tries)."""
    offset = partitions(disk)[0]["start"] * 512
    copy = tmp / "grubenv-after"
    subprocess.run([require_tool("mcopy"), "-n", "-i", f"{disk}@@{offset}",
                    "::/EFI/edgebox/grubenv", str(copy)], check=True,
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    listed = subprocess.run([require_tool("grub-editenv"), str(copy), "list"], check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    return dict(line.split("=", 1) for line in listed.splitlines() if "=" in line)


@dataclass
class FellBack:
    """What a run of `bad_update` saw."""

    console: str
    #: The slot of each boot, in order ("qemu-test: booted" on the console).
    booted: list[str]
    power_ons: int
    #: Slot A's verdict line after the fallback (`verdict_on_a` matched).
    verdict_on_a: str
    #: The console's system updates page on slot A after the fallback.
    page: str
    grubenv: dict[str, str]
    state: outcome.UpdateState
    #: `edgebox update status` on the data the box left.
    shown: str


def bad_update(tmp_path: Path, version: str, change: Callable[[Path], None],
               verdict_on_a: str) -> FellBack:  # fmt: skip
    """Install release *version* (the image's root changed by *change*) on slot A, watch
    the box fall back to A by itself, then gather what it shows; see the module docstring.
    """
    qemu = require_tool("qemu-system-x86_64")
    for tool in ("mcopy", "grub-editenv", "sfdisk", "rauc", "mksquashfs", "losetup"):
        require_tool(tool)
    if not (OVMF / "OVMF_CODE_4M.fd").exists():
        missing_prerequisite("ovmf is not installed")
    if os.geteuid() != 0:
        missing_prerequisite("loop mounts need root")
    prebuilt, rootfs = os.environ.get("EDGEBOX_TEST_IMAGE"), os.environ.get("EDGEBOX_TEST_ROOTFS")
    keys = os.environ.get("EDGEBOX_TEST_KEYS")
    if not (prebuilt and rootfs and keys):
        missing_prerequisite("EDGEBOX_TEST_IMAGE, EDGEBOX_TEST_ROOTFS and EDGEBOX_TEST_KEYS")
    # A folder of bundles an earlier run made (edgebox-VERSION.raucb), to skip the signing.
    bundle = Path(os.environ.get("EDGEBOX_TEST_BROKEN_BUNDLES", "")) / f"edgebox-{version}.raucb"
    if not bundle.is_file():
        bundle = release_bundle(rootfs, keys, tmp_path, version, change)
    stick_image = tmp_path / "stick.img"
    stick(bundle, stick_image)

    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", prebuilt, str(disk)], check=True)
    os.truncate(disk, disk.stat().st_size + GROW)
    set_cmdline(disk, tmp_path, CMDLINE)
    put_script(disk, tmp_path / "data", technician_script(version))
    shutil.copyfile(OVMF / "OVMF_VARS_4M.fd", tmp_path / "vars.fd")

    https, smtp = free_port(), free_port()
    forwards = f"hostfwd=tcp:127.0.0.1:{https}-:443,hostfwd=tcp:127.0.0.1:{smtp}-:25"
    monitor = tmp_path / "monitor.sock"
    console_log = tmp_path / "console.log"
    console_log.write_bytes(b"")
    power_ons = 0

    def power_on() -> subprocess.Popen[bytes]:
        nonlocal power_ons
        power_ons += 1
        return start_machine(qemu, tmp_path, disk, stick_image, forwards, monitor, console_log)

    vm = power_on()
    console = Console(console_log, vm)
    try:
        started = time.monotonic()
        deadline = started + BOOT_TIMEOUT
        console.wait_for(r"Started edgebox\.service", deadline)
        code = console.wait_for(r"setup code: ([A-Z0-9]{5}-[A-Z0-9]{5})", deadline).group(1)
        body = {"setup_code": code, "domain": DOMAIN, "agency_name_th": "สำนักงานทดสอบ",
                "admin": {"address": ADMIN, "name_th": "ผู้ดูแล", "password": PASSWORD}}  # fmt: skip
        status, done, _ = https_request(https, "POST", "/api/v1/setup/provision", body)
        assert status == 200, done
        console.wait_for(r"smtp-mx listening on 0\.0\.0\.0:25\b", deadline)
        print(f"\nslot A provisioned and serving {time.monotonic() - started:.0f} s after start")
        console.wait_for(r"qemu-test: the MX answers, installing", deadline)
        installing = time.monotonic()

        # From the install to slot A serving again, the machine powered on again after
        # each reboot it asks for; the MX watched from outside all along.
        deadline = installing + 5 * BOOT_TIMEOUT
        rebooting = slot_b_at = fell_back = a_again = 0.0
        last_up = back_up = 0.0
        while not back_up:
            if vm.poll() == 0:
                vm = console.vm = power_on()  # a reboot, as a power cycle (start_machine)
            assert vm.poll() is None, console.text()[-4000:]
            assert time.monotonic() < deadline, console.text()[-6000:]
            text = console.text()
            if not rebooting and "qemu-test: rebooting" in text:
                rebooting = time.monotonic()
                installed = re.search(r"qemu-test: install exit (\d+)", text)
                assert installed, text[-6000:]
                assert installed.group(1) == "0", text[-6000:]
            booted = [m.group(1) for m in BOOTED.finditer(text)]
            if not slot_b_at and booted[1:2] == ["B"]:
                slot_b_at = time.monotonic()
            if not fell_back and re.search(r"edgebox\[\d+\]: fall-back: ", text):
                fell_back = time.monotonic()
            if not a_again and len(booted) > 1 and booted[-1] == "A":
                a_again = time.monotonic()
            mx, _ = answers(smtp, https)
            if mx and not rebooting:
                last_up = time.monotonic()
            elif mx and a_again:
                back_up = time.monotonic()
            time.sleep(1)
        text = console.text()
        booted = [m.group(1) for m in BOOTED.finditer(text)]
        print(f"install (signature, copy into slot B) {rebooting - installing:.0f} s")
        print(f"install's reboot → slot B booting {slot_b_at - rebooting:.0f} s"
              + (f", → its gate marks it bad {fell_back - rebooting:.0f} s" if fell_back else "")
              + f", → slot A booting again {a_again - rebooting:.0f} s"
              f", → slot A's MX greets {back_up - rebooting:.0f} s")  # fmt: skip
        print(f"MX: last greeting before the install's reboot → first from slot A again "
              f"{back_up - last_up:.0f} s ({power_ons} power-ons, boots {booted})")  # fmt: skip

        after_b = text.rindex("qemu-test: booted rauc.slot=A")
        verdict = console.wait_for(verdict_on_a, deadline, after=after_b)
        # gin is probed and down on slot A (an unreachable centre); its gate is not asked.
        down = console.wait_for(r"gin link down \(" + re.escape(CENTRE), deadline, after=after_b)
        print(f"slot A: '{down.group(0)}' {'before' if down.start() < verdict.start() else 'after'}"
              f" its gate's '{verdict.group(0)}'")  # fmt: skip
        with smtplib.SMTP("127.0.0.1", smtp, timeout=120) as client:
            assert client.ehlo("qemu-test.example")[0] == 250
            assert client.mail("sender@example.invalid")[0] == 250
            assert client.rcpt(ADMIN)[0] == 250

        # The admin console's system updates page.
        status, signed_in, _ = https_request(
            https, "POST", "/api/v1/session", {"address": ADMIN, "password": PASSWORD},
            headers={"X-Requested-With": "edgebox"},
        )  # fmt: skip
        assert status == 201, signed_in  # a session made
        cookie = {"Cookie": f"edgebox_session={signed_in['token']}"}
        status, page, _ = https_request(https, "GET", "/admin/update", headers=cookie)
        assert status == 200, page

        monitor_command(monitor, "system_powerdown")
        vm.wait(timeout=300)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait(timeout=60)
        (Path(os.environ.get("EDGEBOX_TEST_CONSOLE", tmp_path / "kept.log"))).write_text(
            console.text()
        )

    env = grubenv(disk, tmp_path)
    print(f"grubenv after: { {k: v for k, v in env.items() if k != 'EDGEBOX_CMDLINE'} }")
    loop = partition_device(disk, 4, read_only=True)
    mnt = tmp_path / "data-after"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mnt)], check=True)
        try:
            state = outcome.read_state(mnt / "edgebox")
            shown = subprocess.run([sys.executable, "-m", "appliance", "update", "status",
                                    "--data", str(mnt / "edgebox")],
                                   check=True, capture_output=True, text=True).stdout  # fmt: skip
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    print(shown)
    return FellBack(text, booted, power_ons, verdict.group(0), page, env, state, shown)


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_an_update_that_fails_its_gate_falls_back_to_the_old_slot_by_itself(
    tmp_path: Path,
) -> None:
    seen = bad_update(tmp_path, BROKEN, break_release, r"edgebox\[\d+\]: keep\b")
    # A (installs), B (fails its gate, marked bad), A again: one try of the bad slot.
    assert seen.booted == ["A", "B", "A"], seen.booted
    verdict = re.search(r"edgebox\[\d+\]: fall-back: (.*)", seen.console)
    assert verdict, seen.console[-6000:]
    # Slot B's gate failed for the box's own service, never for the uplink.
    assert "services:" in verdict.group(1), verdict.group(0)
    assert "gin" not in verdict.group(1), verdict.group(0)
    assert "link" not in verdict.group(1), verdict.group(0)

    # The console says what happened, and why.
    assert 'data-event="rolled_back"' in seen.page, seen.page
    assert "health gate failed" in seen.page, seen.page
    assert BROKEN in seen.page, seen.page

    # The bootloader's state: B marked bad by RAUC, A good and not being counted down.
    assert seen.grubenv["B_OK"] == "0", seen.grubenv
    assert seen.grubenv["A_OK"] == "1", seen.grubenv
    assert seen.grubenv["A_TRY"] == "0", seen.grubenv

    # What the box kept: the rollback and why, waiting for the hub (the report queue).
    state = seen.state
    assert state.pending is None
    assert [(e.event, e.version, e.slot) for e in state.events] == [
        ("installed", BROKEN, "B"),
        ("rolled_back", BROKEN, "B"),
    ], state.events
    assert state.events[-1].reason.startswith("health gate failed: services:"), state.events
    assert [e.event for e in state.unreported()] == ["installed", "rolled_back"]
    shown = seen.shown
    assert re.search(rf"rolled_back\s+{re.escape(BROKEN)}\s+slot B — health gate failed", shown)
    assert "not yet reported to the hub: 2 events" in shown, shown


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_an_update_that_never_reaches_its_gate_falls_back_by_the_boot_counter(
    tmp_path: Path,
) -> None:
    seen = bad_update(tmp_path, UNBOOTABLE, remove_a_module, r"edgebox\[\d+\]: fell-back: (.*)")
    # A (installs), B three times (GRUB's tries; nothing marks it good or bad), then A.
    assert seen.booted == ["A", "B", "B", "B", "A"], seen.booted
    assert "edgebox-update-confirm" in seen.console
    # Nothing marked B bad: GRUB stopped trying it when its 3 tries were spent.
    assert seen.grubenv["B_OK"] == "1", seen.grubenv
    assert seen.grubenv["B_TRY"] == "3", seen.grubenv
    assert seen.grubenv["A_OK"] == "1", seen.grubenv
    assert seen.grubenv["A_TRY"] == "0", seen.grubenv

    # Slot A's release wrote down what it found: B never passed its gate.
    state = seen.state
    assert state.pending is None
    assert [(e.event, e.version) for e in state.events] == [
        ("installed", UNBOOTABLE),
        ("rolled_back", UNBOOTABLE),
    ], state.events
    assert "never passed its health gate" in state.events[-1].reason, state.events
    assert [e.event for e in state.unreported()] == ["installed", "rolled_back"]
    assert 'data-event="rolled_back"' in seen.page, seen.page
    assert "never passed its health gate" in seen.page, seen.page
    assert "not yet reported to the hub: 2 events" in seen.shown, seen.shown
