"""Health check: warn when the last good backup is older than two days.

A plug-in like those in `appliance.health`: returns one `Finding`, never raises. With
no backup target configured the finding is a warning too (REQUIREMENTS.md §2 asks for
onsite backup), worded so the admin knows which setting to set.
"""

from __future__ import annotations

from pathlib import Path

from appliance.backup.service import read_state
from appliance.health import Finding, Level

CHECK = "backup"
#: Seconds after which the last good backup is too old.
MAX_AGE = 2 * 24 * 3600.0


def check_last_backup(data_dir: Path, target: str, now: float) -> Finding:
    """Return the state of the box's backups as one finding."""
    if not target:
        return Finding(
            CHECK, Level.WARN,
            "no backup target configured (setting backup_target)",
            "ยังไม่ได้ตั้งที่เก็บสำรองข้อมูล (ค่า backup_target)",
        )  # fmt: skip
    state = read_state(data_dir)
    last = state.get("last_good")
    if not isinstance(last, (int, float)):
        return Finding(
            CHECK, Level.WARN,
            f"no good backup yet to {target}",
            f"ยังไม่มีการสำรองข้อมูลที่สำเร็จไปยัง {target}",
        )  # fmt: skip
    hours = (now - last) / 3600
    if now - last > MAX_AGE:
        error = state.get("last_error") or "no error recorded"
        return Finding(
            CHECK, Level.WARN,
            f"last good backup is {hours / 24:.1f} days old (last error: {error})",
            f"สำรองข้อมูลสำเร็จครั้งล่าสุดเมื่อ {hours / 24:.1f} วันก่อน (ข้อผิดพลาดล่าสุด: {error})",
        )  # fmt: skip
    return Finding(
        CHECK, Level.OK,
        f"last good backup {state.get('last_name')} {hours:.0f} h ago",
        f"สำรองข้อมูลสำเร็จครั้งล่าสุด {state.get('last_name')} เมื่อ {hours:.0f} ชั่วโมงก่อน",
    )  # fmt: skip
