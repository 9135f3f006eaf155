"""SORT (RFC 5256 §3) and the answers of ESORT and PARTIAL (RFC 5267, RFC 9394).

What a message is sorted and threaded by is taken from its header once and kept as
`HeaderFacts`: the base subject (§2.1), the sent date (§2.2), the first From/To/Cc
mailbox, and the Message-ID, References and In-Reply-To that THREAD REFERENCES uses.
Messages never change, and a blob id names one content for ever, so the facts are
cached per blob in a bounded cache: sorting a 10,000-message mailbox the second time
reads no message at all.

Everything here is pure: rows and message bytes in, orders and response text out.
The session reads the rows and decrypts the messages (in one worker call per command,
never one per message) and calls `facts_of` there.

What this is not: the search (session `_Matcher`) or threading (`thread.py`).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from appliance.mail import mime
from appliance.mail.imap import protocol as imap

#: Header facts kept for at most this many bytes of text (about 100,000 ordinary
#: messages); the least recently used go first.
CACHE_BYTES = 32 * 1024 * 1024
#: References beyond this many per message are dropped (the nearest are kept): a
#: hostile header must not cost unbounded work or memory.
MAX_REFERENCES = 100
#: Longer "msg-id"s are not ids anyone will refer to; they are ignored.
MAX_MSG_ID = 250

_MSG_ID = re.compile(rf"<([^<>\s]{{1,{MAX_MSG_ID}}})>")


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What SORT and THREAD need from one message's header."""

    #: The base subject (RFC 5256 §2.1), upper-cased in ASCII for i;ascii-casemap.
    subject: str
    #: Whether extracting the base subject removed a reply or forward marker.
    is_reply: bool
    #: The Date header as a UTC timestamp, or None when missing or unreadable.
    sent: float | None
    #: addr-mailbox of the first From, To and Cc address, upper-cased; "" when none.
    from_: str
    to: str
    cc: str
    message_id: str | None
    #: The parent chain: References, or the first id of In-Reply-To without them.
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SortItem:
    """One message to sort: its UID, the row's facts, and its header facts."""

    uid: int
    internal_date: int
    size: int
    facts: HeaderFacts

    @property
    def sent(self) -> float:
        # RFC 5256 §2.2: without a usable Date header, INTERNALDATE is the sent date.
        return self.facts.sent if self.facts.sent is not None else float(self.internal_date)


class FactsCache:
    """Header facts by blob id within a byte budget, least recently used dropped first."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._facts: OrderedDict[str, HeaderFacts] = OrderedDict()

    def get(self, blob_id: str) -> HeaderFacts | None:
        found = self._facts.get(blob_id)
        if found is not None:
            self._facts.move_to_end(blob_id)
        return found

    def put(self, blob_id: str, facts: HeaderFacts) -> None:
        old = self._facts.pop(blob_id, None)
        if old is not None:
            self.used -= _cost(blob_id, old)
        self._facts[blob_id] = facts
        self.used += _cost(blob_id, facts)
        while self.used > self.budget and self._facts:
            gone_id, gone = self._facts.popitem(last=False)
            self.used -= _cost(gone_id, gone)


def _cost(blob_id: str, facts: HeaderFacts) -> int:
    # Text lengths plus a fixed allowance for the objects around them.
    text = (facts.subject, facts.from_, facts.to, facts.cc, facts.message_id or "")
    return 300 + len(blob_id) + sum(map(len, text)) + sum(len(r) + 60 for r in facts.references)


#: One cache for the process: every session of every user shares it.
CACHE = FactsCache()


# ---------------------------------------------------------------------------------------
# Base subject (RFC 5256 §2.1)

# subj-trailer = "(fwd)" / WSP
_TRAILER = re.compile(r"(?:\(fwd\)|[ \t])\Z", re.IGNORECASE)
# subj-blob = "[" *BLOBCHAR "]" *WSP, BLOBCHAR = any CHAR except "[" and "]"
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(rf"(?:(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t])", re.IGNORECASE)
_BLOB_AT_START = re.compile(_BLOB)
_SPACES = re.compile(r"[ \t\r\n]+")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def base_subject(subject: str) -> tuple[str, bool]:
    """Extract the base subject of an (RFC 2047-decoded) subject; say if it was a reply.

    RFC 5256 §2.1, steps (1)-(6). The reply flag is THREAD REFERENCES' "the subject
    was a reply or forward" of §4 step 5: a trailer, a leader or ``[fwd: ...]`` went.
    """
    # (1) White space runs, folding included, become one space.
    text = _SPACES.sub(" ", unicodedata.normalize("NFC", subject))
    is_reply = False
    while True:
        # (2) Remove subj-trailers repeatedly.
        while True:
            match = _TRAILER.search(text)
            if match is None:
                break
            if match.group(0).lower() == "(fwd)":
                is_reply = True
            text = text[: match.start()]
        # (3)-(4) Remove subj-leaders; then a subj-blob if something stays; repeat.
        while True:
            before = text
            while True:
                match = _LEADER.match(text)
                if match is None or not match.group(0):
                    break
                if match.group(0).strip():
                    is_reply = True
                text = text[match.end() :]
            blob = _BLOB_AT_START.match(text)
            if blob is not None and text[blob.end() :]:
                text = text[blob.end() :]
            if text == before:
                break
        # (5) "[fwd: ...]" is unwrapped, and the whole extraction starts again.
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1]
            is_reply = True
            continue
        return text.translate(_ASCII_UPPER), is_reply


# ---------------------------------------------------------------------------------------
# Header facts


def facts_of(content: bytes) -> HeaderFacts:
    """Read the facts SORT and THREAD need from a message's header (never raises)."""
    # One pass over the header; only the subject needs RFC 2047 decoding (§2.1 step 1).
    fields = mime.header_fields(content)
    subject, is_reply = base_subject(mime.decode_words(fields.get("subject", "")))
    references = tuple(_MSG_ID.findall(fields.get("references", "")))[-MAX_REFERENCES:]
    if not references:
        # RFC 5256 §4 step 1B: without References, the first msg-id of In-Reply-To.
        references = tuple(_MSG_ID.findall(fields.get("in-reply-to", "")))[:1]
    ids = _MSG_ID.findall(fields.get("message-id", ""))
    return HeaderFacts(
        subject=subject,
        is_reply=is_reply,
        sent=_sent(fields.get("date")),
        from_=_first_mailbox(mime.addresses(fields.get("from"))),
        to=_first_mailbox(mime.addresses(fields.get("to"))),
        cc=_first_mailbox(mime.addresses(fields.get("cc"))),
        message_id=ids[0] if ids else None,
        references=references,
    )


