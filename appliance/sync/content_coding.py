"""Content codings of hub-sync bodies: gzip or identity (RFC 9110 §8.4, §12.5.3).

Sans-I/O: bytes and header values in, bytes or an exception out. Both ends of the sync
API use it (`appliance.sync.hub_client`, `appliance.sync.hub.server`):

- a body is sent gzip'ed (``Content-Encoding: gzip``) only to a peer that said it takes
  gzip: the hub lists it in ``Accept-Encoding`` on every answer (§12.5.3 lets a server
  say so in a response), a box in ``Accept-Encoding`` on its requests. Identity is
  always accepted, so an old box and a new hub (or the reverse) still understand each
  other;
- chat events are JSON with the same keys over and over and Thai text, which gzip
  shrinks about tenfold; the level is low (`LEVEL`) because a 2-core box's CPU is
  worth more than the last few bytes on the line;
- the size limit of a body holds for what it *decodes* to: `decode` inflates a bit at
  a time and stops one byte past the limit (`TooLarge`), so a small "bomb" that would
  inflate to gigabytes costs no more memory than the limit.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Final

#: zlib level: 1 is several times faster than the default 6 and, on JSON, a few per
#: cent larger.
LEVEL: Final = 1
#: Bodies shorter than this go as they are: a small cursor request gains nothing.
MIN_SIZE: Final = 1024
GZIP: Final = "gzip"
#: zlib's window bits for "a gzip member" (RFC 1952 header and trailer).
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
#: gzip members in one body: one is what every sender makes.
MAX_MEMBERS: Final = 8
#: Input handed to the inflater at a time (its output is bounded separately).
_STEP: Final = 64 * 1024


class UnsupportedCoding(ValueError):
    """The body is in a content coding this end does not know (answer 415)."""


class BadCoding(ValueError):
    """The body claims gzip but is not a whole, valid gzip stream (answer 400)."""


class TooLarge(ValueError):
    """The body decodes to more than the limit (answer 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body decodes to more than {limit} bytes")
        self.limit = limit


def encode(data: bytes) -> bytes:
    """Return *data* as one gzip member (no file name, time 0: same input, same bytes)."""
    return gzip.compress(data, compresslevel=LEVEL, mtime=0)


def codings(content_encoding: str | None) -> list[str]:
    """Return the codings a ``Content-Encoding`` value lists, in the order applied.

    Names are case-insensitive (§8.4.1); ``x-gzip`` is ``gzip`` (§8.4.1.3); ``identity``
    is no coding at all, so it is dropped.
    """
    found = []
    for item in (content_encoding or "").split(","):
        name = item.strip().lower()
        if name in ("", "identity"):
            continue
        found.append(GZIP if name == "x-gzip" else name)
    return found


def decode(data: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Return the body *data* decoded per its ``Content-Encoding``, at most *limit* bytes.

    Raises `UnsupportedCoding`, `BadCoding` or `TooLarge`.
    """
    names = codings(content_encoding)
    if any(name != GZIP for name in names):
        raise UnsupportedCoding(f"content coding {content_encoding!r} is not supported")
    for _ in names:  # gzip applied twice is legal, if odd; undo each in turn
        data = inflate(data, limit)
    if len(data) > limit:
        raise TooLarge(limit)
    return data


def inflate(data: bytes, limit: int) -> bytes:
    """Return the gzip stream *data* inflated; `TooLarge` as soon as it passes *limit*.

    A stream may hold a few members one after another (RFC 1952 §2.2; at most
    `MAX_MEMBERS`, so that a body of thousands of empty members costs nothing); each
    must be whole. Memory stays within *limit* plus one step, whatever the ratio.
    """
    if not data:
        raise BadCoding("an empty body is not a gzip stream")
    out = bytearray()
    position = 0
    pending = b""
    for _ in range(MAX_MEMBERS):
        inflater = zlib.decompressobj(_GZIP_WBITS)
        while not inflater.eof:
            if not pending:
                if position >= len(data):
                    raise BadCoding("the gzip stream is cut short")
                pending = data[position : position + _STEP]
                position += _STEP
            try:
                out += inflater.decompress(pending, limit + 1 - len(out))
            except zlib.error as exc:
                raise BadCoding(f"not a valid gzip stream: {exc}") from None
            if len(out) > limit:
                raise TooLarge(limit)
            pending = inflater.unconsumed_tail
        # What followed this member's trailer: the next member's first bytes, if any.
        pending = inflater.unused_data
        if not pending and position >= len(data):
            return bytes(out)
    raise BadCoding(f"more than {MAX_MEMBERS} gzip members")


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Does an ``Accept-Encoding`` value (RFC 9110 §12.5.3) take gzip?

    Yes if ``gzip`` (or ``x-gzip``) is listed with a weight above 0, or ``*`` is and
    gzip is not refused by name. An absent or empty field asks for identity here: a
    peer that says nothing gets what it has always got.
    """
    named: float | None = None
    star: float | None = None
    for item in (accept_encoding or "").split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        weight = _weight(params)
        if name in (GZIP, "x-gzip"):
            named = weight if named is None else max(named, weight)
        elif name == "*":
            star = weight
    if named is not None:
        return named > 0
    return star is not None and star > 0


def _weight(params: str) -> float:
    """The ``q`` of one Accept-Encoding member (§12.4.2); a malformed one is 0."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                weight = float(value.strip())
            except ValueError:
                return 0.0
            return weight if 0.0 <= weight <= 1.0 else 0.0
    return 1.0
