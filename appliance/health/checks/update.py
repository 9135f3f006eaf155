"""Was the last system update committed, or rolled back and why? (appliance.update.health
judges ``update/state.json`` while the snapshot is gathered; docs/updates.md)."""

from __future__ import annotations

from appliance.health import Check, Finding
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    return list(snapshot.update)


CHECK = Check("update", run)
