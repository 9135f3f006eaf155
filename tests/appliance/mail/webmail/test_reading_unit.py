"""reading.py and listing.py without a server: body choice, part numbers, names, robustness."""

from __future__ import annotations

import base64
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail import mime
from appliance.mail.webmail import reading
from appliance.mail.webmail.listing import Summary, badges, summarise


def mail(content_type: str, body: str, *headers: str) -> bytes:
    head = ["From: A <a@example.org>", "To: b@example.org", "Subject: s",
            f"Content-Type: {content_type}", *headers]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def part(content_type: str, body: str, *headers: str) -> str:
    return "\r\n".join([f"Content-Type: {content_type}", *headers]) + "\r\n\r\n" + body


def multipart(boundary: str, *parts: str) -> str:
    return "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"


def test_alternative_prefers_html_even_inside_related() -> None:
    raw = mail('multipart/alternative; boundary="a"', multipart(
        "a",
        part("text/plain", "plain"),
        part('multipart/related; boundary="r"', multipart(
            "r",
            part("text/html", "<p>rich</p>"),
            part("image/png", "iVBORw0KGgo=", "Content-ID: <img1@x>",
                 "Content-Transfer-Encoding: base64"),
        )),
        part("text/calendar", "BEGIN:VCALENDAR"),
    ))  # fmt: skip
    view = reading.read_message(raw)
    assert view.body.kind == "html"
    assert view.body.text.strip() == "<p>rich</p>"
    assert view.body.part == "2.1"
    assert view.inline == {"img1@x": "2.2"}
    assert view.attachments == ()  # alternatives and inline images are not attachments
    images = reading.inline_images(raw, mime.parse(raw), view.inline)
    assert images == {"img1@x": "data:image/png;base64,iVBORw0KGgo="}


def test_mixed_takes_the_first_text_and_lists_the_rest() -> None:
    raw = mail('multipart/mixed; boundary="m"', multipart(
        "m",
        part("text/plain; charset=tis-620", "TIS-620 TEXT"),
        part("text/plain", "second text", "Content-Disposition: inline"),
        part("message/rfc822", "Subject: inner\r\n\r\nhi"),
        part("text/html", "<p>x</p>", "Content-Disposition: attachment;"
             ' filename="../../etc/x.html"'),
    ))  # fmt: skip
    raw = raw.replace(b"TIS-620 TEXT", "ประชุม".encode("tis-620"))
    view = reading.read_message(raw)
    assert view.body == reading.Body("plain", "ประชุม", "1")
    assert [(a.part, a.filename, a.content_type) for a in view.attachments] == [
        ("2", "part-2.txt", "text/plain"),
        ("3", "message-3.eml", "message/rfc822"),
        ("4", "x.html", "text/html"),
    ]


def test_a_single_part_message_is_part_1() -> None:
    raw = mail("text/plain; charset=utf-8", "สวัสดี")
    root = mime.parse(raw)
    assert reading.find_part(root, "1") is root
    assert reading.find_part(root, "2") is None
    assert reading.read_message(raw).body == reading.Body("plain", "สวัสดี", "1")


def test_headers_decode_and_unreadable_dates_are_none() -> None:
    raw = mail(
        "text/plain",
        "x",
        "Cc: =?UTF-8?B?4Liq4Lih4Lio4Lij4Li1?= <somsri@example.org>, group: a@b, c@d;",
        "Reply-To: =?TIS-620?B?u8PQqtjB?= <r@example.org>",
        "Date: not a date",
    ).replace(b"To: b@example.org", "To: ผู้รับ <ผู้รับ@ตัวอย่าง.ไทย>".encode())
    view = reading.read_message(raw)
    assert view.cc == (
        reading.Address("สมศรี", "somsri@example.org"),
        reading.Address("", "a@b"),
        reading.Address("", "c@d"),
    )
    assert view.to == (reading.Address("ผู้รับ", "ผู้รับ@ตัวอย่าง.ไทย"),)  # RFC 6532
    assert view.reply_to == (reading.Address("ประชุม", "r@example.org"),)
    assert view.date is None
    assert reading.parse_date("Tue, 17 Nov 2026 09:30:00 -0000").utcoffset() is not None


def test_download_types_never_render_in_the_box() -> None:
    root = mime.parse(mail('multipart/mixed; boundary="m"', multipart(
        "m",
        part("text/html", "x"), part("image/svg+xml", "x"), part("application/xhtml+xml", "x"),
        part("text/xml", "x"), part("application/javascript", "x"), part("message/rfc822", "x"),
        part("application/pdf", "x"), part("text/plain; charset=windows-874", "x"),
        part('text/plain; charset="bad value; x"', "x"),
    )))  # fmt: skip
    types = [reading.download_type(child) for child in root.children]
    assert types == ["application/octet-stream"] * 6 + [
        "application/pdf",
        "text/plain; charset=windows-874",
        "text/plain",
    ]


def test_filenames_keep_thai_and_lose_paths_and_controls() -> None:
    def pdf(parameter: str) -> str:
        return part("application/pdf", "x", f"Content-Disposition: attachment; {parameter}")

    root = mime.parse(mail('multipart/mixed; boundary="m"', multipart(
        "m",
        pdf("filename*=UTF-8''%E0%B8%87%E0%B8%9A.pdf"),
        pdf("filename*=UTF-8''C%3A%5CUsers%5Ca.pdf"),
        pdf('filename="../../etc/b.pdf"'),
        pdf('filename="evil\u202egpj.exe"'),
        pdf('filename="..."'),
    )))  # fmt: skip
    names = [reading.filename(child, str(n)) for n, child in enumerate(root.children, 1)]
    assert names == ["งบ.pdf", "a.pdf", "b.pdf", "evilgpj.exe", "part-5.pdf"]


