"""Health: what the box reads about itself, and what it concludes.

The box is an appliance nobody watches (REQUIREMENTS.md §1), so it must say itself what
is wrong and what to do. The pieces:

- `readings`: psutil behind the `SystemReadings` protocol (and its fake twin);
- `snapshot`: one gathered `Snapshot` of readings, services, queue and link;
- `checks/`: small plug-ins, one module each, each a pure function of a snapshot
  returning `Finding`s; `checks.CHECKS` is the one registry;
- `monitor`: the `HealthMonitor` service that gathers and checks on an interval and
  serves `findings()` to the admin console, the front panel and `/metrics`;
- `disk_guard`: the `DiskGuard` that SMTP, IMAP and chat consult before accepting data.

A check never raises: what it cannot read becomes an ``error`` finding. Every finding
carries its text, and what to do about it, in Thai and English (REQUIREMENTS.md §2: the
UI is Thai first).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.health.snapshot import Snapshot


class Level(enum.IntEnum):
    #: Nothing to do.
    OK = 0
    #: Serving, but someone should look soon.
    WARN = 1
    #: Part of the box is not doing its job; `edgebox status` exits 1.
    ERROR = 2


@dataclass(frozen=True)
class Finding:
    """One check's conclusion about one thing, in Thai and English."""

    check: str
    level: Level
    en: str
    th: str
    #: What the operator should do; "" when nothing.
    todo_en: str = ""
    todo_th: str = ""

    def text(self, lang: str) -> str:
        """The message in *lang* ("th" or "en")."""
        return self.th if lang == "th" else self.en

    def todo(self, lang: str) -> str:
        """What to do, in *lang* ("th" or "en")."""
        return self.todo_th if lang == "th" else self.todo_en


def worst(findings: list[Finding]) -> Level:
    """The most serious level among *findings* (OK for none)."""
    return max((f.level for f in findings), default=Level.OK)


@dataclass(frozen=True)
class Check:
    """One plug-in: a name and a pure function from a snapshot to its findings."""

    name: str
    run: Callable[[Snapshot], list[Finding]]

    def __call__(self, snapshot: Snapshot) -> list[Finding]:
        """Run the check; an exception inside it becomes an error finding, never a crash."""
        try:
            return self.run(snapshot)
        except Exception as exc:  # a bug in one check must not hide the others
            return [Finding(self.name, Level.ERROR, f"check failed: {exc!r}",
                            f"ตรวจไม่สำเร็จ: {exc!r}", "report this to the vendor",
                            "แจ้งผู้ดูแลระบบของผู้ผลิต")]  # fmt: skip
