"""A real A/B update of the amd64 image under qemu: install into slot B, reboot, gate, commit.

The image of ``$EDGEBOX_TEST_IMAGE`` (built with the release keyring whose folder is
``$EDGEBOX_TEST_KEYS``) boots under ``qemu-system-x86_64`` (TCG, as test_qemu_boot.py) and
is provisioned over its setup API. Its root filesystem ``$EDGEBOX_TEST_ROOTFS`` (the
rootfs.ext4 of the same build), changed by one file (``/etc/edgebox-release``: 2026.12.2),
is signed by ``edgebox update bundle`` (verity, the box's format) and handed to the box on
a second virtual disk — a stick, as a technician would bring one.

The guest has no shell for a test, so the technician's commands come from the kernel
command line (``systemd.run=``, in the grubenv's EDGEBOX_CMDLINE like the journal's
forwarding): a script on the data partition waits until the box's MX answers on slot A,
then, as the box's own user, runs ``edgebox update install`` (RAUC over D-Bus: signature,
``compatible``, the other slot) and reboots (QEMU runs with ``-no-reboot`` and is
started again: a power cycle, see `power_on`). What follows is the box's own: GRUB tries
slot B, ``edgebox-update-confirm.service`` runs the health gate and marks B good, and the
outcome is in ``update/state.json`` on the data partition. The test measures the time
the box does not serve across that reboot (the MX's greeting and HTTPS answering), then
reads ``edgebox update status`` from the powered-off disk.

Root, qemu-system-x86, ovmf, mtools, grub-common, fdisk, rauc, squashfs-tools, e2fsprogs:
markers ``qemu`` and ``slow``; the figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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

RELEASE = "2026.12.2"


def technician_script(release: str) -> str:
    """The technician's steps, run as root by kernel-command-line.service on every boot.

    systemd-run-generator makes that unit the default target, so it first starts the
    box's own target; then it installs *release* from the stick once, on slot A only.
    """
    return f"""#!/bin/sh
systemctl start --no-block multi-user.target
echo "qemu-test: booted $(grep -o 'rauc.slot=[AB]' /proc/cmdline)"
grep -q rauc.slot=A /proc/cmdline || exit 0
test -e /data/qemu-test/installed && exit 0
probe='import socket; socket.create_connection(("127.0.0.1", 25), 5)'
until /usr/lib/edgebox/bin/python -c "$probe" 2>/dev/null; do sleep 5; done
echo "qemu-test: the MX answers, installing"
mount -o ro /dev/vdb /mnt || exit 1
runuser -u edgebox -- /usr/bin/edgebox update install /mnt/edgebox-{release}.raucb \\
    --data /var/lib/edgebox
echo "qemu-test: install exit $?"
touch /data/qemu-test/installed
umount /mnt
echo "qemu-test: rebooting"
systemctl reboot
"""


SCRIPT = technician_script(RELEASE)
CMDLINE = (
    "systemd.journald.forward_to_console=1 systemd.mask=clamav-freshclam.service "
    "systemd.run=/data/qemu-test/run.sh "
    "systemd.run_success_action=none systemd.run_failure_action=none"
)


def partition_device(disk: Path, number: int, *, read_only: bool) -> str:
    """A loop device over partition *number* (1-based) of *disk*."""
    part = partitions(disk)[number - 1]
    command = ["losetup", "-f", "--show", "-o", str(part["start"] * 512), "--sizelimit",
               str(part["size"] * 512), *(["-r"] if read_only else []), str(disk)]  # fmt: skip
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def put_script(disk: Path, mnt: Path, script: str = SCRIPT) -> None:
    """Write the technician's script onto the data partition (before the first boot)."""
    loop = partition_device(disk, 4, read_only=False)
    try:
        mnt.mkdir()
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            (mnt / "qemu-test").mkdir()
            (mnt / "qemu-test" / "run.sh").write_text(script)
            (mnt / "qemu-test" / "run.sh").chmod(0o755)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def release_bundle(
    rootfs: str, keys: str, tmp: Path, version: str, change: Callable[[Path], None]
) -> Path:
    """Sign the root of *rootfs*, changed by *change* (given its mount point), as *version*.

    Signed with the channel ``release`` of the keyring folder *keys*, as a release would be.
    """
    changed = tmp / f"rootfs-{version}.ext4"
    subprocess.run(["cp", "--sparse=always", rootfs, str(changed)], check=True)
    mnt = tmp / f"root-{version}"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(changed), str(mnt)], check=True)
    try:
        (mnt / "etc" / "edgebox-release").write_text(version + "\n")
        change(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    bundle = tmp / f"edgebox-{version}.raucb"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "appliance", "update", "bundle", "--rootfs",
                    str(changed), "--keyring", keys, "--channel", "release",
                    "--version", version, "--out", str(bundle)], check=True)  # fmt: skip
    print(f"\nedgebox update bundle: {time.monotonic() - started:.0f} s, "
          f"{bundle.stat().st_size >> 20} MiB")  # fmt: skip
    changed.unlink()
    return bundle


