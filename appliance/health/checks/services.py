"""Is the box running, and is every service it supervises alive and answering?

Inside the box the supervisor's own state says which service crashed and how often it
was restarted; from `edgebox status` the snapshot also says which listener did not
accept a connection. A service the supervisor keeps restarting warns even while it
happens to be up: it is failing repeatedly.
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot

#: Restarts since the box started from which a running service still warns.
RESTARTS_WARN = 3


def run(snapshot: Snapshot) -> list[Finding]:
    if not snapshot.box_running:
        return [Finding("services", Level.ERROR, "edgebox is not running",
                        "edgebox ไม่ได้ทำงานอยู่", "start it: systemctl start edgebox",
                        "สั่งเริ่มระบบ: systemctl start edgebox")]  # fmt: skip
    findings = []
    for name, state in snapshot.services.items():
        where = ", ".join(state.addresses)
        if not state.running:
            why = f" ({state.last_error})" if state.last_error else ""
            findings.append(Finding(name, Level.ERROR, f"stopped, restarting{why}",
                                    f"หยุดทำงาน กำลังเริ่มใหม่{why}",
                                    "if it does not come back, restart the box",
                                    "หากไม่กลับมาทำงาน ให้เริ่มเครื่องใหม่"))  # fmt: skip
        elif state.not_answering:
            down = ", ".join(state.not_answering)
            findings.append(Finding(name, Level.ERROR, f"not answering on {down}",
                                    f"ไม่ตอบที่ {down}", "restart the box",
                                    "เริ่มเครื่องใหม่"))  # fmt: skip
        elif state.restarts >= RESTARTS_WARN:
            findings.append(Finding(name, Level.WARN,
                                    f"running, but restarted {state.restarts} times",
                                    f"ทำงานอยู่ แต่เริ่มใหม่แล้ว {state.restarts} ครั้ง",
                                    "send the log (journalctl -u edgebox) to the vendor",
                                    "ส่งบันทึกระบบ (journalctl -u edgebox) ให้ผู้ดูแลระบบ"))  # fmt: skip
        elif state.addresses:
            findings.append(Finding(name, Level.OK, f"listening on {where}",
                                    f"เปิดให้บริการที่ {where}"))  # fmt: skip
        else:
            findings.append(Finding(name, Level.OK, "running", "ทำงานอยู่"))
    return findings


CHECK = Check("services", run)
