"""One byte range out of a ``Range`` header (RFC 9110 §14): what is served, what is 416."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.net.ranges import ByteRange, Unsatisfiable, requested_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("bytes=0-", ByteRange(0, 999, 1000)),
        ("bytes=400-", ByteRange(400, 999, 1000)),
        ("bytes=10-19", ByteRange(10, 19, 1000)),
        ("bytes=990-5000", ByteRange(990, 999, 1000)),  # the end is clipped (§14.1.2)
        ("bytes=-100", ByteRange(900, 999, 1000)),  # a suffix
        ("bytes=-5000", ByteRange(0, 999, 1000)),
        (" bytes = 5 - 6 ", ByteRange(5, 6, 1000)),
        # Ignored, so the whole file goes (§14.2): several ranges, other units, junk.
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=", None),
        ("bytes=-", None),
        ("bytes=9-3", None),
    ],
)
def test_one_range_is_read(value: str | None, expected: ByteRange | None) -> None:
    assert requested_range(value, 1000) == expected


@pytest.mark.parametrize("value", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable(value: str) -> None:
    with pytest.raises(Unsatisfiable):
        requested_range(value, 1000)


def test_content_range_names_the_bytes_and_the_size() -> None:
    assert ByteRange(400, 999, 1000).content_range() == "bytes 400-999/1000"
    assert ByteRange(400, 999, 1000).length == 600


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**12))
def test_any_header_gives_a_range_inside_the_file_or_none(value: str, size: int) -> None:
    try:
        found = requested_range(value, size)
    except Unsatisfiable:
        return
    if found is not None:
        assert 0 <= found.first <= found.last < size
        assert found.length >= 1
