"""Temperatures from hwmon (x86) or thermal zones (ARM), in degrees Celsius."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TemperatureSensors(Protocol):
    def read(self) -> dict[str, float]: ...


class HwmonSensors:
    """``/sys/class/hwmon/hwmon*/temp*_input`` (millidegrees), named by chip and input."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.base = root / "sys/class/hwmon"

    def read(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for chip in sorted(self.base.glob("hwmon*")):
            name = _read(chip / "name") or chip.name
            for sensor in sorted(chip.glob("temp*_input")):
                value = _read(sensor)
                if value and value.lstrip("-").isdigit():
                    label = sensor.name.removesuffix("_input")
                    readings[f"{name}/{label}"] = int(value) / 1000
        return readings


class ThermalZones:
    """``/sys/class/thermal/thermal_zone*/temp`` (millidegrees), named by zone type."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.base = root / "sys/class/thermal"

    def read(self) -> dict[str, float]:
        readings: dict[str, float] = {}
        for zone in sorted(self.base.glob("thermal_zone*")):
            value = _read(zone / "temp")
            if value and value.lstrip("-").isdigit():
                readings[_read(zone / "type") or zone.name] = int(value) / 1000
        return readings


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
