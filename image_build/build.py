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

#: What the box runs besides edgebox. Not Postfix: the box is the mail server. The
#: network is systemd-networkd's (the setup wizard writes its files) with resolved for
#: DNS; clamd and rspamd are Debian's own services (docs/protection.md).
PACKAGES = [
    "python3", "python3-venv", "ca-certificates", "systemd", "systemd-sysv", "udev", "dbus",
    "systemd-timesyncd", "systemd-resolved", "rauc", "rauc-service", "e2fsprogs", "squashfs-tools",
    "clamav-daemon", "clamav-freshclam", "rspamd", "iproute2", "avahi-daemon", "dosfstools",
    "grub-common",
]  # fmt: skip
#: The kernel and the EFI GRUB of each architecture, and its GPT root partition type
#: (the Discoverable Partitions Specification), which tells root A/B from the data.
ARCHES = {
    "amd64": (["linux-image-amd64", "grub-efi-amd64-bin"],
              "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "x86_64-efi", "BOOTX64.EFI"),
    "arm64": (["linux-image-arm64", "grub-efi-arm64-bin"],
              "B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "arm64-efi", "BOOTAA64.EFI"),
}  # fmt: skip
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


def lock_file(arch: str) -> Path:
    """The wheel lock of *arch*: requirements.lock (amd64), requirements-ARCH.lock."""
    return HERE / ("requirements.lock" if arch == "amd64" else f"requirements-{arch}.lock")


def wheelhouse(out: Path, epoch: str, arch: str = "amd64") -> Path:
    """Download the locked files (hash-checked), build wheels from the locked sdists and
    edgebox's own from this commit; write the requirements file the image installs from.

    A package PyPI has no wheel for (dkimpy) is locked by its sdist's hash and built
    here with SOURCE_DATE_EPOCH, so the wheel is the same bytes every build; the image
    installs it by the built wheel's hash.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    pip = [sys.executable, "-m", "pip"]
    downloads = out.parent / "downloads"
    if arch == _native_arch():
        subprocess.run([*pip, "download", "--quiet", "--no-deps", "--require-hashes",
                        "-r", str(lock_file(arch)), "-d", str(downloads)],
                       check=True, env=env)  # fmt: skip
    else:
        # pip checks a wheel against this machine's platform unless told another one;
        # with a platform it takes wheels only, so an sdist line goes without.
        for line in lock_file(arch).read_text().splitlines():
            if line.startswith("#"):
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as single:
                single.write(line + "\n")
                single.flush()
                one = [*pip, "download", "--quiet", "--no-deps", "--require-hashes",
                       "-r", single.name, "-d", str(downloads)]  # fmt: skip
                wheel = subprocess.run([*one, *_platform_options(arch)], env=env,
                                       capture_output=True)  # fmt: skip
                if wheel.returncode:
                    subprocess.run(one, check=True, env=env)
    for wheel in downloads.glob("*.whl"):
        shutil.copy2(wheel, out / wheel.name)
    built = [*sorted(downloads.glob("*.tar.gz"))]
    # From the commit, not the working tree: what is built is what is committed.
    source = out.parent / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    for sdist in [*built, source]:
        subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(out), str(sdist)],
                       check=True, env=env)  # fmt: skip
    lines = []
    from_source = {_project(sdist.name) for sdist in built}
    for line in lock_file(arch).read_text().splitlines():
        name = line.split("==")[0].strip()
        if line.startswith("#") or _project(name) not in from_source:
            lines.append(line)
    for name in sorted(from_source | {"edgebox"}):
        (wheel,) = [w for w in out.glob("*.whl") if _project(w.name.split("-")[0]) == name]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name} @ file:///tmp/wheelhouse/{wheel.name} --hash=sha256:{digest}")
    (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    return out


def _project(name: str) -> str:
    """The normalised project name of a distribution file's or requirement's name."""
    base = name.removesuffix(".tar.gz").rsplit("-", 1)[0] if name.endswith(".tar.gz") else name
    return base.lower().replace("_", "-").replace(".", "-")


def rootfs(
    out: Path, *, small: bool, keyring: Path | None, work: Path, arch: str = "amd64"
) -> Path:
    """Build the root filesystem tree of *arch* as a tar at *out*.

    Another architecture than the build machine's runs its maintainer scripts, pip and
    compileall under qemu-user-static through binfmt_misc (``ensure_binfmt``).
    """
    epoch = source_date_epoch()
    wheels = wheelhouse(work / "wheelhouse", epoch, arch)
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
        hooks += _box_hooks(keyring, arch)
    hooks.append("--customize-hook=cd \"$1\" && rm -rf " + " ".join(VOLATILE))
    # An empty machine-id: systemd makes a transient one at every boot of the read-only
    # root (systemd-machine-id-setup), and every image is the same; D-Bus reads the same
    # one through its link. Mount points exist in the image because the read-only root
    # cannot create them at boot.
    hooks.append("--customize-hook=: > \"$1/etc/machine-id\" && mkdir -p \"$1/boot/efi\" "
                 "\"$1/var/lib/edgebox\" \"$1/var/lib/dbus\" && "
                 "ln -sfn /etc/machine-id \"$1/var/lib/dbus/machine-id\"")  # fmt: skip
    # /proc, /sys and /dev are mounted during the hooks (mmdebstrap leaves them empty).
    hooks.append(f"--customize-hook=cd \"$1\" && find . -xdev \\( -path ./proc -o -path ./sys "
                 f"-o -path ./dev \\) -prune -o -newermt @{epoch} -print0 | "
                 f"xargs -0r touch --no-dereference --date=@{epoch}")  # fmt: skip
    packages = SMALL_PACKAGES if small else PACKAGES + ARCHES[arch][0]
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch}
    # The build machine's pip settings (find-links, extra indexes) are not the image's.
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    if arch != _native_arch():
        ensure_binfmt(arch)
    subprocess.run(
        # --skip=cleanup/reproducible: the hooks above remove what it would (VOLATILE)
        # and it would also remove D-Bus's link to the machine id, which the read-only
        # root cannot make at boot.
        ["mmdebstrap", "--variant=minbase", f"--architectures={arch}",
         f"--include={','.join(packages)}", "--mode=root", "--skip=cleanup/reproducible",
         *hooks, SUITE, str(out),
         f"deb {MIRROR} {SUITE} main"],
        check=True, env=env,
    )  # fmt: skip
    return out


def _platform_options(arch: str) -> list[str]:
    """pip's options for *arch*'s wheels for Debian 12's CPython 3.11 (glibc 2.36)."""
    machine = {"arm64": "aarch64", "amd64": "x86_64"}[arch]
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none",
            "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_28_{machine}",
            "--platform", "any"]  # fmt: skip


def _native_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def ensure_binfmt(arch: str) -> None:
    """Let the kernel run *arch*'s programs through qemu-user-static (the F flag: the
    interpreter is opened now, so it works inside the chroot too)."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
    name = {"arm64": "qemu-aarch64"}[arch]
    if not (binfmt / name).exists():
        subprocess.run(["update-binfmts", "--enable", name], check=True)


def _rspamd_includes(out: Path, folder: str | None = None) -> None:
    """One /etc/rspamd/local.d/<module>.conf per module a signature set may change: an
    include of the same name from the data partition (or *folder*), where edgebox
    installs the set's rspamd files (the root is read-only; docs/protection.md "On the
    image")."""
    listed = subprocess.run(
        [sys.executable, "-c", "from appliance.protection.signatures.sync import "
         "RSPAMD_SET_MODULES, SYSTEM_RSPAMD_LOCAL as d; print(d, *RSPAMD_SET_MODULES)"],
        check=True, capture_output=True, text=True, cwd=REPO,
    ).stdout.split()  # fmt: skip
    folder, modules = folder or listed[0], listed[1:]
    out.mkdir(parents=True, exist_ok=True)
    for module in modules:
        # rspamd merges local.d/<module>.conf into the module's section; an include
        # inside it lands in the same place. try=true: no set installed yet is fine.
        (out / f"{module}.conf").write_text(
            f"# edgebox: a signature set's {module}.conf, on the data partition\n"
            f'.include(try=true,priority=1,duplicate=merge) "{folder}/{module}.conf"\n'
        )


def _box_hooks(keyring: Path | None, arch: str) -> list[str]:
    """The box's own files: units and their drop-ins, udev rules, RAUC's config and
    keyring, firmware, the network, clamd's and rspamd's settings, and a read-only root
    with the data partition's folders bound into place (etc/fstab)."""
    conf = subprocess.run([sys.executable, "-m", "appliance", "update", "system-conf",
                           "--compatible", f"edgebox-{arch}"],
                          check=True, capture_output=True, text=True, cwd=REPO).stdout  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix="edgebox-image-"))
    (staging / "system.conf").write_text(conf)
    subprocess.run([sys.executable, str(REPO / "firmware" / "build.py"), str(staging / "firmware")],
                   check=True, cwd=REPO)  # fmt: skip
    units = " ".join(
        f"{HERE}/systemd/{p.name}" for p in sorted((HERE / "systemd").iterdir())
    )
    _rspamd_includes(staging / "rspamd")
    return [
        f"--customize-hook=install -D -m 0644 {staging}/system.conf \"$1/etc/rauc/system.conf\"",
        # fstab, edgebox.env, the default network, journald: image_build/etc as it is.
        f"--customize-hook=cp -r --no-preserve=ownership {HERE}/etc/. \"$1/etc/\"",
        f"--customize-hook=cp -r --no-preserve=ownership {units} \"$1/etc/systemd/system/\"",
        f"--customize-hook=cp {HERE}/udev/*.rules \"$1/etc/udev/rules.d/\"",
        f"--customize-hook=install -D -m 0644 {HERE}/dbus/edgebox-rauc.conf "
        "\"$1/etc/dbus-1/system.d/edgebox-rauc.conf\"",
        f"--customize-hook=install -m 0755 {HERE}/sbin/edgebox-apply-system-files "
        "\"$1/usr/sbin/edgebox-apply-system-files\"",
        f"--customize-hook=install -D -m 0644 -t \"$1/usr/share/edgebox/repart.d\" "
        f"{HERE}/repart.d/*.conf",
        f"--customize-hook=install -D -m 0644 -t \"$1/etc/rspamd/local.d\" {HERE}/rspamd/*.inc",
        f"--customize-hook=install -m 0644 -t \"$1/etc/rspamd/local.d\" {staging}/rspamd/*.conf",
        # clamd and freshclam log to the journal, not to files (Debian's conf writes
        # /var/log/clamav, which is in memory here anyway).
        "--customize-hook=sed -i -e '/^LogSyslog /d' -e 's/^LogFile .*/LogSyslog true/' "
        "-e 's/^UpdateLogFile .*/LogSyslog true/' \"$1/etc/clamav/clamd.conf\" "
        "\"$1/etc/clamav/freshclam.conf\"",
        # The time zone the wizard chose, through /run (edgebox-apply-system-files).
        "--customize-hook=ln -sfn /run/edgebox/localtime \"$1/etc/localtime\" && "
        "ln -sfn /run/edgebox/timezone \"$1/etc/timezone\" && echo edgebox > \"$1/etc/hostname\"",
        # DNS from networkd through resolved's stub (the root cannot take a resolv.conf).
        "--customize-hook=ln -sfn ../run/systemd/resolve/stub-resolv.conf \"$1/etc/resolv.conf\"",
        "--customize-hook=chroot \"$1\" systemctl enable edgebox.service "
        "edgebox-update-confirm.service edgebox-system-files.service edgebox-system-files.path "
        "edgebox-grow-data.service systemd-networkd.service systemd-resolved.service "
        "rspamd.service edgebox-rspamd-reload.path clamav-daemon.service clamav-freshclam.service",
        # Nothing waits for the uplink (edgebox.service says why).
        "--customize-hook=chroot \"$1\" systemctl disable systemd-networkd-wait-online.service",
        f"--customize-hook=mkdir -p \"$1/usr/share/edgebox\" && "
        f"cp -r {staging}/firmware \"$1/usr/share/edgebox/firmware\"",
        f"--customize-hook=install -m 0644 {HERE}/grub.cfg \"$1/usr/share/edgebox/grub.cfg\"",
        # Mount points: the read-only root cannot create them at boot.
        "--customize-hook=mkdir -p \"$1/data\" \"$1/var/lib/rspamd\" \"$1/var/lib/clamav\"",
        *([f"--customize-hook=install -m 0644 {keyring} \"$1/etc/rauc/keyring.pem\""]
          if keyring is not None else []),
    ]  # fmt: skip


