"""The directory entry codec: what parses survives the wire, anything else is a ValueError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sync.codec.directory import DirectoryEntry, entry_from_json, entry_to_json

_TEXT = st.text(max_size=40)
_OPTIONAL = st.none() | _TEXT
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)

_ENTRIES = st.builds(
    DirectoryEntry,
    seq=st.integers(0, 2**63 - 1),
    address=_TEXT,
    agency_domain=_TEXT,
    agency_name_th=_OPTIONAL,
    agency_name_en=_OPTIONAL,
    name_th=_TEXT,
    name_en=_OPTIONAL,
    position=_OPTIONAL,
    rank=st.integers(0, 2**63 - 1),
    unit=_OPTIONAL,
    phone=_OPTIONAL,
    disabled=st.booleans(),
)


@given(entry=_ENTRIES)
def test_an_entry_survives_its_wire_form(entry: DirectoryEntry) -> None:
    assert entry_from_json(entry_to_json(entry)) == entry


@settings(max_examples=300)
@given(value=_JSON | st.fixed_dictionaries({"agency": _JSON, "seq": _JSON, "rank": _JSON}))
def test_anything_else_parses_or_is_refused_with_a_value_error(value: Any) -> None:
    try:
        entry = entry_from_json(value)
    except ValueError:
        return
    assert entry_from_json(entry_to_json(entry)) == entry


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"rank": 2**63}, "rank"),
        ({"disabled": "no"}, "disabled"),
        ({"address": None}, "address"),
        ({"name_th": "x" * 1025}, "name_th"),
        ({"agency": "moph.go.th"}, "agency"),
    ],
)
def test_a_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    good = entry_to_json(
        DirectoryEntry(1, "a@moph.go.th", "moph.go.th", None, None, "ก", None, None, 0, None,
                       None, False)
    )  # fmt: skip
    with pytest.raises(ValueError, match=field):
        entry_from_json(good | change)
