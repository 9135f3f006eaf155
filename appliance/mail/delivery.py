"""Accept a message from SMTP: trace it, classify it, store it once, fan it out.

`Delivery.deliver` is the one place where a message received by the box becomes
durable. It adds the Received trace field (RFC 5321 §4.4), reads the classification,
urgency and Message-ID, encrypts the bytes into one blob, and commits in one transaction
a mailbox row for every local recipient and an outbound-queue row for every other one.
When it returns, all of that is fsynced; when it raises, none of it is visible.

What this is not: the SMTP dialogue (mail.smtp) or sending the queue out (sync, later).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import trio

from appliance.directory import Directory
from appliance.mail import headers
from appliance.mail.mailstore import LocalCopy, Mailstore, NewMessage, OutboundCopy

log = logging.getLogger("edgebox.mail")


@dataclass(frozen=True)
class Recipient:
    """An accepted RCPT with its DSN parameters (RFC 3461 §4)."""

    address: str
    local: bool
    notify: str | None = None
    orcpt: str | None = None
    #: The local users who receive this recipient's copy when the address is not a
    #: user's own (postmaster: the agency admins); empty: the address itself.
    mailboxes: tuple[str, ...] = ()
    #: The user's quota as the RCPT check read it (the address is then the directory's
    #: own form): delivery need not look the user up again. None: delivery looks up.
    quota_bytes: int | None = None


@dataclass(frozen=True)
class Trace:
    """Where a message came from, for the Received field (RFC 5321 §4.4)."""

    helo: str
    client_ip: str
    #: RFC 3848 / RFC 6531 §3.7.3 "with" keyword: ESMTP, ESMTPS, ESMTPSA, UTF8SMTPSA, ...
    protocol: str


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: Sequence[Recipient]
    trace: Trace
    ret: str | None = None
    envid: str | None = None


def new_queue_id() -> str:
    """Return a short random id naming one accepted message in logs and replies."""
    return secrets.token_hex(8).upper()


def with_protocol(*, extended: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """Name the receiving protocol for the Received field (RFC 3848, RFC 6531 §3.7.3)."""
    if not extended:
        return "SMTP"
    name = ("UTF8SMTP" if utf8 else "ESMTP") + ("S" if tls else "") + ("A" if auth else "")
    return name


class Delivery:
    """Turns an accepted SMTP transaction into committed mailbox and queue rows."""

    def __init__(self, directory: Directory, mailstore: Mailstore, hostname: str) -> None:
        self.directory = directory
        self.mailstore = mailstore
        self.hostname = hostname

    async def deliver(
        self,
        envelope: Envelope,
        content: bytes,
        *,
        folder: str = "INBOX",
        on_top: Sequence[bytes] = (),
    ) -> str:
        """Store *content* for every recipient; return the queue id once fsynced.

        Local copies go into the mailbox *folder* ("Junk": spam below the reject score).
        *on_top* are header fields the receiving side adds (Authentication-Results,
        the scan's), topmost first, CRLF-terminated; they go below our Received field.

        Raises `QuotaExceeded` (nothing stored) if a local mailbox has no room.
        """
        queue_id = new_queue_id()
        # The stored form is built once, in one join: a field added with `+` each
        # would copy a large message once per field (docs/BENCHMARKS.md, issue 21).
        message = b"".join((self.received_field(envelope, queue_id), *on_top, content))
        fields = headers.parse_headers(message)
        local: list[LocalCopy] = []
        outbound: list[OutboundCopy] = []
        for rcpt in envelope.recipients:
            if rcpt.local and rcpt.quota_bytes is not None and not rcpt.mailboxes:
                # Looked up at RCPT: one directory lookup per recipient, not two. The
                # directory never deletes a user (disabling keeps the row), so the
                # address cannot have vanished since; a quota lowered meanwhile only
                # takes effect from the next message.
                if all(copy.owner != rcpt.address for copy in local):
                    local.append(LocalCopy(rcpt.address, rcpt.quota_bytes, folder))
            elif rcpt.local:
                for mailbox in rcpt.mailboxes or (rcpt.address,):
                    user = await self.directory.user(mailbox)
                    if user is None:
                        raise LookupError(f"local recipient {mailbox} vanished")
                    # An admin named twice (as themselves and as postmaster) gets one copy.
                    if all(copy.owner != user.address for copy in local):
                        local.append(LocalCopy(user.address, user.quota_bytes, folder))
            else:
                outbound.append(OutboundCopy(rcpt.address, rcpt.notify, rcpt.orcpt))
        classification, urgency = headers.levels(fields)
        message_id = headers.message_id(fields)
        # The blob is fsynced before the rows that name it are committed.
        blob_id = await trio.to_thread.run_sync(self.mailstore.blobs.put, message)
        resent = await self.mailstore.commit(
            NewMessage(
                queue_id=queue_id,
                blob_id=blob_id,
                size=len(message),
                content_hash=hashlib.sha256(message).hexdigest(),
                message_id_digest=_digest(self.mailstore, message_id),
                sender=envelope.sender,
                classification=classification,
                urgency=urgency,
                ret=envelope.ret,
                envid=envelope.envid,
                internal_date=int(time.time()),
                resend_key=self.resend_key(message_id, message),
            ),
            local,
            outbound,
            content=message,
        )
        if resent:
            log.info("resend dropped id=%s rcpts=%d: accepted before", queue_id, len(resent))
        return queue_id

    def resend_key(self, message_id: str | None, content: bytes) -> Callable[[str], str] | None:
        """Name each copy of *content* so the same message sent again matches it.

        A sender that lost our 250 sends the same bytes again; a hop in between that
        lost one sends its copy with a new Received field of its own on top. So the key
        is the Message-ID and the message below its trace fields. Mail without a
        Message-ID is never matched: two alike messages then may well be two messages.
        """
        if message_id is None:
            return None
        # Hashed in place: a slice of a large message would be another copy of it.
        body = hashlib.sha256(memoryview(content)[headers.trace_end(content) :]).hexdigest()
        digest = self.mailstore.blobs.digest
        return lambda recipient: digest(
            b"\0".join((message_id.encode(), body.encode(), recipient.lower().encode()))
        )

    def received_field(self, envelope: Envelope, queue_id: str) -> bytes:
        """Build the Received trace field (RFC 5321 §4.4), folded, CRLF-terminated."""
        trace = envelope.trace
        # Name the recipient only when there is one: with several, "for" would tell
        # each of them who else got the message (RFC 5321 §7.2).
        recipient = (
            f"\r\n\tfor <{envelope.recipients[0].address}>" if len(envelope.recipients) == 1 else ""
        )
        helo = "".join(c for c in trace.helo if c.isprintable() and c not in "()")[:255]
        stamp = format_datetime(datetime.now(UTC).astimezone())
        field = (
            f"Received: from {helo} ([{trace.client_ip}])\r\n"
            f"\tby {self.hostname} (edgebox) with {trace.protocol} id {queue_id}"
            f"{recipient}; {stamp}\r\n"
        )
        return field.encode("utf-8")


def _digest(mailstore: Mailstore, message_id: str | None) -> str | None:
    # The Message-ID is kept only as a keyed digest: the database must hold nothing
    # readable from a message (DESIGN.md principle 5), yet sync can still match it.
    return None if message_id is None else mailstore.blobs.digest(message_id.encode())
