"""Thai and English for the web pages: words, dates, sizes.

Templates carry both languages side by side, ``{{ tr("กล่องจดหมาย", "Inbox") }}``, so a
page is read and reviewed in one place and no catalogue can fall out of step with it.
Thai comes first because it is the default (REQUIREMENTS.md §2).

Dates: when Thai is chosen, years are in the Buddhist Era (พ.ศ. = C.E. + 543), the
convention of every Thai government document, with Thai month abbreviations. Times are
shown in Thailand's time (UTC+7 all year; Thailand has no daylight saving), because the
box serves one Thai office whatever the browser's clock says.

What this is not: the API's error messages (they carry both languages in the body).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Literal

Language = Literal["th", "en"]

THAILAND: Final = timezone(timedelta(hours=7), "ICT")

#: Abbreviations as in official Thai correspondence (ม.ค. ... ธ.ค.).
THAI_MONTHS: Final = (
    "ม.ค.", "ก.พ.", "มี.ค.", "เม.ย.", "พ.ค.", "มิ.ย.",
    "ก.ค.", "ส.ค.", "ก.ย.", "ต.ค.", "พ.ย.", "ธ.ค.",
)  # fmt: skip
ENGLISH_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
#: The Buddhist Era counts from 543 BCE.
BE_OFFSET: Final = 543


def translator(lang: Language) -> Callable[[str, str], str]:
    """Return ``tr(thai, english)`` answering in *lang*."""
    if lang == "en":
        return lambda thai, english: english
    return lambda thai, english: thai


def local_time(moment: datetime | int | float) -> datetime:
    """*moment* (aware datetime or Unix seconds) in Thailand's time."""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(THAILAND)


def format_date(moment: datetime | int | float, lang: Language, *, time: bool = True) -> str:
    """E.g. ``22 พ.ย. 2569 14:05`` in Thai, ``22 Nov 2026 14:05`` in English."""
    local = local_time(moment)
    if lang == "th":
        text = f"{local.day} {THAI_MONTHS[local.month - 1]} {local.year + BE_OFFSET}"
    else:
        text = f"{local.day} {ENGLISH_MONTHS[local.month - 1]} {local.year}"
    return f"{text} {local:%H:%M}" if time else text


def format_short(
    moment: datetime | int | float, lang: Language, now: datetime | None = None
) -> str:
    """For lists: the time if it is today, else the date without the time."""
    local = local_time(moment)
    today = local_time(now or datetime.now(UTC)).date()
    if local.date() == today:
        return f"{local:%H:%M}"
    return format_date(local, lang, time=False)


def format_size(size: int, lang: Language) -> str:
    """Bytes for people: ``12 KB``, ``3.4 MB`` (1024-based, as mail clients show)."""
    units = ("ไบต์", "KB", "MB", "GB") if lang == "th" else ("bytes", "KB", "MB", "GB")
    value = float(size)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            if unit == units[0]:
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
