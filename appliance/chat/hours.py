"""Working hours of a room: the days and times (Asia/Bangkok) it is open.

Thailand keeps UTC+7 all year (no daylight saving), so a fixed offset is exact and the
box needs no time-zone database. A room outside its hours is hidden from room lists and
refuses new messages (`appliance.chat.rules`).

The setting as stored and sent over the API::

    {"days": [0, 1, 2, 3, 4], "start": "08:30", "end": "16:30"}

``days``: 0 = Monday ... 6 = Sunday (Python's ``weekday()``). ``start`` < ``end``, both
``HH:MM`` 24-hour; the room is open from ``start`` up to but not including ``end``.
Windows over midnight are not offered: no office works them, and refusing them keeps
"which day does this belong to" out of the rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from appliance.chat.errors import ChatError

BANGKOK = timezone(timedelta(hours=7), "Asia/Bangkok")

_TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")

_DAY_NAMES_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES_TH = ("จ.", "อ.", "พ.", "พฤ.", "ศ.", "ส.", "อา.")


@dataclass(frozen=True)
class WorkingHours:
    """Days of the week and a daily window, in Bangkok time."""

    days: frozenset[int]
    #: Minutes after midnight.
    start: int
    end: int

    def is_open(self, now: float) -> bool:
        """Return whether the room is open at Unix time *now*."""
        local = datetime.fromtimestamp(now, UTC).astimezone(BANGKOK)
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end

    def to_json(self) -> dict[str, Any]:
        return {
            "days": sorted(self.days),
            "start": _clock(self.start),
            "end": _clock(self.end),
        }

    def describe(self) -> tuple[str, str]:
        """Return the hours in words, English and Thai, for error messages."""
        days = sorted(self.days)
        en = ", ".join(_DAY_NAMES_EN[d] for d in days)
        th = " ".join(_DAY_NAMES_TH[d] for d in days)
        window = f"{_clock(self.start)}–{_clock(self.end)}"
        return f"{en} {window} (Bangkok time)", f"{th} เวลา {window} น."


def parse_hours(value: Any) -> WorkingHours:
    """Return the `WorkingHours` a client sent, or raise ChatError 422."""
    if not isinstance(value, Mapping) or set(value) - {"days", "start", "end"}:
        raise _bad("working_hours must be {days, start, end}")
    days = value.get("days")
    if (
        not isinstance(days, list)
        or not days
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in days)
    ):
        raise _bad("working_hours.days must be a non-empty list of 0 (Monday) to 6 (Sunday)")
    start = _minutes(value.get("start"), "start")
    end = _minutes(value.get("end"), "end")
    if start >= end:
        raise _bad("working_hours.start must be before working_hours.end (same day)")
    return WorkingHours(frozenset(days), start, end)


def _minutes(value: Any, name: str) -> int:
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _bad(f"working_hours.{name} must be HH:MM (24-hour)")
    return int(match.group(1)) * 60 + int(match.group(2))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _bad(message: str) -> ChatError:
    return ChatError(422, "invalid_working_hours", message, "กำหนดเวลาทำการไม่ถูกต้อง")
