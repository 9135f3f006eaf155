"""What the box says about its updates in `edgebox status`, the console and the panel.

A plug-in like appliance.backup.health: one `Finding` from ``update/state.json``, never
raises. A rollback warns (the box serves, on the old release, but someone should know
why the new one was refused) until the next update is installed; a refused bundle warns
too; an update waiting for its reboot is only information.
"""

from __future__ import annotations

from pathlib import Path

from appliance.health import Finding, Level
from appliance.update.outcome import read_state

CHECK = "update"


def check_updates(data_dir: Path) -> list[Finding]:
    """The state of the box's updates as findings (none before the first update)."""
    state = read_state(data_dir)
    last = state.last()
    if state.pending is not None:
        p = state.pending
        return [Finding(CHECK, Level.OK,
                        f"edgebox {p.version} installed in slot {p.to_slot}; runs after a reboot",
                        f"ติดตั้ง edgebox {p.version} ในช่อง {p.to_slot} แล้ว"
                        " จะใช้งานหลังเริ่มเครื่องใหม่")]  # fmt: skip
    if last is None:
        return []
    if last.event == "rolled_back":
        return [Finding(CHECK, Level.WARN,
                        f"update {last.version} rolled back: {last.reason}",
                        f"ยกเลิกการปรับรุ่น {last.version} และกลับไปใช้รุ่นเดิม: {last.reason}",
                        "send `edgebox update status` and the log to the vendor",
                        "ส่งผลของ `edgebox update status` และบันทึกระบบให้ผู้ดูแลระบบ")]  # fmt: skip
    if last.event == "refused":
        return [Finding(CHECK, Level.WARN, f"update bundle refused: {last.reason}",
                        f"ไม่รับชุดปรับรุ่น: {last.reason}",
                        "use a bundle signed for this box's channel",
                        "ใช้ชุดปรับรุ่นที่ลงนามสำหรับเครื่องนี้")]  # fmt: skip
    return [Finding(CHECK, Level.OK, f"running edgebox {last.version}, committed",
                    f"ใช้งาน edgebox {last.version} ยืนยันแล้ว")]  # fmt: skip
