"""Health checks: small plug-ins, one module each, each returning `Finding`s.

`edgebox status`, later the admin console and the front panel, all read the same
findings. A check never raises: what it cannot read becomes an ``error`` finding. Every
finding carries its text in Thai and English (REQUIREMENTS.md §2: the UI is Thai first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.IntEnum):
    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    en: str
    th: str
