"""The signed USB stick on a real block device, read through pyudev's kernel uevents.

This machine has no vfat in the kernel and no udevd (docs/testing.md): the "stick" is
an ext4 image on a loop device, and attaching it raises the kernel's ``change`` uevent
the box's `UdevBlockDevices` reads over netlink. The box mounts it read-only itself,
verifies and applies the bundle, writes its signed result and unmounts. The technician's
side is the real CLI: `edgebox hub provisioning-cert`, `edgebox provision bundle create`.
Needs root (losetup, mount).
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from appliance.box import read_identity
from appliance.provisioning.usb import RESULTS_DIR, verify_result
from tests.harness import RunningBox, edgebox, missing_prerequisite, require_tool, start_box

pytestmark = pytest.mark.slow

DOMAIN = "stick.go.th"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "stick-first-2569"  # smtplib sends AUTH PLAIN as ASCII only
ANSWERS = f"""
[agency]
domain = "{DOMAIN}"
name_th = "สำนักงานทดสอบแฟลชไดรฟ์"

[admin]
address = "{ADMIN}"
name_th = "ผู้ดูแล ระบบ"
password = "{PASSWORD}"
"""
USERS = (
    "email,name_th,name_en,unit,password,admin\n"
    f"somchai@{DOMAIN},สมชาย ใจดี,Somchai,,somchai-pass-2569,no\n"
)


def wait_for_line(box: RunningBox, text: str, count: int = 1, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while sum(line.strip() == text for line in box.output) < count:
        assert box.process.poll() is None, "\n".join(box.output)
        assert time.monotonic() < deadline, "\n".join(box.output)
        time.sleep(0.1)


@pytest.fixture
def stick_image(tmp_path: Path) -> Path:
    """An ext4 image holding a bundle signed by a technician of the hub in tmp/hub."""
    if os.geteuid() != 0:
        missing_prerequisite("the USB stick test needs root (losetup, mount)")
    mkfs = require_tool("mkfs.ext4")
    require_tool("losetup")
    hub, tech = tmp_path / "hub", tmp_path / "tech"
    edgebox("hub", "provisioning-cert", "--data", str(hub), "--name", "Somsak",
            "--out", str(tech))  # fmt: skip
    (tmp_path / "answers.toml").write_text(ANSWERS)
    (tmp_path / "users.csv").write_text(USERS)
    content = tmp_path / "stick"
    content.mkdir()
    edgebox("provision", "bundle", "create", "--answers", str(tmp_path / "answers.toml"),
            "--users", str(tmp_path / "users.csv"), "--key", str(tech / "provisioning-somsak.key"),
            "--cert", str(tech / "provisioning-somsak.pem"), "--out", str(content))  # fmt: skip
    image = tmp_path / "stick.img"
    with image.open("wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    # -d fills the file system from the folder: no mount needed to make the stick.
    subprocess.run([mkfs, "-q", "-F", "-d", str(content), str(image)], check=True)
    return image


def users_only_image(tmp_path: Path) -> Path:
    """A second stick for the same box: one more user, no answers."""
    content = tmp_path / "stick2"
    content.mkdir()
    (tmp_path / "users2.csv").write_text(
        "email,name_th,name_en,unit,password,admin\n"
        f"suda@{DOMAIN},สุดา รักงาน,Suda,,suda-pass-2569-ok,no\n"
    )
    tech = tmp_path / "tech"
    edgebox("provision", "bundle", "create", "--users", str(tmp_path / "users2.csv"),
            "--key", str(tech / "provisioning-somsak.key"),
            "--cert", str(tech / "provisioning-somsak.pem"), "--out", str(content))  # fmt: skip
    image = tmp_path / "stick2.img"
    with image.open("wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    subprocess.run([require_tool("mkfs.ext4"), "-q", "-F", "-d", str(content), str(image)],
                   check=True)  # fmt: skip
    return image


def new_data(tmp_path: Path, name: str = "data") -> Path:
    """An unprovisioned box's data directory whose image trusts the hub's CA."""
    data = tmp_path / name
    (data / "device").mkdir(parents=True)
    shutil.copy(tmp_path / "hub" / "keys" / "provisioning-ca.pem", data / "device")
    return data


def free_loop() -> str:
    return subprocess.run(["losetup", "-f"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def detach(devnode: str) -> None:
    """Unmount whatever a killed box left mounted from *devnode*, then detach it."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[0] == devnode]
    for point in points:
        subprocess.run(["umount", point], check=False)
    subprocess.run(["losetup", "-d", devnode], check=False)


