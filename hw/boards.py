"""Board profiles: which hardware a box has and where Linux shows it.

Two boards ship: ``x86-rack`` (a rack-mount PC: the front panel on USB CDC-ACM, the
kernel watchdog at ``/dev/watchdog``, temperatures from hwmon) and ``arm64`` (an SoC
board: the panel on a UART, LEDs in ``/sys/class/leds``, buttons from gpio-keys over
evdev, the SoC watchdog, temperatures from thermal zones). The profile is detected from
the device tree (ARM) or DMI (x86) and can be named in settings (``board``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BoardProfile:
    name: str
    #: The front panel's serial device, if the board has a panel.
    panel_device: Path | None
    #: The kernel watchdog device.
    watchdog: Path
    #: Where temperatures are read: ``hwmon`` or ``thermal``.
    sensors: str
    #: The status LED under /sys/class/leds, if the board drives one from Linux.
    status_led: str | None = None
    #: The gpio-keys input device, if the board's buttons are on the SoC.
    buttons: Path | None = None


X86_RACK = BoardProfile(
    name="x86-rack",
    panel_device=Path("/dev/ttyACM0"),
    watchdog=Path("/dev/watchdog"),
    sensors="hwmon",
)
ARM64 = BoardProfile(
    name="arm64",
    panel_device=Path("/dev/ttyAMA1"),
    watchdog=Path("/dev/watchdog"),
    sensors="thermal",
    status_led="status",
    buttons=Path("/dev/input/by-path/platform-gpio-keys-event"),
)
BOARDS = {board.name: board for board in (X86_RACK, ARM64)}


class UnknownBoard(ValueError):
    """The ``board`` setting names no profile."""


def detect_board(root: Path = Path("/"), override: str = "") -> BoardProfile | None:
    """Return the board's profile: *override* if set, else from the device tree or DMI.

    None when neither is there (a container, a test machine without DMI).
    """
    if override:
        try:
            return BOARDS[override]
        except KeyError:
            raise UnknownBoard(f"board {override!r}: expected one of {sorted(BOARDS)}") from None
    # A device tree means an ARM (or other embedded) board: DMI is x86 firmware's.
    compatible = root / "proc/device-tree/compatible"
    if compatible.exists():
        return ARM64
    if (root / "sys/class/dmi/id/sys_vendor").exists():
        return X86_RACK
    return None
