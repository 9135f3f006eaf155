"""The hardware-watchdog service against the `/dev/watchdog` twin (hw.twins)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.config import ConfigError, load_config
from appliance.watchdog import HardwareWatchdogService, hardware_watchdog
from hw.twins import FakeWatchdogDevice
from hw.watchdog import WDIOC_SETTIMEOUT, KernelWatchdog


def service_on(
    twin: FakeWatchdogDevice, timeout: int, healthy: list[bool]
) -> HardwareWatchdogService:
    return HardwareWatchdogService(
        lambda seconds: KernelWatchdog(twin.path, seconds, ioctl=twin.ioctl),
        timeout,
        healthy=lambda: healthy[0],
    )


async def test_armed_kept_alive_and_disarmed_on_a_clean_stop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    twin = FakeWatchdogDevice(tmp_path / "watchdog", granularity=4)
    healthy = [True]
    async with trio.open_nursery() as nursery:
        await nursery.start(service_on(twin, 10, healthy).serve)
        # The driver rounds 10 s up to 12 s: keep-alives come every 3 s of that.
        await trio.sleep(12 * 3 + 0.5)
        assert twin.ioctls == [(WDIOC_SETTIMEOUT, 10)]
        assert twin.keepalives() == 13
        nursery.cancel_scope.cancel()
    assert twin.closed_cleanly()
    assert twin.keepalives() == 13


async def test_no_keepalive_while_unhealthy(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    twin = FakeWatchdogDevice(tmp_path / "watchdog")
    healthy = [True]
    async with trio.open_nursery() as nursery:
        await nursery.start(service_on(twin, 8, healthy).serve)
        await trio.sleep(1)
        before = twin.keepalives()
        healthy[0] = False
        await trio.sleep(20)
        assert twin.keepalives() == before
        healthy[0] = True
        await trio.sleep(2.5)
        assert twin.keepalives() == before + 1
        nursery.cancel_scope.cancel()


async def test_an_unclean_end_leaves_the_watchdog_armed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    twin = FakeWatchdogDevice(tmp_path / "watchdog")
    calls = [0]

    def healthy() -> bool:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("the box broke")
        return True

    service = HardwareWatchdogService(
        lambda seconds: KernelWatchdog(twin.path, seconds, ioctl=twin.ioctl), 4, healthy
    )
    with pytest.raises(RuntimeError):
        await service.serve()
    assert twin.keepalives() == 2
    assert not twin.closed_cleanly()


async def test_a_missing_device_is_retried_not_fatal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    twin_path = tmp_path / "watchdog"
    twin: list[FakeWatchdogDevice] = []

    def open_it(seconds: int) -> KernelWatchdog:
        if not twin:
            raise FileNotFoundError(2, "No such file or directory")
        return KernelWatchdog(twin_path, seconds, ioctl=twin[0].ioctl)

    async with trio.open_nursery() as nursery:
        await nursery.start(HardwareWatchdogService(open_it, 4).serve)
        await trio.sleep(10)
        twin.append(FakeWatchdogDevice(twin_path))
        await trio.sleep(60)
        assert twin[0].ioctls == [(WDIOC_SETTIMEOUT, 4)]
        assert twin[0].keepalives() > 0
        nursery.cancel_scope.cancel()


def test_off_by_default_and_the_setting_turns_it_on(tmp_path: Path) -> None:
    assert hardware_watchdog(load_config(tmp_path, flags={})) is None
    on = load_config(tmp_path, flags={"hardware_watchdog": "1", "watchdog_timeout": "30"})
    service = hardware_watchdog(on)
    assert service is not None
    assert service.timeout == 30
    with pytest.raises(ConfigError):
        hardware_watchdog(
            load_config(tmp_path, flags={"hardware_watchdog": "1", "watchdog_timeout": "0"})
        )
