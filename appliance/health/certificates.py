"""Are the box's certificates in date, renewed in time, and its CA constrained?

The running box renews its server certificate at two thirds of its life
(`appliance.security.tls_renewal`) and its sync certificate a third of a year before it
ends (`appliance.sync.renewal`). A certificate still not renewed well after that point
means renewal keeps failing: warn while there is time, error once clients are about to
refuse the box. A CA without name constraints (made before issue 16) is a warning:
it still works, but whoever holds its key could vouch for any web site.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

from cryptography import x509

from appliance.health import Finding, Level
from appliance.security.tls import TLSPaths, ca_name_constraints, server_renewal_due

#: Fewer days than this before a certificate ends is an error, not a warning.
ERROR_DAYS: Final = 14
#: The sync certificate is renewed 121 days before its end; warn after a month of failing.
SYNC_WARN: Final = dt.timedelta(days=90)
#: Past renewal by this much (the box looks twice a day): renewal is failing.
GRACE: Final = dt.timedelta(days=2)
SYNC_CERT_FILE: Final = "sync.pem"


def check_certificates(keys_dir: Path, now: dt.datetime | None = None) -> list[Finding]:
    """Return one finding each for the server certificate, the CA and the sync certificate."""
    now = now or dt.datetime.now(dt.UTC)
    paths = TLSPaths.in_dir(keys_dir)
    findings = [_server(paths, now), _ca(paths)]
    sync = Path(keys_dir) / SYNC_CERT_FILE
    if sync.exists():
        findings.append(_sync(sync, now))
    return findings


def _server(paths: TLSPaths, now: dt.datetime) -> Finding:
    try:
        leaf = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        return Finding("certificate", Level.ERROR, f"cannot read the server certificate: {exc}",
                       f"อ่านใบรับรองของเครื่องไม่ได้: {exc}")  # fmt: skip
    end = leaf.not_valid_after_utc
    day = end.date().isoformat()
    if end - now < dt.timedelta(days=ERROR_DAYS):
        return Finding("certificate", Level.ERROR,
                       f"the server certificate ends {day} and was not renewed",
                       f"ใบรับรองของเครื่องจะหมดอายุ {day} และยังต่ออายุไม่ได้")  # fmt: skip
    if server_renewal_due(leaf, now - GRACE):
        return Finding("certificate", Level.WARN,
                       f"the server certificate ends {day}; renewal is overdue (see the log)",
                       f"ใบรับรองของเครื่องหมดอายุ {day} เลยกำหนดต่ออายุแล้ว (ดูบันทึก)")  # fmt: skip
    return Finding("certificate", Level.OK, f"server certificate valid until {day}",
                   f"ใบรับรองของเครื่องใช้ได้ถึง {day}")  # fmt: skip


def _ca(paths: TLSPaths) -> Finding:
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except (OSError, ValueError) as exc:
        return Finding("ca", Level.ERROR, f"cannot read the CA certificate: {exc}",
                       f"อ่านใบรับรอง CA ไม่ได้: {exc}")  # fmt: skip
    if ca_name_constraints(ca) is None:
        return Finding("ca", Level.WARN,
                       "the box CA has no name constraints (made by an older version);"
                       " replace it when devices can be updated (docs/certificates.md)",
                       "CA ของเครื่องไม่มีการจำกัดชื่อ (สร้างโดยรุ่นเก่า)"
                       " ควรเปลี่ยนเมื่อพร้อมติดตั้งใหม่ในอุปกรณ์ (docs/certificates.md)")  # fmt: skip
    return Finding("ca", Level.OK, "box CA limited to the agency's names",
                   "CA ของเครื่องจำกัดเฉพาะชื่อของหน่วยงาน")  # fmt: skip


def _sync(path: Path, now: dt.datetime) -> Finding:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Finding("sync-certificate", Level.ERROR, f"cannot read the sync certificate: {exc}",
                       f"อ่านใบรับรองสำหรับซิงก์ไม่ได้: {exc}")  # fmt: skip
    end = cert.not_valid_after_utc
    day = end.date().isoformat()
    if end - now < dt.timedelta(days=ERROR_DAYS):
        level = Level.ERROR
    elif end - now < SYNC_WARN:
        level = Level.WARN
    else:
        return Finding("sync-certificate", Level.OK, f"sync certificate valid until {day}",
                       f"ใบรับรองสำหรับซิงก์ใช้ได้ถึง {day}")  # fmt: skip
    return Finding("sync-certificate", level,
                   f"the sync certificate ends {day} and the hub has not renewed it",
                   f"ใบรับรองสำหรับซิงก์จะหมดอายุ {day} และยังต่ออายุกับฮับไม่ได้")  # fmt: skip