def test_content_disposition_has_an_ascii_fallback_and_the_utf8_name() -> None:
    assert reading.content_disposition("รายงาน 2569.pdf") == (
        'attachment; filename="______ 2569.pdf"; '
        "filename*=UTF-8''%E0%B8%A3%E0%B8%B2%E0%B8%A2%E0%B8%87%E0%B8%B2%E0%B8%99%202569.pdf"
    )
    assert reading.content_disposition('a"b\\c%d.txt') == (
        "attachment; filename=\"a_b_c_d.txt\"; filename*=UTF-8''a%22b%5Cc%25d.txt"
    )


def test_lenient_transfer_decoding() -> None:
    raw = mail(
        "application/octet-stream", "QUJD\r\nREVG*!\r\nRw", "Content-Transfer-Encoding: base64"
    )
    root = mime.parse(raw)
    assert reading.part_bytes(raw, root) == b"ABCDEFG"
    qp = mail("text/plain", "caf=C3=A9 =\r\nok", "Content-Transfer-Encoding: quoted-printable")
    assert reading.part_bytes(qp, mime.parse(qp)) == "café ok".encode()


def test_summary_of_a_truncated_first_chunk() -> None:
    start = mail('multipart/mixed; boundary="m"', "--m\r\nContent-Type: text/plain\r\n\r\nbody")
    assert not summarise(start, truncated=False).attachment
    assert summarise(start, truncated=True).attachment
    # An empty first chunk (a blob that could not be read) summarises to nothing.
    assert summarise(b"", truncated=False) == Summary("", (), (), attachment=False)


def test_badges_for_levels() -> None:
    assert badges(0, 0) == ()
    assert [(b.kind, b.thai, b.english) for b in badges(3, 2)] == [
        ("urgency", "ด่วนมาก", "Very urgent"),
        ("classification", "ลับที่สุด", "Top secret"),
    ]
    assert badges(9, -1) == ()  # unknown levels show nothing rather than fail


# --- hypothesis: hostile and broken mail never breaks a page ------------------------------

_MESSAGE_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/alternative; boundary=b\r\n",
    b"Content-Type: multipart/related; boundary=b; start=<x>\r\n", b"Content-Type: text/html\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"Content-ID: <x>\r\n",
    b"Content-Disposition: attachment; filename*=UTF-8''%E0%B8\r\n", b"--b\r\n", b"--b--\r\n",
    b"\r\n", b"Subject: =?UTF-8?B?4Lib?=\r\n", b"From: =?x?q?=FF?= <@>\r\n", b"\xff\xfe\x00",
    b"<p onclick=x>", b"=?UTF-8?Q?=E0=B8?=", b"Date: Mon, 99 Foo 99999 99:99\r\n",
])  # fmt: skip
_MESSAGES = st.lists(st.one_of(_MESSAGE_PIECES, st.binary(max_size=20)), max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_MESSAGES)
def test_any_bytes_read_as_a_message_without_raising(raw: bytes) -> None:
    view = reading.read_message(raw)
    root = mime.parse(raw)
    for attachment in view.attachments:
        found = reading.find_part(root, attachment.part)
        assert found is not None
        reading.part_bytes(raw, found)
        header = reading.content_disposition(attachment.filename)
        header.encode("ascii")
    reading.inline_images(raw, root, view.inline)
    summarise(raw, truncated=True)
    # Everything shown is text a page can encode.
    for text in (view.subject, view.body.text, *(str(a) for a in view.from_ + view.to)):
        text.encode("utf-8")


@given(st.text(max_size=60))
def test_content_disposition_is_one_safe_header_that_round_trips(name: str) -> None:
    header = reading.content_disposition(name)
    header.encode("ascii")
    assert "\r" not in header
    assert "\n" not in header
    fallback = header.split('filename="', 1)[1].split('"; filename*=', 1)[0]
    assert '"' not in fallback
    assert "\\" not in fallback
    encoded = header.rpartition("filename*=UTF-8''")[2]
    expected = reading.clean_text(name).replace("\t", " ").replace("\n", " ")
    assert unquote(encoded) == (expected or "attachment")


@given(st.text(alphabet="0123456789.x-", max_size=12))
def test_part_numbers_that_are_not_numbers_find_nothing(number: str) -> None:
    raw = mail('multipart/mixed; boundary="m"', multipart("m", part("text/plain", "a")))
    found = reading.find_part(mime.parse(raw), number)
    assert (found is not None) == (number == "1")


def test_base64_inline_image_budget() -> None:
    big = base64.b64encode(b"\x89PNG" + b"\x00" * (reading.INLINE_IMAGE_BUDGET + 10)).decode()
    raw = mail('multipart/related; boundary="r"', multipart(
        "r", part("text/html", "<img src=cid:a>"),
        part("image/png", big, "Content-ID: <a>", "Content-Transfer-Encoding: base64"),
        part("image/svg+xml", "<svg/>", "Content-ID: <s>"),
    ))  # fmt: skip
    view = reading.read_message(raw)
    assert view.inline == {"a": "2", "s": "3"}
    assert reading.inline_images(raw, mime.parse(raw), view.inline) == {}