def read_results(image: Path, into: Path) -> list[dict[str, object]]:
    into.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(into)], check=True)
    try:
        found = []
        for path in sorted((into / RESULTS_DIR).glob("*.json")):
            signature = path.with_name(path.name + ".sig").read_bytes()
            found.append(verify_result(path.read_bytes(), signature))
        return found
    finally:
        subprocess.run(["umount", str(into)], check=True)


def test_a_stick_on_a_loop_device_provisions_a_running_box(
    tmp_path: Path, stick_image: Path
) -> None:
    data = new_data(tmp_path)
    devnode = free_loop()
    box = start_box(data, env={"EDGEBOX_USB_PROVISIONING": Path(devnode).name})
    try:
        assert "imaps" not in box.listeners
        subprocess.run(["losetup", devnode, str(stick_image)], check=True)
        wait_for_line(box, "ready", 2)
        assert "provisioned; starting every service" in box.output
        # The box unmounted the stick it mounted before it switched.
        assert devnode not in Path("/proc/mounts").read_text()
        context = ssl.create_default_context(cafile=str(box.ca))
        with smtplib.SMTP_SSL("localhost", box.port("smtp-submissions"), context=context,
                              timeout=30) as smtp:  # fmt: skip
            smtp.login(f"somchai@{DOMAIN}", "somchai-pass-2569")  # a user from the stick
        with smtplib.SMTP_SSL("localhost", box.port("smtp-submissions"), context=context,
                              timeout=30) as smtp:  # fmt: skip
            smtp.login(ADMIN, PASSWORD)

        # A second stick on the now provisioned, running box: users only, added live.
        subprocess.run(["losetup", "-d", devnode], check=True)
        second = users_only_image(tmp_path)
        subprocess.run(["losetup", devnode, str(second)], check=True)
        deadline = time.monotonic() + 60
        while not any("applied (applied: add-users:1)" in line for line in box.output):
            assert time.monotonic() < deadline, "\n".join(box.output)
            time.sleep(0.1)
        with smtplib.SMTP_SSL("localhost", box.port("smtp-submissions"), context=context,
                              timeout=30) as smtp:  # fmt: skip
            smtp.login(f"suda@{DOMAIN}", "suda-pass-2569-ok")
    finally:
        box.stop()
        detach(devnode)
    identity = read_identity(data)
    assert identity is not None
    [result] = read_results(stick_image, tmp_path / "mnt")
    assert result["status"] == "applied"
    assert result["applied"] == ["provision", "add-users:1"]
    assert result["box_id"] == identity.box_id


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.2, 0.25, 0.3, 0.4])
def test_sigkill_while_a_stick_is_applied_leaves_the_old_state_or_the_new(
    tmp_path: Path, stick_image: Path, delay: float
) -> None:
    data = new_data(tmp_path)
    devnode = free_loop()
    env = {"EDGEBOX_USB_PROVISIONING": Path(devnode).name}
    box = start_box(data, env=env)
    try:
        subprocess.run(["losetup", devnode, str(stick_image)], check=True)
        time.sleep(delay)
        box.stop(signal.SIGKILL)
    finally:
        detach(devnode)
    identity = read_identity(data)
    print(f"killed {delay} s after the stick: {'new' if identity else 'old'} state")  # -rP
    if identity is not None:
        # The new state: the agency and its first admin, whole.
        listed = edgebox("user", "list", "--data", str(data)).stdout
        assert ADMIN in listed
        return
    # The old state: the next start discards what was half made, and the same stick
    # (never recorded as applied) provisions the box.
    box = start_box(data, env=env)
    try:
        subprocess.run(["losetup", devnode, str(stick_image)], check=True)
        wait_for_line(box, "ready", 2)
    finally:
        box.stop()
        detach(devnode)
    assert read_identity(data) is not None
    assert ADMIN in edgebox("user", "list", "--data", str(data)).stdout
