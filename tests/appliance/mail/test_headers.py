"""Tests of `appliance.mail.headers`: a header reader that never trusts or fails on input."""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from appliance.mail.headers import (
    first_value,
    from_addresses,
    header_block,
    message_id,
    parse_headers,
    without_trace,
)

MESSAGE = (
    b"From: Somchai <somchai@test.go.th>\r\n"
    b"To: somsri@test.go.th\r\n"
    b"Subject: =?utf-8?b?4Lil4Lix4Lia?=\r\n"
    b"Message-ID: <abc.123@test.go.th>\r\n"
    b"\r\n"
    b"Body-Field: not a header\r\n"
)


# --- the header block ------------------------------------------------------------------


def test_header_block_stops_at_the_blank_line() -> None:
    assert header_block(MESSAGE) == MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 2]


def test_header_block_of_lf_only_message() -> None:
    assert header_block(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\nB: 2\n"


def test_header_block_without_blank_line_is_everything() -> None:
    assert header_block(b"A: 1\r\nB: 2\r\n") == b"A: 1\r\nB: 2\r\n"


def test_body_lines_are_not_headers() -> None:
    fields = parse_headers(MESSAGE)

    assert [name for name, _ in fields] == ["From", "To", "Subject", "Message-ID"]
    assert first_value(fields, "Body-Field") is None


def test_lf_only_message() -> None:
    fields = parse_headers(b"From: a@test.go.th\nSubject: hello\n\nX-Urgency: 3\n")

    assert fields == [("From", "a@test.go.th"), ("Subject", "hello")]


def test_message_without_blank_line() -> None:
    fields = parse_headers(b"Subject: only headers\r\nX-Urgency: 1")

    assert fields == [("Subject", "only headers"), ("X-Urgency", "1")]


def test_message_without_headers() -> None:
    assert parse_headers(b"\r\nbody only\r\n") == []
    assert parse_headers(b"") == []


def test_a_body_after_an_empty_header_section_is_never_read_as_fields() -> None:
    # Found by hypothesis in the DKIM stripping test: with no blank line further down,
    # the body's "Name: value" lines were read as header fields.
    assert header_block(b"\r\nSubject: in the body") == b""
    assert parse_headers(b"\r\nSubject: in the body\r\n!:") == []
    assert parse_headers(b"\nX-Body: yes") == []


def test_lf_only_headers_with_crlf_crlf_in_the_body() -> None:
    content = b"Subject: a\n\nX-Urgency: 3\r\n\r\nmore body\r\n"

    assert header_block(content) == b"Subject: a\n"
    assert parse_headers(content) == [("Subject", "a")]


# --- fields --------------------------------------------------------------------------------


def test_folded_field_is_unfolded() -> None:
    fields = parse_headers(
        b"Subject: a long\r\n  subject\r\n\tline\r\nTo: b@test.go.th\r\n\r\nbody\r\n"
    )

    assert fields == [("Subject", "a long subject line"), ("To", "b@test.go.th")]


def test_continuation_before_any_field_is_ignored() -> None:
    assert parse_headers(b" stray: continuation\r\nA: 1\r\n\r\n") == [("A", "1")]


def test_values_are_stripped_and_may_hold_colons() -> None:
    assert parse_headers(b"Date:   Mon, 1 Jan 2024 10:00:00 +0700  \r\n\r\n") == [
        ("Date", "Mon, 1 Jan 2024 10:00:00 +0700")
    ]


def test_empty_value() -> None:
    assert parse_headers(b"X-Empty:\r\n\r\n") == [("X-Empty", "")]


@pytest.mark.parametrize(
    "line",
    [b"no colon here", b": no name", b" Indented: x", b"Name : space before colon", b"\x01X: 1"],
)
def test_malformed_lines_are_skipped(line: bytes) -> None:
    fields = parse_headers(b"A: 1\r\n" + line + b"\r\nB: 2\r\n\r\n")

    names = [name for name, _ in fields]
    assert "B" in names
    assert all(name in ("A", "B") for name in names)


def test_utf8_values_are_decoded() -> None:
    fields = parse_headers("X-Urgency: ด่วนที่สุด\r\n\r\n".encode())

    assert first_value(fields, "X-Urgency") == "ด่วนที่สุด"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    fields = parse_headers(b"Subject: \xff\xfe bad\r\n\r\n")

    assert fields == [("Subject", "\ufffd\ufffd bad")]


def test_first_value_is_case_insensitive_and_first() -> None:
    fields = parse_headers(b"x-urgency: 1\r\nX-URGENCY: 3\r\n\r\n")

    assert first_value(fields, "X-Urgency") == "1"
    assert first_value(fields, "x-URGENCY") == "1"
    assert first_value(fields, "X-Classification") is None


# --- Message-ID ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Message-ID: <abc.123@test.go.th>", "abc.123@test.go.th"),
        (b"message-id:   <abc@test.go.th>  ", "abc@test.go.th"),
        (b"Message-Id: <abc@test.go.th> (comment)", "abc@test.go.th"),
        (b"Message-ID: abc@test.go.th", "abc@test.go.th"),
        (b"Message-ID: <unclosed@test.go.th", "<unclosed@test.go.th"),
        (b"Message-ID:", None),
        (b"Message-ID: <>", None),
        (b"Subject: no id", None),
    ],
)
def test_message_id(raw: bytes, expected: str | None) -> None:
    assert message_id(parse_headers(raw + b"\r\n\r\n")) == expected


