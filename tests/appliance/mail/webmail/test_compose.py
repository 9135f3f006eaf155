"""compose.py without a box: addresses, replies, forwards, and the messages it writes.

Every built message is read back with the stdlib's `email` parser (policy.default), an
implementation independent of the encoder, so the tests check what a reader gets.
"""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.compliance.classification import (
    Classification,
    Urgency,
    parse_classification,
    parse_urgency,
)
from appliance.mail.webmail.compose import (
    AddressError,
    ComposeError,
    ComposeForm,
    Composition,
    Mailbox,
    Original,
    attribution,
    build_message,
    canonical_body,
    canonical_subject,
    clean_attachment,
    compose,
    draft_form,
    encode_text,
    forward_form,
    forward_subject,
    html_to_text,
    needs_smtputf8,
    new_message_id,
    parse_addresses,
    parse_msg_ids,
    quote,
    read_original,
    reply_form,
    reply_subject,
)

ME = "somchai@test.go.th"
AUTHOR = Mailbox(ME, "สมชาย ใจดี")
ICT = timezone(timedelta(hours=7))
WHEN = datetime(2026, 11, 22, 14, 5, tzinfo=ICT)
PDF = b"%PDF-1.7\n\x00\x01\x02\xff binary \r\n bytes"


def build(
    composition: Composition, *, include_bcc: bool = False, author: Mailbox = AUTHOR
) -> bytes:
    return build_message(
        composition, author, message_id="<m1@mail.test.go.th>", date=WHEN, include_bcc=include_bcc
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def addresses(message: EmailMessage, name: str) -> list[str]:
    header = message[name]
    return [] if header is None else [a.addr_spec for a in header.addresses]


ORIGINAL = (
    "From: =?utf-8?b?4Liq4Lih4Lir4LiN4Li04LiHIOC4o+C4seC4geC4lOC4tQ==?= <somying@test.go.th>\r\n"
    "To: Somchai <SomChai@test.go.th>, other@test.go.th\r\n"
    "Cc: boss@test.go.th, somchai@test.go.th\r\n"
    "Subject: =?utf-8?b?4LiB4Liy4Lij4Lib4Lij4Liw4LiK4Li44Lih?=\r\n"
    "Date: Sun, 22 Nov 2026 09:30:00 +0700\r\n"
    "Message-ID: <parent@test.go.th>\r\n"
    "References: <root@test.go.th> <middle@test.go.th>\r\n"
    "X-Classification: =?utf-8?b?4Lil4Lix4Lia?=\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n'
    "\r\n"
    "--b1\r\n"
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "เรียนทุกท่าน\r\n"
    "> ข้อความเก่า\r\n"
    "\r\n"
    "ประชุมวันจันทร์\r\n"
    "--b1\r\n"
    "Content-Type: application/pdf\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment; filename*=utf-8''%E0%B8%A7%E0%B8%B2%E0%B8%A3%E0%B8%B0.pdf\r\n"
    "\r\n"
    "JVBERi0xLjcKAAEC/yBiaW5hcnkgDQogYnl0ZXM=\r\n"
    "--b1--\r\n"
).encode()


# --- addresses ----------------------------------------------------------------------------


def test_address_fields_read_names_quotes_and_both_separators() -> None:
    found = parse_addresses(
        'สมหญิง รักดี <SomYing@Test.go.th>, "Doe, John" <john@example.com>; plain@example.org,'
    )
    assert found == [
        Mailbox("somying@test.go.th", "สมหญิง รักดี"),
        Mailbox("john@example.com", "Doe, John"),
        Mailbox("plain@example.org"),
    ]
    assert parse_addresses("  ") == []
    assert parse_addresses("สมชาย@ไทย.th") == [Mailbox("สมชาย@ไทย.th")]


@pytest.mark.parametrize(
    "text",
    ["somchai", "a@b@", "<a@b.th", "x <y@z.th> junk", '"unclosed <a@b.th>', "a b@c.th", "@x.th"],
)
def test_address_fields_refuse_what_is_not_an_address(text: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_addresses(text)
    assert caught.value.reason_th
    assert caught.value.reason_en


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=0, max_size=30
).map(str.strip)
local_parts = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(
    lambda s: ".." not in s
)
domains = st.sampled_from(["test.go.th", "example.com", "ไทย.th", "mail.co.th"])
mailboxes = st.builds(Mailbox, st.builds("{}@{}".format, local_parts, domains), names)


@given(st.lists(mailboxes, max_size=6))
def test_address_fields_read_back_what_the_form_shows(found: list[Mailbox]) -> None:
    text = ", ".join(m.for_form() for m in found)
    assert parse_addresses(text) == found


@given(st.text(max_size=200))
def test_address_parser_refuses_garbage_cleanly(text: str) -> None:
    try:
        found = parse_addresses(text)
    except AddressError:
        return
    assert all("@" in m.address for m in found)


@given(st.text(max_size=300))
def test_msg_id_parser_keeps_only_well_formed_ids(text: str) -> None:
    for msg_id in parse_msg_ids(text):
        assert msg_id.startswith("<")
        assert msg_id.endswith(">")
        assert all("!" <= c <= "~" and c not in "<>" for c in msg_id[1:-1])


# --- building -----------------------------------------------------------------------------


def test_thai_subject_body_and_names_survive_email_parsing() -> None:
    composition = compose(
        ComposeForm(
            to="สมหญิง รักดี <somying@test.go.th>",
            subject="ขอเชิญประชุม คณะทำงาน  ครั้งที่ ๑/๒๕๖๙ " * 4,
            body="เรียน ผู้อำนวยการ\r\n\r\n   ย่อหน้า\r\nlong " + "ก" * 300,
        ),
        require_recipients=True,
    )
    message = parse(build(composition))
    assert str(message["Subject"]) == composition.subject
    assert body_text(message) == composition.body
    assert message["From"].addresses[0].display_name == "สมชาย ใจดี"
    assert message["To"].addresses[0].display_name == "สมหญิง รักดี"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] in ("base64", "quoted-printable")
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"] == "<m1@mail.test.go.th>"
    assert message["Date"].datetime == WHEN


