"""Make a signed RAUC bundle from a root filesystem image (``edgebox update bundle``).

The bundle is RAUC's own format (a squashfs with the manifest and the image, followed by
a CMS signature over it, RAUC manual "Bundle Formats"), made by Debian's ``rauc bundle``
with a keyring's signing certificate (appliance.update.keyring). Only the build machine
runs this; a box never holds a signing key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from appliance.update.keyring import Keyring
from appliance.update.manifest import Manifest


class BundleError(Exception):
    """The bundle could not be made; the message carries rauc's reason."""


def make_bundle(rootfs: Path, keyring: Keyring, out: Path, manifest: Manifest) -> Path:
    """Sign *rootfs* (an ext4 image) into the bundle *out*; return *out*."""
    if out.exists():
        raise BundleError(f"{out} exists; rauc will not overwrite a bundle")
    with tempfile.TemporaryDirectory(prefix="edgebox-bundle-") as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        (content / "manifest.raucm").write_text(manifest.render())
        image = content / manifest.rootfs_image
        # A hard link costs nothing for a multi-gigabyte image; a copy where linking
        # across file systems is impossible.
        try:
            os.link(rootfs, image)
        except OSError:
            shutil.copyfile(rootfs, image)
        # Fixed argv, no shell; rauc from the build machine's PATH.
        done = subprocess.run(  # noqa: S603
            ["rauc", "bundle", f"--cert={keyring.signing_cert}",  # noqa: S607
             f"--key={keyring.signing_key}", str(content), str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise BundleError(f"rauc bundle failed: {reason[-1] if reason else done.returncode}")
    return out
