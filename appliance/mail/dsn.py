"""Bounce messages: delivery status notifications for mail the box could not send.

When the outbound relay gives up on a recipient (the centre answered 5xx, or the
message waited longer than ``outbound_expiry_days``), the sender gets an RFC 3464
report: a ``multipart/report; report-type=delivery-status`` (RFC 6522) with

1. a human-readable part, in Thai and English, saying what failed and why;
2. a ``message/delivery-status`` part with the per-message fields (Reporting-MTA,
   Original-Envelope-Id, Arrival-Date) and a block per recipient (Final-Recipient,
   Original-Recipient, Action: failed, Status, Diagnostic-Code, Last-Attempt-Date);
3. the original header section (``text/rfc822-headers``, RET=HDRS and the default) or
   the whole original message (``message/rfc822``, RET=FULL) (RFC 3461 §4.3).

Who gets one follows RFC 3461 §4.1: nobody for NOTIFY=NEVER or a NOTIFY without
FAILURE, and never for a message with the null sender (a bounce is not bounced,
RFC 5321 §4.5.5). The report itself is sent with the null sender.

What this is not: deciding *when* to bounce (appliance.sync.relay) or delivering the
bounce (`Mailstore`). This module only builds bytes.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime

from appliance.mail import headers

#: RFC 3463 §3.5: X.4.7 "Delivery time expired". Postfix and others report 4.4.7 with
#: Action: failed for a message that aged out: the cause was transient, the outcome final.
EXPIRED_STATUS = "4.4.7"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the box gave up on."""

    recipient: str
    #: RFC 3463 status, e.g. "5.1.1".
    status: str
    #: The remote reply, e.g. "550 5.1.1 no such user" (None: nothing was said).
    diagnostic: str | None
    #: ORCPT as received: ``addr-type;xtext`` (RFC 3461 §4.2).
    orcpt: str | None = None
    #: Unix time of the last delivery attempt (None: never attempted).
    last_attempt: float | None = None


def wants_failure_notice(notify: str | None) -> bool:
    """Whether a recipient's NOTIFY asks for a report on failure (RFC 3461 §4.1).

    Absent NOTIFY means the default, FAILURE (and DELAY, which the box does not send).
    """
    if notify is None:
        return True
    words = {word.strip().upper() for word in notify.split(",")}
    return "FAILURE" in words and "NEVER" not in words


