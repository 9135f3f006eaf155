"""A RAUC sandbox: the real ``rauc service`` on a private D-Bus, two file-backed ext4 root
slots and a fake bootloader — the one part allowed to be fake (there is no firmware to
reboot here).

The fake bootloader keeps GRUB-style boot counting in a JSON file: an ``order`` of slots
and, per slot, ``ok`` and ``tries``. RAUC drives it through its custom backend interface
(``get-primary``, ``set-primary``, ``get-state``, ``set-state``, ``get-current``; RAUC
manual "Custom bootloader backend"); `RaucSandbox.boot` plays the firmware: it starts the
first slot in order that is ok and has tries left, counting one try, then (re)starts
``rauc service`` as that slot's system would (``--override-boot-slot``: the kernel
command line RAUC would read on a box).

Needs root (RAUC mounts the bundle through a loop device), ``rauc``, ``dbus-daemon``,
``mksquashfs`` and ``mkfs.ext4``; each missing one fails the test through
`tests.harness.missing_prerequisite`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from appliance.update.keyring import Keyring, ensure_keyring
from appliance.update.rauc import RaucCommand
from appliance.update.system_conf import RootSlot, SystemConf
from tests.harness import missing_prerequisite, require_tool

COMPATIBLE = "edgebox-test"
#: Boots a new slot gets before the bootloader gives up on it.
MAX_TRIES = 3
SLOT_SIZE = "24M"

BOOTLOADER = '''#!{python}
"""Fake bootloader backend for RAUC (tests only): GRUB-style order, ok flag, try count."""
import json, sys
STATE = {state!r}
with open(STATE) as f:
    s = json.load(f)
cmd, args = sys.argv[1], sys.argv[2:]
usable = [b for b in s["order"] if s[b]["ok"] and s[b]["tries"] < {max_tries}]
if cmd == "get-primary":
    print(usable[0] if usable else s["order"][0])
elif cmd == "get-current":
    print(s["current"])
elif cmd == "get-state":
    print("good" if s[args[0]]["ok"] else "bad")
elif cmd == "set-primary":
    s["order"] = [args[0]] + [b for b in s["order"] if b != args[0]]
    s[args[0]] = {{"ok": True, "tries": 0}}
elif cmd == "set-state":
    s[args[0]]["ok"] = args[1] == "good"
    if args[1] == "good":
        s[args[0]]["tries"] = 0
else:
    sys.exit(1)
with open(STATE + ".tmp", "w") as f:
    json.dump(s, f)
import os
os.replace(STATE + ".tmp", STATE)
'''


def require_sandbox() -> None:
    """Fail (or skip under the opt-out) unless the sandbox can run here."""
    for tool in ("rauc", "dbus-daemon", "mksquashfs", "mkfs.ext4", "debugfs"):
        require_tool(tool)
    if os.geteuid() != 0:
        missing_prerequisite("RAUC mounts bundles through loop devices: run as root")


def make_rootfs(path: Path, version: str, size: str = "8M") -> Path:
    """An ext4 image whose ``/etc/edgebox-release`` says *version* (plus incompressible
    filler: RAUC refuses a bundle whose squashfs is a single block)."""
    src = path.with_suffix(".d")
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "edgebox-release").write_text(version + "\n")
    (src / "filler").write_bytes(hashlib.sha256(version.encode()).digest() * 8192)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(path), size], check=True)
    return path


def release_of(slot_image: Path) -> str:
    """The version written in a slot image (empty if none)."""
    done = subprocess.run(["debugfs", "-R", "cat /etc/edgebox-release", str(slot_image)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.strip()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RaucSandbox:
    root: Path
    keyring: Keyring
    booted: str = "A"
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    service: subprocess.Popen[str] | None = None
    dbus: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "system.conf"

    @property
    def bootloader_state(self) -> Path:
        return self.root / "bootloader.json"

    def slot(self, bootname: str) -> Path:
        return self.root / f"slot-{bootname}.img"

    @property
    def mount_prefix(self) -> Path:
        return self.root / "mnt"

    @classmethod
    def create(cls, root: Path, keyring: Keyring) -> RaucSandbox:
        require_sandbox()
        sandbox = cls(root, keyring)
        for bootname in ("A", "B"):
            make_rootfs(sandbox.slot(bootname), f"slot-{bootname}-factory", SLOT_SIZE)
        (root / "raucdata").mkdir()
        sandbox.mount_prefix.mkdir()
        sandbox.bootloader_state.write_text(json.dumps({
            "order": ["A", "B"], "current": "A",
            "A": {"ok": True, "tries": 0}, "B": {"ok": True, "tries": 0},
        }))  # fmt: skip
        backend = root / "bootloader-backend"
        backend.write_text(BOOTLOADER.format(python=sys.executable,
                                             state=str(sandbox.bootloader_state),
                                             max_tries=MAX_TRIES))  # fmt: skip
        backend.chmod(0o755)
        conf = SystemConf(
            compatible=COMPATIBLE, keyring=keyring.ca_cert, bootloader_backend=backend,
            data_directory=root / "raucdata",
            slots=(RootSlot(sandbox.slot("A"), "A"), RootSlot(sandbox.slot("B"), "B")),
        )  # fmt: skip
        sandbox.conf.write_text(conf.render())
        sandbox._start_dbus()
        sandbox._start_service()
        return sandbox

    def rauc(self) -> RaucCommand:
        return RaucCommand(self.conf, env=self.env, timeout=120)

    def bootloader(self) -> dict[str, object]:
        return json.loads(self.bootloader_state.read_text())  # type: ignore[no-any-return]

    def fingerprint(self) -> tuple[str, str, str]:
        """What an install must not touch when it is refused: both slots and the bootloader."""
        return digest(self.slot("A")), digest(self.slot("B")), self.bootloader_state.read_text()

    def boot(self) -> str:
        """Play the firmware: pick the slot to start, count a try, start RAUC as its system."""
        self.stop_service()
        state = self.bootloader()
        order: list[str] = state["order"]  # type: ignore[assignment]
        for bootname in order:
            slot: dict[str, object] = state[bootname]  # type: ignore[assignment]
            if slot["ok"] and int(slot["tries"]) < MAX_TRIES:  # type: ignore[call-overload]
                slot["tries"] = int(slot["tries"]) + 1  # type: ignore[call-overload]
                break
        else:
            raise AssertionError(f"no bootable slot left: {state}")
        state["current"] = bootname
        self.bootloader_state.write_text(json.dumps(state))
        self.booted = bootname
        self.boot_id = str(uuid.uuid4())
        self._start_service()
        return bootname

    def kill_service(self) -> None:
        """SIGKILL the service and everything it started (a power cut, as RAUC sees it)."""
        assert self.service is not None
        os.killpg(self.service.pid, signal.SIGKILL)
        self.service.wait(timeout=30)
        self.service = None

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.terminate()
            try:
                self.service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_service()
            self.service = None
        self._unmount()

    def close(self) -> None:
        self.stop_service()
        if self.dbus is not None:
            self.dbus.kill()
            self.dbus.wait(timeout=30)
            self.dbus = None

    def _start_dbus(self) -> None:
        config = self.root / "dbus.conf"
        socket = self.root / "bus"
        config.write_text(
            "<!DOCTYPE busconfig PUBLIC '-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN'"
            " 'http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd'>\n"
            f"<busconfig><type>session</type><listen>unix:path={socket}</listen>"
            "<auth>EXTERNAL</auth><policy context='default'><allow send_destination='*'/>"
            "<allow own='*'/><allow eavesdrop='true'/></policy></busconfig>\n"
        )
        self.dbus = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     text=True)  # fmt: skip
        _wait_for(socket.exists, "dbus-daemon's socket")
        # RAUC picks the session bus over the system bus when started as a session
        # service; the client follows the same variable.
        self.env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={socket}",
                    "DBUS_STARTER_BUS_TYPE": "session"}  # fmt: skip

    def _start_service(self) -> None:
        log = (self.root / "rauc-service.log").open("a")
        self.service = subprocess.Popen(
            ["rauc", "service", f"--conf={self.conf}", f"--mount={self.mount_prefix}",
             f"--override-boot-slot={self.booted}"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **self.env},
            start_new_session=True,
        )  # fmt: skip
        log.close()

        def answers() -> bool:
            try:
                self.rauc().status()
            except Exception:
                return False
            return True

        _wait_for(answers, "rauc service on the sandbox bus")

    def _unmount(self) -> None:
        # A killed service leaves its bundle mounted; the next service needs the prefix.
        prefix = str(self.mount_prefix)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(prefix):
                subprocess.run(["umount", "-l", target], check=False)


def _wait_for(ready: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not come up within {timeout} s")


def keyrings(root: Path) -> dict[str, Keyring]:
    """The project's two channels plus a stranger's self-made "release" keyring."""
    return {
        "development": ensure_keyring(root / "keys", "development"),
        "release": ensure_keyring(root / "keys", "release"),
        "stranger": ensure_keyring(root / "stranger", "release"),
    }
