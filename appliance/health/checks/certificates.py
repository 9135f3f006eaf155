"""The box's certificates: the server's (renewed in time), the CA's name constraints, and
the sync certificate (appliance.health.certificates holds the rules; docs/certificates.md)."""

from __future__ import annotations

import datetime as dt

from appliance.health import Check, Finding
from appliance.health.certificates import check_certificates
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    now = dt.datetime.fromtimestamp(snapshot.now, dt.UTC)
    return check_certificates(snapshot.data_dir / "keys", now)


CHECK = Check("certificates", run)
