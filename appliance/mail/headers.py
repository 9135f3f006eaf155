"""Read the header section of a stored message (RFC 5322 §2.2) without trusting it.

Delivery needs a handful of fields (Message-ID, From, the classification headers) from
messages written by anyone. The stdlib `email` package builds a whole object tree and
has raised on hostile input in the past; this reader only splits the header block,
unfolds it and decodes bytes leniently, so it cannot fail on any input.
"""

from __future__ import annotations

from email.utils import getaddresses

from appliance.compliance.classification import (
    CLASSIFICATION_HEADER,
    URGENCY_HEADER,
    Classification,
    Urgency,
    parse_classification,
    parse_urgency,
)


def header_block(content: bytes) -> bytes:
    """Return the bytes before the first empty line (all of it if there is none).

    The first empty line ends the header section whichever line ending it uses, so
    text in the body can never be read as a header field.
    """
    if content.startswith((b"\r\n", b"\n")):
        return b""  # no header fields at all: everything after the empty line is body
    ends = [i for i in (content.find(b"\n\r\n"), content.find(b"\n\n")) if i >= 0]
    return content[: min(ends) + 1] if ends else content


def parse_headers(content: bytes) -> list[tuple[str, str]]:
    """Return ``(name, unfolded value)`` pairs in order; malformed lines are skipped."""
    fields: list[tuple[str, str]] = []
    for raw in header_block(content).decode("utf-8", "replace").splitlines():
        if raw[:1] in (" ", "\t") and fields:
            # RFC 5322 §2.2.3: a line starting with white space continues the field.
            name, value = fields[-1]
            fields[-1] = (name, value + " " + raw.strip())
            continue
        name, colon, value = raw.partition(":")
        if colon and name and name == name.strip() and name.isprintable():
            fields.append((name, value.strip()))
    return fields


#: Fields each hop puts on top of a message (RFC 5321 §4.4): the only difference between
#: two copies of one message that took different paths or were sent twice. RFC 8601 §2.1
#: makes Authentication-Results a trace field too: the MX adds one, and a resend may get
#: another verdict (a DNS look-up that timed out the first time) yet is the same message.
#: A signing hop prepends its DKIM-Signature (RFC 6376 §5.6) and ARC sets (RFC 8617 §4.1)
#: the same way, and a signature carries its signing time (t=): a relay that lost our 250
#: and signs its stored copy again sends a new signature over the same message.
TRACE_FIELDS = frozenset(
    {
        "received",
        "return-path",
        "authentication-results",
        "dkim-signature",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
)


def without_trace(content: bytes) -> bytes:
    """Return *content* without the trace fields on top of it (RFC 5321 §4.4).

    Only the leading run is removed, continuation lines included: a trace field
    further down belongs to the message as its author sent it.
    """
    return content[trace_end(content) :]


def trace_end(content: bytes) -> int:
    """Return where the trace fields on top of *content* end (see `without_trace`)."""
    start = 0
    in_trace = False
    while start < len(content):
        end = content.find(b"\n", start)
        end = len(content) if end < 0 else end + 1
        line = content[start:end]
        if line[:1] in (b" ", b"\t"):
            if not in_trace:
                break
        else:
            name, colon, _ = line.partition(b":")
            in_trace = bool(colon) and name.strip().lower().decode("latin-1") in TRACE_FIELDS
            if not in_trace:
                break
        start = end
    return start


def first_value(fields: list[tuple[str, str]], name: str) -> str | None:
    """Return the first value of header *name* (case-insensitive), if present."""
    wanted = name.lower()
    for field_name, value in fields:
        if field_name.lower() == wanted:
            return value
    return None


def message_id(fields: list[tuple[str, str]]) -> str | None:
    """Return the Message-ID without angle brackets (RFC 5322 §3.6.4)."""
    value = first_value(fields, "Message-ID")
    if not value:
        return None
    value = value.strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return value[:998] or None


def from_addresses(fields: list[tuple[str, str]]) -> list[str]:
    """Return the addr-specs of every From field, lower-cased."""
    values = [value for name, value in fields if name.lower() == "from"]
    return [address.lower() for _, address in getaddresses(values) if "@" in address]


def levels(fields: list[tuple[str, str]]) -> tuple[Classification, Urgency]:
    """Return the message's classification and urgency (REQUIREMENTS.md §2)."""
    return (
        parse_classification(first_value(fields, CLASSIFICATION_HEADER)),
        parse_urgency(first_value(fields, URGENCY_HEADER)),
    )
