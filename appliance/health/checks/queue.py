"""How long has the oldest outbound message waited?

A queue that grows during a link cut is the box doing its job (DESIGN.md principle 2),
so age, not length, is judged: a day old warns, and a message within
``queue_error_margin`` of ``outbound_expiry_days`` is about to bounce to its sender.
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot

URGENCY_EN = ("normal", "urgent", "very urgent", "most urgent")
URGENCY_TH = ("ปกติ", "ด่วน", "ด่วนมาก", "ด่วนที่สุด")


def _hours(seconds: float) -> str:
    return f"{seconds / 86400:.1f} d" if seconds >= 86400 else f"{seconds / 3600:.1f} h"


def run(snapshot: Snapshot) -> list[Finding]:
    if "queue" in snapshot.errors:
        why = snapshot.errors["queue"]
        return [Finding("queue", Level.ERROR, f"cannot read the outbound queue: {why}",
                        f"อ่านคิวจดหมายขาออกไม่ได้: {why}",
                        "restart the box; if it recurs, call the vendor",
                        "เริ่มเครื่องใหม่ หากเกิดซ้ำให้ติดต่อผู้ดูแลระบบ")]  # fmt: skip
    if not snapshot.queue:
        return [Finding("queue", Level.OK, "outbound queue empty", "ไม่มีจดหมายรอส่งออก")]
    total = sum(g.recipients for g in snapshot.queue)
    oldest = min(g.oldest for g in snapshot.queue)
    top = max(g.urgency for g in snapshot.queue)
    index = min(max(top, 0), 3)
    age = max(0.0, snapshot.now - oldest)
    text_en = f"{total} waiting (most urgent: {URGENCY_EN[index]}), oldest {_hours(age)}"
    text_th = f"รอส่งออก {total} รายการ (ด่วนสุด: {URGENCY_TH[index]}) นานสุด {_hours(age)}"
    limits = snapshot.limits
    if age >= limits.outbound_expiry - limits.queue_error_margin:
        return [Finding("queue", Level.ERROR, text_en + ": about to bounce",
                        text_th + " ใกล้ถูกตีกลับ",
                        "restore the GIN link or tell the senders to use another way",
                        "แก้ไขการเชื่อมต่อ GIN หรือแจ้งผู้ส่งให้ส่งทางอื่น")]  # fmt: skip
    if age >= limits.queue_warn_age:
        return [Finding("queue", Level.WARN, text_en, text_th,
                        "check the GIN link (edgebox status) and the central relay",
                        "ตรวจการเชื่อมต่อ GIN (edgebox status) และเครื่องส่งต่อกลาง")]  # fmt: skip
    return [Finding("queue", Level.OK, text_en, text_th)]


CHECK = Check("queue", run)
