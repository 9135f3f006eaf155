"""Tests for modified UTF-7 mailbox names (`appliance.mail.imap.mutf7`, RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail.imap import mutf7


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        # RFC 3501 §5.1.3's own example.
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
        ("INBOX", "INBOX"),
        ("", ""),
        ("Tom &- Jerry", "Tom & Jerry"),
        ("&-&-", "&&"),
        ("&DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-", "กล่องจดหมาย"),
        ("Sent/&DgEOJQ5IDi0OBw4IDhQOKw4hDjIOIg-", "Sent/กล่องจดหมาย"),
        ("&ANw-bersicht", "Übersicht"),
        ("&2D3eAA-", "😀"),  # a surrogate pair: UTF-16 is what gets base64'd
        ("a&AOQ-b&AOQ-c", "aäbäc"),
    ],
)
def test_known_names(wire: str, name: str) -> None:
    assert mutf7.encode(name) == wire
    assert mutf7.decode(wire) == name
    assert mutf7.decode(wire.encode("ascii")) == name


def test_thai_round_trip() -> None:
    name = "กล่องจดหมาย"
    wire = mutf7.encode(name)
    assert wire.isascii()
    assert wire.startswith("&")
    assert wire.endswith("-")
    assert mutf7.decode(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "abc&U,BTFw",  # unterminated run
        "&AGE-",  # "a" must be written directly
        "&U,BTFw-&ZeVnLIqe-",  # two runs back to back: one run is the canonical form
        "&U,BTFx-",  # non-zero padding bits
        "&2D0-",  # lone high surrogate
        "&U/BTFw-",  # "/" instead of ","
        "&U,BTFw=-",  # padding is not written
        "tab\there",
        "new\nline",
        "\x7f",
        "é",  # 8-bit: must be encoded
    ],
)
def test_strict_decoding_rejects(wire: str) -> None:
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(wire)


def test_eight_bit_bytes_rejected() -> None:
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode("กล่อง".encode())


def test_error_is_a_value_error() -> None:
    assert issubclass(mutf7.MUTF7Error, ValueError)


@given(st.text())
def test_round_trip_any_text(name: str) -> None:
    # Lone surrogates cannot be UTF-16 encoded; they never occur in real names.
    try:
        wire = mutf7.encode(name)
    except UnicodeEncodeError:
        return
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert mutf7.decode(wire) == name


@given(st.binary())
def test_decode_garbage_only_raises_mutf7_error(raw: bytes) -> None:
    try:
        name = mutf7.decode(raw)
    except mutf7.MUTF7Error:
        return
    assert mutf7.encode(name) == raw.decode("ascii")
