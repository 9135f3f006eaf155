"""untrusted.py: the strict media-type parser, content sniffing and displayable text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.security.untrusted import (
    INLINE_TYPES,
    RASTER_IMAGE_TYPES,
    content_disposition,
    display_json,
    display_text,
    inline_type,
    parse_media_type,
    raster_image_type,
    sniff,
)

# Real file starts: enough bytes of each format for its signature.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00"
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00"
MP3_FRAME = b"\xff\xfb\x90\x64\x00"
OGG = b"OggS\x00\x02\x00\x00\x00\x00"
WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01webm"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
FLAC = b"fLaC\x00\x00\x00\x22"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script href="/x.js"/></svg>'
HTML = b"<!doctype html><script>alert(1)</script>"
JS = b"document.title = 'owned';"

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKENS = st.text(alphabet=TCHAR, min_size=1, max_size=20).filter(lambda t: "*" not in t)


# --- the strict media-type parser (RFC 9110 §8.3.1) ---------------------------------------


@pytest.mark.parametrize(
    ("value", "essence"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("  text/plain ; charset=utf-8", "text/plain"),
        ('text/plain; charset="utf-8"', "text/plain"),
        ("audio/webm;codecs=opus", "audio/webm"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ('image/png; name="a, text/html"', "image/png"),
    ],
)  # fmt: skip
def test_one_type_is_read_as_its_essence(value: str, essence: str) -> None:
    parsed = parse_media_type(value)
    assert parsed is not None
    assert parsed.essence == essence


@pytest.mark.parametrize(
    "value",
    [
        "image/png, text/javascript",  # a list: the sticker trick
        "image/png,text/javascript",
        "image/png; x=1, text/html",  # a second type after a parameter
        "image/png; a=1; a=2",  # a parameter twice: which one is meant?
        "image/png; charset",  # a parameter without a value
        'image/png; x="unterminated',
        "image/png text/html",
        "image",
        "image/",
        "/png",
        "image/*",
        "*/*",
        "image/pn*",
        "image/svg+xml\r\nX-Evil: 1",
        "image/p\u00f1g",
        "",
        "   ",
        "a/" + "b" * 300,
    ],
)
def test_anything_but_exactly_one_type_is_no_type(value: str) -> None:
    assert parse_media_type(value) is None


PARAMS = st.lists(st.tuples(TOKENS, TOKENS), max_size=3, unique_by=lambda p: p[0].lower())


@given(TOKENS, TOKENS, PARAMS)
def test_any_well_formed_type_parses_to_itself(
    kind: str, sub: str, params: list[tuple[str, str]]
) -> None:
    text = f"{kind}/{sub}" + "".join(f"; {name}={value}" for name, value in params)
    parsed = parse_media_type(text)
    if len(text) > 200:
        assert parsed is None
        return
    assert parsed is not None
    assert parsed.essence == f"{kind}/{sub}".lower()
    assert parsed.params == tuple((n.lower(), v) for n, v in params)


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_any_text_is_one_clean_type_or_none(value: str) -> None:
    parsed = parse_media_type(value)
    if parsed is None:
        return
    # Whatever was accepted, its essence is one token/token: never a list, never a
    # header break, never a wildcard.
    assert re.fullmatch(r"[!#$%&'+.^_`|~0-9a-z-]+/[!#$%&'+.^_`|~0-9a-z-]+", parsed.essence)


@given(TOKENS, TOKENS, st.sampled_from([",", ", ", " ,"]), TOKENS, TOKENS)
def test_a_second_type_anywhere_unquoted_is_refused(
    a: str, b: str, comma: str, c: str, d: str
) -> None:
    assert parse_media_type(f"{a}/{b}{comma}{c}/{d}") is None
    assert parse_media_type(f"{a}/{b}; p=1{comma}{c}/{d}") is None


# --- sniffing by content -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (b"GIF87a\x01\x00", "image/gif"),
        (WEBP, "image/webp"),
        (WAV, "audio/wav"),
        (MP3, "audio/mpeg"),
        (MP3_FRAME, "audio/mpeg"),
        (b"\xff\xf1\x50\x80", "audio/aac"),
        (FLAC, "audio/flac"),
        (OGG, "video/ogg"),
        (WEBM, "video/webm"),
        (MP4, "video/mp4"),
        (SVG, None),
        (HTML, None),
        (JS, None),
        (b"%PDF-1.7", None),
        (b"\x89PNG plan", None),  # only the start of the signature
        (b"\xff\xd8jpeg", None),
        (b"RIFF\x00\x00\x00\x00AVI LIST", None),
        (b"\x00\x00\x00\x04ftyp", None),  # a box shorter than its own header
        (b"", None),
    ],
)
def test_sniff_knows_a_file_by_its_first_bytes(data: bytes, expected: str | None) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize(
    ("data", "declared", "expected"),
    [
        (PNG, "image/svg+xml", "image/png"),  # the bytes win over the label
        (PNG, "text/html", "image/png"),
        (JPEG, "image/png", "image/jpeg"),
        (SVG, "image/svg+xml", None),
        (HTML, "image/png", None),
        (JS, "image/png, text/javascript", None),
        (JS, "text/javascript", None),
        (WEBM, "audio/webm;codecs=opus", "audio/webm"),  # a voice message
        (WEBM, "video/webm", "video/webm"),
        (WEBM, None, "video/webm"),
        (WEBM, "text/html", "video/webm"),
        (MP4, "audio/mp4", "audio/mp4"),
        (MP4, "audio/mp4, text/html", "video/mp4"),  # not one type: no say in it
        (OGG, "audio/ogg", "audio/ogg"),
        (MP3, "text/html", "audio/mpeg"),
    ],
)
def test_inline_type_is_decided_by_the_bytes(
    data: bytes, declared: str | None, expected: str | None
) -> None:
    assert inline_type(data, declared) == expected


def test_only_raster_images_are_raster_images() -> None:
    assert [raster_image_type(d) for d in (PNG, JPEG, GIF, WEBP)] == [
        "image/png", "image/jpeg", "image/gif", "image/webp",
    ]  # fmt: skip
    assert [raster_image_type(d) for d in (SVG, MP4, WAV, HTML)] == [None] * 4


@settings(max_examples=500)
@given(st.binary(max_size=64), st.none() | st.text(max_size=40))
def test_any_bytes_are_an_inline_type_or_none(data: bytes, declared: str | None) -> None:
    found = inline_type(data, declared)
    assert found is None or found in INLINE_TYPES
    if found in RASTER_IMAGE_TYPES:
        assert raster_image_type(data) == found


@given(st.binary(max_size=64))
def test_markup_never_sniffs_as_inline(tail: bytes) -> None:
    for start in (b"<svg", b"<?xml", b"<!doctype html", b"<html", b"<script", b"\xef\xbb\xbf<svg"):
        assert inline_type(start + tail, "image/svg+xml") is None


# --- text -----------------------------------------------------------------------------

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_the_right_to_left_override_trick_is_undone() -> None:
    assert display_text("invoice\u202efdp.exe") == "invoicefdp.exe"
    assert display_text("\u2067ข้อความ\u2069 a\tb\nc\x00\x1b\x7f") == "ข้อความ a\tb\nc"
    # The marks that only steer neutral characters stay: mixed-script text needs them.
    assert display_text("a\u200eb\u200fc\u061cd") == "a\u200eb\u200fc\u061cd"
    # Undecodable bytes kept as lone surrogates become U+FFFD.
    assert display_text("a\udcff") == "a\ufffd"


@given(st.text(max_size=60))
def test_displayable_text_has_no_bidi_or_control_left(value: str) -> None:
    shown = display_text(value)
    assert not any(c in BIDI_CONTROLS for c in shown)
    assert not any((ord(c) < 0x20 and c not in "\t\n") or c == "\x7f" for c in shown)
    shown.encode("utf-8")
    assert display_text(shown) == shown


def test_display_json_reaches_every_string() -> None:
    value = {"text": "a\u202eb", "list": ["\u2066x", {"k\u202d": "y"}], "n": 1, "none": None}
    assert display_json(value) == {"text": "ab", "list": ["x", {"k": "y"}], "n": 1, "none": None}


def test_content_disposition_inline_or_attachment() -> None:
    assert content_disposition("แผน.png", inline=True).startswith('inline; filename="')
    assert content_disposition("invoice\u202efdp.exe") == (
        "attachment; filename=\"invoicefdp.exe\"; filename*=UTF-8''invoicefdp.exe"
    )
