"""The health monitor: gather a snapshot, run every check, keep the findings.

One service of the running box. Every ``health_interval`` seconds (trio's clock) it
gathers a `Snapshot` (psutil readings, the supervisor's service states, the outbound
queue, the link and sync files) and runs `checks.CHECKS` on it. The front panel,
`/metrics` and anything else in the process read `findings()` and `latest()`: the last
results, without doing I/O themselves.

`gather_snapshot` is also what `edgebox status` and the admin console use, so every
surface judges the same figures with the same checks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import trio

from appliance.backup.health import check_last_backup, check_offsite_backup
from appliance.config import Config
from appliance.health import Finding, Level, worst
from appliance.health.certificates import check_certificates
from appliance.health.checks import CHECKS, run_checks
from appliance.health.readings import SystemReadings
from appliance.health.snapshot import (
    CLOCK_FILE,
    Limits,
    ServiceState,
    Snapshot,
    groups_by_urgency,
    read_last_seen_time,
    read_machine,
)
from appliance.protection.health import check_engines, check_signatures
from appliance.store.files import write_atomically
from appliance.sync.link import read_link_state
from appliance.sync.status import read_sync_status
from appliance.update.health import check_updates

log = logging.getLogger("edgebox.health")

#: Seconds between writes of ``run/clock.json``: often enough to catch a clock that
#: jumps back by days, rarely enough not to wear flash with an fsync per round.
CLOCK_WRITE_INTERVAL = 600.0

#: `Mailstore.outbound_groups`: ``(urgency, sender, count, oldest created_at)`` rows.
OutboundGroups = Callable[[], Awaitable[list[tuple[int, str, int, int]]]]


async def gather_snapshot(
    config: Config,
    outbound_groups: OutboundGroups,
    readings: SystemReadings,
    *,
    services: Mapping[str, ServiceState],
    box_running: bool = True,
    pid: int | None = None,
) -> Snapshot:
    """Read everything the checks judge; never raises for a failed reading.

    *config* names the data directory and the limits; *outbound_groups* reads the
    outbound queue (`Mailstore.outbound_groups`).
    """
    data_dir = config.data_dir
    machine = read_machine(readings, data_dir, pid if pid is not None else os.getpid())
    errors = dict(machine.pop("errors"))
    try:
        queue = groups_by_urgency(await outbound_groups())
    except Exception as exc:  # the queue check reports it; the other checks still run
        errors["queue"] = str(exc)
        queue = []
    now = readings.wall_time()
    certificates = check_certificates(data_dir / "keys", dt.datetime.fromtimestamp(now, dt.UTC))
    return Snapshot(
        now=now,
        data_dir=data_dir,
        certificates=certificates,
        backup=[
            check_last_backup(data_dir, config.backup_target, now),
            *_offsite(data_dir, config, now),
        ],
        protection=[
            check_engines(
                data_dir,
                config.protection,
                box_running,
                now,
                config.protection_submission_unavailable,
            ),
            check_signatures(
                data_dir, config.protection, now, config.protection_signatures_max_age_days
            ),
        ],
        update=check_updates(data_dir),
        limits=Limits.from_config(config),
        box_running=box_running,
        services=dict(services),
        queue=queue,
        link=read_link_state(data_dir),
        sync=read_sync_status(data_dir),
        last_seen_time=read_last_seen_time(data_dir),
        errors=errors,
        **machine,
    )


class HealthMonitor:
    """The ``health`` service; see the module docstring."""

    name = "health"

    def __init__(
        self,
        config: Config,
        outbound_groups: OutboundGroups,
        readings: SystemReadings,
        *,
        service_states: Callable[[], Mapping[str, ServiceState]] = dict,
        interval: float | None = None,
    ) -> None:
        self.config = config
        self.outbound_groups = outbound_groups
        self.readings = readings
        #: Set by the composition root to the supervisor's `service_states`.
        self.service_states = service_states
        self.interval = interval if interval is not None else config.health_interval
        self._snapshot: Snapshot | None = None
        self._findings: list[Finding] = []
        self._clock_written = float("-inf")
        #: Rounds completed, so tests can wait for one.
        self.rounds = 0
        self._round_done = trio.Event()

    def findings(self) -> list[Finding]:
        """The findings of the last round (empty before the first), in registry order."""
        return list(self._findings)

    def latest(self) -> tuple[Snapshot | None, list[Finding]]:
        """The last snapshot and its findings (for `/metrics`)."""
        return self._snapshot, list(self._findings)

    def level(self) -> Level:
        """The worst level of the last round."""
        return worst(self._findings)

    def first_problem(self) -> Finding | None:
        """The first finding that is not OK, in registry order (the panel shows it)."""
        return next((f for f in self._findings if f.level is not Level.OK), None)

    async def check_now(self) -> list[Finding]:
        """Run one round at once and return its findings."""
        snapshot = await gather_snapshot(
            self.config, self.outbound_groups, self.readings, services=self.service_states()
        )
        self._snapshot = snapshot
        self._findings = run_checks(snapshot, CHECKS)
        await self._remember_time(snapshot)
        self.rounds += 1
        self._round_done.set()
        self._round_done = trio.Event()
        return self.findings()

    async def wait_for_round(self) -> None:
        """Return after the next round completes."""
        await self._round_done.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            before = worst(self._findings)
            try:
                await self.check_now()
            except Exception:
                log.exception("health round failed")
            after = worst(self._findings)
            if after != before:
                problem = self.first_problem()
                log.info("health %s -> %s%s", before.name, after.name,
                         f": {problem.check}: {problem.en}" if problem else "")  # fmt: skip
            await trio.sleep(self.interval)

    async def _remember_time(self, snapshot: Snapshot) -> None:
        # The clock check compares with the latest time seen; keep it across restarts.
        seen = snapshot.last_seen_time
        if seen is not None and snapshot.now <= seen:
            return
        if snapshot.now - self._clock_written < CLOCK_WRITE_INTERVAL:
            return
        self._clock_written = snapshot.now
        path: Path = snapshot.data_dir / CLOCK_FILE
        body = json.dumps({"seen": snapshot.now}).encode()
        try:
            await trio.to_thread.run_sync(write_atomically, path, body)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)


def _offsite(data_dir: Path, config: Config, now: float) -> list[Finding]:
    """The offsite backup's finding: judged on an edge box only (a hub keeps the sets)."""
    if config.role == "hub":
        return []
    return [check_offsite_backup(data_dir, config.hub_url, config.backup_offsite, now)]