def decode_xtext(value: str) -> str:
    """Undo RFC 3461 §4 xtext: ``+HH`` is the octet HH; anything malformed stays as is."""
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def build_bounce(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[FailedRecipient],
    original: bytes,
    arrival: float,
    now: float,
    ret: str | None = None,
    envid: str | None = None,
    expired_after_days: float | None = None,
) -> bytes:
    """Return the RFC 3464 report for *recipients* of *original*, CRLF line ends.

    *expired_after_days* says the message aged out (the human part says so).
    """
    if not recipients:
        raise ValueError("a bounce needs at least one failed recipient")
    boundary = "=_edgebox-dsn-" + secrets.token_hex(12)
    mta = _one_line(reporting_mta)
    date = format_datetime(datetime.fromtimestamp(now, UTC))
    subject = Header("ส่งไม่สำเร็จ / Undelivered Mail Returned to Sender", "utf-8").encode(
        linesep="\r\n"
    )
    head = [
        f"From: =?utf-8?b?{_b64('ระบบส่งจดหมาย')}?= (Mail Delivery System) <MAILER-DAEMON@{mta}>",
        f"To: <{_one_line(sender)}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{secrets.token_hex(12)}@{mta}>",
        # RFC 3834 §5: an automatic reply; well-behaved responders do not answer it.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    human = _human_text(mta, recipients, expired_after_days)
    parts = [
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Description: Notification\r\n\r\n" + _wrap_base64(human.encode("utf-8")),
        "Content-Type: message/delivery-status\r\n"
        "Content-Description: Delivery report\r\n\r\n"
        + _status_fields(mta, recipients, arrival, envid),
    ]
    if (ret or "").upper() == "FULL":
        returned = (
            b"Content-Type: message/rfc822\r\nContent-Description: Undelivered Message\r\n\r\n"
        ) + _crlf(original)
    else:
        returned = (
            b"Content-Type: text/rfc822-headers\r\n"
            b"Content-Description: Undelivered Message Headers\r\n\r\n"
        ) + _crlf(headers.header_block(original))
    body = b"".join(f"--{boundary}\r\n{part}\r\n".encode() for part in parts)
    # The CRLF before a boundary belongs to the delimiter (RFC 2046 §5.1.1), so the
    # returned part keeps its own last line end only if one more is added.
    body += f"--{boundary}\r\n".encode() + returned + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _status_fields(
    mta: str, recipients: Sequence[FailedRecipient], arrival: float, envid: str | None
) -> str:
    # RFC 3464 §2.2: per-message fields, then one block per recipient (§2.3), each
    # block preceded by an empty line.
    lines = [f"Reporting-MTA: dns; {mta}"]
    if envid:
        lines.append(f"Original-Envelope-Id: {_one_line(decode_xtext(envid))}")
    lines.append(f"Arrival-Date: {format_datetime(datetime.fromtimestamp(arrival, UTC))}")
    for failed in recipients:
        lines.append("")
        lines.append(f"Final-Recipient: rfc822; {_one_line(failed.recipient)}")
        if failed.orcpt and ";" in failed.orcpt:
            kind, _, address = failed.orcpt.partition(";")
            lines.append(
                f"Original-Recipient: {_one_line(kind)}; {_one_line(decode_xtext(address))}"
            )
        lines.append("Action: failed")
        lines.append(f"Status: {_one_line(failed.status)}")
        if failed.diagnostic:
            lines.append(f"Diagnostic-Code: smtp; {_one_line(failed.diagnostic)}")
        if failed.last_attempt is not None:
            stamp = format_datetime(datetime.fromtimestamp(failed.last_attempt, UTC))
            lines.append(f"Last-Attempt-Date: {stamp}")
    return "\r\n".join(lines) + "\r\n"


def _human_text(
    mta: str, recipients: Sequence[FailedRecipient], expired_after_days: float | None
) -> str:
    listed = "\n".join(
        f"  <{_one_line(r.recipient)}>: {_one_line(r.diagnostic or r.status)}" for r in recipients
    )
    if expired_after_days is not None:
        days = f"{expired_after_days:g}"
        why_th = f"จดหมายรอส่งนานเกิน {days} วันโดยส่งไม่สำเร็จ ระบบจึงยกเลิกการส่ง"
        why_en = f"The message could not be delivered within {days} days and was given up."
    else:
        why_th = "เซิร์ฟเวอร์ปลายทางปฏิเสธผู้รับต่อไปนี้อย่างถาวร"
        why_en = "The receiving server permanently refused the following recipients."
    return (
        f"เรียนผู้ส่ง\n\nระบบจดหมายที่ {mta} ไม่สามารถส่งจดหมายของท่านถึงผู้รับต่อไปนี้ได้\n"
        f"{why_th}\n\n{listed}\n\n"
        "โปรดตรวจสอบที่อยู่ผู้รับ หรือติดต่อผู้ดูแลระบบ\n\n"
        "----\n\n"
        f"This is the mail system at {mta}.\n\n"
        f"Your message could not be delivered to the recipients below.\n{why_en}\n\n"
        f"{listed}\n\n"
        "Please check the addresses or contact your administrator.\n"
    )


def _one_line(value: str) -> str:
    """Make remote text safe inside one header field: no line breaks or controls."""
    return "".join(c if c.isprintable() else " " for c in value).strip()[:900]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _wrap_base64(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "".join(encoded[i : i + 76] + "\r\n" for i in range(0, len(encoded), 76))


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)
