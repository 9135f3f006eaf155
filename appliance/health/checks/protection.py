"""Are the anti-virus and anti-spam engines answering? (appliance.protection.health
judges ``run/protection.json`` while the snapshot is gathered; docs/protection.md)."""

from __future__ import annotations

from appliance.health import Check, Finding
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    return list(snapshot.protection)


CHECK = Check("protection", run)