def test_every_line_of_the_message_is_crlf_and_within_998() -> None:
    composition = compose(
        ComposeForm(to="a@example.com", subject="x" * 500, body="y" * 3000),
        [clean_attachment("a.bin", "application/octet-stream", bytes(range(256)) * 40)],
        require_recipients=True,
    )
    raw = build(composition)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert str(parse(raw)["Subject"]) == "x" * 500


def test_bcc_is_in_the_senders_copy_only() -> None:
    composition = compose(
        ComposeForm(to="a@example.com", cc="c@example.com", bcc="secret@example.com"),
        require_recipients=True,
    )
    delivered = build(composition)
    own = build(composition, include_bcc=True)
    assert parse(delivered)["Bcc"] is None
    assert b"secret@example.com" not in delivered
    assert addresses(parse(own), "Bcc") == ["secret@example.com"]
    assert composition.recipients() == ["a@example.com", "c@example.com", "secret@example.com"]


def test_classification_and_urgency_are_written_in_thai() -> None:
    composition = compose(
        ComposeForm(
            to="a@example.com",
            classification=Classification.TOP_SECRET,
            urgency=Urgency.VERY_URGENT,
        ),
        require_recipients=True,
    )
    message = parse(build(composition))
    assert str(message["X-Classification"]) == "ลับที่สุด"
    assert str(message["X-Urgency"]) == "ด่วนมาก"
    raw = build(composition).decode("ascii")
    field = next(line for line in raw.split("\r\n") if line.startswith("X-Urgency:"))
    assert parse_urgency(field.partition(":")[2]) is Urgency.VERY_URGENT
    field = next(line for line in raw.split("\r\n") if line.startswith("X-Classification:"))
    assert parse_classification(field.partition(":")[2]) is Classification.TOP_SECRET


def test_lowest_levels_write_no_header_as_on_a_thai_letter() -> None:
    message = parse(build(compose(ComposeForm(to="a@example.com"), require_recipients=True)))
    assert message["X-Classification"] is None
    assert message["X-Urgency"] is None


def test_attachments_arrive_byte_for_byte_with_thai_names() -> None:
    composition = compose(
        ComposeForm(to="a@example.com", body="ดูไฟล์แนบ"),
        [
            clean_attachment("C:\\Users\\x\\หนังสือเวียน.pdf", "application/pdf", PDF),
            clean_attachment("ภาพ.png", "image/png", b"\x89PNG\r\n\x1a\n"),
            clean_attachment("note.eml", "message/rfc822", b"Subject: x\r\n\r\ny"),
            clean_attachment("bad\r\nname.txt", "not a type", b"text"),
        ],
        require_recipients=True,
    )
    message = parse(build(composition))
    parts = list(message.iter_attachments())
    assert [p.get_filename() for p in parts] == ["หนังสือเวียน.pdf", "ภาพ.png", "note.eml",
                                                 "badname.txt"]  # fmt: skip
    assert [p.get_content_type() for p in parts] == [
        "application/pdf", "image/png", "application/octet-stream", "text/plain",
    ]  # fmt: skip
    assert parts[0].get_payload(decode=True) == PDF
    assert body_text(message) == "ดูไฟล์แนบ\n"


