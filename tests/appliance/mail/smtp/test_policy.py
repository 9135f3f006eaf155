"""Who may send as whom on the submission port: oneself, or those one may act for."""

from __future__ import annotations

import ipaddress

import pytest
import trio
import trio.testing

from appliance.mail.delivery import Envelope, Trace
from appliance.mail.smtp.authentication import (
    AUTHENTICATION_UNAVAILABLE,
    Disposition,
    MessageCheck,
    SpfCheck,
)
from appliance.mail.smtp.policy import (
    FROM_NOT_OWNED,
    LOCAL_DOMAINS_TTL,
    LOCAL_SENDER_FORGED,
    NO_POSTMASTER,
    SENDER_NOT_OWNED,
    USER_UNKNOWN,
    Port,
    SMTPPolicy,
    parse_trusted_relays,
)
from appliance.mail.smtp.protocol import MailFrom, RcptTo
from tests.appliance.mail.conftest import DOMAIN, MailBox


def mail_from(address: str) -> MailFrom:
    return MailFrom(address, {})


def message_from(address: str) -> bytes:
    return f"From: <{address}>\r\nTo: <x@other.go.th>\r\nSubject: s\r\n\r\nbody\r\n".encode()


async def test_a_user_sends_only_as_themselves(box: MailBox) -> None:
    policy = SMTPPolicy(Port.SUBMISSION, box.directory, box.mailstore)
    me, other = box.users[0], box.users[1]
    assert await policy.check_sender(mail_from(me), me) is None
    assert await policy.check_message(message_from(me), me) is None
    assert await policy.check_sender(mail_from(other), me) == SENDER_NOT_OWNED
    assert await policy.check_message(message_from(other), me) == FROM_NOT_OWNED
    assert await policy.check_sender(mail_from(""), me) == SENDER_NOT_OWNED


async def test_a_box_service_account_relays_for_the_agency_it_was_granted(box: MailBox) -> None:
    """An office box's service account at the centre sends its users' mail (issue 5)."""
    relay = f"box-relay@{DOMAIN}"
    await box.directory.add_user(relay, password="relay-pass-2026", name_th="ระบบส่งต่อ")
    policy = SMTPPolicy(Port.SUBMISSION, box.directory, box.mailstore)
    user = box.users[2]
    assert await policy.check_sender(mail_from(user), relay) == SENDER_NOT_OWNED

    await box.directory.grant_delegation(relay, DOMAIN)
    assert await policy.check_sender(mail_from(user), relay) is None
    assert await policy.check_message(message_from(user), relay) is None
    # Not for addresses outside the delegation, nor for nobody.
    assert await policy.check_sender(mail_from("ghost@elsewhere.go.th"), relay) == (
        SENDER_NOT_OWNED
    )
    assert await policy.check_message(message_from("ghost@elsewhere.go.th"), relay) == (
        FROM_NOT_OWNED
    )
    await box.directory.set_disabled(user, True)
    assert await policy.check_sender(mail_from(user), relay) == SENDER_NOT_OWNED


async def test_the_mx_port_does_not_check_senders(box: MailBox) -> None:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    assert await policy.check_sender(mail_from("anyone@elsewhere.go.th"), None) is None
    assert await policy.check_message(message_from("anyone@elsewhere.go.th"), None) is None


async def test_a_from_naming_the_allowed_envelope_sender_is_not_looked_up_again(
    box: MailBox,
) -> None:
    policy = SMTPPolicy(Port.SUBMISSION, box.directory, box.mailstore)
    me, other = box.users[0], box.users[1]
    lookups: list[object] = []
    may_send_as = policy._may_send_as

    async def counted(actor: str | None, sender: str | None) -> bool:
        lookups.append(sender)
        return await may_send_as(actor, sender)

    policy._may_send_as = counted  # type: ignore[method-assign]
    assert await policy.check_message(message_from(me.upper()), me, me) is None
    assert lookups == []
    # Any other From is still checked, whatever the envelope said.
    assert await policy.check_message(message_from(other), me, me) == FROM_NOT_OWNED
    assert lookups == [other]


# --- issue 16: forged local senders on the MX port, postmaster ----------------------

CENTRE = parse_trusted_relays("10.20.0.5, 10.30.0.0/24 fd00::5")


