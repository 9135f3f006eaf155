"""LEDs the kernel drives (``/sys/class/leds/<name>``): on, off, or a kernel trigger."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StatusLed(Protocol):
    def set(self, on: bool) -> None: ...

    def blink(self, on_ms: int, off_ms: int) -> None: ...


class SysfsLed:
    def __init__(self, name: str, root: Path = Path("/")) -> None:
        self.path = root / "sys/class/leds" / name

    def set(self, on: bool) -> None:
        (self.path / "trigger").write_text("none")
        maximum = (self.path / "max_brightness").read_text().strip() or "1"
        (self.path / "brightness").write_text(maximum if on else "0")

    def blink(self, on_ms: int, off_ms: int) -> None:
        # The kernel's timer trigger blinks without waking us (leds-class.rst).
        (self.path / "trigger").write_text("timer")
        (self.path / "delay_on").write_text(str(on_ms))
        (self.path / "delay_off").write_text(str(off_ms))