def test_a_non_ascii_address_makes_an_smtputf8_message() -> None:
    composition = compose(ComposeForm(to="สมชาย@ไทย.th"), require_recipients=True)
    assert needs_smtputf8(composition, AUTHOR)
    assert "สมชาย@ไทย.th".encode() in build(composition)
    ascii_only = compose(ComposeForm(to="a@example.com"), require_recipients=True)
    assert not needs_smtputf8(ascii_only, AUTHOR)


def test_compose_reports_every_problem_in_both_languages() -> None:
    with pytest.raises(ComposeError) as caught:
        compose(ComposeForm(to="nobody", cc="x@y.th", bcc="<bad"), require_recipients=True)
    fields = [p.field for p in caught.value.problems]
    assert fields == ["to", "bcc"]
    assert all(p.th and p.en for p in caught.value.problems)
    with pytest.raises(ComposeError) as caught:
        compose(ComposeForm(subject="no one"), require_recipients=True)
    assert caught.value.problems[0].en == "Add at least one recipient"
    # A draft needs nobody yet.
    assert compose(ComposeForm(subject="later"), require_recipients=False).to == ()
    many = ", ".join(f"u{n}@example.com" for n in range(4))
    with pytest.raises(ComposeError):
        compose(ComposeForm(to=many), require_recipients=True, max_recipients=3)


def test_header_injection_through_hidden_fields_is_dropped() -> None:
    composition = compose(
        ComposeForm(
            to="a@example.com",
            subject="hi\r\nBcc: victim@example.com",
            in_reply_to="<ok@x>\r\nX-Evil: 1",
            references="<a@x>\r\nX-Evil: 2 <b@x>",
        ),
        require_recipients=True,
    )
    raw = build(composition)
    assert b"X-Evil" not in raw
    message = parse(raw)
    assert message["Bcc"] is None
    assert str(message["Subject"]) == "hi  Bcc: victim@example.com"
    assert message["References"] == "<a@x> <b@x>"


def test_message_ids_are_random_and_name_the_box() -> None:
    first, second = new_message_id("mail.test.go.th"), new_message_id("mail.test.go.th")
    assert first != second
    assert first.endswith("@mail.test.go.th>")
    assert first.startswith("<")


# The property the compose page promises: what the user typed is what the reader gets,
# give or take the documented canonical forms (line ends, control characters).
@settings(max_examples=300)
@given(subject=st.text(max_size=300), body=st.text(max_size=2000))
def test_any_subject_and_body_round_trip_exactly(subject: str, body: str) -> None:
    composition = compose(
        ComposeForm(to="a@example.com", subject=subject, body=body), require_recipients=True
    )
    message = parse(build(composition))
    assert str(message["Subject"] or "") == canonical_subject(subject)
    assert body_text(message) == canonical_body(body)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400))
def test_ascii_subjects_fold_and_unfold_exactly(subject: str) -> None:
    value = encode_text("Subject", subject.strip())
    message = parse(f"Subject: {value}\r\n\r\n".encode())
    assert str(message["Subject"] or "") == subject.strip()


# --- replies and forwards ---------------------------------------------------------------


def test_reply_subject_gets_re_once() -> None:
    assert reply_subject("ประชุม") == "Re: ประชุม"
    assert reply_subject("Re: ประชุม") == "Re: ประชุม"
    assert reply_subject("RE: re[2]: Re : ประชุม") == "Re: ประชุม"
    assert reply_subject("") == "Re: "
    assert forward_subject("Fwd: FW: x") == "Fwd: x"
    assert forward_subject("Re: x") == "Fwd: Re: x"


