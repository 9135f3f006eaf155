"""What the MX port asks of sender authentication, and the answers it acts on.

The MX port asks two questions (appliance.protection.authentication answers them, with
SPF, DKIM and DMARC; the registry hands it in, so mail never imports protection):

- at ``MAIL FROM``: may this client send for the envelope's domain (SPF, RFC 7208
  §2.4: the check belongs to the MAIL command; with a null reverse-path, the HELO
  name's)? The answer is a `SpfCheck`, kept for the transaction;
- at the end of ``DATA``: what do DKIM and DMARC say of the message (RFC 7489), given
  that SPF answer? The answer is a `MessageCheck`: the message with the box's one
  Authentication-Results field on top (RFC 8601), what to do with it, which From
  domains proved themselves, and a short text for the traffic log.

The replies the MX gives for those answers are here too. What the box's own domains
need beyond DMARC (a forged local sender) is the policy's (appliance.mail.smtp.policy).

What this is not: SPF, DKIM or DMARC themselves (appliance.protection).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from appliance.mail.smtp.protocol import Reply

#: RFC 7489 §6.6.4 / §10.3 (``p=reject``): refused after DATA, never bounced later.
#: RFC 7372 §3.2 defines 5.7.26 for this, but 5.7.1 is what every sender knows.
DMARC_REJECTED = Reply(
    550, "5.7.1", "Refused: the sender's domain publishes a DMARC policy this message fails"
)
#: A temporary DNS error left the box's own domain unproven (RFC 7208 §2.6.6, RFC 7489
#: §6.6.3): the sender keeps the message and tries again.
AUTHENTICATION_UNAVAILABLE = Reply(
    451, "4.7.1", "Cannot check the sender's authentication now, try again later"
)


class Disposition(enum.Enum):
    """What the MX does with a message after DKIM and DMARC (RFC 7489 §6.6.4)."""

    #: Into the recipients' Inbox (DMARC passed, or asked for nothing).
    DELIVER = "deliver"
    #: Into Junk: ``p=quarantine`` failed, or SPF ``fail`` with no DMARC pass.
    JUNK = "junk"
    #: ``550 5.7.1``: ``p=reject`` failed.
    REFUSE = "refuse"


@dataclass(frozen=True)
class SpfCheck:
    """SPF's answer for one transaction (RFC 7208 §2.6, RFC 8601 §2.7.2)."""

    #: none, neutral, pass, fail, softfail, temperror or permerror.
    result: str
    #: The domain checked: the MAIL FROM domain, or the HELO name for a null sender.
    domain: str | None
    #: "mailfrom" or "helo" (RFC 7208 §2.3, §2.4).
    scope: str = "mailfrom"
    #: The explanation, for a comment in the field.
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True)
class MessageCheck:
    """DKIM and DMARC's answer for one message, with SPF's folded in."""

    #: The message with forged Authentication-Results of ours removed (the same
    #: object as the one checked when there were none).
    body: bytes
    disposition: Disposition
    #: The From domains (lower case, A-labels) proven by a pass of SPF or DKIM that
    #: aligns with them (RFC 7489 §3.1), whether or not they publish DMARC.
    authenticated: frozenset[str]
    #: A temporary DNS error may have hidden such a pass (SPF or DKIM temperror).
    temporary: bool
    #: The verdicts as the traffic log's short text: ``spf=pass dkim=none dmarc=pass``.
    summary: str
    #: Our Authentication-Results field (RFC 8601), CRLF-terminated, for the top.
    field: bytes = b""

    @property
    def content(self) -> bytes:
        """The message as it is stored: `field` on top of `body` (a copy: tests, logs)."""
        return self.field + self.body


class InboundAuthentication(Protocol):
    """What the MX asks of a sender and of a message (appliance.protection.authentication)."""

    async def check_sender(
        self, client_ip: str | None, helo: str | None, mail_from: str
    ) -> SpfCheck: ...

    async def check_message(self, content: bytes, spf: SpfCheck | None) -> MessageCheck:
        """*spf* is None for a trusted relay: it is not the border (RFC 7208 §2.2)."""
        ...
