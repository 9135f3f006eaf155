"""gzip and identity bodies of the sync API: round trips, limits, bombs, bad streams."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync import content_coding
from appliance.sync.content_coding import BadCoding, TooLarge, UnsupportedCoding


@given(st.binary(max_size=5000), st.sampled_from(["gzip", "x-gzip", "GZip", " gzip "]))
def test_gzip_round_trips(data: bytes, name: str) -> None:
    assert content_coding.decode(content_coding.encode(data), name, len(data)) == data


@given(st.binary(max_size=500), st.sampled_from([None, "", "identity", "Identity"]))
def test_identity_is_the_body_as_it_is(data: bytes, name: str | None) -> None:
    assert content_coding.decode(data, name, len(data)) == data


def test_identity_over_the_limit_is_too_large() -> None:
    with pytest.raises(TooLarge):
        content_coding.decode(b"x" * 11, None, 10)


def test_the_limit_holds_for_what_gzip_inflates_to() -> None:
    body = b"a" * 1000
    packed = content_coding.encode(body)
    assert content_coding.decode(packed, "gzip", 1000) == body
    with pytest.raises(TooLarge):
        content_coding.decode(packed, "gzip", 999)


def test_a_bomb_is_refused_without_inflating_it() -> None:
    # 64 MiB of zeros in about 64 KiB; the limit is 1 MiB.
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    bomb = b"".join(deflater.compress(chunk) for _ in range(64)) + deflater.flush()
    assert len(bomb) < 1 << 17
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            content_coding.decode(bomb, "gzip", 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the limit and a step, never the 64 MiB


@pytest.mark.parametrize(
    "data",
    # mtime=0: the ids name the bytes, and every pytest-xdist worker must collect the same.
    [
        b"",
        b"not gzip at all",
        gzip.compress(b'{"a": 1}', mtime=0)[:-3],  # cut short: no whole trailer
        gzip.compress(b'{"a": 1}', mtime=0)[:-8] + b"\0" * 8,  # wrong CRC and length
        gzip.compress(b"{}", mtime=0) + b"junk",
    ],
)
def test_a_corrupt_or_cut_stream_is_bad(data: bytes) -> None:
    with pytest.raises(BadCoding):
        content_coding.decode(data, "gzip", 1 << 20)


def test_several_members_are_one_body_but_not_thousands() -> None:
    two = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert content_coding.decode(two, "gzip", 10) == b"abcd"
    many = gzip.compress(b"") * 10_000
    with pytest.raises(BadCoding):
        content_coding.decode(many, "gzip", 10)


def test_gzip_twice_is_undone_twice_and_others_are_unsupported() -> None:
    twice = content_coding.encode(content_coding.encode(b"hello"))
    assert content_coding.decode(twice, "gzip, gzip", 100) == b"hello"
    for name in ("br", "deflate", "gzip, br", "compress"):
        with pytest.raises(UnsupportedCoding):
            content_coding.decode(b"x", name, 100)


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_another_error(data: bytes) -> None:
    try:
        content_coding.decode(data, "gzip", 1000)
    except (BadCoding, TooLarge):
        pass


@given(st.binary(min_size=1, max_size=2000))
def test_random_bytes_cut_from_a_real_stream_are_bad(data: bytes) -> None:
    packed = content_coding.encode(data + os.urandom(4))
    with pytest.raises(BadCoding):
        content_coding.decode(packed[: len(packed) // 2], "gzip", 10_000)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("br, gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=nonsense", False),
        ("gzip;q=2", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str | None, expected: bool) -> None:
    assert content_coding.accepts_gzip(header) is expected


@given(st.text(max_size=80))
def test_any_accept_encoding_value_gives_an_answer(header: str) -> None:
    assert content_coding.accepts_gzip(header) in (True, False)