def test_reply_quotes_the_text_with_a_thai_attribution_and_threads() -> None:
    original = read_original(ORIGINAL)
    form = reply_form(original, ME, everyone=False, lang="th")
    assert form.to == "สมหญิง รักดี <somying@test.go.th>"
    assert form.cc == ""
    assert form.subject == "Re: การประชุม"
    assert form.in_reply_to == "<parent@test.go.th>"
    assert form.references == "<root@test.go.th> <middle@test.go.th> <parent@test.go.th>"
    assert form.classification is Classification.CONFIDENTIAL
    assert form.body == (
        "\n\nเมื่อ 22 พ.ย. 2569 09:30 สมหญิง รักดี เขียนว่า:\n"
        "> เรียนทุกท่าน\n>> ข้อความเก่า\n>\n> ประชุมวันจันทร์\n"
    )
    english = reply_form(original, ME, everyone=False, lang="en")
    assert "On 22 Nov 2026 09:30, สมหญิง รักดี wrote:" in english.body


def test_reply_threads_from_in_reply_to_when_there_are_no_references() -> None:
    original = Original(message_id="<b@x>", in_reply_to=("<a@x>",))
    form = reply_form(original, ME, everyone=False, lang="en")
    assert form.references == "<a@x> <b@x>"
    assert reply_form(Original(), ME, everyone=False, lang="en").references == ""


def test_reply_all_adds_to_and_cc_without_the_user() -> None:
    original = read_original(ORIGINAL)
    form = reply_form(original, ME, everyone=True, lang="th")
    assert [m.address for m in parse_addresses(form.to)] == [
        "somying@test.go.th",
        "other@test.go.th",
    ]
    assert [m.address for m in parse_addresses(form.cc)] == ["boss@test.go.th"]


def test_reply_uses_reply_to_and_a_reply_to_ones_own_mail_goes_to_its_recipients() -> None:
    original = Original(
        sender=(Mailbox("list@example.com"),), reply_to=(Mailbox("answers@example.com"),)
    )
    assert reply_form(original, ME, everyone=False, lang="en").to == "answers@example.com"
    mine = Original(sender=(AUTHOR,), to=(Mailbox("a@example.com"),))
    assert reply_form(mine, ME, everyone=False, lang="en").to == "a@example.com"
    assert reply_form(mine, ME, everyone=True, lang="en").to == "a@example.com"


def test_forward_keeps_attachments_and_quotes_under_a_header_block() -> None:
    original = read_original(ORIGINAL)
    assert [(a.filename, a.content_type, a.data) for a in original.attachments] == [
        ("วาระ.pdf", "application/pdf", PDF)
    ]
    form = forward_form(original, "th")
    assert form.subject == "Fwd: การประชุม"
    assert form.to == ""
    assert form.in_reply_to == ""
    header = "---------- ข้อความที่ส่งต่อ ----------\nจาก: สมหญิง รักดี <somying@test.go.th>"
    assert header in form.body
    assert "เรื่อง: การประชุม" in form.body
    assert "> ประชุมวันจันทร์" in form.body
    composition = compose(
        ComposeForm(to="x@example.com", subject=form.subject, body=form.body),
        original.attachments,
        require_recipients=True,
    )
    forwarded = read_original(build(composition))
    assert forwarded.attachments == original.attachments


def test_a_saved_draft_reads_back_as_the_same_form() -> None:
    form = ComposeForm(
        to="สมหญิง <somying@test.go.th>",
        cc="c@example.com",
        bcc="b@example.com",
        subject="ร่าง",
        body="บรรทัดแรก\nบรรทัดสอง\n",
        classification=Classification.SECRET,
        urgency=Urgency.URGENT,
        in_reply_to="<p@x>",
        references="<r@x> <p@x>",
    )
    raw = build(compose(form, require_recipients=False), include_bcc=True)
    assert draft_form(read_original(raw)) == form


def test_html_only_mail_is_quoted_as_text() -> None:
    html = (
        "<html><head><style>p{}</style><script>x()</script></head>"
        "<body><p>สวัสดี&nbsp;ครับ</p><div>บรรทัด<br>สอง</div></body></html>"
    )
    assert html_to_text(html) == "สวัสดี ครับ\n\nบรรทัด\nสอง"
    raw = ("From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
    assert read_original(raw).text == html_to_text(html)


def test_quote_and_attribution_without_a_date_or_sender() -> None:
    assert quote("") == ""
    assert quote("a\n\n>b\n") == "> a\n>\n>>b"
    assert attribution(Original(), "th") == "ผู้ส่ง เขียนว่า:"
    assert attribution(Original(), "en") == "The sender wrote:"


@given(st.binary(max_size=2000))
def test_reading_any_bytes_as_an_original_never_raises(data: bytes) -> None:
    original = read_original(data)
    reply_form(original, ME, everyone=True, lang="th")
    forward_form(original, "en")
    draft_form(original)
