"""The one registry of health checks: `edgebox status`, the console, the panel and
`/metrics` all run `CHECKS` in this order (the panel shows the first that fails).

A new check is a module in this folder exposing ``CHECK`` and one line below.
"""

from __future__ import annotations

from appliance.health import Check, Finding
from appliance.health.checks import (
    backup,
    certificates,
    clock,
    disk,
    link,
    memory,
    queue,
    services,
    temperature,
    update,
)
from appliance.health.snapshot import Snapshot

CHECKS: tuple[Check, ...] = (
    services.CHECK,
    disk.CHECK,
    memory.CHECK,
    temperature.CHECK,
    clock.CHECK,
    certificates.CHECK,
    backup.CHECK,
    update.CHECK,
    queue.CHECK,
    link.CHECK,
)


def run_checks(snapshot: Snapshot, checks: tuple[Check, ...] = CHECKS) -> list[Finding]:
    """Every finding of every check on *snapshot*, in registry order."""
    return [finding for check in checks for finding in check(snapshot)]
