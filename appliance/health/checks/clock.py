"""Is the system clock believable?

TLS certificates, the traffic log's 90 days and the outbound queue's expiry all read
the clock; a board without a battery-backed clock boots in 1970 or at its image date.
Two signs of a wrong clock, with no network needed: a time before this software was
built, and a time earlier than one the box has already seen (``run/clock.json``, kept
by the health monitor) by more than a few minutes.
"""

from __future__ import annotations

import time

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot

#: 2026-01-01 UTC: no clock reading before this release can be right.
EARLIEST = 1_767_225_600.0
#: Backwards steps smaller than this are NTP's ordinary corrections.
BACKWARDS_TOLERANCE = 300.0

TODO_EN = "set the time (timedatectl) and check the NTP server and the board's clock battery"
TODO_TH = "ตั้งเวลาให้ถูกต้อง (timedatectl) และตรวจเซิร์ฟเวอร์ NTP กับแบตเตอรี่นาฬิกาของบอร์ด"


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def run(snapshot: Snapshot) -> list[Finding]:
    now = snapshot.now
    if now < EARLIEST:
        return [Finding("clock", Level.ERROR, f"the clock says {_utc(now)}, before this release",
                        f"นาฬิกาของเครื่องแสดง {_utc(now)} ซึ่งเก่ากว่ารุ่นซอฟต์แวร์นี้",
                        TODO_EN, TODO_TH)]  # fmt: skip
    seen = snapshot.last_seen_time
    if seen is not None and now < seen - BACKWARDS_TOLERANCE:
        return [Finding("clock", Level.WARN,
                        f"the clock went back from {_utc(seen)} to {_utc(now)}",
                        f"นาฬิกาย้อนกลับจาก {_utc(seen)} เป็น {_utc(now)}",
                        TODO_EN, TODO_TH)]  # fmt: skip
    return [Finding("clock", Level.OK, _utc(now), _utc(now))]


CHECK = Check("clock", run)
