"""Build the box's root filesystem and disk image from Debian 12 packages (docs/updates.md).

    python image_build/build.py lock                       refresh requirements.lock
    python image_build/build.py rootfs --out DIR [--small]  the root filesystem tree (tar)
    python image_build/build.py image --out DIR --keyring PEM   rootfs.ext4, the update
                                                            bundle's image, and disk.img

Everything comes from Debian's archive (mmdebstrap) and from the wheelhouse of
``requirements.lock`` (every wheel pinned by hash, installed with ``--require-hashes``
into a venv under /usr/lib/edgebox), plus edgebox's own wheel built from this commit.

Reproducible: SOURCE_DATE_EPOCH is the commit's time; mmdebstrap honours it, every file
is clamped to it, byte code is hash-based, and the caches and logs that record the build
(apt lists and caches, dpkg and apt logs, ldconfig's aux-cache) are removed.
tests/image_build/test_reproducible.py builds the tree twice and lists any difference.

``--small`` leaves out the kernel, bootloader and services (the packages a test does not
need to prove reproducibility), so the tree builds in minutes.

Disk layout (GPT; `image`): 1 EFI system (FAT, GRUB + grubenv), 2 rootfs A, 3 rootfs B
(ext4, read-only, the same image), 4 data (ext4, /var/lib/edgebox, grown on first boot).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SUITE = "bookworm"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
VENV = "/usr/lib/edgebox"

#: What the box runs besides edgebox. Not Postfix: the box is the mail server.
PACKAGES = [
    "python3", "python3-venv", "ca-certificates", "systemd", "systemd-sysv", "udev",
    "systemd-timesyncd", "rauc", "e2fsprogs", "squashfs-tools", "clamav-daemon",
    "clamav-freshclam", "iproute2", "ifupdown", "isc-dhcp-client", "avahi-daemon",
    "linux-image-amd64", "grub-efi-amd64-bin", "grub-common", "dosfstools",
]  # fmt: skip
SMALL_PACKAGES = ["python3", "python3-venv", "ca-certificates"]

#: Left by the build, never needed on the box, and different at every build.
VOLATILE = [
    "var/lib/apt/lists", "var/cache/apt", "var/cache/ldconfig/aux-cache", "var/log/apt",
    "var/log/dpkg.log", "var/log/alternatives.log", "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old", "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old", "var/lib/dbus/machine-id",
    "tmp/wheelhouse", "etc/ssh/ssh_host_*",
]  # fmt: skip


def source_date_epoch() -> str:
    """The commit's time, or $SOURCE_DATE_EPOCH if set."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return os.environ["SOURCE_DATE_EPOCH"]
    return subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip


def wheelhouse(out: Path, epoch: str) -> Path:
    """Download the locked wheels (hash-checked) and build edgebox's own; write the
    requirements file the image installs from."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--quiet", "--only-binary=:all:", "--no-deps",
                    "--require-hashes", "-r", str(HERE / "requirements.lock"), "-d", str(out)],
                   check=True, env=env)  # fmt: skip
    # From the commit, not the working tree: what is built is what is committed.
    source = out.parent / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(out), str(source)],
                   check=True, env=env)  # fmt: skip
    (own,) = out.glob("edgebox-*.whl")
    digest = hashlib.sha256(own.read_bytes()).hexdigest()
    lock = (HERE / "requirements.lock").read_text()
    (out / "requirements.txt").write_text(
        lock + f"edgebox @ file:///tmp/wheelhouse/{own.name} --hash=sha256:{digest}\n"
    )
    return out


def rootfs(out: Path, *, small: bool, keyring: Path | None, work: Path) -> Path:
    """Build the root filesystem tree as a tar at *out*."""
    epoch = source_date_epoch()
    wheels = wheelhouse(work / "wheelhouse", epoch)
    hooks = [
        f"--customize-hook=mkdir -p \"$1/tmp/wheelhouse\" && cp -r {wheels}/. \"$1/tmp/wheelhouse/\"",
        f"--customize-hook=chroot \"$1\" python3 -m venv --without-pip {VENV}",
        # pip from Debian's python3-pip-whl (python3-venv's dependency), run from the
        # wheel: nothing of it is left in the venv.
        "--customize-hook=chroot \"$1\" sh -c 'PIP=$(echo /usr/share/python-wheels/pip-*.whl); "
        f"PYTHONDONTWRITEBYTECODE=1 {VENV}/bin/python $PIP/pip install --quiet --no-index "
        "--no-compile --find-links /tmp/wheelhouse --require-hashes "
        "-r /tmp/wheelhouse/requirements.txt'",
        # Hash-based byte code: valid without matching mtimes, same bytes every build.
        f"--customize-hook=chroot \"$1\" {VENV}/bin/python -m compileall -q "
        f"--invalidation-mode unchecked-hash {VENV}/lib",
        f"--customize-hook=ln -sf {VENV}/bin/edgebox \"$1/usr/bin/edgebox\"",
        "--customize-hook=chroot \"$1\" useradd --system --home-dir /var/lib/edgebox "
        "--no-create-home --shell /usr/sbin/nologin edgebox",
    ]
    if not small:
        hooks += _box_hooks(keyring)
    hooks.append("--customize-hook=cd \"$1\" && rm -rf " + " ".join(VOLATILE))
    # An empty machine-id: systemd makes a transient one at every boot of the read-only
    # root (systemd-machine-id-setup), and every image is the same. Mount points exist
    # in the image because the read-only root cannot create them at boot.
    hooks.append("--customize-hook=: > \"$1/etc/machine-id\" && mkdir -p \"$1/boot/efi\" "
                 "\"$1/var/lib/edgebox\"")  # fmt: skip
    # /proc, /sys and /dev are mounted during the hooks (mmdebstrap leaves them empty).
    hooks.append(f"--customize-hook=cd \"$1\" && find . -xdev \\( -path ./proc -o -path ./sys "
                 f"-o -path ./dev \\) -prune -o -newermt @{epoch} -print0 | "
                 f"xargs -0r touch --no-dereference --date=@{epoch}")  # fmt: skip
    packages = SMALL_PACKAGES if small else PACKAGES
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
         "--mode=root", *hooks, SUITE, str(out), f"deb {MIRROR} {SUITE} main"],
        check=True, env=env,
    )  # fmt: skip
    return out


def _box_hooks(keyring: Path | None) -> list[str]:
    """The box's own files: units, udev rules, RAUC's config and keyring, firmware, a
    read-only root with the data partition on /var/lib/edgebox."""
    conf = subprocess.run([sys.executable, "-m", "appliance", "update", "system-conf"],
                          check=True, capture_output=True, text=True, cwd=REPO).stdout  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix="edgebox-image-"))
    (staging / "system.conf").write_text(conf)
    (staging / "fstab").write_text(
        "PARTLABEL=edgebox-data /var/lib/edgebox ext4 defaults,noatime,nodev,nosuid 0 2\n"
        "PARTLABEL=edgebox-efi /boot/efi vfat umask=0077 0 1\n"
        "tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n"
        "tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0\n"
        # systemd's own state (timesyncd's clock file, random seed) on a read-only root.
        "tmpfs /var/lib/systemd tmpfs mode=0755,nosuid,nodev 0 0\n"
        "tmpfs /var/lib/private tmpfs mode=0700,nosuid,nodev 0 0\n"
    )
    subprocess.run([sys.executable, str(REPO / "firmware" / "build.py"), str(staging / "firmware")],
                   check=True, cwd=REPO)  # fmt: skip
    # The box serves the office LAN, not only loopback (the ports are still the
    # development ones: appliance.config has no box port set yet).
    (staging / "edgebox.env").write_text("EDGEBOX_BIND=0.0.0.0\n")
    hooks = [
        f"--customize-hook=install -D -m 0644 {staging}/system.conf \"$1/etc/rauc/system.conf\"",
        f"--customize-hook=install -D -m 0644 {staging}/edgebox.env \"$1/etc/edgebox/edgebox.env\"",
        f"--customize-hook=install -m 0644 {staging}/fstab \"$1/etc/fstab\"",
        f"--customize-hook=cp {HERE}/systemd/*.service \"$1/etc/systemd/system/\"",
        f"--customize-hook=cp {HERE}/udev/*.rules \"$1/etc/udev/rules.d/\"",
        f"--customize-hook=install -D -m 0644 {HERE}/dbus/edgebox-rauc.conf "
        "\"$1/etc/dbus-1/system.d/edgebox-rauc.conf\"",
        "--customize-hook=chroot \"$1\" systemctl enable edgebox.service "
        "edgebox-update-confirm.service",
        f"--customize-hook=mkdir -p \"$1/usr/share/edgebox\" && "
        f"cp -r {staging}/firmware \"$1/usr/share/edgebox/firmware\"",
        # Read-only root: the journal in memory, state only on the data partition.
        "--customize-hook=mkdir -p \"$1/etc/systemd/journald.conf.d\" && printf "
        "'[Journal]\\nStorage=volatile\\n' > \"$1/etc/systemd/journald.conf.d/edgebox.conf\"",
        f"--customize-hook=install -m 0644 {HERE}/grub.cfg \"$1/usr/share/edgebox/grub.cfg\"",
    ]
    if keyring is not None:
        hooks.append(f"--customize-hook=install -m 0644 {keyring} \"$1/etc/rauc/keyring.pem\"")
    return hooks


def image(out: Path, keyring: Path, work: Path) -> None:
    """rootfs.ext4 (the bundle's image) and disk.img (GPT: EFI, A, B, data)."""
    epoch = source_date_epoch()
    tree = rootfs(work / "rootfs.tar", small=False, keyring=keyring, work=work)
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xpf", str(tree)], check=True)
    out.mkdir(parents=True, exist_ok=True)
    ext4 = out / "rootfs.ext4"
    # Fixed UUID and hash seed, and e2fsprogs' clock at the epoch: the same bytes again.
    uuid = "5e1f0b0c-0000-4000-8000-" + hashlib.sha256(epoch.encode()).hexdigest()[:12]
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "edgebox-root", "-U", uuid,
         "-E", f"hash_seed={uuid},root_owner=0:0", "-d", str(root), str(ext4), "2G"],
        check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": epoch},
    )  # fmt: skip
    subprocess.run(["bash", str(HERE / "assemble-disk.sh"), str(ext4), str(root),
                    str(out / "disk.img")], check=True, env={**os.environ, "SOURCE_DATE_EPOCH": epoch})  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("lock", help="refresh requirements.lock from pyproject's pins")
    tree = actions.add_parser("rootfs", help="the root filesystem tree, as a tar")
    tree.add_argument("--out", type=Path, required=True)
    tree.add_argument("--small", action="store_true", help="no kernel, bootloader, services")
    tree.add_argument("--keyring", type=Path, help="the channel CA the box will trust")
    disk = actions.add_parser("image", help="rootfs.ext4 and disk.img")
    disk.add_argument("--out", type=Path, required=True)
    disk.add_argument("--keyring", type=Path, required=True)
    args = parser.parse_args()
    if args.action == "lock":
        return _lock()
    with tempfile.TemporaryDirectory(prefix="edgebox-build-") as work:
        if args.action == "rootfs":
            rootfs(args.out, small=args.small, keyring=args.keyring, work=Path(work))
        else:
            image(args.out, args.keyring, Path(work))
    return 0


def _lock() -> int:
    """Resolve pyproject's runtime pins to wheels and write them with their hashes."""
    import tomllib

    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
                        "-d", tmp, *pins], check=True)  # fmt: skip
        lines = ["# Every Python package of the image, pinned with its wheel's hash "
                 "(amd64, CPython 3.11).",
                 "# Made by `python image_build/build.py lock`; pip installs with --require-hashes."]  # fmt: skip
        for wheel in sorted(Path(tmp).glob("*.whl")):
            name, version = wheel.name.split("-")[:2]
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name.replace('_', '-')}=={version} --hash=sha256:{digest}")
    (HERE / "requirements.lock").write_text("\n".join(lines) + "\n")
    shutil.rmtree(Path(tmp), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