@pytest.mark.parametrize("port", [Port.MX])
async def test_mx_refuses_a_local_sender_from_an_untrusted_source(box: MailBox, port: Port) -> None:
    policy = SMTPPolicy(port, box.directory, box.mailstore, CENTRE)
    me = box.users[0]
    for source in ("192.168.1.50", "127.0.0.1", None, "10.30.1.1"):
        assert await policy.check_sender(mail_from(me), None, source) == LOCAL_SENDER_FORGED
        assert await policy.check_sender(mail_from(me.upper()), None, source) == (
            LOCAL_SENDER_FORGED
        )
        # The envelope says someone else, the From one of ours: refused at the end of DATA.
        assert await policy.check_sender(mail_from("x@other.go.th"), None, source) is None
        assert await policy.check_message(message_from(me), None, "x@other.go.th", source) == (
            LOCAL_SENDER_FORGED
        )
    assert LOCAL_SENDER_FORGED.code == 550
    assert LOCAL_SENDER_FORGED.enhanced == "5.7.1"


@pytest.mark.parametrize("source", ["10.20.0.5", "10.30.0.77", "fd00::5", "::ffff:10.20.0.5"])
async def test_mx_takes_local_senders_from_the_centre(box: MailBox, source: str) -> None:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore, CENTRE)
    me = box.users[0]
    assert await policy.check_sender(mail_from(me), None, source) is None
    assert await policy.check_message(message_from(me), None, me, source) is None


async def test_mx_still_takes_bounces_and_other_domains(box: MailBox) -> None:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore, CENTRE)
    assert await policy.check_sender(mail_from(""), None, "192.168.1.50") is None
    assert await policy.check_message(message_from("a@other.go.th"), None, "", "192.168.1.50") is (
        None
    )


# --- issue 23: DMARC's proof replaces the blanket refusal --------------------------------


def proof(*domains: str, temporary: bool = False) -> MessageCheck:
    return MessageCheck(b"", Disposition.DELIVER, frozenset(domains), temporary, "")


async def test_mx_takes_a_local_sender_that_proves_itself(box: MailBox) -> None:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore, CENTRE)
    me, source = box.users[0], "192.168.1.50"
    # MAIL FROM: the domain's own SPF record names the client.
    assert await policy.check_sender(mail_from(me), None, source, SpfCheck("pass", DOMAIN)) is None
    for result in ("fail", "softfail", "neutral", "none", "permerror"):
        spf = SpfCheck(result, DOMAIN)
        assert await policy.check_sender(mail_from(me), None, source, spf) == LOCAL_SENDER_FORGED
    temporary = SpfCheck("temperror", DOMAIN)
    assert await policy.check_sender(mail_from(me), None, source, temporary) == (
        AUTHENTICATION_UNAVAILABLE
    )
    # From: an SPF or DKIM pass aligned with our domain (DMARC's test, record or not).
    content = message_from(me)
    assert await policy.check_message(content, None, "x@o.go.th", source, proof(DOMAIN)) is None
    assert await policy.check_message(content, None, "x@o.go.th", source, proof("o.go.th")) == (
        LOCAL_SENDER_FORGED
    )
    assert await policy.check_message(
        content, None, "x@o.go.th", source, proof(temporary=True)
    ) == (AUTHENTICATION_UNAVAILABLE)
    assert AUTHENTICATION_UNAVAILABLE.code == 451


def test_trusted_relays_setting() -> None:
    assert parse_trusted_relays("") == []
    assert parse_trusted_relays("10.0.0.1") == [ipaddress.ip_network("10.0.0.1/32")]
    with pytest.raises(ValueError, match=r"'hub\.go\.th' is not an IP address"):
        parse_trusted_relays("10.0.0.1, hub.go.th")


async def _deliver_to_postmaster(box: MailBox, path: str) -> list[str]:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    refusal, recipient = await policy.check_recipient(RcptTo(path, {}), None)
    assert refusal is None
    assert recipient is not None
    trace = Trace("client.test", "192.0.2.1", "ESMTP")
    await box.delivery.deliver(
        Envelope("a@other.go.th", (recipient,), trace), b"Subject: x\r\n\r\nhi\r\n"
    )
    owners = []
    for user in box.users:
        owners += [user] * len(await box.mailstore.messages(user, "INBOX"))
    return owners


@pytest.mark.parametrize("path", ["postmaster", "Postmaster", f"postmaster@{DOMAIN}",
                                  f"POSTMASTER@{DOMAIN.upper()}"])  # fmt: skip
