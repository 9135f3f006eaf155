"""The RAUC bundle manifest (``manifest.raucm``) of an edgebox update. Pure: text out.

A bundle carries one image, the root filesystem as ext4, for the ``rootfs`` slot class;
RAUC writes it into whichever root slot is not booted. The version is the edgebox
release; the box records it with the outcome (appliance.update.outcome).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^[0-9A-Za-z.+~-]{1,64}$")


@dataclass(frozen=True)
class Manifest:
    compatible: str
    version: str
    #: The image file's name inside the bundle.
    rootfs_image: str = "rootfs.ext4"
    #: "verity" needs dm-verity at install time (every box kernel has it); "plain" is
    #: for sandboxes without device-mapper.
    bundle_format: str = "verity"

    def render(self) -> str:
        """The manifest.raucm text."""
        if not _VERSION.match(self.version):
            raise ValueError(f"bad version {self.version!r}: letters, digits and .+~- only")
        if self.bundle_format not in ("plain", "verity"):
            raise ValueError(f"bad bundle format {self.bundle_format!r}")
        return (
            "[update]\n"
            f"compatible={self.compatible}\n"
            f"version={self.version}\n"
            "description=edgebox root filesystem\n"
            "\n"
            "[bundle]\n"
            f"format={self.bundle_format}\n"
            "\n"
            "[image.rootfs]\n"
            f"filename={self.rootfs_image}\n"
        )
