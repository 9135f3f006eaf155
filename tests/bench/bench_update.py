"""Update benchmark: sign a bundle of a real-sized root filesystem and install it.

Set-up: a root filesystem image of ``--size-mib`` MiB (default 600, about the size of
the box's root: Debian minbase + systemd + clamav + the kernel + the venv), filled with
incompressible data so that squashfs cannot shrink it (the worst case for time), the
sandbox of tests/appliance/update/sandbox.py with slots of that size.

Measured: ``bundle`` (``rauc bundle``: squashfs + CMS signature), ``install`` (``rauc
install`` through the real service: signature check, copy into the other slot, switch
the bootloader), and ``confirm`` (the after-boot gate and mark-good on a healthy reading).
The time the box does not serve during an update is one reboot: installing runs beside
the serving box, and the gate runs after edgebox is up; the reboot itself cannot be
measured here (no real firmware).

Not part of ``make test``; needs root. ``python tests/bench/bench_update.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parents[2]))

from appliance.update.bundle import make_bundle
from appliance.update.confirm import confirm_boot
from appliance.update.install import install_bundle
from appliance.update.keyring import ensure_keyring
from appliance.update.manifest import Manifest
from tests.appliance.update import sandbox as sb
from tests.appliance.update.test_rauc import healthy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-update-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        keyring = ensure_keyring(root / "keys", "release")
        sb.SLOT_SIZE = f"{args.size_mib + 16}M"
        box = sb.RaucSandbox.create(root / "box", keyring)
        try:
            source = root / "rootfs.d"
            source.mkdir()
            with (source / "payload").open("wb") as out:
                for _ in range(args.size_mib - 64):
                    out.write(os.urandom(1 << 20))
            (source / "etc").mkdir()
            (source / "etc" / "edgebox-release").write_text("bench\n")
            rootfs = root / "rootfs.ext4"
            subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(source), str(rootfs),
                            f"{args.size_mib}M"], check=True)  # fmt: skip
            start = time.perf_counter()
            # A release number above any real one: a box installs only newer releases.
            manifest = Manifest(sb.COMPATIBLE, "9999.0", bundle_format="plain")
            bundle = make_bundle(rootfs, keyring, root / "b.raucb", manifest)
            built = time.perf_counter() - start
            start = time.perf_counter()
            data = root / "data"
            install_bundle(data, box.rauc(), bundle, now=time.time, this_boot=box.boot_id)
            installed = time.perf_counter() - start
            box.boot()

            async def gather(now: float) -> object:
                return healthy(now, root / "data")

            start = time.perf_counter()
            trio.run(lambda: confirm_boot(root / "data", box.rauc(), gather, now=time.time,  # type: ignore[arg-type]
                                          this_boot=box.boot_id, wait=0))  # fmt: skip
            confirmed = time.perf_counter() - start
            print(f"rootfs {args.size_mib} MiB, bundle {bundle.stat().st_size / 2**20:.0f} MiB")
            print(f"bundle  {built:7.1f} s")
            print(f"install {installed:7.1f} s")
            print(f"confirm {confirmed:7.2f} s")
        finally:
            box.close()


if __name__ == "__main__":
    main()
