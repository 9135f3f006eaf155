"""Memory still available to new allocations (MemAvailable), as a share of the total.

The box runs every service in one process; when memory runs out the kernel's OOM
killer takes the whole box, so the warning comes while there is still room.
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    memory = snapshot.memory
    if memory is None or memory.total <= 0:
        why = snapshot.errors.get("memory", "no reading")
        return [Finding("memory", Level.ERROR, f"cannot read memory: {why}",
                        f"อ่านหน่วยความจำไม่ได้: {why}")]  # fmt: skip
    share = memory.available / memory.total
    mb = memory.available // 1024**2
    limits = snapshot.limits
    text_en = f"{mb} MB available ({share:.0%})"
    text_th = f"หน่วยความจำว่าง {mb} MB ({share:.0%})"
    if share < limits.memory_warn_available:
        level = Level.ERROR if share < limits.memory_error_available else Level.WARN
        return [Finding("memory", level, text_en + ": running low", text_th + " ใกล้หมด",
                        "restart the box out of office hours; if it recurs, call the vendor",
                        "เริ่มเครื่องใหม่นอกเวลาทำการ หากเกิดซ้ำให้ติดต่อผู้ดูแลระบบ")]  # fmt: skip
    return [Finding("memory", Level.OK, text_en, text_th)]


CHECK = Check("memory", run)
