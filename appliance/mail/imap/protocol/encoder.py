"""How the IMAP server writes values in its responses (RFC 3501 §4, §9).

Strings as quoted strings or literals, NIL, mailbox names in modified UTF-7, flag
lists, dates, UID sets, and response text kept to one line. The session builds its
untagged responses with these and queues them through the connection.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from appliance.mail.imap import mutf7

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
# Longer values go as literals: quoted strings that long are hard on clients' parsers.
_MAX_QUOTED = 1024
#: RFC 3501 §9: date-month.
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def quote(value: str | bytes) -> bytes:
    """Render a string as an IMAP quoted string, or as a literal when it must be.

    A literal (``{n}\\r\\n`` + bytes, RFC 3501 §4.3) is used for CR, LF, NUL, 8-bit bytes
    (str is sent as UTF-8) and values over 1 KiB.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) <= _MAX_QUOTED and _QUOTABLE.match(raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None) -> bytes:
    """Render NIL or a string (RFC 3501 §9: nstring)."""
    return b"NIL" if value is None else quote(value)


def mailbox_name(name: str) -> bytes:
    """Render a mailbox name for LIST/STATUS responses: modified UTF-7, then quoted."""
    return quote(mutf7.encode(name))


def flag_list(flags: Iterable[str]) -> str:
    """Render ``(\\Seen $Label1)`` (RFC 3501 §9: flag-list)."""
    return "(" + " ".join(flags) + ")"


def imap_date(when: dt.datetime) -> str:
    """Render an INTERNALDATE value ``dd-Mon-yyyy hh:mm:ss +zzzz``, without the quotes.

    A naive datetime is taken to be UTC. Month names are English whatever the locale.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hh:02d}{mm:02d}"
    )


def encode_uid_set(uids: Iterable[int]) -> str:
    """Render UIDs as a compact sequence set, e.g. ``1:3,7`` (for VANISHED, COPYUID)."""
    parts: list[str] = []
    start = prev = None
    for uid in sorted(set(uids)):
        if prev is not None and uid == prev + 1:
            prev = uid
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def one_line(text: str) -> bytes:
    """Response text as one line of UTF-8: CR and LF become spaces."""
    # Response text is one line (RFC 3501 §9: TEXT-CHAR excludes CR and LF).
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


__all__ = [
    "encode_uid_set",
    "flag_list",
    "imap_date",
    "mailbox_name",
    "nstring",
    "quote",
]
