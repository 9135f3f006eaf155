"""Board detection, sensors, LEDs, evdev buttons and the kernel watchdog, on their twins."""

from __future__ import annotations

from pathlib import Path

import pytest

from hw.boards import ARM64, X86_RACK, UnknownBoard, detect_board
from hw.buttons import EV_KEY, EVENT, EvdevDecoder, KeyEvent
from hw.leds import SysfsLed
from hw.sensors import HwmonSensors, ThermalZones
from hw.twins import FakeWatchdogDevice, fake_sysfs
from hw.watchdog import WDIOC_SETTIMEOUT, KernelWatchdog


def test_a_device_tree_means_the_arm_board(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, compatible=("radxa,rock-5b", "rockchip,rk3588"))
    assert detect_board(root) is ARM64


def test_dmi_means_the_rack_box(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, dmi_vendor="Supermicro", dmi_product="SYS-5019C")
    assert detect_board(root) is X86_RACK


def test_nothing_to_read_is_no_board(tmp_path: Path) -> None:
    assert detect_board(tmp_path) is None


def test_the_setting_overrides_detection(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, dmi_vendor="QEMU")
    assert detect_board(root, override="arm64") is ARM64
    with pytest.raises(UnknownBoard):
        detect_board(root, override="riscv")


def test_temperatures_from_hwmon_and_thermal_zones(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, hwmon={"coretemp": 48500}, thermal={"soc-thermal": 61000})
    assert HwmonSensors(root).read() == {"coretemp/temp1": 48.5}
    assert ThermalZones(root).read() == {"soc-thermal": 61.0}


def test_a_sysfs_led_on_off_and_blinking(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, leds=("status",))
    led = SysfsLed("status", root)
    led.set(True)
    assert (root / "sys/class/leds/status/brightness").read_text() == "1"
    led.blink(150, 850)
    assert (root / "sys/class/leds/status/trigger").read_text() == "timer"
    assert (root / "sys/class/leds/status/delay_off").read_text() == "850"
    led.set(False)
    assert (root / "sys/class/leds/status/brightness").read_text() == "0"


def test_evdev_key_events_across_reads() -> None:
    data = (
        EVENT.pack(100, 250000, EV_KEY, 0x198, 1)  # KEY_RESTART pressed
        + EVENT.pack(100, 250000, 0, 0, 0)  # EV_SYN
        + EVENT.pack(101, 0, EV_KEY, 0x198, 2)  # autorepeat: not a new press
        + EVENT.pack(103, 500000, EV_KEY, 0x198, 0)
    )
    decoder = EvdevDecoder()
    first = decoder.feed(data[:30])
    rest = decoder.feed(data[30:])
    assert first + rest == [KeyEvent(0x198, True, 100.25), KeyEvent(0x198, False, 103.5)]


def test_the_kernel_watchdog_api(tmp_path: Path) -> None:
    device = FakeWatchdogDevice(tmp_path / "watchdog", granularity=4)
    dog = KernelWatchdog(device.path, 30, ioctl=device.ioctl)
    assert device.ioctls == [(WDIOC_SETTIMEOUT, 30)]
    assert dog.timeout == 32  # what the driver chose
    for _ in range(3):
        dog.keepalive()
    assert device.keepalives() == 3
    assert not device.closed_cleanly()
    dog.close()
    assert device.closed_cleanly()
