"""One `Snapshot`: every figure the checks judge, gathered at one moment.

Checks are pure functions of a snapshot, so each is tested with numbers alone and the
gathering (files, the mail database, psutil, TCP probes) happens once per round, here.
Two gatherers fill the same snapshot:

- inside the running box, `HealthMonitor` passes the supervisor's own view of its
  services (`services_from_supervisor`);
- `edgebox status`, a separate process, reads ``run/status.json`` and checks that each
  listener answers (`services_from_status_file`).

A reading that fails leaves its field None and its error in ``errors``; the checks turn
that into an error finding rather than a crash.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from appliance.health import Finding
from appliance.health.readings import DiskReading, MemoryReading, SystemReadings, Temperature


@dataclass(frozen=True)
class ServiceState:
    """One supervised service as last seen."""

    #: Serving now (between a start and a crash or stop).
    running: bool
    #: Times the supervisor restarted it since the box started.
    restarts: int = 0
    addresses: tuple[str, ...] = ()
    #: Addresses that did not accept a TCP connection (`edgebox status` only).
    not_answering: tuple[str, ...] = ()
    #: The last crash, for the operator ("" if none).
    last_error: str = ""


@dataclass(frozen=True)
class QueueGroup:
    """Outbound mail of one urgency level (appliance.compliance.classification.Urgency)."""

    urgency: int
    recipients: int
    #: Unix seconds the oldest of them was queued.
    oldest: float


@dataclass(frozen=True)
class Limits:
    """The thresholds the checks use; `from_config` takes them from the settings."""

    disk_warn_free: int = 2 * 1024**3
    disk_hard_free: int = 512 * 1024**2
    #: Share of memory still available below which the box warns / is unhealthy.
    memory_warn_available: float = 0.10
    memory_error_available: float = 0.05
    #: Used where a sensor's driver reports no limits of its own.
    temperature_warn: float = 80.0
    temperature_error: float = 95.0
    #: An outbound message this old warns; older than `outbound_expiry - queue_error_margin`
    #: it is about to bounce.
    queue_warn_age: float = 24 * 3600.0
    outbound_expiry: float = 14 * 86400.0
    queue_error_margin: float = 2 * 86400.0

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(
            disk_warn_free=config.disk_warn_free,
            disk_hard_free=config.disk_hard_free,
            outbound_expiry=config.outbound_expiry_days * 86400.0,
        )


@dataclass(frozen=True)
class Snapshot:
    """Everything the checks judge; see the module docstring."""

    now: float
    data_dir: Path
    limits: Limits = Limits()
    cpu_percent: float | None = None
    memory: MemoryReading | None = None
    disk: DiskReading | None = None
    temperatures: Mapping[str, Temperature] = field(default_factory=dict)
    #: Resident bytes per process name ("edgebox" is the box itself).
    rss: Mapping[str, int] = field(default_factory=dict)
    #: False when no box process runs (only `edgebox status` can see that).
    box_running: bool = True
    services: Mapping[str, ServiceState] = field(default_factory=dict)
    queue: Sequence[QueueGroup] = ()
    #: ``run/link.json`` as the link monitor wrote it (appliance.sync.link), if any.
    link: Any = None
    #: ``run/sync.json``: each sync stream's last success and failure.
    sync: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The latest wall-clock time the box has seen before (``run/clock.json``), if any.
    last_seen_time: float | None = None
    #: Reading name -> why it failed ("disk": "Permission denied", ...).
    errors: Mapping[str, str] = field(default_factory=dict)
    #: The certificates' state as read from ``keys/`` (appliance.health.certificates
    #: reads and judges the files together; gathered here so that checks stay pure).
    certificates: Sequence[Finding] = ()
    #: The last good backup's age, judged from ``backup/state.json`` (appliance.backup).
    backup: Sequence[Finding] = ()
    #: The last system update's outcome, from ``update/state.json`` (appliance.update).
    update: Sequence[Finding] = ()


def read_machine(readings: SystemReadings, data_dir: Path, pid: int) -> dict[str, Any]:
    """Return the psutil part of a snapshot as keyword arguments; never raises OSError."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, read in (
        ("cpu_percent", readings.cpu_percent),
        ("memory", readings.memory),
        ("disk", lambda: readings.disk(data_dir)),
        ("temperatures", readings.temperatures),
    ):
        try:
            values[name] = read()
        except Exception as exc:  # a reading that fails is a finding, not a crash
            errors[name] = str(exc) or type(exc).__name__
    try:
        rss = readings.process_rss(pid)
    except Exception:  # the box's RSS is informative only
        rss = None
    values["rss"] = {"edgebox": rss} if rss is not None else {}
    values["errors"] = errors
    return values


def groups_by_urgency(rows: Sequence[tuple[int, str, int, int]]) -> list[QueueGroup]:
    """Fold `Mailstore.outbound_groups` rows (per urgency and sender) to one per urgency."""
    folded: dict[int, tuple[int, float]] = {}
    for urgency, _sender, count, oldest in rows:
        total, first = folded.get(urgency, (0, float(oldest)))
        folded[urgency] = (total + count, min(first, float(oldest)))
    return [QueueGroup(u, n, t) for u, (n, t) in sorted(folded.items())]


CLOCK_FILE = Path("run") / "clock.json"


def read_last_seen_time(data_dir: Path) -> float | None:
    try:
        value = json.loads((data_dir / CLOCK_FILE).read_text())["seen"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def read_status_file(status_file: Path) -> dict[str, Any] | None:
    """The running supervisor's ``run/status.json``, or None if absent or unreadable."""
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _answers(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def services_from_status_file(status_file: Path) -> tuple[bool, dict[str, ServiceState]]:
    """Return (box running, services) as another process sees them; blocks on TCP probes.

    The file is trusted only as far as it can be verified: the pid must be alive and
    every address must accept a TCP connection.
    """
    status = read_status_file(status_file)
    pid = status.get("pid") if status else None
    if status is None or not isinstance(pid, int) or not psutil.pid_exists(pid):
        return False, {}
    listeners = status.get("services")
    states = status.get("states")
    states = states if isinstance(states, dict) else {}
    found: dict[str, ServiceState] = {}
    for name, addresses in listeners.items() if isinstance(listeners, dict) else []:
        found_state = states.get(name)
        state: dict[str, Any] = found_state if isinstance(found_state, dict) else {}
        addresses = tuple(str(a) for a in addresses)
        found[name] = ServiceState(
            running=bool(state.get("running", True)),
            restarts=int(state.get("restarts", 0)),
            addresses=addresses,
            not_answering=tuple(a for a in addresses if not _answers(a)),
            last_error=str(state.get("last_error", "")),
        )
    return True, found
