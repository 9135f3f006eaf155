"""Who may send what to whom: the box's answers to the SMTP core's questions.

The protocol core asks; this module answers with a `Reply` (refuse) or None (accept).
The rules (issue "Foundation", DESIGN.md, REQUIREMENTS.md §2):

- **MX port** (mail from the centre and the LAN): recipients must be users of one of
  the box's own domains. Any other domain is refused: the box is never an open relay.
- **Submission ports** (Outlook, Thunderbird, phones): AUTH is required (the core
  enforces it), the envelope sender and every From address must be the authenticated
  user, and recipients may be anywhere: other domains go to the outbound queue. An
  account with a delegation for the sender's agency may also send as them: that is how
  an office box relays its users' mail through the central server (here a hub) under
  its own service account (issue 5; `Directory.act_as`).
- Both: unknown local users get 550 5.1.1; disabled ones 550 5.2.1; a full mailbox
  452 4.2.2 (try later), a message that cannot fit 552 5.2.2.
"""

from __future__ import annotations

import enum

from appliance.directory import Directory, DirectoryError, normalise_address
from appliance.mail import headers
from appliance.mail.delivery import Recipient
from appliance.mail.mailstore import Mailstore
from appliance.mail.smtp.protocol import MailFrom, RcptTo, Reply

RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied: this box accepts mail only for its domains")
USER_UNKNOWN = Reply(550, "5.1.1", "No such user here")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")
OVER_QUOTA = Reply(552, "5.2.2", "Mailbox quota exceeded")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address is not owned by the authenticated user")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header does not match the authenticated user")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
AUTHZ_DENIED = Reply(535, "5.7.8", "Not allowed to act for that user")


class Port(enum.Enum):
    #: Port 25: inbound mail for the box's domains, no AUTH.
    MX = "mx"
    #: Port 587: STARTTLS then AUTH (RFC 6409).
    SUBMISSION = "submission"
    #: Port 465: implicit TLS then AUTH (RFC 8314).
    SUBMISSIONS = "submissions"

    @property
    def submission(self) -> bool:
        return self is not Port.MX


class SMTPPolicy:
    """Answers `MailFrom`, `RcptTo` and message checks for one listener."""

    def __init__(self, port: Port, directory: Directory, mailstore: Mailstore) -> None:
        self.port = port
        self.directory = directory
        self.mailstore = mailstore

    async def check_sender(self, event: MailFrom, authenticated_as: str | None) -> Reply | None:
        if not self.port.submission:
            return None
        # RFC 6409 §4.3 lets a submission server check the sender; we insist, so one
        # official cannot send as another.
        try:
            sender = normalise_address(event.reverse_path) if event.reverse_path else ""
        except DirectoryError:
            return BAD_SENDER
        if not await self._may_send_as(authenticated_as, sender):
            return SENDER_NOT_OWNED
        return None

    async def check_recipient(
        self, event: RcptTo, declared_size: int | None
    ) -> tuple[Reply | None, Recipient | None]:
        """Return a refusal, or the accepted recipient with its delivery route."""
        path = event.forward_path
        if path.lower() == "postmaster":
            # RFC 5321 §4.5.1: the bare form means this box's postmaster.
            path = f"postmaster@{min(await self.directory.local_domains())}"
        try:
            address = normalise_address(path)
        except DirectoryError:
            return BAD_RECIPIENT, None
        domain = address.rpartition("@")[2]
        notify, orcpt = event.params.get("NOTIFY"), event.params.get("ORCPT")
        if domain not in await self.directory.local_domains():
            if not self.port.submission:
                return RELAY_DENIED, None
            return None, Recipient(address, local=False, notify=notify, orcpt=orcpt)
        user = await self.directory.user(address)
        if user is None:
            return USER_UNKNOWN, None
        if user.disabled:
            return MAILBOX_DISABLED, None
        used = await self.mailstore.usage(user.address)
        if used >= user.quota_bytes:
            return MAILBOX_FULL, None
        if declared_size is not None and used + declared_size > user.quota_bytes:
            return OVER_QUOTA, None
        return None, Recipient(user.address, local=True, notify=notify, orcpt=orcpt)

    async def check_message(
        self, content: bytes, authenticated_as: str | None, envelope_sender: str | None = None
    ) -> Reply | None:
        """On submission, every From address must be the authenticated user (or one it
        may act for).

        *envelope_sender* is this transaction's MAIL FROM, which `check_sender` already
        allowed for the same authenticated user (AUTH cannot change inside a
        transaction), so a From naming it is not looked up again: the usual message
        costs no directory lookup here.
        """
        if not self.port.submission:
            return None
        senders = headers.from_addresses(headers.parse_headers(content))
        if not senders:
            return FROM_NOT_OWNED
        allowed = _normalised(envelope_sender) if envelope_sender else None
        for sender in senders:
            address = _normalised(sender)
            if address is not None and address == allowed:
                continue
            if not await self._may_send_as(authenticated_as, address):
                return FROM_NOT_OWNED
        return None

    async def _may_send_as(self, authenticated_as: str | None, sender: str | None) -> bool:
        if authenticated_as is None or not sender:
            return False
        if sender == authenticated_as:
            return True
        actor = await self.directory.user(authenticated_as)
        return actor is not None and await self.directory.act_as(actor, sender) is not None


def _normalised(address: str) -> str | None:
    try:
        return normalise_address(address)
    except DirectoryError:
        return None
