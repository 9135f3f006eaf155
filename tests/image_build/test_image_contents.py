"""The full root tree holds what the box needs, and not Postfix.

`image_build/build.py rootfs` (not --small): Debian 12 with the box's packages, the
venv, the units, RAUC's config and keyring, the firmware, a read-only root's fstab.
Minutes, root and the Debian mirror: marker ``image`` like the reproducibility test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.update.keyring import ensure_keyring
from tests.harness import missing_prerequisite, require_tool

BUILD = Path(__file__).parents[2] / "image_build" / "build.py"


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_the_root_tree_has_the_box_and_no_postfix(tmp_path: Path) -> None:
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
    blocks = [b for b in status.split("\n\n") if "Status: install ok installed" in b]
    installed = {block.split("\n", 1)[0].removeprefix("Package: ") for block in blocks}
    assert {"rauc", "systemd", "clamav-daemon", "systemd-timesyncd", "linux-image-amd64",
            "python3"} <= installed  # fmt: skip
    assert not {p for p in installed if p.startswith("postfix")}
    assert "./usr/lib/edgebox/bin/edgebox" in names
    assert "./usr/bin/edgebox" in names
    assert "./etc/systemd/system/multi-user.target.wants/edgebox.service" in names
    assert "./etc/systemd/system/multi-user.target.wants/edgebox-update-confirm.service" in names
    assert any(n.startswith("./usr/share/edgebox/firmware/") for n in names)
    assert "check-purpose=codesign" in conf
    assert keyring_pem == keyring.ca_cert.read_text()
    assert "PARTLABEL=edgebox-data /var/lib/edgebox ext4" in fstab
