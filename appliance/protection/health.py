"""Judge ``run/protection.json``: do both engines answer? (gathered into the snapshot so
that the check, appliance.health.checks.protection, stays pure)."""

from __future__ import annotations

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
