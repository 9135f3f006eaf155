"""Message text on the pages: links found in it, search matches highlighted, map links.

Links in text become anchors only for ``http(s)://`` URLs (`link_segments`), built as
elements by the templates, never as markup from text. static/chat-text.js keeps the
same rule for live messages: change one, change the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from appliance.chat.models import Message

#: A web address in chat text. Only ASCII URL characters (RFC 3986 §2): Thai typed
#: right after a link ("ดูที่https://x.go.thครับ") is not part of it.
_LINK: Final = re.compile(r"https?://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.IGNORECASE)
#: Punctuation that ends a sentence rather than a URL.
_TRAILING: Final = ".,;:!?'"
#: A closing bracket belongs to the link only if the link opened it (Wikipedia URLs).
_OPENERS: Final = {")": "(", "]": "["}


@dataclass(frozen=True)
class Segment:
    """A piece of message text: plain, or a link whose text is its address."""

    text: str
    href: str | None = None


def link_segments(text: str) -> list[Segment]:
    """Split *text* into plain pieces and http(s) links; joined, the pieces are *text*.

    Trailing sentence punctuation and an unmatched closing bracket stay outside the
    link ("(see https://a.go.th/x)." links ``https://a.go.th/x``).
    """
    pieces: list[Segment] = []
    at = 0
    for match in _LINK.finditer(text):
        url = _trim_url(match.group(0))
        if not url.partition("://")[2]:
            continue  # "http://" and punctuation: no address
        start, end = match.start(), match.start() + len(url)
        if start > at:
            pieces.append(Segment(text[at:start]))
        pieces.append(Segment(url, url))
        at = end
    if at < len(text):
        pieces.append(Segment(text[at:]))
    return pieces


def _trim_url(url: str) -> str:
    while url:
        last = url[-1]
        unmatched = last in _OPENERS and url.count(last) > url.count(_OPENERS[last])
        if last not in _TRAILING and not unmatched:
            break
        url = url[:-1]
    return url


def map_url(place: Mapping[str, Any]) -> str | None:
    """An OpenStreetMap address showing *place* (numbers only, so nothing to inject)."""
    lat, lon = place.get("lat"), place.get("lon")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        return None
    return (
        f"https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=16/{lat:.6f}/{lon:.6f}"
    )


# --- search results ----------------------------------------------------------------------


def searchable_text(message: Message) -> str:
    content = message.content
    parts = [content.get("text"), content.get("title"), content.get("url"), content.get("name"),
             (content.get("location") or {}).get("label")]  # fmt: skip
    return " ".join(str(p) for p in parts if isinstance(p, str) and p)


#: Characters of context a search result shows before and after the match.
_BEFORE: Final = 60
_AFTER: Final = 140


def highlight(text: str, q: str) -> list[tuple[str, bool]]:
    """Split *text* around the first match of *q* (case-insensitive): (piece, is_match).

    Long text is cut to a window around the match, marked with "…". The match is
    found on case-folded text; where folding changes the length (ß → ss) positions
    would not line up, so the text is shown unmarked.
    """
    folded, needle = text.casefold(), q.casefold()
    at = folded.find(needle) if needle else -1
    if at < 0 or len(folded) != len(text):
        short = text if len(text) <= _BEFORE + _AFTER else text[: _BEFORE + _AFTER] + "…"
        return [(short, False)] if short else []
    end = at + len(needle)
    before = text[:at] if at <= _BEFORE else "…" + text[at - _BEFORE : at]
    after = text[end:] if len(text) - end <= _AFTER else text[end : end + _AFTER] + "…"
    pieces = [(before, False), (text[at:end], True), (after, False)]
    return [p for p in pieces if p[0]]
