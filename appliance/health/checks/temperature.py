"""The hottest sensor against its own limits (or defaults where the driver has none).

A VM or a board without sensors has nothing to report; that is fine, not a fault.
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot

TODO_EN = "check the fan and the vents; keep the box out of direct sun"
TODO_TH = "ตรวจพัดลมและช่องระบายอากาศ อย่าวางเครื่องกลางแดด"


def run(snapshot: Snapshot) -> list[Finding]:
    if "temperatures" in snapshot.errors:
        why = snapshot.errors["temperatures"]
        return [Finding("temperature", Level.WARN, f"cannot read sensors: {why}",
                        f"อ่านเซนเซอร์อุณหภูมิไม่ได้: {why}")]  # fmt: skip
    if not snapshot.temperatures:
        return [Finding("temperature", Level.OK, "no sensors", "ไม่มีเซนเซอร์อุณหภูมิ")]
    limits = snapshot.limits
    worst = Level.OK
    hottest_name, hottest = max(snapshot.temperatures.items(), key=lambda kv: kv[1].current)
    for reading in snapshot.temperatures.values():
        critical = reading.critical or limits.temperature_error
        high = reading.high or limits.temperature_warn
        if reading.current >= critical:
            worst = max(worst, Level.ERROR)
        elif reading.current >= high:
            worst = max(worst, Level.WARN)
    text_en = f"hottest {hottest_name} at {hottest.current:.0f} °C"
    text_th = f"จุดที่ร้อนที่สุด {hottest_name} {hottest.current:.0f} °C"
    if worst is Level.OK:
        return [Finding("temperature", Level.OK, text_en, text_th)]
    return [Finding("temperature", worst, text_en + ": too hot", text_th + " ร้อนเกินไป",
                    TODO_EN, TODO_TH)]  # fmt: skip


CHECK = Check("temperature", run)
