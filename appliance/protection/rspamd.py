"""rspamd's scanning protocol, sans-I/O: the ``/checkv2`` request and its JSON verdict.

rspamd's normal worker answers ``POST /checkv2`` (rspamd "protocol" documentation,
"Rspamd HTTP request"): the body is the whole message as received, and the envelope
rides in request headers — ``IP`` (the client's address), ``Helo``, ``From`` (MAIL
FROM), one ``Rcpt`` per recipient, ``User`` (the authenticated user) and ``Queue-Id``.
The reply is one JSON object; what we read of it::

    {"score": 5.9, "required_score": 15.0, "action": "add header",
     "symbols": {"MISSING_MID": {"name": "MISSING_MID", "score": 2.5}, ...},
     "messages": {"smtp_message": "Gtube pattern"}}

The box judges the score against its own per-agency thresholds
(`appliance.protection.verdict`), not rspamd's actions, so the admin console's numbers
are the ones that count. One exception: an action of ``reject`` that rspamd decided
before scoring (a *pre-result*, e.g. the GTUBE test pattern, reported with
``is_skipped``) is honoured as a reject whatever the score.

This module builds the request as h11 events and reads the reply body; the trio client
(`appliance.protection.scanner.RspamdClient`) moves the bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import h11

CHECK_PATH = b"/checkv2"
#: A verdict larger than this is not rspamd's (symbols of a large message stay < 100 KB).
MAX_REPLY = 1024 * 1024


class RspamdProtocolError(Exception):
    """The reply is not an rspamd verdict."""


@dataclass(frozen=True)
class Envelope:
    """What rspamd is told about the SMTP transaction beside the message."""

    client_ip: str | None = None
    helo: str | None = None
    sender: str | None = None
    recipients: Sequence[str] = ()
    user: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True)
class SpamReport:
    """rspamd's verdict on one message."""

    score: float
    required_score: float
    action: str
    #: Symbol name -> its score, highest first when shown.
    symbols: Mapping[str, float] = field(default_factory=dict)
    #: True when rspamd decided before scoring (a pre-result such as GTUBE).
    skipped: bool = False
    #: rspamd's message for the SMTP reply, if it gave one.
    smtp_message: str = ""

    @property
    def pre_rejected(self) -> bool:
        """rspamd refused the message before scoring (e.g. the GTUBE pattern)."""
        return self.skipped and self.action == "reject"


def _header_value(value: str) -> bytes:
    # h11 refuses CR/LF in a value; an envelope never holds them, but a hostile HELO
    # must not turn into a broken request.
    return "".join(c for c in value if c.isprintable()).encode("utf-8", "replace")[:998]


def check_request(host: str, content_length: int, envelope: Envelope) -> h11.Request:
    """Return the request line and headers of one ``/checkv2`` scan."""
    headers: list[tuple[bytes, bytes]] = [
        (b"Host", host.encode("ascii")),
        (b"Content-Length", str(content_length).encode("ascii")),
        (b"Connection", b"close"),
    ]
    if envelope.client_ip:
        headers.append((b"IP", _header_value(envelope.client_ip)))
    if envelope.helo:
        headers.append((b"Helo", _header_value(envelope.helo)))
    if envelope.sender is not None:
        headers.append((b"From", _header_value(envelope.sender or "<>")))
    for recipient in envelope.recipients:
        headers.append((b"Rcpt", _header_value(recipient)))
    if envelope.user:
        headers.append((b"User", _header_value(envelope.user)))
    if envelope.queue_id:
        headers.append((b"Queue-Id", _header_value(envelope.queue_id)))
    return h11.Request(method=b"POST", target=CHECK_PATH, headers=headers)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RspamdProtocolError(f"{name} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise RspamdProtocolError(f"{name} is not finite")
    return number


def parse_verdict(status: int, body: bytes) -> SpamReport:
    """Read the reply to ``/checkv2``; raise `RspamdProtocolError` if it is not one."""
    if status != 200:
        raise RspamdProtocolError(f"rspamd answered HTTP {status}")
    if len(body) > MAX_REPLY:
        raise RspamdProtocolError("rspamd reply too long")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RspamdProtocolError(f"rspamd reply is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RspamdProtocolError("rspamd reply is not a JSON object")
    if "error" in document and "score" not in document:
        raise RspamdProtocolError(f"rspamd error: {str(document['error'])[:200]}")
    score = _number(document.get("score"), "score")
    required = _number(document.get("required_score", 0.0), "required_score")
    action = document.get("action")
    if not isinstance(action, str):
        raise RspamdProtocolError("action is not a string")
    symbols: dict[str, float] = {}
    raw_symbols = document.get("symbols", {})
    if not isinstance(raw_symbols, dict):
        raise RspamdProtocolError("symbols is not an object")
    for name, symbol in raw_symbols.items():
        if not isinstance(symbol, dict):
            raise RspamdProtocolError(f"symbol {name!r} is not an object")
        symbols[str(name)] = _number(symbol.get("score", 0.0), f"symbol {name!r} score")
    messages = document.get("messages", {})
    smtp_message = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    return SpamReport(
        score=score,
        required_score=required,
        action=action,
        symbols=symbols,
        skipped=document.get("is_skipped") is True,
        smtp_message=smtp_message if isinstance(smtp_message, str) else "",
    )
