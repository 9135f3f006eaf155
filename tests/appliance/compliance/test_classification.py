"""Tests of `appliance.compliance.classification`: secrecy and speed classes from headers."""

from __future__ import annotations

from email.header import Header

import pytest

from appliance.compliance.classification import (
    CLASSIFICATION_HEADER,
    URGENCY_HEADER,
    Classification,
    Urgency,
    parse_classification,
    parse_urgency,
)


def encoded(text: str, charset: str = "utf-8") -> str:
    """Return *text* as RFC 2047 encoded words, the way a mail client sends it."""
    return Header(text, charset).encode()


def test_header_names() -> None:
    assert CLASSIFICATION_HEADER == "X-Classification"
    assert URGENCY_HEADER == "X-Urgency"


# --- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("ไม่มีชั้นความลับ", Classification.NONE),
        ("ลับ", Classification.CONFIDENTIAL),
        ("ลับมาก", Classification.SECRET),
        ("ลับที่สุด", Classification.TOP_SECRET),
    ],
)
def test_thai_classification(value: str, level: Classification) -> None:
    assert parse_classification(value) is level


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("none", Classification.NONE),
        ("unclassified", Classification.NONE),
        ("confidential", Classification.CONFIDENTIAL),
        ("secret", Classification.SECRET),
        ("top-secret", Classification.TOP_SECRET),
    ],
)
def test_english_classification(value: str, level: Classification) -> None:
    assert parse_classification(value) is level


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("0", Classification.NONE),
        ("1", Classification.CONFIDENTIAL),
        ("2", Classification.SECRET),
        ("3", Classification.TOP_SECRET),
        (" 3 ", Classification.TOP_SECRET),
        ("03", Classification.TOP_SECRET),
        ("๓", Classification.TOP_SECRET),  # Thai digit three
    ],
)
def test_numeric_classification(value: str, level: Classification) -> None:
    assert parse_classification(value) is level


@pytest.mark.parametrize(
    "value",
    ["Top-Secret", "TOP SECRET", "top_secret", "  top   secret  ", "Top\tSecret", "TOP-SECRET"],
)
def test_spacing_and_case_variants(value: str) -> None:
    assert parse_classification(value) is Classification.TOP_SECRET


@pytest.mark.parametrize("value", ["ลับมาก", "  ลับมาก  ", "secret"])
def test_rfc2047_encoded_classification(value: str) -> None:
    assert parse_classification(encoded(value)) is Classification.SECRET


def test_rfc2047_in_a_thai_charset() -> None:
    assert parse_classification(encoded("ลับที่สุด", "tis-620")) is Classification.TOP_SECRET


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "4", "-1", "99", "secrett", "ลับๆ", "=?utf-8?b?!!!?=", "=?x-unknown?q?a?="],
)
def test_unknown_classification_is_the_lowest_level(value: str | None) -> None:
    assert parse_classification(value) is Classification.NONE


def test_classification_order_and_thai_names() -> None:
    assert (
        Classification.NONE
        < Classification.CONFIDENTIAL
        < Classification.SECRET
        < Classification.TOP_SECRET
    )
    assert Classification.TOP_SECRET.thai == "ลับที่สุด"
    for level in Classification:
        assert parse_classification(level.thai) is level
        assert parse_classification(str(int(level))) is level


# --- urgency ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("ปกติ", Urgency.NORMAL),
        ("ด่วน", Urgency.URGENT),
        ("ด่วนมาก", Urgency.VERY_URGENT),
        ("ด่วนที่สุด", Urgency.MOST_URGENT),
        ("normal", Urgency.NORMAL),
        ("urgent", Urgency.URGENT),
        ("very-urgent", Urgency.VERY_URGENT),
        ("Very Urgent", Urgency.VERY_URGENT),
        ("most_urgent", Urgency.MOST_URGENT),
        ("MOST-URGENT", Urgency.MOST_URGENT),
        ("0", Urgency.NORMAL),
        ("1", Urgency.URGENT),
        ("2", Urgency.VERY_URGENT),
        ("3", Urgency.MOST_URGENT),
    ],
)
def test_urgency_words_and_numbers(value: str, level: Urgency) -> None:
    assert parse_urgency(value) is level


def test_rfc2047_encoded_urgency() -> None:
    value = encoded("ด่วนที่สุด")
    assert value.startswith("=?utf-8?")

    assert parse_urgency(value) is Urgency.MOST_URGENT


def test_rfc2047_quoted_printable_urgency() -> None:
    assert parse_urgency("=?UTF-8?Q?most-urgent?=") is Urgency.MOST_URGENT


@pytest.mark.parametrize("value", [None, "", "4", "asap", "ด่วนๆ", "ลับ"])
def test_unknown_urgency_is_normal(value: str | None) -> None:
    assert parse_urgency(value) is Urgency.NORMAL


def test_urgency_orders_the_queue_most_urgent_first() -> None:
    queued = [Urgency.NORMAL, Urgency.MOST_URGENT, Urgency.URGENT, Urgency.VERY_URGENT]

    assert sorted(queued, reverse=True) == [
        Urgency.MOST_URGENT,
        Urgency.VERY_URGENT,
        Urgency.URGENT,
        Urgency.NORMAL,
    ]
    assert [int(u) for u in Urgency] == [0, 1, 2, 3]
    assert Urgency.MOST_URGENT.thai == "ด่วนที่สุด"


@pytest.mark.parametrize("value", ["²", "①", "3²"])
def test_superscript_digits_do_not_raise(value: str) -> None:
    assert parse_classification(value) is Classification.NONE
    assert parse_urgency(value) is Urgency.NORMAL