def image(out: Path, keyring: Path, work: Path, arch: str = "amd64",
          tree: Path | None = None) -> None:
    """rootfs.ext4 (the bundle's image) and disk.img (GPT: EFI, A, B, data).

    *tree*: a root tree `rootfs` built before (the same commit), instead of building it.
    """
    epoch = source_date_epoch()
    if tree is None:
        tree = rootfs(work / "rootfs.tar", small=False, keyring=keyring, work=work, arch=arch)
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
    _, root_type, grub_format, efi_name = ARCHES[arch]
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "ROOT_TYPE": root_type,
           "GRUB_FORMAT": grub_format, "EFI_NAME": efi_name}  # fmt: skip
    subprocess.run(["bash", str(HERE / "assemble-disk.sh"), str(ext4), str(root),
                    str(out / "disk.img")], check=True, env=env)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    actions = parser.add_subparsers(dest="action", required=True)
    lock = actions.add_parser("lock", help="refresh the wheel lock from pyproject's pins")
    lock.add_argument("--arch", choices=sorted(ARCHES), default="amd64")
    tree = actions.add_parser("rootfs", help="the root filesystem tree, as a tar")
    tree.add_argument("--arch", choices=sorted(ARCHES), default="amd64")
    tree.add_argument("--out", type=Path, required=True)
    tree.add_argument("--small", action="store_true", help="no kernel, bootloader, services")
    tree.add_argument("--keyring", type=Path, help="the channel CA the box will trust")
    disk = actions.add_parser("image", help="rootfs.ext4 and disk.img")
    disk.add_argument("--out", type=Path, required=True)
    disk.add_argument("--keyring", type=Path, required=True)
    disk.add_argument("--arch", choices=sorted(ARCHES), default="amd64")
    disk.add_argument("--rootfs", type=Path, help="a root tree `rootfs` built (same commit)")
    args = parser.parse_args()
    if args.action == "lock":
        return _lock(args.arch)
    with tempfile.TemporaryDirectory(prefix="edgebox-build-") as work:
        if args.action == "rootfs":
            rootfs(args.out, small=args.small, keyring=args.keyring, work=Path(work),
                   arch=args.arch)  # fmt: skip
        else:
            image(args.out, args.keyring, Path(work), args.arch, args.rootfs)
    return 0


