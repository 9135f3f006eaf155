"""The disk guard: a cached reading, the reserve, and coming back by itself."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from appliance.health.disk_guard import DiskGuard, is_disk_full
from appliance.health.readings import DiskReading, FakeReadings

MiB = 1024**2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(free: int) -> tuple[DiskGuard, FakeReadings, Clock]:
    readings = FakeReadings(default_disk=DiskReading(total=1000 * MiB, free=free))
    clock = Clock()
    return DiskGuard(Path("/data"), readings, 100 * MiB, max_age=2.0, clock=clock), readings, clock


def test_refuses_what_would_eat_into_the_reserve_and_counts_it() -> None:
    disk_guard, _, _ = guard(free=110 * MiB)
    assert disk_guard.room_for(0)
    assert disk_guard.room_for(10 * MiB)
    assert not disk_guard.refusing
    assert not disk_guard.room_for(10 * MiB + 1)
    assert disk_guard.refusing
    assert disk_guard.refusals == 1


def test_reads_the_file_system_at_most_once_per_max_age() -> None:
    disk_guard, readings, clock = guard(free=500 * MiB)
    for _ in range(10_000):
        disk_guard.room_for(1024)
    assert readings.disk_reads == 1
    clock.now = 1.9
    disk_guard.room_for(1024)
    assert readings.disk_reads == 1
    clock.now = 2.0
    disk_guard.room_for(1024)
    assert readings.disk_reads == 2


def test_resumes_by_itself_once_space_is_freed() -> None:
    disk_guard, readings, clock = guard(free=50 * MiB)
    assert not disk_guard.room_for(0)
    readings.default_disk = DiskReading(total=1000 * MiB, free=400 * MiB)
    assert not disk_guard.room_for(0), "the cached reading holds until it is stale"
    clock.now = 2.5
    assert disk_guard.room_for(0)
    assert not disk_guard.refusing


def test_an_unreadable_volume_is_not_called_full() -> None:
    disk_guard, readings, _ = guard(free=0)
    readings.disk_error = OSError(errno.EIO, "I/O error")
    assert disk_guard.room_for(0)
    assert disk_guard.reading() is None


def test_disk_full_errors_are_recognised() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad"))


def test_a_burst_between_readings_is_counted_against_the_cached_figure() -> None:
    disk_guard, readings, clock = guard(free=130 * MiB)
    granted = sum(disk_guard.room_for(1 * MiB) for _ in range(100))
    assert granted == 30, "30 MiB above the reserve, then no more on the same reading"
    assert readings.disk_reads == 1
    # A fresh reading replaces the count (the writes are in it now).
    readings.default_disk = DiskReading(total=1000 * MiB, free=100 * MiB)
    clock.now = 2.0
    assert not disk_guard.room_for(1)
