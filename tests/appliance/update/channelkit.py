"""What the update-channel tests share: a signed bundle big enough to cut mid-way."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from appliance.update.bundle import make_bundle
from appliance.update.keyring import Keyring
from appliance.update.manifest import Manifest
from tests.appliance.update.sandbox import COMPATIBLE
from tests.harness import require_tool


def random_bundle(root: Path, keyring: Keyring, version: str, *, size: int = 3 << 20) -> Path:
    """A plain-format bundle of *version* whose image holds *size* random bytes (random:
    squashfs cannot shrink it, so the bundle is about that big)."""
    for tool in ("rauc", "mksquashfs", "mkfs.ext4"):
        require_tool(tool)
    src = root / f"rootfs-{version}.d"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "edgebox-release").write_text(version + "\n")
    (src / "filler").write_bytes(os.urandom(size))
    image = root / f"rootfs-{version}.ext4"
    megabytes = size // (1 << 20) + 6
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(image), f"{megabytes}M"],
                   check=True)  # fmt: skip
    out = root / f"edgebox-{version}.raucb"
    # "plain": the sandbox kernel has no device-mapper for verity bundles (TESTING.md).
    return make_bundle(image, keyring, out, Manifest(COMPATIBLE, version, bundle_format="plain"))
