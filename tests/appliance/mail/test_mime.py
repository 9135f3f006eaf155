"""MIME structure for IMAP: part trees, ENVELOPE, BODYSTRUCTURE, sections, search text."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.mail import mime
from appliance.mail.mime import (
    Part,
    SectionSpec,
    body_text_for_search,
    bodystructure,
    decode_words,
    envelope,
    header_text_for_search,
    parse,
    partial,
    section,
    serialize,
)

THAI = "ระบบจดหมายอิเล็กทรอนิกส์ของสำนักงาน"


def crlf(text: str) -> bytes:
    """Return *text* (written with LF) as UTF-8 with CRLF line ends."""
    return text.replace("\n", "\r\n").encode("utf-8")


def wire(message: bytes, extended: bool = True) -> bytes:
    return serialize(bodystructure(parse(message), extended))


# --------------------------------------------------------------------------------------
# RFC 3501 examples


def rfc3501_text_message() -> bytes:
    # 92 lines, 3028 octets: the figures of the RFC 3501 §7.4.2 BODY example.
    body = "x" * 30 + "\n"
    lines = body * 91 + "y" * (3028 - 91 * 32 - 2) + "\n"
    return crlf("From: a@example.com\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n" + lines)


def test_body_matches_rfc3501_example() -> None:
    message = rfc3501_text_message()
    expected = b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    assert wire(message, extended=False) == expected
    assert wire(message) == expected[:-1] + b" NIL NIL NIL NIL)"


RFC3501_HEADER = crlf(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
    "From: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\n"
    "To: imap@cac.washington.edu\n"
    "cc: minutes@CNRI.Reston.VA.US,\n"
    "   John Klensin <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n"
    "\n"
    "Hello\n"
)


def test_envelope_matches_rfc3501_example() -> None:
    # RFC 3501 §8, the FETCH response of the sample session, byte for byte.
    assert serialize(envelope(RFC3501_HEADER)) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_sender_and_reply_to_are_kept_when_present() -> None:
    message = crlf("From: a@x.th\nSender: Secretary <s@x.th>\nReply-To: \nTo: b@y.th\n\nbody\n")
    env = envelope(message)
    assert env[2] == ((None, None, "a", "x.th"),)
    assert env[3] == (("Secretary", None, "s", "x.th"),)
    assert env[4] == env[2]  # present but empty: same as From (RFC 3501 §7.4.2)


# --------------------------------------------------------------------------------------
# Thai mail


def thai_message() -> bytes:
    encoded = THAI.encode("utf-8")
    # Split the subject in the middle of a three-byte character, as some mailers do.
    first = base64.b64encode(encoded[:10]).decode()
    second = base64.b64encode(encoded[10:]).decode()
    header = (
        f"From: =?UTF-8?B?{base64.b64encode('สมชาย'.encode()).decode()}?= <somchai@moi.go.th>\n"
        f"To: saraban@moi.go.th\n"
        f"Subject: =?UTF-8?B?{first}?=\n =?UTF-8?B?{second}?=\n"
        "Date: Mon, 2 Mar 2026 09:00:00 +0700\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n"
    )
    return crlf(header + f"เรียน ผู้อำนวยการ\n{THAI}\n")


def test_thai_subject_stays_raw_in_envelope_and_decodes_for_search() -> None:
    message = thai_message()
    env = envelope(message)
    assert env[1] is not None
    assert env[1].startswith("=?UTF-8?B?")
    assert env[2] is not None
    assert env[2][0][0] is not None
    assert env[2][0][0].startswith("=?UTF-8?B?")
    assert env[2][0][2:] == ("somchai", "moi.go.th")
    text = header_text_for_search(message)
    assert f"subject: {THAI}\n" in text
    assert "สมชาย <somchai@moi.go.th>" in text


def test_thai_8bit_body() -> None:
    message = thai_message()
    assert THAI in body_text_for_search(message)
    assert wire(message, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" %d 2)'
        % len(section(message, SectionSpec((1,))))
    )


def test_8bit_utf8_header_is_a_literal() -> None:
    message = crlf(f"Subject: {THAI}\nFrom: ผู้ส่ง <a@b.th>\n\nx\n")
    raw = THAI.encode()
    out = serialize(envelope(message))
    assert out.startswith(b"(NIL {%d}\r\n%s " % (len(raw), raw))
    assert f"subject: {THAI}" in header_text_for_search(message)


def test_tis620_body_decodes() -> None:
    body = THAI.encode("tis-620")
    message = (
        b"Content-Type: text/plain; charset=TIS-620\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body)
    )
    assert THAI in body_text_for_search(message)
    undeclared = b"Content-Type: text/plain\r\n\r\n" + THAI.encode("cp874")
    assert THAI in body_text_for_search(undeclared)


def test_decode_words_edge_cases() -> None:
    assert decode_words("=?utf-8?q?caf=C3=A9_au_lait?= ok") == "café au lait ok"
    assert decode_words("=?x-unknown?B?####?=") == ""
    assert decode_words("a =?utf-8?B?4Lij?= =?tis-620?B?ww==?= b") == "a รร b"
    assert decode_words("=?utf-8?B?4Lij") == "=?utf-8?B?4Lij"


# --------------------------------------------------------------------------------------
# A real-world multipart: mixed { alternative { plain, html }, pdf, inline image }


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def office_message() -> tuple[bytes, dict[str, bytes]]:
    plain = "=E0=B8=A3=E0=B8=B0=E0=B8=9A=E0=B8=9A ok=\r\nline2\r\n"
    html_body = b64(f"<html><style>p {{}}</style><p>{THAI} &amp; co</p></html>".encode())
    pdf = b64(PDF)
    png = b64(PNG)
    message = (
        crlf(
            "From: Office <office@moi.go.th>\n"
            'To: Team: a@moi.go.th, "B. Person" <b@moi.go.th>;, c@moi.go.th\n'
            "Subject: report\n"
            "Message-ID: <r1@moi.go.th>\n"
            "MIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="outer=_1"\n'
            "\n"
            "This is a multi-part message in MIME format.\n"
            "--outer=_1\n"
            "Content-Type: multipart/alternative; boundary=inner\n"
            "\n"
            "--inner\n"
            "Content-Type: text/plain; charset=UTF-8\n"
            "Content-Transfer-Encoding: quoted-printable\n"
            "\n"
        ).decode()
        + plain
        + crlf(
            "--inner\n"
            'Content-Type: text/html; charset="utf-8"\n'
            "Content-Transfer-Encoding: base64\n"
            "\n"
        ).decode()
        + html_body
        + crlf(
            "--inner--\n"
            "\n"
            "--outer=_1\n"
            'Content-Type: application/pdf; name="report.pdf"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="report.pdf"; size=2057\n'
            "Content-Language: th, en\n"
            "\n"
        ).decode()
        + pdf
        + crlf(
            "--outer=_1\n"
            "Content-Type: image/png\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-ID: <logo@moi.go.th>\n"
            "Content-Description: logo\n"
            "Content-Disposition: inline\n"
            "Content-Location: http://moi.go.th/\n"
            "  logo.png\n"
            "\n"
        ).decode()
        + png
        + "\r\n--outer=_1--\r\nepilogue\r\n"
    )
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1).
    bodies = {
        "plain": plain[:-2].encode(),
        "html": html_body[:-2].encode(),
        "pdf": pdf[:-2].encode(),
        "png": png.encode(),
    }
    return message.encode(), bodies


def test_office_message_bodystructure() -> None:
    message, bodies = office_message()
    size = {name: len(body) for name, body in bodies.items()}
    lines = {name: body.count(b"\n") + 1 for name, body in bodies.items()}
    assert wire(message) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" %d %d NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "BASE64" %d %d NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "inner") NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" %d NIL'
        b' ("ATTACHMENT" ("FILENAME" "report.pdf" "SIZE" "2057")) ("th" "en") NIL)'
        b'("IMAGE" "PNG" NIL "<logo@moi.go.th>" "logo" "BASE64" %d NIL ("INLINE" NIL) NIL'
        b' "http://moi.go.th/logo.png")'
        b' "MIXED" ("BOUNDARY" "outer=_1") NIL NIL NIL)'
        % (
            size["plain"],
            lines["plain"],
            size["html"],
            lines["html"],
            size["pdf"],
            size["png"],
        )
    )
    assert wire(message, extended=False) == (
        b'((("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" %d %d)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "BASE64" %d %d) "ALTERNATIVE")'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" %d)'
        b'("IMAGE" "PNG" NIL "<logo@moi.go.th>" "logo" "BASE64" %d) "MIXED")'
        % (
            size["plain"],
            lines["plain"],
            size["html"],
            lines["html"],
            size["pdf"],
            size["png"],
        )
    )


def test_office_message_sections() -> None:
    message, bodies = office_message()
    root = parse(message)
    assert section(message, SectionSpec((1, 1)), root) == bodies["plain"]
    assert section(message, SectionSpec((1, 2))) == bodies["html"]
    assert section(message, SectionSpec((2,))) == bodies["pdf"]
    assert base64.b64decode(section(message, SectionSpec((2,)))) == PDF
    assert base64.b64decode(section(message, SectionSpec((3,)))) == PNG
    assert section(message, SectionSpec((3,), "MIME")).startswith(b"Content-Type: image/png\r\n")
    assert section(message, SectionSpec((3,), "MIME")).endswith(b"logo.png\r\n\r\n")
    assert section(message, SectionSpec((1,))).startswith(b"--inner\r\n")
    assert section(message, SectionSpec((1,))).endswith(b"--inner--\r\n")
    assert section(message, SectionSpec(())) == message
    assert section(message, SectionSpec((), "TEXT")).startswith(b"This is a multi-part")
    for missing in ((4,), (0,), (1, 3), (2, 1), (1, 1, 1), (-1,)):
        assert section(message, SectionSpec(missing)) == b""
    assert section(message, SectionSpec((2,), "HEADER")) == b""  # not a message/rfc822


def test_office_message_envelope_groups() -> None:
    message, _ = office_message()
    env = envelope(message)
    assert env[5] == (
        (None, None, "Team", None),
        (None, None, "a", "moi.go.th"),
        ("B. Person", None, "b", "moi.go.th"),
        (None, None, None, None),
        (None, None, "c", "moi.go.th"),
    )
    assert serialize(env[5]) == (
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "moi.go.th")("B. Person" NIL "b" "moi.go.th")'
        b'(NIL NIL NIL NIL)(NIL NIL "c" "moi.go.th"))'
    )


def test_office_message_search_text() -> None:
    message, _ = office_message()
    text = body_text_for_search(message)
    assert "ระบบ ok" in text
    assert "line2" in text
    assert f"{THAI} & co" in text
    assert "<p>" not in text
    assert "p {}" not in text  # style sheets are not text
    assert "PDF-1.4" not in text  # attachments are skipped


# --------------------------------------------------------------------------------------
# message/rfc822


def forwarded_message() -> bytes:
    inner = crlf(
        "From: Original <orig@example.com>\n"
        "Subject: =?UTF-8?B?4Liq4Lin4Lix4Liq4LiU4Li1?=\n"
        "Content-Type: multipart/alternative; boundary=b2\n"
        "\n"
        "--b2\n"
        "Content-Type: text/plain\n"
        "\n"
        "inner plain\n"
        "--b2\n"
        "Content-Type: text/html\n"
        "\n"
        "<b>inner html</b>\n"
        "--b2--\n"
    )
    return (
        crlf(
            "From: fwd@example.com\n"
            "Subject: Fwd: hello\n"
            "Content-Type: multipart/mixed; boundary=b1\n"
            "\n"
            "--b1\n"
            "Content-Type: text/plain\n"
            "\n"
            "see below\n"
            "--b1\n"
            "Content-Type: message/rfc822\n"
            "Content-Disposition: inline\n"
            "\n"
        )
        + inner
        + b"\r\n--b1--\r\n"
    )


def test_forwarded_message_sections() -> None:
    message = forwarded_message()
    inner = section(message, SectionSpec((2,)))
    assert inner.startswith(b"From: Original")
    assert inner.endswith(b"--b2--\r\n")
    assert section(message, SectionSpec((2,), "HEADER")).endswith(b"boundary=b2\r\n\r\n")
    assert section(message, SectionSpec((2,), "TEXT")).startswith(b"--b2\r\n")
    assert section(message, SectionSpec((2,), "MIME")) == (
        b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"
    )
    assert section(message, SectionSpec((2, 1))) == b"inner plain"
    assert section(message, SectionSpec((2, 2))) == b"<b>inner html</b>"
    assert section(message, SectionSpec((2, 2), "MIME")) == b"Content-Type: text/html\r\n\r\n"
    assert section(message, SectionSpec((2, 3))) == b""
    assert section(message, SectionSpec((2,), "HEADER.FIELDS", ("subject",))) == (
        b"Subject: =?UTF-8?B?4Liq4Lin4Lix4Liq4LiU4Li1?=\r\n\r\n"
    )


def test_forwarded_message_bodystructure() -> None:
    message = forwarded_message()
    root = parse(message)
    attached = root.children[1]
    assert attached.is_message
    out = serialize(bodystructure(attached, extended=False))
    assert out.startswith(
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d ' % attached.size
        + b'(NIL "=?UTF-8?B?4Liq4Lin4Lix4Liq4LiU4Li1?=" (("Original" NIL "orig" "example.com"))'
    )
    assert out.endswith(
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 17 1) "ALTERNATIVE") %d)'
        % attached.lines
    )
    assert attached.lines == section(message, SectionSpec((2,))).count(b"\n")
    text = body_text_for_search(message)
    assert "สวัสดี" in text
    assert "inner plain" in text
    assert "inner html" in text


def test_single_part_message_numbering() -> None:
    message = RFC3501_HEADER
    assert section(message, SectionSpec((1,))) == b"Hello\r\n"
    assert section(message, SectionSpec((1,), "MIME")) == section(
        message, SectionSpec((), "HEADER")
    )
    assert section(message, SectionSpec((2,))) == b""
    assert section(message, SectionSpec((1, 1))) == b""
    # A top-level message/rfc822: 1 is the encapsulated message, 1.1 its body.
    nested = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninside\r\n"
    assert section(nested, SectionSpec((1,))) == b"Subject: in\r\n\r\ninside\r\n"
    assert section(nested, SectionSpec((1, 1))) == b"inside\r\n"
    assert section(nested, SectionSpec((1,), "HEADER")) == b"Subject: in\r\n\r\n"


def test_encoded_message_rfc822_is_opaque() -> None:
    message = crlf(
        "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nU3ViamVjdDogeA==\n"
    )
    assert wire(message, extended=False) == (
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 18)'
    )


# --------------------------------------------------------------------------------------
# Headers, RFC 2231, missing and malformed pieces


def test_header_fields_keep_order_and_folding() -> None:
    message = crlf(
        "Received: from a\n\tby b\nSubject: one\n two\nFrom: x@y\nX-Other: 1\n"
        "received: second\n\nbody\n"
    )
    fields = SectionSpec((), "HEADER.FIELDS", ("RECEIVED", "From"))
    assert section(message, fields) == crlf(
        "Received: from a\n\tby b\nFrom: x@y\nreceived: second\n\n"
    )
    not_fields = SectionSpec((), "HEADER.FIELDS.NOT", ("received", "from"))
    assert section(message, not_fields) == crlf("Subject: one\n two\nX-Other: 1\n\n")
    assert section(message, SectionSpec((), "HEADER.FIELDS", ("none",))) == b"\r\n"
    assert envelope(message)[1] == "one two"


def test_rfc2231_thai_filename() -> None:
    name = "รายงานประจำปี.pdf"
    escaped = "".join(f"%{byte:02X}" for byte in name.encode())
    message = crlf(
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment;\n"
        f" filename*0*=utf-8'th'{escaped[:39]};\n"
        f' filename*1*={escaped[39:]}; filename="fallback.pdf"\n'
        "\n"
        "JVBERi0=\n"
    )
    part = parse(message)
    assert part.disposition == "attachment"
    assert part.disposition_params == (("filename", name),)
    out = wire(message)
    # Unreserved ASCII stays as it is; every other byte is %-escaped (RFC 2231 §4).
    sent = escaped.replace("%2E%70%64%66", ".pdf").encode()
    assert b'("ATTACHMENT" ("FILENAME*" "utf-8\'\'' + sent + b'"))' in out


def test_rfc2231_continuations_and_charsets() -> None:
    message = crlf(
        "Content-Type: text/plain; charset=us-ascii;\n"
        " title*1=\" world\"; title*0=hello; name*=iso-8859-1''caf%E9; bad*=%zz\n\nx\n"
    )
    part = parse(message)
    assert part.param("title") == "hello world"
    assert part.param("name") == "café"
    assert part.param("bad") == "%zz"


def test_missing_headers() -> None:
    message = b"\r\njust a body\r\n"
    assert envelope(message) == (None,) * 10
    assert serialize(envelope(message)) == b"(" + b" ".join([b"NIL"] * 10) + b")"
    assert wire(message, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1)'
    )
    headers_only = b"Subject: no body"
    assert envelope(headers_only)[1] == "no body"
    assert section(headers_only, SectionSpec((), "TEXT")) == b""
    assert section(b"", SectionSpec(())) == b""
    assert (
        wire(b"") == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
    )


def test_odd_addresses() -> None:
    message = crlf(
        "From: gray@cac.washington.edu (Terry Gray)\n"
        "To: undisclosed-recipients:;\n"
        'Cc: <@route.one,@route.two:joe@example.com>, "Smith, J" <j@x.th>, nobody\n'
        "Bcc: <>\n"
        "\nx\n"
    )
    env = envelope(message)
    assert env[2] == (("Terry Gray", None, "gray", "cac.washington.edu"),)
    assert env[5] == ((None, None, "undisclosed-recipients", None), (None, None, None, None))
    assert env[6] == (
        (None, "@route.one,@route.two", "joe", "example.com"),
        ("Smith, J", None, "j", "x.th"),
        (None, None, "nobody", ""),
    )
    assert env[7] == ((None, None, "", ""),)


def test_lf_only_line_ends() -> None:
    message = (
        b"From: a@b\nContent-Type: multipart/mixed; boundary=x\n\n"
        b"--x\nContent-Type: text/plain\n\none\ntwo\n--x\n\nthree\n--x--\n"
    )
    root = parse(message)
    assert [child.subtype for child in root.children] == ["plain", "plain"]
    assert section(message, SectionSpec((1,))) == b"one\ntwo"
    assert section(message, SectionSpec((2,))) == b"three"
    assert section(message, SectionSpec((1,), "MIME")) == b"Content-Type: text/plain\n\n"
    assert section(message, SectionSpec((), "HEADER.FIELDS", ("from",))) == b"From: a@b\n\r\n"
    assert root.children[0].lines == 2


def test_malformed_boundaries() -> None:
    no_boundary_param = crlf("Content-Type: multipart/mixed\n\n--x\n\nbody\n")
    assert wire(no_boundary_param, extended=False).startswith(b'("TEXT" "PLAIN"')
    never_used = crlf("Content-Type: multipart/mixed; boundary=zzz\n\n--x\n\nbody\n")
    assert wire(never_used, extended=False).startswith(b'("TEXT" "PLAIN"')
    unclosed = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b \t\n\none\n--bb\nstill one\n--b\n\ntwo\n"
    )
    assert section(unclosed, SectionSpec((1,))) == b"one\r\n--bb\r\nstill one"
    assert section(unclosed, SectionSpec((2,))) == b"two\r\n"
    garbage_type = crlf("Content-Type: ;;;\nContent-Transfer-Encoding: (x)\n\nbody\n")
    assert wire(garbage_type, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1)'
    )


def test_digest_children_default_to_message() -> None:
    message = crlf(
        "Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\nbody\n--d--\n"
    )
    child = parse(message).children[0]
    assert (child.type, child.subtype) == ("message", "rfc822")
    assert child.envelope is not None
    assert child.envelope[1] == "one"


def test_deep_nesting_is_bounded() -> None:
    depth = 300
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1)
        for n in range(depth)
    )
    message = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + b"--bottom\r\n"
    out = wire(message)
    assert out.count(b'"MIXED"') <= 101
    assert isinstance(body_text_for_search(message), str)


def nested(levels: int, bottom: bytes) -> bytes:
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (n, n + 1)
        for n in range(levels)
    )
    return b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + bottom


# A liveness bound, not a timing assertion (as for the 36 MB attachment below).
@pytest.mark.timeout(60)
def test_hostile_nesting_over_a_large_body_stays_fast() -> None:
    # Each level must not rescan the whole body: indexed "--" lines, then a scan budget.
    encoded = base64.encodebytes(bytes(8 * 1024 * 1024)).replace(b"\n", b"\r\n")
    for bottom in (encoded, b"--x\r\n" * 20_000 + encoded, b"--x\r\n" * 400_000):
        message = nested(100, bottom)
        root = parse(message)
        serialize(bodystructure(root, extended=True))
        check_part(root, 0, len(message), len(message))


def test_long_boundary_is_found_by_scanning() -> None:
    boundary = "q" * 300
    message = crlf(
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
        f"--{boundary}\n\none\n--{boundary}\n\ntwo\n--{boundary}--\n"
    )
    assert section(message, SectionSpec((2,))) == b"two"


def test_rfc2231_without_first_segment_keeps_plain_value() -> None:
    part = parse(crlf('Content-Type: text/plain; name="a.txt"; name*1*=%41\n\nx'))
    assert part.param("name") == "a.txt"


# --------------------------------------------------------------------------------------
# Serialisation and partial


def test_serialize_strings_and_lists() -> None:
    assert serialize(None) == b"NIL"
    assert serialize(42) == b"42"
    assert serialize('say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'
    assert serialize("") == b'""'
    assert serialize("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert serialize("ไทย") == b"{9}\r\n" + "ไทย".encode()
    assert serialize(b"raw") == b'"raw"'
    assert serialize(()) == b"()"
    assert serialize(("A", ("B", None), 3)) == b'("A" ("B" NIL) 3)'
    assert serialize(((1,), (2,), "X")) == b'((1)(2) "X")'
    assert serialize("\udcff") == b"{1}\r\n\xff"  # raw 8-bit header bytes come back as is
    assert serialize("\ud800") == b'"?"'


def test_partial() -> None:
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 10) == b"89"
    assert partial(b"0123456789", 20, 5) == b""
    assert partial(b"0123456789", 4, None) == b"456789"
    assert partial(b"0123456789", -3, 2) == b"01"
    assert partial(b"0123456789", 0, 0) == b""


# --------------------------------------------------------------------------------------
# Size


# Not a timing assertion: a liveness bound. A parse that is linear in the message takes
# well under a second here; one quadratic in its 470,000 lines would not end in minutes.
@pytest.mark.timeout(60)
def test_36_mb_attachment() -> None:
    payload = bytes(range(256)) * (27 * 1024 * 1024 // 256)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    assert len(encoded) > 36_000_000
    message = (
        crlf(
            "From: a@b.th\nSubject: big\nContent-Type: multipart/mixed; boundary=BIG\n\n"
            "--BIG\nContent-Type: text/plain; charset=utf-8\n\nsee attachment\n"
            "--BIG\nContent-Type: application/octet-stream; name=big.bin\n"
            "Content-Transfer-Encoding: base64\n\n"
        )
        + encoded
        + b"--BIG--\r\n"
    )
    root = parse(message)
    structure = serialize(bodystructure(root, extended=True))
    assert section(message, SectionSpec((2,)), root) == encoded[:-2]
    assert b'"BASE64" %d NIL' % (len(encoded) - 2) in structure
    assert section(message, SectionSpec((1,)), root) == b"see attachment"
    assert body_text_for_search(message) == "see attachment"


# --------------------------------------------------------------------------------------
# Hostile input


def check_part(part: Part, start: int, end: int, size: int) -> None:
    assert 0 <= start <= part.header_start <= part.header_end == part.body_start
    assert part.body_start <= part.body_end <= end <= size
    previous = part.body_start
    for child in part.children:
        assert child.header_start >= previous
        check_part(child, part.body_start, part.body_end, size)
        previous = child.body_end


def exercise(message: bytes) -> None:
    root = parse(message)
    check_part(root, 0, len(message), len(message))
    serialize(envelope(message))
    for extended in (False, True):
        assert serialize(bodystructure(root, extended)).startswith(b"(")
    specs = [SectionSpec(())]
    for numbers in ((1,), (2,), (1, 1), (2, 1), (1, 2, 1), (3,)):
        specs += [
            SectionSpec(numbers),
            SectionSpec(numbers, "MIME"),
            SectionSpec(numbers, "HEADER"),
            SectionSpec(numbers, "TEXT"),
            SectionSpec(numbers, "HEADER.FIELDS", ("content-type",)),
        ]
    specs += [SectionSpec((), "HEADER.FIELDS.NOT", ("from",)), SectionSpec((), "TEXT")]
    for spec in specs:
        content = section(message, spec, root)
        if spec.text is None or spec.text in ("MIME", "HEADER", "TEXT"):
            assert content in message
    assert isinstance(header_text_for_search(message), str)
    assert isinstance(body_text_for_search(message), str)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    exercise(data)


SEED, _ = office_message()
TOKENS = [
    b"\r\n",
    b"\n",
    b"--",
    b"--outer=_1",
    b"--inner",
    b"--outer=_1--",
    b":",
    b";",
    b'"',
    b"=?",
    b"?=",
    b"*0*=",
    b"%",
    b"(",
    b"<",
    b"\xe0\xb8",
    b"\x00",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/mixed; boundary=inner\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = bytearray(SEED)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(message)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            message[position:position] = draw(st.sampled_from(TOKENS) | st.binary(max_size=8))
        elif action == "delete":
            del message[position : position + draw(st.integers(1, 64))]
        else:
            message[position : position + 1] = draw(st.binary(min_size=1, max_size=1))
    return bytes(message)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_mutated_multipart_never_raises(data: bytes) -> None:
    exercise(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_header_text_never_raises(text: str) -> None:
    for name in ("From", "To", "Content-Type", "Content-Disposition", "Subject"):
        exercise(f"{name}: {text}\r\n\r\nbody".encode("utf-8", "surrogatepass"))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(mutated())
def test_delimiter_index_agrees_with_scanning(data: bytes) -> None:
    indexed = parse(data)
    saved = mime.MAX_DASH_LINES
    mime.MAX_DASH_LINES = 0  # every level scans for its own delimiters
    try:
        assert parse(data) == indexed
    finally:
        mime.MAX_DASH_LINES = saved


# RFC 3516 §4.4: parts holding NUL are stored base64-encoded; BINARY[] undoes it.
_BINARY_PART = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"


@settings(max_examples=200, deadline=None)
@given(
    first=st.binary(max_size=300),
    second=st.binary(max_size=300).filter(lambda b: b"--b" not in b and b"\n" not in b[-1:]),
)
def test_encode_nul_parts_keeps_every_part_s_bytes(first: bytes, second: bytes) -> None:
    # Part 2 must not hold the boundary, and may not end with a line break the
    # delimiter would take as its own (RFC 2046 §5.1.1).
    first = b"\0" + first.replace(b"\n", b"")  # a single part: everything is its body
    single = b"From: a@b.th\r\n" + _BINARY_PART + b"\r\n" + first
    multi = (
        b'From: a@b.th\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain text\r\n"
        b"--b\r\n" + _BINARY_PART + b"\r\n" + second + b"\r\n--b--\r\n"
    )
    for message, numbers, body in ((single, (1,), first), (multi, (2,), second)):
        stored = mime.encode_nul_parts(message)
        assert b"\0" not in stored
        root = mime.parse(stored)
        assert mime.decoded_part(stored, numbers, root) == body
        if b"\0" in body:
            assert mime.section(stored, mime.SectionSpec(numbers, "MIME"), root).endswith(
                b"Content-Transfer-Encoding: base64\r\n\r\n"
            )
    # Part 1 holds no NUL and is left alone, to the byte.
    assert mime.encode_nul_parts(multi).startswith(multi[: multi.index(b"plain text") + 12])


def test_encode_nul_parts_leaves_nul_free_mail_untouched() -> None:
    message = b"From: a@b.th\r\n" + _BINARY_PART + b"\r\n\xe4\xff\r\n"
    assert mime.encode_nul_parts(message) is message
