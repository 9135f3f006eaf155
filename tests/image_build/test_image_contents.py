"""The full root tree holds what the box needs, and not Postfix.

`image_build/build.py rootfs` (not --small): Debian 12 with the box's packages, the
venv, the units, RAUC's config and keyring, the firmware, a read-only root's fstab.
Minutes, root and the Debian mirror: marker ``image`` like the reproducibility test.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.protection.signatures.sync import (
    RELOAD_REQUEST,
    RSPAMD_SET_MODULES,
    SYSTEM_RSPAMD_LOCAL,
)
from appliance.update.keyring import ensure_keyring
from tests.harness import missing_prerequisite, require_tool

BUILD = Path(__file__).parents[2] / "image_build" / "build.py"


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_the_root_tree_has_the_box_and_no_postfix(tmp_path: Path) -> None:
    prebuilt = os.environ.get("EDGEBOX_TEST_ROOTFS")  # a tree built from this commit
    if prebuilt:
        out = Path(prebuilt)
    else:
        require_tool("mmdebstrap")
        if os.geteuid() != 0:
            missing_prerequisite("mmdebstrap --mode=root needs root")
        keyring = ensure_keyring(tmp_path / "keys", "release")
        out = tmp_path / "rootfs.tar"
        command = [sys.executable, str(BUILD), "rootfs", "--out", str(out),
                   "--keyring", str(keyring.ca_cert)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())

        def read(name: str) -> str:
            handle = tar.extractfile(name)
            assert handle is not None
            return handle.read().decode()

        status = read("./var/lib/dpkg/status")
        conf = read("./etc/rauc/system.conf")
        keyring_pem = read("./etc/rauc/keyring.pem")
        fstab = read("./etc/fstab")
        env = read("./etc/edgebox/edgebox.env")
        protection = read("./etc/systemd/system/edgebox.service.d/protection.conf")
        clamd = read("./etc/clamav/clamd.conf")
        rspamd_local = {
            m: read(f"./etc/rspamd/local.d/{m}.conf")
            for m in RSPAMD_SET_MODULES
            if f"./etc/rspamd/local.d/{m}.conf" in names
        }
        reload_path = read("./etc/systemd/system/edgebox-rspamd-reload.path")
        data_unit = read("./etc/systemd/system/edgebox-data.service")
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    blocks = [b for b in status.split("\n\n") if "Status: install ok installed" in b]
    installed = {block.split("\n", 1)[0].removeprefix("Package: ") for block in blocks}
    assert {"rauc", "rauc-service", "systemd", "clamav-daemon", "clamav-freshclam", "rspamd",
            "systemd-timesyncd", "systemd-resolved", "linux-image-amd64", "python3",
            "dbus"} <= installed  # fmt: skip
    assert not {p for p in installed if p.startswith("postfix")}
    assert "./usr/lib/edgebox/bin/edgebox" in names
    assert "./usr/bin/edgebox" in names
    assert "./etc/systemd/system/multi-user.target.wants/edgebox.service" in names
    assert "./etc/systemd/system/multi-user.target.wants/edgebox-update-confirm.service" in names
    assert any(n.startswith("./usr/share/edgebox/firmware/") for n in names)
    assert "check-purpose=codesign" in conf
    assert "BEGIN CERTIFICATE" in keyring_pem
    if not prebuilt:
        assert keyring_pem == keyring.ca_cert.read_text()
    assert fstab == (BUILD.parent / "etc" / "fstab").read_text()
    assert "EDGEBOX_PORTS=box\n" in env
    assert "EDGEBOX_BIND=0.0.0.0\n" in env
    wants = "./etc/systemd/system/multi-user.target.wants/"
    for unit in (
        "edgebox-system-files.service",
        "systemd-networkd.service",
        "rspamd.service",
        "clamav-daemon.service",
    ):
        assert wants + unit in names, unit
    assert "./etc/systemd/system/paths.target.wants/edgebox-system-files.path" in names
    assert "./etc/systemd/system/data.mount.requires/edgebox-grow-data.service" in names
    assert wants + "systemd-networkd-wait-online.service" not in names
    # clamd and rspamd with the box's drop-ins and rspamd's local.d files.
    for dropin in (
        "edgebox.service.d/protection.conf",
        "clamav-daemon.service.d/edgebox.conf",
        "rspamd.service.d/edgebox.conf",
    ):
        assert f"./etc/systemd/system/{dropin}" in names, dropin
    for inc in ("options.inc", "worker-normal.inc", "logging.inc"):
        assert f"./etc/rspamd/local.d/{inc}" in names, inc
    # A signature set's rspamd files land on the data partition (the root is read-only):
    # each module's local.d file includes its namesake there, and a path unit has
    # systemd reload rspamd when edgebox asks (appliance/protection/signatures/sync.py).
    for module in RSPAMD_SET_MODULES:
        assert f'"{SYSTEM_RSPAMD_LOCAL}/{module}.conf"' in rspamd_local[module], module
    assert "./etc/systemd/system/paths.target.wants/edgebox-rspamd-reload.path" in names
    assert f"PathChanged={SYSTEM_RSPAMD_LOCAL}/{RELOAD_REQUEST}\n" in reload_path
    assert "install -d -o edgebox -g _rspamd -m 0755 /data/rspamd/local.d" in data_unit
    assert "SupplementaryGroups=clamav\n" in protection
    assert "ReadWritePaths=/var/lib/clamav\n" in protection
    assert "LogSyslog true" in clamd
    assert "\nLogFile " not in clamd
    assert "./usr/sbin/edgebox-apply-system-files" in names
    assert "./usr/share/edgebox/repart.d/50-data.conf" in names
    # The read-only root's links into /run.
    assert links["./etc/localtime"] == "/run/edgebox/localtime"
    assert links["./etc/resolv.conf"] == "../run/systemd/resolve/stub-resolv.conf"
    assert links["./var/lib/dbus/machine-id"] == "/etc/machine-id"
    assert "data-directory=/data/rauc" in conf


def elf_machine(data: bytes) -> int:
    """e_machine of an ELF file (62 x86-64, 183 AArch64)."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    (machine,) = struct.unpack_from("<H", data, 18)
    return int(machine)


