"""The box's certificates: the server's (renewed in time), the CA's name constraints, and
the sync certificate. `appliance.health.certificates` reads and judges the files while the
snapshot is gathered; this check reports what it found (docs/certificates.md)."""

from __future__ import annotations

from appliance.health import Check, Finding
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    return list(snapshot.certificates)


CHECK = Check("certificates", run)
