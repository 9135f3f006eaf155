"""Judge ``run/protection.json``: do both engines answer? (gathered into the snapshot so
that the check, appliance.health.checks.protection, stays pure)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from appliance.health import Finding, Level
from appliance.protection.engines import PROBE_INTERVAL, read_state

#: The watch rewrites the file every `PROBE_INTERVAL`; older than this, it has stopped.
STALE_AFTER = 6 * PROBE_INTERVAL


def check_engines(
    data_dir: Path, enabled: bool, box_running: bool, now: float, submission: str = "tempfail"
) -> Finding:
    """One finding on the scanning engines; *submission* is the setting
    ``protection_submission_unavailable``, said with a failure."""
    if not enabled:
        # Shown, not judged: a box without the engines installed (development, the
        # demo) is not unhealthy; the image turns scanning on (docs/protection.md).
        return Finding("protection", Level.OK,
                       "anti-virus and anti-spam scanning is off (setting protection)",
                       "ปิดการตรวจไวรัสและสแปมอยู่ (เปิดได้ในการตั้งค่าของเครื่อง)")  # fmt: skip
    state = read_state(data_dir)
    if not box_running:
        return Finding("protection", Level.OK, "scanning: box not running",
                       "การตรวจไวรัสและสแปม: เครื่องไม่ได้ทำงาน")  # fmt: skip
    if state is None or now - float(state.get("time", 0)) > STALE_AFTER:
        return Finding("protection", Level.ERROR,
                       "the scanning engines are not watched: mail is refused (451)",
                       "ไม่มีการเฝ้าดูโปรแกรมตรวจไวรัสและสแปม: ปฏิเสธจดหมายชั่วคราว (451)",
                       "restart the box; if it recurs, call the vendor",
                       "เริ่มเครื่องใหม่ หากเกิดซ้ำให้ติดต่อผู้ดูแลระบบ")  # fmt: skip
    down = [
        name for name in ("clamd", "rspamd")
        if not (isinstance(state.get(name), dict) and state[name].get("answering"))
    ]  # fmt: skip
    if down:
        names = " and ".join(down)
        sub_en = ("submission accepts mail unscanned" if submission == "accept"
                  else "submission too")  # fmt: skip
        sub_th = ("พอร์ตส่งจดหมายรับโดยไม่ตรวจ" if submission == "accept"
                  else "พอร์ตส่งจดหมายก็เช่นกัน")  # fmt: skip
        return Finding("protection", Level.ERROR,
                       f"{names} not answering: incoming mail is refused for now (451 4.7.1);"
                       f" {sub_en}",
                       f"{names} ไม่ตอบสนอง: ปฏิเสธจดหมายเข้าชั่วคราว (451 4.7.1); {sub_th}",
                       "wait a minute (the box restarts it); if it stays, see docs/protection.md",
                       "รอสักครู่ (เครื่องจะเริ่มใหม่เอง) หากยังไม่หาย ดู docs/protection.md")  # fmt: skip
    return Finding("protection", Level.OK, "clamd and rspamd answer; mail is scanned",
                   "clamd และ rspamd ทำงาน จดหมายทุกฉบับได้รับการตรวจ")  # fmt: skip


#: What the updater records of the set it installed last (appliance.protection.signatures;
#: read here as plain JSON: the scanning layer does not import the updater).
INSTALLED_FILE = Path("run") / "signatures-installed.json"
UPDATE_STATE_FILE = Path("run") / "signatures.json"


def signatures_time(data_dir: Path) -> float | None:
    """When the signatures clamd uses were made, as a unix time, or None if unknown.

    clamd's own word first: VERSION's date of the loaded daily database (clamd(8)),
    which the watch stores. A box on databases without one (``.ndb`` files only) has
    only the date of the signed set it installed last.
    """
    state = read_state(data_dir)
    clamd = state.get("clamd") if state else None
    built = clamd.get("built") if isinstance(clamd, dict) else None
    if isinstance(built, str):
        try:
            # clamd prints ctime(3): "Mon Dec  7 09:30:00 2026" (UTC on the box).
            return (
                dt.datetime.strptime(" ".join(built.split()), "%a %b %d %H:%M:%S %Y")
                .replace(tzinfo=dt.UTC)
                .timestamp()
            )
        except ValueError:
            pass
    try:
        created = json.loads((data_dir / INSTALLED_FILE).read_text()).get("created_at")
    except (OSError, ValueError, AttributeError):
        return None
    return float(created) if isinstance(created, int) else None


def check_signatures(data_dir: Path, enabled: bool, now: float, max_age_days: int) -> Finding:
    """One finding on the age of the anti-virus signatures (and the last update's fault)."""
    if not enabled:
        return Finding("signatures", Level.OK, "scanning is off: no signatures needed",
                       "ปิดการตรวจไวรัสอยู่ จึงไม่ต้องใช้ฐานข้อมูลไวรัส")  # fmt: skip
    made = signatures_time(data_dir)
    try:
        update = json.loads((data_dir / UPDATE_STATE_FILE).read_text())
    except (OSError, ValueError):
        update = {}
    refused = ""
    if isinstance(update, dict) and update.get("result") == "refused":
        refused = str(update.get("error", ""))
    if made is None:
        return Finding("signatures", Level.WARN,
                       "the age of the anti-virus signatures is not known",
                       "ไม่ทราบอายุของฐานข้อมูลไวรัส",
                       "publish signatures on the hub or bring a signed set on a stick"
                       " (docs/protection.md)",
                       "ให้ศูนย์เผยแพร่ฐานข้อมูลไวรัส หรือนำชุดที่ลงลายมือชื่อมาทาง USB"
                       " (docs/protection.md)")  # fmt: skip
    days = max(0, int((now - made) // 86400))
    if days > max_age_days:
        why = f"; the last update was refused: {refused}" if refused else ""
        return Finding("signatures", Level.WARN,
                       f"the anti-virus signatures are {days} days old (over {max_age_days}){why}",
                       f"ฐานข้อมูลไวรัสมีอายุ {days} วัน (เกิน {max_age_days} วัน)",
                       "check the link to the hub, or bring a signed set on a stick",
                       "ตรวจสอบการเชื่อมต่อกับศูนย์ หรือนำชุดข้อมูลที่ลงลายมือชื่อมาทาง USB")  # fmt: skip
    if refused:
        return Finding("signatures", Level.WARN,
                       f"a signature update was refused: {refused}",
                       f"ปฏิเสธชุดข้อมูลไวรัสที่ได้รับ: {update.get('error_th', refused)}",
                       "ask the hub operator to publish the set again",
                       "แจ้งผู้ดูแลศูนย์ให้เผยแพร่ชุดข้อมูลใหม่")  # fmt: skip
    return Finding("signatures", Level.OK, f"anti-virus signatures are {days} days old",
                   f"ฐานข้อมูลไวรัสมีอายุ {days} วัน")  # fmt: skip
