"""The firmware's pure parts (firmware/pages.py) under CPython: LED modes and page walking.

The same module runs on the panel; here it is loaded from its file, as MicroPython would.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

from hw import panel_link as L
from hw.twins import FIRMWARE_SOURCE


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("panel_pages", FIRMWARE_SOURCE / "pages.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pages = _load()
OK = {"prov": "yes", "gin": "up", "health": "ok"}


def test_led_modes_in_priority_order() -> None:
    assert pages.led_mode({}) == pages.BOOTING
    assert pages.led_mode(OK) == pages.OK
    assert pages.led_mode({**OK, "gin": "down"}) == pages.UPLINK_DOWN
    assert pages.led_mode({**OK, "gin": "down", "health": "warn"}) == pages.DEGRADED
    assert pages.led_mode({**OK, "health": "warn", "prov": "no"}) == pages.UNPROVISIONED
    assert pages.led_mode({**OK, "prov": "no", "update": "40"}) == pages.UPDATING
    assert pages.led_mode({**OK, "update": "40", "health": "error"}) == pages.ERROR
    # Every mode has a pattern of alternating on/off times.
    assert set(pages.PATTERNS) == {
        pages.BOOTING, pages.OK, pages.DEGRADED, pages.UPLINK_DOWN,
        pages.UNPROVISIONED, pages.UPDATING, pages.ERROR,
    }  # fmt: skip


def test_a_short_press_walks_only_the_relevant_pages() -> None:
    walk = [pages.BOX]
    for _ in range(4):
        walk.append(pages.next_page(walk[-1], OK))
    assert walk == [pages.BOX, pages.LINKS, pages.QUEUE, pages.HEALTH, pages.BOX]
    busy = {**OK, "prov": "no", "update": "10"}
    assert pages.available(busy) == list(pages.ORDER)
    # A page that stopped being relevant gives way to the first one.
    assert pages.next_page(pages.SETUP, OK) == pages.BOX


def test_a_long_health_message_wraps_to_the_display() -> None:
    state = {**OK, "health": "warn", "check": "disk: 1.2 GB free (3%) on /var/lib/edgebox"}
    lines = pages.fit(pages.lines(pages.HEALTH, state))
    assert lines[0] == "HEALTH WARN"
    assert all(len(line) <= pages.COLUMNS for line in lines)
    assert len(lines) <= pages.LINES
    assert " ".join(lines[1:]).startswith("disk: 1.2 GB free (3%)")


@given(st.binary(max_size=300))
def test_any_state_body_draws_every_page(body: bytes) -> None:
    state = L.decode_state(body)
    for page in pages.ORDER:
        for line in pages.fit(pages.lines(page, state)):
            assert len(line) <= pages.COLUMNS
    assert pages.led_mode(state) in pages.PATTERNS


@given(
    st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
        st.text(alphabet=st.characters(blacklist_characters="\n\r", codec="utf-8"), max_size=10),
        max_size=4,  # at most 4 * (8 + 1 + 40 + 1) bytes: within one frame
    )
)
def test_state_round_trips(fields: dict[str, str]) -> None:
    assert L.decode_state(L.encode_state(fields)) == fields


def test_the_setup_page_shows_the_fingerprint_in_one_line() -> None:
    state = {**OK, "prov": "no", "setup": "R4MTP-9TM9J", "fp": "b914-6ddf-489d-07f8"}
    state["lan"] = "192.168.1.10"
    lines = pages.fit(pages.lines(pages.SETUP, state))
    assert lines == [
        "SETUP CODE",
        "R4MTP-9TM9J",
        "open https://",
        "192.168.1.10",
        "b9146ddf489d07f8",
    ]
    # A host that sends no fingerprint (an older one): the page without it.
    del state["fp"]
    assert len(pages.lines(pages.SETUP, state)) == 4


def test_the_update_page_follows_the_phases() -> None:
    busy = {**OK, "uphase": "installing", "update": "40", "uver": "2026.12.2"}
    assert pages.led_mode(busy) == pages.UPDATING
    assert pages.fit(pages.lines(pages.UPDATE, busy)) == [
        "UPDATE 2026.12.2", "installing 40%", "[#####.........]", "do not unplug",
    ]  # fmt: skip
    fetching = {**busy, "uphase": "downloading", "update": "100"}
    assert pages.lines(pages.UPDATE, fetching)[1:] == [
        "downloading 100%", "[##############]", "link may drop",
    ]  # fmt: skip
    rebooting = {**OK, "uphase": "rebooting", "uver": "2026.12.2"}
    assert pages.led_mode(rebooting) == pages.UPDATING
    assert pages.lines(pages.UPDATE, rebooting) == [
        "UPDATE 2026.12.2",
        "rebooting",
        "do not unplug",
    ]
    # How it ended: the page stays available, the LED is back to the box's state.
    good = {**OK, "uphase": "good", "uver": "2026.12.2"}
    assert pages.led_mode(good) == pages.OK
    assert pages.UPDATE in pages.available(good)
    assert pages.lines(pages.UPDATE, good) == ["UPDATE 2026.12.2", "good: running", "and committed"]
    back = {**OK, "health": "warn", "uphase": "rolled-back", "uver": "2026.12.2",
            "uwhy": "health gate failed: store: no write"}  # fmt: skip
    assert pages.led_mode(back) == pages.DEGRADED
    assert pages.fit(pages.lines(pages.UPDATE, back)) == [
        "UPDATE 2026.12.2", "ROLLED BACK", "health gate", "failed: store:", "no write",
    ]  # fmt: skip
    refused = {**OK, "uphase": "refused"}
    assert pages.lines(pages.UPDATE, refused) == ["UPDATE", "REFUSED", "see HEALTH page"]
    # An older host sends the percentage alone.
    assert pages.lines(pages.UPDATE, {**OK, "update": "7"})[:2] == ["UPDATE", "installing 7%"]
