"""Who may send what to whom: the box's answers to the SMTP core's questions.

The protocol core asks; this module answers with a `Reply` (refuse) or None (accept).
The rules (issue "Foundation", DESIGN.md, REQUIREMENTS.md §2):

- **MX port** (mail from the centre and the LAN): recipients must be users of one of
  the box's own domains. Any other domain is refused: the box is never an open relay.
  Mail claiming one of the box's own domains as its sender must prove it: a MAIL FROM
  of ours needs an SPF pass (RFC 7208), a From address of ours an SPF or DKIM pass
  aligned with it — DMARC's test (RFC 7489 §3.1), applied whether or not the domain
  publishes a DMARC record, because the box knows its own domains: its users send
  through submission with a password, and anything else claiming to be them on port
  25 is a forgery that webmail would show exactly like internal mail (issue 16).
  Unproven, it is refused with 550 5.7.1 (451 4.7.1 when a DNS failure may have hidden
  the proof). Mail from a trusted relay (the hub or the central relay:
  ``mx_trusted_relays``, filled in at enrolment) needs no proof. The proofs come from
  the MX's `InboundAuthentication` (appliance.mail.smtp.authentication); a domain that
  publishes ``p=reject`` is refused by DMARC itself before this rule is asked.
- **postmaster** (bare, or at any local domain) is always accepted (RFC 5321 §4.5.1)
  and delivered to the agency's admins unless an account of that name exists.
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
import ipaddress
import math
from collections.abc import Iterable, Sequence

import trio

from appliance.directory import Directory, DirectoryError, normalise_address, normalise_domain
from appliance.mail import headers
from appliance.mail.delivery import Recipient
from appliance.mail.mailstore import Mailstore
from appliance.mail.smtp.authentication import AUTHENTICATION_UNAVAILABLE, MessageCheck, SpfCheck
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
LOCAL_SENDER_FORGED = Reply(
    550,
    "5.7.1",
    "Mail from this box's own domain is refused on port 25; its users send on the"
    " submission port (587 or 465) with their password",
)
NO_POSTMASTER = Reply(451, "4.3.0", "No administrator receives postmaster mail yet, try later")

#: Seconds the box's own domains, once read, answer MAIL, RCPT and From checks before
#: they are read again. Every message asks two or three times; the set changes when
#: an agency is added, which a new message sees at most this late (a recipient in a
#: domain not in the set is looked up afresh before it is refused).
LOCAL_DOMAINS_TTL = 1.0


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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_relays(setting: str) -> list[IPNetwork]:
    """Parse ``mx_trusted_relays``: addresses or networks, separated by commas or spaces.

    Raises ValueError naming the entry that is neither.
    """
    networks: list[IPNetwork] = []
    for entry in setting.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"mx_trusted_relays: {entry!r} is not an IP address or network"
            ) from None
    return networks


class SMTPPolicy:
    """Answers `MailFrom`, `RcptTo` and message checks for one listener."""

    def __init__(
        self,
        port: Port,
        directory: Directory,
        mailstore: Mailstore,
        trusted_relays: Iterable[IPNetwork] = (),
    ) -> None:
        self.port = port
        self.directory = directory
        self.mailstore = mailstore
        self.trusted_relays: Sequence[IPNetwork] = list(trusted_relays)
        self._domains: frozenset[str] = frozenset()
        self._domains_until = -math.inf

    async def local_domains(self, *, fresh: bool = False) -> frozenset[str]:
        """The box's own mail domains, read at most every `LOCAL_DOMAINS_TTL` seconds."""
        now = trio.current_time()
        if fresh or now >= self._domains_until:
            self._domains = await self.directory.local_domains()
            self._domains_until = now + LOCAL_DOMAINS_TTL
        return self._domains

    def trusted_relay(self, client_ip: str | None) -> bool:
        """Return whether *client_ip* may send mail for the box's own domains on port 25."""
        try:
            ip = ipaddress.ip_address(client_ip or "")
        except ValueError:
            return False
        # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted_relays)

    async def _claims_local_domain(self, address: str | None) -> bool:
        normalised = _normalised(address) if address else None
        if normalised is None:
            return False
        return normalised.rpartition("@")[2] in await self.local_domains()

    async def check_sender(
        self,
        event: MailFrom,
        authenticated_as: str | None,
        client_ip: str | None = None,
        spf: SpfCheck | None = None,
    ) -> Reply | None:
        """*spf* is SPF's answer for this MAIL FROM on the MX port (None: not checked)."""
        if not self.port.submission:
            if await self._claims_local_domain(event.reverse_path) and not self.trusted_relay(
                client_ip
            ):
                if spf is not None and spf.passed:
                    return None  # the domain's own SPF record names this client
                if spf is not None and spf.result == "temperror":
                    return AUTHENTICATION_UNAVAILABLE
                return LOCAL_SENDER_FORGED
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
            path = f"postmaster@{min(await self.local_domains())}"
        try:
            address = normalise_address(path)
        except DirectoryError:
            return BAD_RECIPIENT, None
        domain = address.rpartition("@")[2]
        notify, orcpt = event.params.get("NOTIFY"), event.params.get("ORCPT")
        if domain not in await self.local_domains() and domain not in await self.local_domains(
            fresh=True
        ):
            if not self.port.submission:
                return RELAY_DENIED, None
            return None, Recipient(address, local=False, notify=notify, orcpt=orcpt)
        user = await self.directory.user(address)
        if user is None and address.partition("@")[0] == "postmaster":
            return await self._postmaster(address, domain, notify, orcpt)
        if user is None:
            return USER_UNKNOWN, None
        if user.disabled:
            return MAILBOX_DISABLED, None
        used = await self.mailstore.usage(user.address)
        if used >= user.quota_bytes:
            return MAILBOX_FULL, None
        if declared_size is not None and used + declared_size > user.quota_bytes:
            return OVER_QUOTA, None
        return None, Recipient(user.address, local=True, notify=notify, orcpt=orcpt,
                               quota_bytes=user.quota_bytes)  # fmt: skip

    async def check_message(
        self,
        content: bytes,
        authenticated_as: str | None,
        envelope_sender: str | None = None,
        client_ip: str | None = None,
        authentication: MessageCheck | None = None,
    ) -> Reply | None:
        """On submission, every From address must be the authenticated user (or one it
        may act for); on the MX, every From address of ours must be proven by
        *authentication* (the MX's SPF/DKIM/DMARC answer; None: nothing proven).

        *envelope_sender* is this transaction's MAIL FROM, which `check_sender` already
        allowed for the same authenticated user (AUTH cannot change inside a
        transaction), so a From naming it is not looked up again: the usual message
        costs no directory lookup here.
        """
        if not self.port.submission:
            if self.trusted_relay(client_ip):
                return None
            proven = _domains(authentication.authenticated if authentication else ())
            # The From is what webmail and every mail client show as the sender.
            for sender in headers.from_addresses(headers.parse_headers(content)):
                if not await self._claims_local_domain(sender):
                    continue
                if (_normalised(sender) or sender).rpartition("@")[2] in proven:
                    continue
                if authentication is not None and authentication.temporary:
                    return AUTHENTICATION_UNAVAILABLE
                return LOCAL_SENDER_FORGED
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

    async def _postmaster(
        self, address: str, domain: str, notify: str | None, orcpt: str | None
    ) -> tuple[Reply | None, Recipient | None]:
        """Accept postmaster@<local domain> for the agency's admins (RFC 5321 §4.5.1).

        A real account named postmaster is delivered to as any user (above); otherwise
        the agency's enabled admins get the mail. No quota check: mail about mail
        problems must get through, and a 452 here would hide exactly that. With no admin
        at all there is no one to deliver to, and the refusal says so.
        """
        admins = await self.directory.agency_admins(domain)
        if not admins:
            return NO_POSTMASTER, None
        return None, Recipient(address, local=True, notify=notify, orcpt=orcpt,
                               mailboxes=tuple(admins))  # fmt: skip

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


def _domains(domains: Iterable[str]) -> frozenset[str]:
    """The directory's form of *domains* (A-labels become U-labels), both spellings kept."""
    found: set[str] = set()
    for domain in domains:
        found.add(domain)
        try:
            found.add(normalise_domain(domain))
        except DirectoryError:
            pass
    return frozenset(found)
