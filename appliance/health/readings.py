"""What the box reads about its own machine: CPU, memory, disk, temperatures, RSS.

psutil sits behind the `SystemReadings` protocol so checks, the disk guard and the
metrics never touch the system directly; tests hand them `FakeReadings` instead
(DESIGN.md: fake the system at its boundary, never our own code).

Services run as trio tasks in one process today, so the resident memory of "each
service" is the box process's own; `process_rss` takes any pid, so a service moved to
its own process later is one more entry, not a new reading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil


@dataclass(frozen=True)
class MemoryReading:
    total: int
    #: What new allocations can get without swapping (the kernel's MemAvailable).
    available: int


@dataclass(frozen=True)
class DiskReading:
    total: int
    #: Bytes an unprivileged writer may still use (statvfs f_bavail).
    free: int


@dataclass(frozen=True)
class Temperature:
    """One sensor: its current value and the limits its driver reports, in °C."""

    current: float
    high: float | None = None
    critical: float | None = None


class SystemReadings(Protocol):
    """The machine's figures; every method may raise OSError."""

    def cpu_percent(self) -> float:
        """Busy share of all cores since the previous call, 0-100."""
        ...

    def memory(self) -> MemoryReading: ...

    def disk(self, path: Path) -> DiskReading:
        """Space on the file system holding *path*."""
        ...

    def temperatures(self) -> dict[str, Temperature]:
        """Every sensor by ``chip/label``; empty where the machine has none (a VM)."""
        ...

    def process_rss(self, pid: int) -> int | None:
        """Resident bytes of process *pid*; None if it is gone."""
        ...

    def process_exists(self, pid: int) -> bool:
        """Whether a process *pid* exists (whoever owns it)."""
        ...

    def wall_time(self) -> float:
        """The system clock, Unix seconds (the clock sanity check judges it)."""
        ...


class PsutilReadings:
    """The real machine, through psutil."""

    def cpu_percent(self) -> float:
        # interval=None: the share since the previous call, without sleeping.
        return float(psutil.cpu_percent(interval=None))

    def memory(self) -> MemoryReading:
        vm = psutil.virtual_memory()
        return MemoryReading(total=vm.total, available=vm.available)

    def disk(self, path: Path) -> DiskReading:
        usage = psutil.disk_usage(str(path))
        return DiskReading(total=usage.total, free=usage.free)

    def temperatures(self) -> dict[str, Temperature]:
        sensors = getattr(psutil, "sensors_temperatures", None)
        if sensors is None:
            return {}
        found: dict[str, Temperature] = {}
        for chip, entries in sensors().items():
            for index, entry in enumerate(entries):
                label = entry.label or str(index)
                found[f"{chip}/{label}"] = Temperature(
                    entry.current, entry.high or None, entry.critical or None
                )
        return found

    def process_rss(self, pid: int) -> int | None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None

    def process_exists(self, pid: int) -> bool:
        return bool(psutil.pid_exists(pid))

    def wall_time(self) -> float:
        return time.time()


@dataclass
class FakeReadings:
    """A machine made of numbers, for tests; change the fields to change the machine."""

    cpu: float = 1.0
    mem: MemoryReading = MemoryReading(total=8 * 1024**3, available=6 * 1024**3)
    disks: dict[Path, DiskReading] = field(default_factory=dict)
    #: Used for any path not in `disks`.
    default_disk: DiskReading = DiskReading(total=100 * 1024**3, free=50 * 1024**3)
    sensors: dict[str, Temperature] = field(default_factory=dict)
    rss: dict[int, int] = field(default_factory=dict)
    #: Processes that exist besides those in `rss`.
    processes: set[int] = field(default_factory=set)
    now: float = 1_796_000_000.0
    #: Raised by `disk` when set: an unreadable data volume.
    disk_error: OSError | None = None
    #: How many times `disk` was read (the guard's cache is tested by this).
    disk_reads: int = 0

    def cpu_percent(self) -> float:
        return self.cpu

    def memory(self) -> MemoryReading:
        return self.mem

    def disk(self, path: Path) -> DiskReading:
        self.disk_reads += 1
        if self.disk_error is not None:
            raise self.disk_error
        return self.disks.get(path, self.default_disk)

    def temperatures(self) -> dict[str, Temperature]:
        return dict(self.sensors)

    def process_rss(self, pid: int) -> int | None:
        return self.rss.get(pid)

    def process_exists(self, pid: int) -> bool:
        return pid in self.processes or pid in self.rss

    def wall_time(self) -> float:
        return self.now