@pytest.mark.image
@pytest.mark.timeout(7200)
def test_the_arm64_root_tree_is_arm64_through_and_through(tmp_path: Path) -> None:
    """`build.py rootfs --arch arm64`: Debian's arm64 packages, maintainer scripts, pip and
    compileall run by qemu-user-static through binfmt_misc; the venv's compiled wheels
    are the aarch64 ones of requirements-arm64.lock."""
    prebuilt = os.environ.get("EDGEBOX_TEST_ROOTFS_ARM64")  # a tree built from this commit
    if prebuilt:
        out = Path(prebuilt)
    else:
        require_tool("mmdebstrap")
        require_tool("qemu-aarch64-static")
        require_tool("update-binfmts")
        if os.geteuid() != 0:
            missing_prerequisite("mmdebstrap --mode=root and binfmt_misc need root")
        keyring = ensure_keyring(tmp_path / "keys", "release")
        out = tmp_path / "rootfs-arm64.tar"
        command = [sys.executable, str(BUILD), "rootfs", "--arch", "arm64", "--out", str(out),
                   "--keyring", str(keyring.ca_cert)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            handle = tar.extractfile(members[name])
            assert handle is not None
            return handle.read()

        status = read("./var/lib/dpkg/status").decode()
        conf = read("./etc/rauc/system.conf").decode()
        python = read(
            "./usr/bin/" + members["./usr/bin/python3"].linkname.removeprefix("/usr/bin/")
        )
        rust = [n for n in members if n.startswith("./usr/lib/edgebox/lib/")
                and n.endswith(".so") and "cryptography" in n]  # fmt: skip
        assert rust, "cryptography's compiled module is missing"
        compiled = read(rust[0])
    assert elf_machine(python) == 183
    assert elf_machine(compiled) == 183
    assert "Package: linux-image-arm64\n" in status
    assert "Package: grub-efi-arm64-bin\n" in status
    assert "Architecture: amd64\n" not in status
    assert "compatible=edgebox-arm64" in conf
    assert "./usr/lib/grub/arm64-efi/linux.mod" in members
    assert "./usr/lib/edgebox/bin/edgebox" in members