def test_folded_message_id() -> None:
    fields = parse_headers(b"Message-ID:\r\n <folded@test.go.th>\r\n\r\n")

    assert message_id(fields) == "folded@test.go.th"


def test_message_id_is_bounded() -> None:
    fields = parse_headers(b"Message-ID: <" + b"a" * 5000 + b"@x>\r\n\r\n")

    assert message_id(fields) == "a" * 998


# --- From ------------------------------------------------------------------------------------


def test_from_with_display_name() -> None:
    fields = parse_headers(b'From: "Somchai Jaidee" <Somchai@Test.GO.TH>\r\n\r\n')

    assert from_addresses(fields) == ["somchai@test.go.th"]


def test_from_with_several_addresses_and_thai_names() -> None:
    raw = "From: สมชาย <a@test.go.th>, b@test.go.th, =?utf-8?b?4Lil4Lix4Lia?= <c@test.go.th>"
    fields = parse_headers(raw.encode() + b"\r\n\r\n")

    assert from_addresses(fields) == ["a@test.go.th", "b@test.go.th", "c@test.go.th"]


def test_every_from_field_counts() -> None:
    fields = parse_headers(b"From: a@test.go.th\r\nTo: x@test.go.th\r\nfrom: b@test.go.th\r\n\r\n")

    assert from_addresses(fields) == ["a@test.go.th", "b@test.go.th"]


def test_from_without_an_address() -> None:
    assert from_addresses(parse_headers(b"From: undisclosed\r\n\r\n")) == []
    assert from_addresses(parse_headers(b"Subject: x\r\n\r\n")) == []


# --- garbage -------------------------------------------------------------------------------


header_like = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"From: ",
                b"Message-ID: <",
                b">",
                b"\r\n",
                b"\n",
                b" ",
                b"\t",
                b":",
                b"@",
                b",",
                b'"',
                b"<",
                b"(",
                b")",
                b"\\",
                b"=?utf-8?b?",
                b"?=",
                b"\xe0\xb8",
                b"\r\n\r\n",
            ]
        ),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=400), header_like))
@example(b'From: "\\\r\n\r\n')
@example(b"From: <<<@>>>,,(()\r\nMessage-ID: <\r\n")
@example(b"\xff\xfe\x00:\x00")
def test_reading_never_raises(content: bytes) -> None:
    fields = parse_headers(content)
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in fields)
    mid = message_id(fields)
    assert mid is None or isinstance(mid, str)
    addresses = from_addresses(fields)
    assert all("@" in address and address == address.lower() for address in addresses)


# --- trace fields ------------------------------------------------------------------------


def test_without_trace_drops_the_leading_trace_fields_and_their_continuations() -> None:
    traced = (
        b"Return-Path: <somchai@test.go.th>\r\n"
        b"Received: from hub ([127.0.0.1])\r\n\tby b.go.th (edgebox) with ESMTPS id 1;\r\n"
        b"\t Sat, 21 Nov 2026 10:00:00 +0700\r\n"
        b"received: from a ([127.0.0.1]) by hub; Sat, 21 Nov 2026 09:59:59 +0700\r\n"
    )
    assert without_trace(traced + MESSAGE) == MESSAGE


def test_without_trace_keeps_trace_fields_below_the_first_other_field() -> None:
    message = b"Subject: x\r\nReceived: kept\r\n\r\nReceived: body\r\n"
    assert without_trace(message) == message
    assert without_trace(b"Received: a\r\n" + message) == message


def test_without_trace_keeps_a_body_that_starts_with_white_space() -> None:
    # No header at all: a leading continuation line belongs to no trace field.
    assert without_trace(b" Received: x\r\n") == b" Received: x\r\n"


trace_fields = st.lists(
    st.tuples(
        st.sampled_from([b"Received", b"Return-Path", b"RECEIVED"]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        st.lists(st.binary(max_size=20).map(lambda b: b"\t" + b.replace(b"\n", b"")), max_size=2),
    ).map(lambda t: t[0] + b":" + t[1] + b"\r\n" + b"".join(c + b"\r\n" for c in t[2])),
    max_size=4,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(trace_fields, st.one_of(st.binary(max_size=300), header_like))
def test_trace_fields_put_on_top_never_change_what_is_below(trace: bytes, content: bytes) -> None:
    """Whatever hops add on top, the message below reads the same (the resend key).

    (A message can only start with white space by being malformed; below a trace field
    that line would continue it, as RFC 5322 §2.2.3 says.)
    """
    assume(content[:1] not in (b" ", b"\t"))
    assert without_trace(trace + without_trace(content)) == without_trace(content)
    assert content.endswith(without_trace(content))
