"""Bounce messages (RFC 3464), read back with the standard library's MIME parser."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.dsn import (
    EXPIRED_STATUS,
    FailedRecipient,
    build_bounce,
    decode_xtext,
    wants_failure_notice,
)

ORIGINAL = (
    b"From: somchai@a.go.th\r\nTo: khun.b@b.go.th\r\nSubject: =?utf-8?b?4LiX4LiU4Liq4Lit4Lia?=\r\n"
    b"Message-ID: <m1@a.go.th>\r\n\r\nsecret body line\r\n"
)
NOW = 1_800_000_000.0


def bounce(**overrides: object) -> EmailMessage:
    arguments: dict[str, object] = {
        "reporting_mta": "mail.a.go.th",
        "sender": "somchai@a.go.th",
        "recipients": [
            FailedRecipient(
                "khun.b@b.go.th", "5.1.1", "550 5.1.1 No such user", "rfc822;Khun.B@b.go.th"
            )
        ],
        "original": ORIGINAL,
        "arrival": NOW - 60,
        "now": NOW,
    }
    arguments.update(overrides)
    raw = build_bounce(**arguments)  # type: ignore[arg-type]
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_report_structure_and_fields() -> None:
    message = bounce(envid="QQ+2B314")
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["To"].addresses[0].addr_spec == "somchai@a.go.th"
    assert "Undelivered Mail" in message["Subject"]
    assert "ส่งไม่สำเร็จ" in message["Subject"]
    human, status, returned = message.iter_parts()
    text = human.get_content()
    assert "ไม่สามารถส่งจดหมาย" in text
    assert "could not be delivered" in text
    assert "khun.b@b.go.th" in text
    assert "No such user" in text
    report = status.as_string()
    assert "Reporting-MTA: dns; mail.a.go.th" in report
    assert "Original-Envelope-Id: QQ+314" in report  # xtext decoded (RFC 3464 §2.2.1)
    assert "Arrival-Date: " in report
    assert "Final-Recipient: rfc822; khun.b@b.go.th" in report
    assert "Original-Recipient: rfc822; Khun.B@b.go.th" in report
    assert "Action: failed" in report
    assert "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user" in report
    assert returned.get_content_type() == "text/rfc822-headers"  # the default: headers only
    assert "Message-ID: <m1@a.go.th>" in returned.get_content()
    assert "secret body line" not in message.as_string()


def test_ret_full_returns_the_whole_message() -> None:
    returned = list(bounce(ret="FULL").iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_content()
    assert inner["Message-ID"] == "<m1@a.go.th>"
    assert "secret body line" in inner.get_content()


def test_expired_and_several_recipients() -> None:
    recipients = [
        FailedRecipient("a@b.go.th", EXPIRED_STATUS, "451 4.4.1 no answer"),
        FailedRecipient("c@d.go.th", EXPIRED_STATUS, None),
    ]
    message = bounce(recipients=recipients, expired_after_days=14.0)
    human, status, _ = message.iter_parts()
    assert "14 วัน" in human.get_content()
    assert "within 14 days" in human.get_content()
    report = status.as_string()
    assert report.count("Action: failed") == 2
    assert report.count("Status: 4.4.7") == 2


def test_remote_text_cannot_inject_header_fields() -> None:
    evil = "550 bad\r\nX-Injected: yes\r\n\r\nbody"
    message = bounce(recipients=[FailedRecipient("x@b.go.th\r\nBcc: y@z", "5.0.0", evil)])
    assert message["X-Injected"] is None
    assert message["Bcc"] is None
    status = list(message.iter_parts())[1].as_string()
    assert "\nX-Injected" not in status
    assert "\nBcc" not in status


def test_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bounce(recipients=[])


@pytest.mark.parametrize(
    ("notify", "wanted"),
    [
        (None, True),
        ("FAILURE", True),
        ("success,failure", True),
        ("DELAY,FAILURE", True),
        ("NEVER", False),
        ("SUCCESS", False),
        ("SUCCESS,DELAY", False),
    ],
)
def test_notify_decides_whether_a_bounce_is_sent(notify: str | None, wanted: bool) -> None:
    assert wants_failure_notice(notify) is wanted


def test_xtext() -> None:
    assert decode_xtext("a+2Bb+3Dc") == "a+b=c"
    assert decode_xtext("plain+zz") == "plain+zz"


@settings(max_examples=100, deadline=None)
@given(
    st.text(max_size=200),
    st.text(max_size=60),
    st.binary(max_size=400),
    st.sampled_from([None, "FULL", "HDRS"]),
)
def test_any_remote_text_gives_a_parseable_report(
    diagnostic: str, recipient: str, original: bytes, ret: str | None
) -> None:
    message = bounce(
        recipients=[FailedRecipient(recipient or "x@b.go.th", "5.0.0", diagnostic)],
        original=original,
        ret=ret,
    )
    parts = list(message.iter_parts())
    assert len(parts) == 3
    report = parts[1].as_string()
    assert report.count("Final-Recipient:") == 1
    assert report.count("Action: failed") == 1
