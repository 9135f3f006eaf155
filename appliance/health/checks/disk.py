"""Free space on the data volume.

Below ``disk_warn_free`` the box warns; below ``disk_hard_free`` the `DiskGuard` is
already refusing new mail, uploads and chat posts with temporary errors, so the check
is an error: accepted data must always fit (DESIGN.md principle 3).
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot

TODO_EN = "delete old mail or attachments, or move the data to a larger disk"
TODO_TH = "ลบจดหมายหรือไฟล์แนบเก่า หรือย้ายข้อมูลไปยังดิสก์ที่ใหญ่กว่า"


def run(snapshot: Snapshot) -> list[Finding]:
    disk = snapshot.disk
    if disk is None:
        why = snapshot.errors.get("disk", "no reading")
        return [Finding("disk", Level.ERROR, f"cannot read disk usage: {why}",
                        f"อ่านพื้นที่ดิสก์ไม่ได้: {why}", "check that the data disk is mounted",
                        "ตรวจสอบว่าดิสก์ข้อมูลต่ออยู่")]  # fmt: skip
    gb = disk.free / 1024**3
    share = 100 * disk.free / disk.total if disk.total else 0.0
    limits = snapshot.limits
    if disk.free < limits.disk_hard_free:
        return [Finding("disk", Level.ERROR,
                        f"only {gb:.1f} GB free ({share:.0f}%): new mail and uploads are refused",
                        f"พื้นที่ว่างเหลือ {gb:.1f} GB ({share:.0f}%) ระบบปฏิเสธจดหมายและไฟล์ใหม่ชั่วคราว",
                        TODO_EN, TODO_TH)]  # fmt: skip
    if disk.free < limits.disk_warn_free:
        return [Finding("disk", Level.WARN, f"{gb:.1f} GB free ({share:.0f}%): running low",
                        f"พื้นที่ว่าง {gb:.1f} GB ({share:.0f}%) ใกล้เต็ม", TODO_EN, TODO_TH)]  # fmt: skip
    return [Finding("disk", Level.OK, f"{gb:.1f} GB free ({share:.0f}%)",
                    f"พื้นที่ว่าง {gb:.1f} GB ({share:.0f}%)")]  # fmt: skip


CHECK = Check("disk", run)