async def test_postmaster_reaches_the_agency_admins(box: MailBox, path: str) -> None:
    await box.directory.grant_admin(box.users[1], DOMAIN)
    await box.directory.grant_admin(box.users[3], DOMAIN)
    assert await _deliver_to_postmaster(box, path) == [box.users[1], box.users[3]]


async def test_postmaster_falls_back_to_box_admins(box: MailBox) -> None:
    policy = SMTPPolicy(Port.SUBMISSION, box.directory, box.mailstore)
    # No admin at all: a temporary refusal that says why, never "no such user".
    refusal, _ = await policy.check_recipient(RcptTo(f"postmaster@{DOMAIN}", {}), None)
    assert refusal == NO_POSTMASTER
    await box.directory.grant_admin(box.users[4], None)
    assert await _deliver_to_postmaster(box, "postmaster") == [box.users[4]]
    # Other local parts are still unknown users.
    refusal, _ = await policy.check_recipient(RcptTo(f"hostmaster@{DOMAIN}", {}), None)
    assert refusal == USER_UNKNOWN


async def test_an_admin_named_twice_gets_one_copy(box: MailBox) -> None:
    await box.directory.grant_admin(box.users[0], DOMAIN)
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    recipients = []
    for path in (box.users[0], "postmaster"):
        _, recipient = await policy.check_recipient(RcptTo(path, {}), None)
        assert recipient is not None
        recipients.append(recipient)
    trace = Trace("client.test", "192.0.2.1", "ESMTP")
    await box.delivery.deliver(
        Envelope("a@other.go.th", tuple(recipients), trace), b"S: x\r\n\r\n.\r\n"
    )
    assert len(await box.mailstore.messages(box.users[0], "INBOX")) == 1


async def test_a_recipient_is_looked_up_once_from_rcpt_to_mailbox(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RCPT check's lookup carries the quota on to delivery (issue 21)."""
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    _, recipient = await policy.check_recipient(RcptTo(box.users[0].upper(), {}), None)
    assert recipient is not None
    assert recipient.quota_bytes is not None

    async def no_lookup(address: str) -> None:
        raise AssertionError(f"{address} looked up again")

    monkeypatch.setattr(box.directory, "user", no_lookup)
    trace = Trace("client.test", "192.0.2.1", "ESMTP")
    await box.delivery.deliver(
        Envelope("a@other.go.th", (recipient,), trace), b"Subject: x\r\n\r\nbody\r\n"
    )
    [stored] = await box.mailstore.messages(box.users[0], "INBOX")
    assert stored.uid == 1


async def test_local_domains_are_read_once_per_moment_and_a_new_one_at_once(
    box: MailBox, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    reads: list[int] = []
    local_domains = box.directory.local_domains

    async def counted() -> frozenset[str]:
        reads.append(1)
        return await local_domains()

    monkeypatch.setattr(box.directory, "local_domains", counted)
    rcpt = RcptTo(box.users[0], {})
    # One message: MAIL, RCPT and the From check share one read.
    assert await policy.check_sender(mail_from("a@other.go.th"), None) is None
    assert (await policy.check_recipient(rcpt, None))[0] is None
    assert await policy.check_message(message_from("a@other.go.th"), None) is None
    assert len(reads) == 1
    # An agency added a moment ago takes mail at once: a recipient outside the set
    # is looked up afresh before it is refused.
    await box.directory.add_agency("new.go.th", "ใหม่")
    await box.directory.add_user("u@new.go.th", password="new-user-pass-1", name_th="ใหม่")
    assert (await policy.check_recipient(RcptTo("u@new.go.th", {}), None))[0] is None
    assert len(reads) == 2
    # And the set is read again once it is older than the TTL.
    await trio.sleep(LOCAL_DOMAINS_TTL)
    assert await policy.check_sender(mail_from("a@other.go.th"), None) is None
    assert len(reads) == 3


async def test_a_thai_domain_proven_in_a_labels_matches_its_own_spelling(
    box: MailBox,
) -> None:
    await box.directory.add_agency("กรม.go.th", name_th="กรม")
    policy = SMTPPolicy(Port.MX, box.directory, box.mailstore)
    content = message_from("director@กรม.go.th")
    # The authenticator reports DNS names (A-labels); the directory keeps U-labels.
    assert (
        await policy.check_message(content, None, "", "192.168.1.50", proof("xn--12c8df.go.th"))
        is None
    )
    assert await policy.check_message(content, None, "", "192.168.1.50", proof()) == (
        LOCAL_SENDER_FORGED
    )
