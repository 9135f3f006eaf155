"""Is there a recent good backup? (appliance.backup.health judges ``backup/state.json``
while the snapshot is gathered: a warning past two days, or with no target; docs/backup.md)."""

from __future__ import annotations

from appliance.health import Check, Finding
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    return list(snapshot.backup)


CHECK = Check("backup", run)
