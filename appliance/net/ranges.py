"""HTTP range requests, the server's half: which bytes of a file one ``Range`` asks for.

Pure (RFC 9110 §14). Only what a resuming download needs is served: ONE byte range
(``bytes=N-``, ``bytes=N-M``, or a suffix ``bytes=-N``). A header this module cannot
read, or a list of ranges, is ignored as §14.2 allows: the whole file is sent (200).
A range that starts at or past the end is unsatisfiable: 416 (§15.5.17).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_ONE: Final = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True)
class ByteRange:
    """Bytes *first* to *last*, both included, of a file of *size* bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> str:
        """The ``Content-Range`` field value of a 206 answer (RFC 9110 §14.4)."""
        return f"bytes {self.first}-{self.last}/{self.size}"


class Unsatisfiable(Exception):
    """No byte of the file is in the range: answer 416 with ``bytes */size``."""


def requested_range(value: str | None, size: int) -> ByteRange | None:
    """The one range *value* asks of a *size*-byte file; None: send it whole.

    Raise `Unsatisfiable` for a range that holds no byte of the file.
    """
    if value is None:
        return None
    match = _ONE.match(value)
    if match is None:
        return None  # several ranges, another unit, or not a range at all
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        # A suffix: the last N bytes (§14.1.2).
        count = int(last)
        if count == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - count), size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: §14.1.1 says to ignore it
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1), size)
