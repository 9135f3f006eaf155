"""Health checks: warn when the last good backup, onsite or offsite, is older than two days.

Plug-ins like those in `appliance.health`: each returns one `Finding`, never raises.
With no backup target configured the onsite finding is a warning too (REQUIREMENTS.md
§2 asks for onsite and offsite backup), worded so the admin knows which setting to set.
The offsite finding (`check_offsite_backup`) judges the daily backup to the hub, once
the box is enrolled; each is judged on its own, so a USB disk that works does not hide
a hub that has had nothing for a week.
"""

from __future__ import annotations

from pathlib import Path

from appliance.backup.service import read_state
from appliance.health import Finding, Level

CHECK = "backup"
OFFSITE_CHECK = "backup-offsite"
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


def check_offsite_backup(data_dir: Path, hub_url: str, enabled: bool, now: float) -> Finding:
    """Return the state of the box's offsite backups to the hub as one finding."""
    if not hub_url:
        return Finding(
            OFFSITE_CHECK, Level.WARN,
            "no offsite backup: the box is not enrolled with a hub",
            "ยังไม่มีการสำรองข้อมูลนอกสถานที่: กล่องยังไม่ได้ลงทะเบียนกับ hub",
        )  # fmt: skip
    if not enabled:
        return Finding(
            OFFSITE_CHECK, Level.WARN,
            "offsite backup to the hub is turned off (setting backup_offsite)",
            "ปิดการสำรองข้อมูลไปยัง hub อยู่ (ค่า backup_offsite)",
        )  # fmt: skip
    state = read_state(data_dir)
    last = state.get("offsite_last_good")
    error = state.get("offsite_last_error") or "no error recorded"
    if not isinstance(last, (int, float)):
        return Finding(
            OFFSITE_CHECK, Level.WARN,
            f"no good offsite backup to the hub yet (last error: {error})",
            f"ยังไม่มีการสำรองข้อมูลไปยัง hub ที่สำเร็จ (ข้อผิดพลาดล่าสุด: {error})",
        )  # fmt: skip
    hours = (now - last) / 3600
    if now - last > MAX_AGE:
        return Finding(
            OFFSITE_CHECK, Level.WARN,
            f"last good offsite backup is {hours / 24:.1f} days old (last error: {error})",
            f"สำรองข้อมูลไปยัง hub สำเร็จครั้งล่าสุดเมื่อ {hours / 24:.1f} วันก่อน "
            f"(ข้อผิดพลาดล่าสุด: {error})",
        )  # fmt: skip
    return Finding(
        OFFSITE_CHECK, Level.OK,
        f"last good offsite backup {state.get('offsite_last_name')} {hours:.0f} h ago",
        f"สำรองข้อมูลไปยัง hub สำเร็จครั้งล่าสุด {state.get('offsite_last_name')} "
        f"เมื่อ {hours:.0f} ชั่วโมงก่อน",
    )  # fmt: skip
