"""Keep the traffic log to its legal retention: prune old day files once a day.

A supervised service with no listener: it prunes at start-up and then every few hours,
so a box that runs for months never keeps traffic data longer than it must, and never
less than the 90 days the law asks (the log refuses shorter retention itself).
"""

from __future__ import annotations

import logging

import trio

from appliance.compliance.traffic_log import TrafficLog

log = logging.getLogger("edgebox.compliance")

#: How often to look for day files past retention.
PRUNE_INTERVAL = 6 * 3600.0


class TrafficLogRetention:
    name = "traffic-log-retention"

    def __init__(self, traffic: TrafficLog, interval: float = PRUNE_INTERVAL) -> None:
        self.traffic = traffic
        self.interval = interval

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            removed = await trio.to_thread.run_sync(self.traffic.prune)
            if removed:
                log.info("traffic log: pruned %d day files past retention", len(removed))
            await trio.sleep(self.interval)
