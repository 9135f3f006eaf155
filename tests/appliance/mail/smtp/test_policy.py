"""Who may send as whom on the submission port: oneself, or those one may act for."""

from __future__ import annotations

from appliance.mail.smtp.policy import FROM_NOT_OWNED, SENDER_NOT_OWNED, Port, SMTPPolicy
from appliance.mail.smtp.protocol import MailFrom
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
