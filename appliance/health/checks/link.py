"""The uplink to the centre (GIN), as the link monitor last decided it.

A cut link is what the box is built to ride out (DESIGN.md principle 2), so it warns
and never makes the box "unhealthy"; the international link only informs.
"""

from __future__ import annotations

from appliance.health import Check, Finding, Level
from appliance.health.snapshot import Snapshot


def run(snapshot: Snapshot) -> list[Finding]:
    link = snapshot.link
    gin = getattr(link, "gin", None)
    state = getattr(getattr(gin, "state", None), "value", "unknown")
    if state == "up":
        return [Finding("link", Level.OK, "GIN up", "เชื่อมต่อเครือข่ายภาครัฐ (GIN) ได้")]
    if state == "down":
        since = getattr(gin, "since", None)
        minutes = f" for {(snapshot.now - since) / 60:.0f} min" if since else ""
        minutes_th = f" มา {(snapshot.now - since) / 60:.0f} นาที" if since else ""
        return [Finding("link", Level.WARN, f"GIN down{minutes}; mail and chat wait in the queue",
                        f"การเชื่อมต่อเครือข่ายภาครัฐ (GIN) ขาด{minutes_th} จดหมายและแชตรอในคิว",
                        "check the uplink cable and router; local service continues",
                        "ตรวจสายและเราเตอร์ของการเชื่อมต่อ บริการภายในยังใช้งานได้")]  # fmt: skip
    # The monitor's reason (not enrolled, not probed yet) is for the technician, in
    # English like the rest of link.json; the Thai text stays in words.
    why = getattr(gin, "error", None) or "not probed yet"
    return [Finding("link", Level.OK, f"GIN not checked ({why})",
                    "ยังไม่ได้ตรวจการเชื่อมต่อเครือข่ายภาครัฐ (GIN)")]  # fmt: skip


CHECK = Check("link", run)