def _sent(value: str | None) -> float | None:
    # RFC 5256 §2.2: the Date header, normalised to UTC.
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # RFC 5322 §3.3 "-0000": unknown zone
    try:
        return when.timestamp()
    except (OverflowError, ValueError):
        return None


def _first_mailbox(addresses: mime.AddressList) -> str:
    # RFC 5256 §3: the addr-mailbox of the first address as ENVELOPE shows it. A group
    # comes first as its start marker, whose addr-mailbox is the group's name (RFC 3501
    # §7.4.2), so "Cc: team: a@x;" sorts by "team", as Dovecot sorts it.
    for _, _, mailbox, _ in addresses or ():
        if mailbox is not None:
            return mailbox.translate(_ASCII_UPPER)
    return ""


# ---------------------------------------------------------------------------------------
# SORT


def sort_uids(items: Sequence[SortItem], criteria: Sequence[imap.SortCriterion]) -> list[int]:
    """Order *items* by *criteria*; full ties stay in mailbox (UID) order (RFC 5256 §3)."""
    ordered = sorted(items, key=lambda item: item.uid)
    # Stable sorts from the last key to the first make a multi-key sort, and a stable
    # reverse sort keeps equal items in their order: ties fall through to the next key.
    for criterion in reversed(criteria):
        key = _SORT_KEYS[criterion.key]
        ordered.sort(key=key, reverse=criterion.reverse)
    return [item.uid for item in ordered]


def _arrival(item: SortItem) -> int:
    return item.internal_date


def _cc(item: SortItem) -> str:
    return item.facts.cc


def _date(item: SortItem) -> float:
    return item.sent


def _from(item: SortItem) -> str:
    return item.facts.from_


def _size(item: SortItem) -> int:
    return item.size


def _subject(item: SortItem) -> str:
    return item.facts.subject


def _to(item: SortItem) -> str:
    return item.facts.to


# Each returns a str or a number; Any because mypy cannot see a union of comparables.
_SORT_KEYS: dict[str, Callable[[SortItem], Any]] = {
    "ARRIVAL": _arrival,
    "CC": _cc,
    "DATE": _date,
    "FROM": _from,
    "SIZE": _size,
    "SUBJECT": _subject,
    "TO": _to,
}


def needs_header(criteria: Sequence[imap.SortCriterion]) -> bool:
    """Whether sorting by *criteria* needs the messages' headers, not only their rows."""
    return any(c.key not in ("ARRIVAL", "SIZE") for c in criteria)


# ---------------------------------------------------------------------------------------
# ESEARCH / ESORT return data


def ordered_set(numbers: Sequence[int]) -> str:
    """Render numbers as a sequence set that keeps their order (RFC 5267 §3.2 ALL).

    Only ascending runs become ranges: ``5,3,1:2`` for 5, 3, 1, 2.
    """
    parts: list[str] = []
    start = previous = None
    for number in numbers:
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = number
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(parts)


def partial_window(results: Sequence[int], window: tuple[int, int]) -> Sequence[int]:
    """The results at positions first..last (1-based), or counted from the end when
    negative (RFC 9394 §3: ``-1:-100`` is the last hundred)."""
    first, last = window
    if first > 0:
        return results[first - 1 : last]
    start = max(len(results) + last, 0)
    stop = max(len(results) + first + 1, 0)
    return results[start:stop]


def partial_data(results: Sequence[int], window: tuple[int, int]) -> str:
    """The ``PARTIAL (range set)`` return data of RFC 9394 §3 (NIL when empty)."""
    first, last = window
    label = f"{first}:{last}"
    found = partial_window(results, window)
    return f"PARTIAL ({label} {ordered_set(found) if found else 'NIL'})"


def esort(
    tag: str,
    uid: bool,
    options: Sequence[str],
    numbers: Sequence[int],
    partial: tuple[int, int] | None,
) -> str:
    """An ESEARCH answer to SORT RETURN (...) (RFC 5267 §3.2), *numbers* in sort order.

    MIN and MAX are the first and last in the sort order; ALL keeps that order.
    """
    result = f'ESEARCH (TAG "{imap_string(tag)}")' + (" UID" if uid else "")
    wanted = options or ("ALL",)
    if numbers:
        if "MIN" in wanted:
            result += f" MIN {numbers[0]}"
        if "MAX" in wanted:
            result += f" MAX {numbers[-1]}"
        if "ALL" in wanted:
            result += f" ALL {ordered_set(numbers)}"
    if "COUNT" in wanted:
        result += f" COUNT {len(numbers)}"
    if partial is not None:
        result += " " + partial_data(numbers, partial)
    return result


def imap_string(tag: str) -> str:
    # A tag has no '"' or '\\' (RFC 3501 §9: tag is ASTRING-CHARs); escape anyway.
    return tag.replace("\\", "\\\\").replace('"', '\\"')