def _lock(arch: str) -> int:
    """Resolve pyproject's runtime pins to wheels (an sdist where PyPI has no wheel) and
    write them with their hashes.

    amd64 resolves on this machine; another architecture takes the same names and
    versions and asks for its manylinux wheels (CPython 3.11, Debian 12's), or the sdist
    of a pure-Python package that has no wheel.
    """
    import tomllib

    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pip = [sys.executable, "-m", "pip", "download", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        if arch == "amd64":
            # --prefer-binary: a wheel wherever one exists for CPython 3.11 here.
            subprocess.run([*pip, "--prefer-binary", "-d", tmp, *pins], check=True)
        else:
            for line in lock_file("amd64").read_text().splitlines():
                if line.startswith("#"):
                    continue
                pin = line.split()[0]
                wheel = subprocess.run([*pip, "--no-deps", *_platform_options(arch), "-d", tmp,
                                        pin])  # fmt: skip
                if wheel.returncode != 0:
                    subprocess.run([*pip, "--no-deps", "--no-binary=:all:", "-d", tmp, pin],
                                   check=True)  # fmt: skip
        lines = ["# Every Python package of the image, pinned with its wheel's hash "
                 f"({arch}, CPython 3.11);",
                 "# an sdist's hash where PyPI has no wheel (build.py builds it reproducibly).",
                 f"# Made by `python image_build/build.py lock --arch {arch}`; pip installs "
                 "with --require-hashes."]  # fmt: skip
        for file in sorted(Path(tmp).iterdir()):
            if file.name.endswith(".whl"):
                name, version = file.name.split("-")[:2]
            else:
                name, version = file.name.removesuffix(".tar.gz").rsplit("-", 1)
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            lines.append(f"{_project(name)}=={version} --hash=sha256:{digest}")
    lock_file(arch).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
