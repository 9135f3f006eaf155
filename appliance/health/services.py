"""Is the box running, and does every listener it announced accept connections?

The running supervisor writes ``run/status.json``; this check trusts it only as far as
it can verify it: the process must be alive and each address must accept a TCP
connection.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psutil

from appliance.health import Finding, Level


def read_status(status_file: Path) -> dict[str, object] | None:
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _answers(address: str, timeout: float = 2.0) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def check_services(status_file: Path) -> list[Finding]:
    status = read_status(status_file)
    pid = status.get("pid") if status else None
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        return [Finding("services", Level.ERROR, "edgebox is not running",
                        "edgebox ไม่ได้ทำงานอยู่")]  # fmt: skip
    assert status is not None
    findings = []
    services = status.get("services")
    for name, addresses in services.items() if isinstance(services, dict) else []:
        down = [a for a in addresses if not _answers(a)]
        where = ", ".join(addresses)
        if not addresses:
            findings.append(Finding(name, Level.OK, "running", "ทำงานอยู่"))
        elif down:
            findings.append(Finding(name, Level.ERROR, f"not answering on {', '.join(down)}",
                                    f"ไม่ตอบที่ {', '.join(down)}"))  # fmt: skip
        else:
            findings.append(Finding(name, Level.OK, f"listening on {where}",
                                    f"เปิดให้บริการที่ {where}"))  # fmt: skip
    return findings
