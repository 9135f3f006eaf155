"""Tests of `appliance.mail.delivery`: trace, classify, store once, fan out, leak nothing."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from email.header import Header
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import pytest

from appliance.compliance.classification import Classification, Urgency
from appliance.mail import headers
from appliance.mail.delivery import (
    Envelope,
    Recipient,
    Trace,
    new_queue_id,
    with_protocol,
)
from appliance.mail.mailstore import RESEND_WINDOW_SECONDS, QuotaExceeded, StoredMessage

if TYPE_CHECKING:
    from conftest import MailBox  # tests/appliance/mail/conftest.py

TRACE = Trace(helo="client.test.go.th", client_ip="192.0.2.7", protocol="ESMTPSA")

RECEIVED = re.compile(
    rb"Received: from (?P<helo>[^\r\n]*) \(\[(?P<ip>[^\]\r\n]*)\]\)\r\n"
    rb"\tby (?P<by>\S+) \(edgebox\) with (?P<with>\S+) id (?P<id>[0-9A-F]{16})"
    rb"(?:\r\n\tfor <(?P<for>[^>\r\n]*)>)?"
    rb"; (?P<date>[^\r\n]+)\r\n"
)

MESSAGE = (
    b"From: Somchai <somchai@test.go.th>\r\n"
    b"To: user1@test.go.th\r\n"
    b"Subject: test\r\n"
    b"Message-ID: <plain-1@test.go.th>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def envelope(*recipients: Recipient, **kwargs: Any) -> Envelope:
    kwargs.setdefault("trace", TRACE)
    return Envelope(sender="somchai@test.go.th", recipients=recipients, **kwargs)


def to_local(*addresses: str) -> list[Recipient]:
    return [Recipient(address, local=True) for address in addresses]


async def only_message(box: MailBox, owner: str) -> tuple[StoredMessage, bytes]:
    [stored] = await box.mailstore.messages(owner)
    return stored, await box.mailstore.content(stored)


async def rows(box: MailBox, sql: str) -> list[tuple[Any, ...]]:
    def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    return await box.mailstore.db.read(query)


# --- the Received field ----------------------------------------------------------------


async def test_received_field_comes_first_and_content_is_kept_exactly(box: MailBox) -> None:
    before = time.time()
    queue_id = await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)

    stored, content = await only_message(box, box.users[0])
    match = RECEIVED.match(content)
    assert match is not None, content[:300]
    # Nothing between the trace field and the original bytes, and nothing changed in them.
    assert content[match.end() :] == MESSAGE
    assert match["helo"] == b"client.test.go.th"
    assert match["ip"] == b"192.0.2.7"
    assert match["by"] == box.hostname.encode()
    assert match["with"] == b"ESMTPSA"
    assert match["id"] == queue_id.encode()
    assert match["for"] == box.users[0].encode()
    stamp = parsedate_to_datetime(match["date"].decode())
    assert stamp.tzinfo is not None
    assert before - 2 <= stamp.timestamp() <= time.time() + 1
    assert headers.parse_headers(content)[0][0] == "Received"
    assert stored.size == len(content)


async def test_received_field_text(box: MailBox) -> None:
    queue_id = "0123456789ABCDEF"
    field = box.delivery.received_field(envelope(*to_local(box.users[0])), queue_id)

    assert field.startswith(b"Received: from client.test.go.th ([192.0.2.7])\r\n")
    assert (
        b"\tby mail.test.go.th (edgebox) with ESMTPSA id 0123456789ABCDEF\r\n"
        b"\tfor <user1@test.go.th>; "
    ) in field
    assert field.endswith(b"\r\n")
    assert field.count(b"\r\n") == 3


async def test_no_for_clause_with_several_recipients(box: MailBox) -> None:
    several = envelope(*to_local(box.users[0], box.users[1]))
    await box.delivery.deliver(several, MESSAGE)

    _, content = await only_message(box, box.users[0])
    match = RECEIVED.match(content)
    assert match is not None
    assert match["for"] is None
    assert b"user2@test.go.th" not in content[: match.end()]


async def test_for_clause_names_a_single_remote_recipient(box: MailBox) -> None:
    field = box.delivery.received_field(
        envelope(Recipient("far@other.go.th", local=False)), "0123456789ABCDEF"
    )

    assert b"\r\n\tfor <far@other.go.th>; " in field


async def test_hostile_helo_cannot_add_header_lines(box: MailBox) -> None:
    helo = "evil.example)\r\nX-Urgency: 3\r\nX-Classification: 3\r\n(" + "a" * 400
    trace = Trace(helo=helo, client_ip="192.0.2.66", protocol="ESMTP")

    await box.delivery.deliver(envelope(*to_local(box.users[0]), trace=trace), MESSAGE)

    stored, content = await only_message(box, box.users[0])
    match = RECEIVED.match(content)
    assert match is not None
    assert b"(" not in match["helo"]
    assert b")" not in match["helo"]
    assert len(match["helo"]) <= 255
    assert content[match.end() :] == MESSAGE
    assert (stored.urgency, stored.classification) == (0, 0)


# --- what is read from the header ---------------------------------------------------------


async def test_classes_and_message_id_come_from_the_header(box: MailBox) -> None:
    message = (
        "Subject: หนังสือราชการ\r\n"
        "X-Classification: ลับมาก\r\n"
        "X-Urgency: ด่วนที่สุด\r\n"
        "Message-ID: <doc-2567-001@test.go.th>\r\n"
        "\r\n"
        "เนื้อหา\r\n"
    ).encode()

    await box.delivery.deliver(envelope(*to_local(box.users[0])), message)

    stored, _ = await only_message(box, box.users[0])
    assert stored.classification == Classification.SECRET == 2
    assert stored.urgency == Urgency.MOST_URGENT == 3
    assert stored.message_id_digest == box.blobs.digest(b"doc-2567-001@test.go.th")


async def test_rfc2047_encoded_classes(box: MailBox) -> None:
    message = (
        b"X-Urgency: " + Header("ด่วนมาก", "utf-8").encode().encode() + b"\r\n"
        b"X-Classification: " + Header("ลับ", "utf-8").encode().encode() + b"\r\n"
        b"\r\nbody\r\n"
    )

    await box.delivery.deliver(envelope(*to_local(box.users[0])), message)

    stored, _ = await only_message(box, box.users[0])
    assert (stored.classification, stored.urgency) == (1, 2)


async def test_odd_digit_in_urgency_does_not_stop_delivery(box: MailBox) -> None:
    message = "X-Urgency: ²\r\n\r\nbody\r\n".encode()

    await box.delivery.deliver(envelope(*to_local(box.users[0])), message)

    stored, _ = await only_message(box, box.users[0])
    assert stored.urgency == Urgency.NORMAL


async def test_headers_in_the_body_are_not_read(box: MailBox) -> None:
    message = b"Subject: plain\r\n\r\nX-Urgency: 3\r\nMessage-ID: <body@x>\r\n"

    await box.delivery.deliver(envelope(*to_local(box.users[0])), message)

    stored, _ = await only_message(box, box.users[0])
    assert (stored.classification, stored.urgency, stored.message_id_digest) == (0, 0, None)


async def test_content_hash_size_and_date_describe_the_stored_bytes(box: MailBox) -> None:
    before = int(time.time())
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)

    stored, content = await only_message(box, box.users[0])
    assert stored.content_hash == hashlib.sha256(content).hexdigest()
    assert stored.size == len(content)
    assert stored.blob_id == box.blobs.blob_id(content)
    assert before <= stored.internal_date <= int(time.time())
    assert await box.mailstore.usage(box.users[0]) == len(content)


# --- fan-out -------------------------------------------------------------------------------


async def test_five_local_recipients_one_blob(box: MailBox) -> None:
    await box.delivery.deliver(envelope(*to_local(*box.users)), MESSAGE)

    assert len(box.blob_files()) == 1
    assert await rows(box, "SELECT refs FROM blobs") == [(5,)]
    contents = {(await only_message(box, user))[1] for user in box.users}
    assert len(contents) == 1
    assert await rows(box, "SELECT count(*) FROM messages") == [(5,)]


async def test_local_address_is_looked_up_in_any_case(box: MailBox) -> None:
    await box.delivery.deliver(envelope(Recipient("User1@TEST.go.th", local=True)), MESSAGE)

    stored, _ = await only_message(box, box.users[0])
    assert stored.owner == box.users[0]


async def test_remote_recipients_go_to_the_outbound_queue(box: MailBox) -> None:
    message = b"X-Urgency: urgent\r\nX-Classification: confidential\r\n\r\nbody\r\n"
    mixed = envelope(
        Recipient(box.users[0], local=True),
        Recipient("a@other.go.th", local=False, notify="FAILURE", orcpt="rfc822;A@other.go.th"),
        Recipient("b@other.go.th", local=False),
        ret="FULL",
        envid="QQ314159",
    )

    queue_id = await box.delivery.deliver(mixed, message)

    assert await rows(
        box,
        "SELECT queue_id, sender, recipient, notify, orcpt, ret, envid, classification,"
        " urgency FROM outbound ORDER BY recipient",
    ) == [
        (queue_id, "somchai@test.go.th", "a@other.go.th", "FAILURE", "rfc822;A@other.go.th",
         "FULL", "QQ314159", 1, 1),
        (queue_id, "somchai@test.go.th", "b@other.go.th", None, None, "FULL", "QQ314159", 1, 1),
    ]  # fmt: skip
    assert await rows(box, "SELECT refs FROM blobs") == [(3,)]
    [(blob_id,)] = await rows(box, "SELECT DISTINCT blob_id FROM outbound")
    stored, _ = await only_message(box, box.users[0])
    assert blob_id == stored.blob_id


# --- a message sent again ------------------------------------------------------------------


async def test_a_resend_is_accepted_and_stored_once(box: MailBox) -> None:
    """The sender lost our 250 and sends the same message again (RFC 1047)."""
    mixed = envelope(Recipient(box.users[0], local=True), Recipient("far@other.go.th", local=False))
    await box.delivery.deliver(mixed, MESSAGE)
    again = await box.delivery.deliver(mixed, MESSAGE)

    assert re.fullmatch(r"[0-9A-F]{16}", again)
    assert len(await box.mailstore.messages(box.users[0])) == 1
    assert await rows(box, "SELECT count(*) FROM outbound") == [(1,)]
    assert await rows(box, "SELECT refs FROM blobs") == [(2,)]
    assert len(box.blob_files()) == 1  # the second copy's blob was not left behind


async def test_a_copy_that_came_another_way_is_a_resend_too(box: MailBox) -> None:
    # A hop in between sent its copy twice, each with its own Received field on top.
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)
    hop = b"Received: from hub ([127.0.0.1])\r\n\tby a.go.th with ESMTPS id 2; now\r\n"
    await box.delivery.deliver(envelope(*to_local(box.users[0])), hop + MESSAGE)

    assert len(await box.mailstore.messages(box.users[0])) == 1


async def test_a_resend_signed_again_on_the_way_is_a_resend_too(box: MailBox) -> None:
    # A relay lost our 250 and sent its stored copy again, signing it afresh: the new
    # DKIM-Signature differs from the first one in its signing time (t=) and its b=.
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=a.go.th; s=s1; t=%d;\r\n\tb=%s\r\n"
    hop = b"Received: from a ([127.0.0.1])\r\n\tby hub with ESMTPS id 3; now\r\n"
    await box.delivery.deliver(envelope(*to_local(box.users[0])), signed % (1, b"AAA") + MESSAGE)
    again = hop + signed % (2, b"BBB") + MESSAGE
    await box.delivery.deliver(envelope(*to_local(box.users[0])), again)

    assert len(await box.mailstore.messages(box.users[0])) == 1


async def test_a_resend_still_reaches_recipients_it_did_not_reach_before(box: MailBox) -> None:
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)
    await box.delivery.deliver(envelope(*to_local(box.users[0], box.users[1])), MESSAGE)

    assert len(await box.mailstore.messages(box.users[0])) == 1
    assert len(await box.mailstore.messages(box.users[1])) == 1


@pytest.mark.parametrize(
    "second",
    [
        MESSAGE.replace(b"Hello.", b"Hello again."),  # same Message-ID, other text
        MESSAGE.replace(b"plain-1@", b"plain-2@"),  # the same text sent twice
        MESSAGE.replace(b"Subject: test\r\n", b"Subject: test\r\nReceived: x\r\n"),
    ],
    ids=["other-text", "other-message-id", "trace-field-below-the-top"],
)
async def test_a_different_message_is_not_a_resend(box: MailBox, second: bytes) -> None:
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)
    await box.delivery.deliver(envelope(*to_local(box.users[0])), second)

    assert len(await box.mailstore.messages(box.users[0])) == 2


async def test_mail_without_a_message_id_is_never_taken_for_a_resend(box: MailBox) -> None:
    anonymous = b"Subject: disk full\r\n\r\n/var is full\r\n"
    await box.delivery.deliver(envelope(*to_local(box.users[0])), anonymous)
    await box.delivery.deliver(envelope(*to_local(box.users[0])), anonymous)

    assert len(await box.mailstore.messages(box.users[0])) == 2


async def test_a_copy_is_forgotten_after_the_resend_window(box: MailBox) -> None:
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)
    await box.mailstore.db.write(
        lambda conn: conn.execute(
            "UPDATE accepted_copies SET accepted_at = accepted_at - ?",
            (RESEND_WINDOW_SECONDS + 1,),
        )
    )
    await box.delivery.deliver(envelope(*to_local(box.users[0])), MESSAGE)

    assert len(await box.mailstore.messages(box.users[0])) == 2
    assert await rows(box, "SELECT count(*) FROM accepted_copies") == [(1,)]


async def test_a_refused_delivery_is_not_remembered(box: MailBox) -> None:
    big = MESSAGE + b"x" * box.small_quota
    with pytest.raises(QuotaExceeded):
        await box.delivery.deliver(envelope(*to_local(box.users[0], box.small)), big)

    assert await rows(box, "SELECT count(*) FROM accepted_copies") == [(0,)]
    await box.delivery.deliver(envelope(*to_local(box.users[0])), big)
    assert len(await box.mailstore.messages(box.users[0])) == 1


async def test_quota_exceeded_stores_nothing(box: MailBox) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * box.small_quota
    recipients = [
        Recipient(box.users[0], local=True),
        Recipient(box.small, local=True),
        Recipient("far@other.go.th", local=False),
    ]

    with pytest.raises(QuotaExceeded) as caught:
        await box.delivery.deliver(envelope(*recipients), big)

    assert caught.value.owner == box.small
    assert await rows(box, "SELECT count(*) FROM messages") == [(0,)]
    assert await rows(box, "SELECT count(*) FROM blobs") == [(0,)]
    assert await box.mailstore.outbound_length() == 0
    assert await box.mailstore.usage(box.users[0]) == 0
    assert await box.mailstore.usage(box.small) == 0
    await box.mailstore.db.read(box.mailstore.remove_orphan_blobs)
    assert box.blob_files() == []


async def test_vanished_local_recipient_stores_nothing(box: MailBox) -> None:
    recipients = to_local(box.users[0], f"nobody@{box.domain}")

    with pytest.raises(LookupError, match="nobody@"):
        await box.delivery.deliver(envelope(*recipients), MESSAGE)

    assert await rows(box, "SELECT count(*) FROM messages") == [(0,)]
    assert box.blob_files() == []


# --- nothing readable on disk ----------------------------------------------------------


async def test_no_plaintext_under_the_data_directory(box: MailBox) -> None:
    body = "BODY-MARKER-7f3c9e1a เนื้อหาลับที่สุด-51d2"
    subject = "SUBJECT-MARKER-0b8e44"
    msgid = "MSGID-MARKER-a61f0c@test.go.th"
    message = (
        f"Subject: {subject}\r\nMessage-ID: <{msgid}>\r\nX-Classification: ลับที่สุด\r\n\r\n{body}\r\n"
    ).encode()
    # The envelope recipient *is* kept readable in the queue: it proves the search below
    # really reads the database files, the WAL included.
    envelope_marker = b"rcpt-marker-93d1@other.go.th"
    mixed = envelope(*to_local(*box.users), Recipient(envelope_marker.decode(), local=False))

    await box.delivery.deliver(mixed, message)

    files = {path.name: path.read_bytes() for path in box.files()}
    assert "mail.sqlite-wal" in files
    assert any(envelope_marker in data for data in files.values())
    for marker in (body, subject, msgid, "เนื้อหาลับที่สุด"):
        for encoding in ("utf-8", "utf-16-le"):
            needle = marker.encode(encoding)
            leaks = [name for name, data in files.items() if needle in data]
            assert leaks == [], f"{marker!r} readable in {leaks}"


# --- names and ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extended", "tls", "auth", "utf8", "name"),
    [
        (False, False, False, False, "SMTP"),
        (False, True, True, True, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, False, True, True, "UTF8SMTPA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_with_protocol_names(extended: bool, tls: bool, auth: bool, utf8: bool, name: str) -> None:
    assert with_protocol(extended=extended, tls=tls, auth=auth, utf8=utf8) == name


def test_queue_ids_are_16_upper_hex_and_unique() -> None:
    ids = {new_queue_id() for _ in range(1000)}

    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9A-F]{16}", queue_id) for queue_id in ids)
