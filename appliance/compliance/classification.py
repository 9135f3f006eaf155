"""Classification (ชั้นความลับ) and urgency (ชั้นความเร็ว) of official mail.

REQUIREMENTS.md §2 asks that official documents sent by mail carry a secrecy class and a
speed class. edgebox carries them in two header fields, documented in
docs/mail-headers.md, and accepts the Thai words, the English words, or the numeric
level, so a Thai Outlook form, an English script and a later sync peer all agree:

    X-Classification: ลับ | confidential          X-Urgency: ด่วน | urgent
                      ลับมาก | secret                        ด่วนมาก | very-urgent
                      ลับที่สุด | top-secret                    ด่วนที่สุด | most-urgent

Values may be raw UTF-8 (RFC 6532) or RFC 2047 encoded words. An unknown value is kept
as the lowest level rather than refusing the mail: a typo must not stop delivery, and
the lowest level never *raises* the handling a message gets.
"""

from __future__ import annotations

import enum
import unicodedata
from email.header import decode_header, make_header

CLASSIFICATION_HEADER = "X-Classification"
URGENCY_HEADER = "X-Urgency"


class Classification(enum.IntEnum):
    """Secrecy class; a higher value is more secret."""

    #: Not classified.
    NONE = 0
    #: ลับ
    CONFIDENTIAL = 1
    #: ลับมาก
    SECRET = 2
    #: ลับที่สุด
    TOP_SECRET = 3

    @property
    def thai(self) -> str:
        return _CLASSIFICATION_TH[self]


class Urgency(enum.IntEnum):
    """Speed class; a higher value leaves the outbound queue first (REQUIREMENTS.md §4)."""

    #: ปกติ
    NORMAL = 0
    #: ด่วน
    URGENT = 1
    #: ด่วนมาก
    VERY_URGENT = 2
    #: ด่วนที่สุด
    MOST_URGENT = 3

    @property
    def thai(self) -> str:
        return _URGENCY_TH[self]


_CLASSIFICATION_TH = {
    Classification.NONE: "ไม่มีชั้นความลับ",
    Classification.CONFIDENTIAL: "ลับ",
    Classification.SECRET: "ลับมาก",
    Classification.TOP_SECRET: "ลับที่สุด",
}
_URGENCY_TH = {
    Urgency.NORMAL: "ปกติ",
    Urgency.URGENT: "ด่วน",
    Urgency.VERY_URGENT: "ด่วนมาก",
    Urgency.MOST_URGENT: "ด่วนที่สุด",
}

_CLASSIFICATION_WORDS = {
    **{name: level for level, name in _CLASSIFICATION_TH.items()},
    "none": Classification.NONE,
    "unclassified": Classification.NONE,
    "confidential": Classification.CONFIDENTIAL,
    "secret": Classification.SECRET,
    "top-secret": Classification.TOP_SECRET,
}
_URGENCY_WORDS = {
    **{name: level for level, name in _URGENCY_TH.items()},
    "normal": Urgency.NORMAL,
    "urgent": Urgency.URGENT,
    "very-urgent": Urgency.VERY_URGENT,
    "most-urgent": Urgency.MOST_URGENT,
}


def _normalise(value: str) -> str:
    try:
        value = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        pass  # not valid RFC 2047: take the raw text
    # NFC, and Thai digits (๑๒๓) are decimal digits that int() reads like 1 2 3.
    value = unicodedata.normalize("NFC", value).strip().lower()
    return "-".join(value.replace("_", " ").split())


def parse_classification(value: str | None) -> Classification:
    """Map an X-Classification value to its level (unknown → NONE)."""
    if value is None:
        return Classification.NONE
    text = _normalise(value)
    if text.isdecimal() and int(text) in Classification._value2member_map_:
        return Classification(int(text))
    return _CLASSIFICATION_WORDS.get(text, Classification.NONE)


def parse_urgency(value: str | None) -> Urgency:
    """Map an X-Urgency value to its level (unknown → NORMAL)."""
    if value is None:
        return Urgency.NORMAL
    text = _normalise(value)
    if text.isdecimal() and int(text) in Urgency._value2member_map_:
        return Urgency(int(text))
    return _URGENCY_WORDS.get(text, Urgency.NORMAL)
