"""Free space on the data directory's file system.

A box that fills its disk can no longer promise that an accepted message is stored, so
low space is an error well before the disk is actually full.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from appliance.health import Finding, Level

#: Below this, warn the operator; below half of it, the box is unhealthy.
WARN_FREE_BYTES = 2 * 1024**3


def check_disk(data_dir: Path, warn_free: int = WARN_FREE_BYTES) -> Finding:
    try:
        usage = psutil.disk_usage(str(data_dir))
    except OSError as exc:
        return Finding("disk", Level.ERROR, f"cannot read disk usage: {exc}",
                       f"อ่านพื้นที่ดิสก์ไม่ได้: {exc}")  # fmt: skip
    free_gb = usage.free / 1024**3
    if usage.free < warn_free / 2:
        level = Level.ERROR
    elif usage.free < warn_free:
        level = Level.WARN
    else:
        level = Level.OK
    return Finding("disk", level, f"{free_gb:.1f} GB free ({100 - usage.percent:.0f}%)",
                   f"พื้นที่ว่าง {free_gb:.1f} GB ({100 - usage.percent:.0f}%)")  # fmt: skip