def stick(bundle: Path, out: Path) -> None:
    """An ext4 image holding only *bundle* (the second virtual disk)."""
    src = out.parent / "stick.d"
    src.mkdir()
    shutil.copyfile(bundle, src / bundle.name)
    # Readable by the box's user: `edgebox update install` runs as edgebox (rauc bundle
    # writes 0600).
    (src / bundle.name).chmod(0o644)
    size_mib = bundle.stat().st_size // (1 << 20) + 64
    subprocess.run([require_tool("mkfs.ext4"), "-q", "-F", "-d", str(src), str(out),
                    f"{size_mib}M"], check=True)  # fmt: skip


def start_machine(
    qemu: str, tmp: Path, disk: Path, stick_image: Path, forwards: str, monitor: Path,
    console_log: Path,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Power the machine on (UEFI vars in *tmp*/vars.fd), its console appended to *console_log*.

    -no-reboot: a guest reboot ends QEMU and the test powers the machine on again. A
    warm reset (the guest's or the monitor's system_reset) left OVMF spinning in its PEI
    phase under TCG here (EIP fffcd283, no console output, 2026-12-07), so the reboot is
    a power cycle; the firmware starts from the top either way.
    """
    with console_log.open("ab") as log:
        return subprocess.Popen(
            [qemu, "-machine", "q35,accel=tcg", "-m", "2048", "-smp", "2", "-no-reboot",
             "-nographic", "-monitor", f"unix:{monitor},server,nowait",
             "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF / 'OVMF_CODE_4M.fd'}",
             "-drive", f"if=pflash,format=raw,file={tmp / 'vars.fd'}",
             "-drive", f"file={disk},format=raw,if=virtio",
             "-drive", f"file={stick_image},format=raw,if=virtio,readonly=on",
             "-netdev", f"user,id=n0,restrict=on,{forwards}",
             "-device", "virtio-net-pci,netdev=n0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def answers(smtp: int, https: int) -> tuple[bool, bool]:
    """Whether the MX greets and HTTPS completes a TLS handshake right now."""
    mx = web = False
    try:
        with socket.create_connection(("127.0.0.1", smtp), timeout=5) as plain:
            plain.settimeout(5)
            mx = plain.recv(4) == b"220 "
    except OSError:
        pass
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", https), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            web = tls.version() is not None
    except OSError:
        pass
    return mx, web


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_an_update_installs_reboots_into_slot_b_and_commits_after_its_gate(
    tmp_path: Path,
) -> None:
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
    bundle = Path(os.environ.get("EDGEBOX_TEST_BUNDLE", ""))
    if not bundle.is_file():
        # The root of the same build with only its release changed.
        bundle = release_bundle(rootfs, keys, tmp_path, RELEASE, lambda root: None)
    stick_image = tmp_path / "stick.img"
    stick(bundle, stick_image)

    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", prebuilt, str(disk)], check=True)
    os.truncate(disk, disk.stat().st_size + GROW)
    set_cmdline(disk, tmp_path, CMDLINE)
    put_script(disk, tmp_path / "data")
    shutil.copyfile(OVMF / "OVMF_VARS_4M.fd", tmp_path / "vars.fd")

    https, smtp = free_port(), free_port()
    forwards = f"hostfwd=tcp:127.0.0.1:{https}-:443,hostfwd=tcp:127.0.0.1:{smtp}-:25"
    monitor = tmp_path / "monitor.sock"
    console_log = tmp_path / "console.log"
    console_log.write_bytes(b"")

    def power_on() -> subprocess.Popen[bytes]:
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
        serving = time.monotonic()
        print(f"\nslot A provisioned and serving {serving - started:.0f} s after start")

        # Watch the box from outside while it installs and reboots: the last answer
        # before the reboot and the first after it (MX and HTTPS each).
        console.wait_for(r"qemu-test: the MX answers, installing", deadline)
        installing = time.monotonic()
        deadline = installing + 2 * BOOT_TIMEOUT
        last_up: dict[str, float] = {}
        down_at: dict[str, float] = {}
        back_at: dict[str, float] = {}
        rebooting = 0.0
        while len(back_at) < 2:
            if rebooting and vm.poll() == 0:
                vm = console.vm = power_on()  # the reboot, as a power cycle (power_on)
            assert vm.poll() is None, console.text()[-4000:]
            assert time.monotonic() < deadline, console.text()[-6000:]
            if not rebooting and "qemu-test: rebooting" in console.text():
                rebooting = time.monotonic()
                installed = re.search(r"qemu-test: install exit (\d+)", console.text())
                assert installed, console.text()[-6000:]
                assert installed.group(1) == "0", console.text()[-6000:]
            mx, web = answers(smtp, https)
            now = time.monotonic()
            for name, up in (("mx", mx), ("https", web)):
                if up and name not in down_at:
                    last_up[name] = now
                elif not up and name not in down_at and rebooting:
                    down_at[name] = now
                elif up and name in down_at and name not in back_at:
                    back_at[name] = now
            time.sleep(1)
        print(f"install (signature, copy into slot B) {rebooting - installing:.0f} s")
        for name in ("mx", "https"):
            print(f"{name}: last answer before the reboot → first after it "
                  f"{back_at[name] - last_up[name]:.0f} s")  # fmt: skip

        # The new slot's gate: edgebox-update-confirm prints its verdict ("commit").
        console.wait_for(r"qemu-test: booted rauc\.slot=B", deadline)
        console.wait_for(r"edgebox\[\d+\]: commit\b", deadline)
        committed = time.monotonic()
        print(f"reboot → slot B committed by its gate {committed - rebooting:.0f} s")
        assert https_request(https, "GET", "/api/v1/setup")[0] == 403  # still provisioned

        monitor_command(monitor, "system_powerdown")
        vm.wait(timeout=300)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait(timeout=60)
        (Path(os.environ.get("EDGEBOX_TEST_CONSOLE", tmp_path / "kept.log"))).write_text(
            console.text()
        )

    # What the operator sees: `edgebox update status` on the data the box left.
    loop = partition_device(disk, 4, read_only=True)
    mnt = tmp_path / "data-after"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-o", "ro,noload", loop, str(mnt)], check=True)
        try:
            shown = subprocess.run([sys.executable, "-m", "appliance", "update", "status",
                                    "--data", str(mnt / "edgebox")],
                                   check=True, capture_output=True, text=True).stdout  # fmt: skip
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    print(shown)
    assert re.search(rf"installed\s+{re.escape(RELEASE)}\s+slot B", shown), shown
    assert re.search(rf"good\s+{re.escape(RELEASE)}\s+slot B", shown), shown
    assert "rolled_back" not in shown, shown
    assert "pending" not in shown, shown
