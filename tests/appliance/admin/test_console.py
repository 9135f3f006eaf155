"""The console's rules without HTTP: form numbers, search, org tree, scope, ages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.admin.console import (
    Refusal,
    format_age,
    org_tree,
    parse_count,
    search_users,
    urgency_name,
)
from appliance.directory import OrgUnit, User
from appliance.directory.scope import AdminScope
from appliance.sync.clock import ManualClock
from appliance.sync.link import LINK_FILE, LinkReading, LinkSnapshot, LinkState
from appliance.sync.status import SyncStatus
from appliance.sync.uplink import read_uplink as link_status

THAI_DIGITS = "๐๑๒๓๔๕๖๗๘๙"


def person(address: str, name_th: str = "สมชาย", name_en: str | None = None,
           unit: str | None = None) -> User:  # fmt: skip
    return User(
        id=abs(hash(address)) % 10_000, address=address, agency_domain="a.go.th",
        name_th=name_th, name_en=name_en, position=None, rank=0, unit=unit, phone=None,
        disabled=False, quota_bytes=1,
    )  # fmt: skip


# --- parse_count: a parser of form input -----------------------------------------------


@given(st.integers(min_value=0, max_value=1000))
def test_parse_count_reads_ascii_and_thai_digits(value: int) -> None:
    thai = "".join(THAI_DIGITS[int(d)] for d in str(value))
    assert parse_count(str(value), "Rank", "ระดับ", 1000) == value
    assert parse_count(f"  {thai} ", "Rank", "ระดับ", 1000) == value


@given(st.text(max_size=30))
def test_parse_count_answers_a_number_in_range_or_a_refusal(text: str) -> None:
    value: int | Refusal
    try:
        value = parse_count(text, "Rank", "ระดับ", 1000)
    except Refusal as refusal:
        value = refusal
    if isinstance(value, Refusal):
        assert value.message_th.startswith("ระดับ")
    else:
        assert 0 <= value <= 1000


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.5", "1e3", "½", "1001", "1 000", "x"])
def test_parse_count_refuses(text: str) -> None:
    with pytest.raises(Refusal):
        parse_count(text, "Rank", "ระดับ", 1000)


# --- search ------------------------------------------------------------------------


def test_search_matches_address_and_both_names_in_any_case() -> None:
    users = [
        person("somchai@a.go.th", "สมชาย ใจดี", "Somchai Jaidee"),
        person("malee@a.go.th", "มาลี ศรีสุข", "Malee Srisuk"),
    ]

    assert search_users(users, "ใจดี") == users[:1]
    assert search_users(users, "SRISUK") == users[1:]
    assert search_users(users, "@a.go") == users
    assert search_users(users, "  ") == users
    assert search_users(users, "ไม่มี") == []


def test_search_treats_two_spellings_of_thai_text_alike() -> None:
    # ปู่: the below-vowel ู and the tone mark ่ may be typed in either order; NFC puts
    # them in canonical order, so both spellings find the same person.
    users = [person("x@a.go.th", "\u0e1b\u0e39\u0e48")]
    assert search_users(users, "\u0e1b\u0e48\u0e39") == users
    assert search_users(users, "\u0e1b\u0e39\u0e48") == users


@given(st.lists(st.text(max_size=8), max_size=6), st.text(max_size=4))
def test_search_returns_a_subsequence(names: list[str], query: str) -> None:
    users = [person(f"u{i}@a.go.th", name or "x") for i, name in enumerate(names)]
    found = search_users(users, query)
    assert all(user in users for user in found)
    assert [u.address for u in found] == sorted(u.address for u in found)


# --- org tree ----------------------------------------------------------------------


@st.composite
def charts(draw: st.DrawFn) -> tuple[list[OrgUnit], list[User]]:
    count = draw(st.integers(min_value=0, max_value=12))
    units = []
    for index in range(count):
        # Any parent, even a later or missing one or itself: the tree must still hold
        # every unit once.
        parent = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=count + 1)))
        units.append(OrgUnit(index, "a.go.th", f"หน่วย{index}", None, parent))
    names = [u.name_th for u in units] + ["หน่วยที่ไม่มี"]
    users = [
        person(f"p{i}@a.go.th", unit=draw(st.one_of(st.none(), st.sampled_from(names))))
        for i in range(draw(st.integers(min_value=0, max_value=10)))
    ]
    return units, users


@given(charts())
def test_org_tree_holds_every_unit_and_user_exactly_once(
    chart: tuple[list[OrgUnit], list[User]],
) -> None:
    units, users = chart
    tree = org_tree(units, users)
    seen_units: list[int] = []
    seen_users: list[str] = list(u.address for u in tree.unplaced)
    stack = list(tree.roots)
    while stack:
        node = stack.pop()
        seen_units.append(node.unit.id)
        seen_users += [u.address for u in node.members]
        assert all(member.unit == node.unit.name_th for member in node.members)
        stack += node.children
    assert sorted(seen_units) == [u.id for u in units]
    assert sorted(seen_users) == sorted(u.address for u in users)


def test_org_tree_nests_children_in_order() -> None:
    units = [
        OrgUnit(1, "a.go.th", "สำนักงาน", None, None),
        OrgUnit(2, "a.go.th", "กองคลัง", None, 1),
        OrgUnit(3, "a.go.th", "ฝ่ายบัญชี", None, 2),
        OrgUnit(4, "a.go.th", "กองแผน", None, 1),
    ]
    users = [person("a@a.go.th", unit="ฝ่ายบัญชี"), person("b@a.go.th")]

    tree = org_tree(units, users)

    [root] = tree.roots
    assert [c.unit.name_th for c in root.children] == ["กองคลัง", "กองแผน"]
    assert [m.address for m in root.children[0].children[0].members] == ["a@a.go.th"]
    assert [u.address for u in tree.unplaced] == ["b@a.go.th"]


# --- scope, names, ages ------------------------------------------------------------


def test_scope_rules() -> None:
    admin = person("admin@a.go.th")
    agency = AdminScope(admin, frozenset({"a.go.th"}))
    box_wide = AdminScope(admin, None)

    assert agency.covers("A.GO.TH")
    assert not agency.covers("b.go.th")
    assert not agency.covers("not a domain!")
    assert box_wide.covers("anything.go.th")
    assert agency.may_change(frozenset())
    assert agency.may_change(frozenset({"a.go.th"}))
    assert not agency.may_change(frozenset({"a.go.th", "b.go.th"}))
    assert not agency.may_change(None)
    assert box_wide.may_change(None)


def test_urgency_names_and_ages() -> None:
    assert [urgency_name(level, "th") for level in range(4)] == [
        "ปกติ", "ด่วน", "ด่วนมาก", "ด่วนที่สุด",
    ]  # fmt: skip
    assert urgency_name(2, "en") == "Very urgent"
    assert urgency_name(9, "th") == "ด่วนที่สุด"
    assert format_age(30, "th") == "ไม่ถึง 1 นาที"
    assert format_age(3 * 3600 + 5 * 60 + 7, "th") == "3 ชั่วโมง 5 นาที"
    assert format_age(2 * 86400 + 4 * 3600 + 59, "en") == "2 d 4 h"
    assert format_age(86400 + 60, "en") == "1 d 1 min"
    assert format_age(-5, "en") == "under a minute"


def test_link_status_says_sync_is_not_set_up(tmp_path: Path) -> None:
    status = link_status()
    assert not status.connected
    assert status.th == "ยังไม่ได้เชื่อมต่อกับส่วนกลาง"
    assert status.en == "Not connected to the centre (sync not set up)"

    never_ran = link_status(tmp_path)
    assert not never_ran.connected
    assert never_ran.th.startswith("ยังไม่ได้เชื่อมต่อกับส่วนกลาง")
    assert [s.name for s in never_ran.streams] == ["outbound", "mailbox", "chat", "directory"]


def test_link_status_reads_the_monitor_and_the_replicators(tmp_path: Path) -> None:
    clock = ManualClock(1_800_000_000.0)
    snapshot = LinkSnapshot(
        gin=LinkReading(LinkState.DOWN, 1_800_000_000.0, "https://hub:7443", "no answer in time"),
        international=LinkReading(LinkState.UP, 1_700_000_000.0, "8.8.8.8:53"),
    )
    (tmp_path / "run").mkdir()
    (tmp_path / LINK_FILE).write_text(json.dumps(snapshot.to_json()))
    SyncStatus(tmp_path, clock).success("chat")

    status = link_status(tmp_path)

    assert not status.connected
    assert (status.gin, status.international, status.since) == ("down", "up", 1_800_000_000.0)
    assert "ติดต่อส่วนกลางผ่าน GIN ไม่ได้" in status.th
    assert "mail to other agencies waits in the queue" in status.en
    chat = next(s for s in status.streams if s.name == "chat")
    assert (chat.th, chat.last_success, chat.last_error) == ("แชท", 1_800_000_000.0, None)

    up = LinkSnapshot(gin=LinkReading(LinkState.UP, 5.0, "https://hub:7443"))
    (tmp_path / LINK_FILE).write_text(json.dumps(up.to_json()))
    status = link_status(tmp_path)
    assert status.connected
    assert status.international == "not_probed"
    assert status.en == "The centre is reachable over GIN"


# --- people of other agencies, replicated for the address book ----------------------


async def test_a_box_admin_never_administers_replicated_people(tmp_path: Path) -> None:
    from appliance.admin.console import AdminConsole
    from appliance.box import configured, init_box, open_box
    from appliance.directory import DirectoryEntry

    await init_box(tmp_path, "a.go.th")
    async with open_box(configured(tmp_path, {}, {})) as box:
        admin = await box.directory.add_user(
            "admin@a.go.th", password="pw-123456789", name_th="ผู้ดูแล"
        )
        dara = DirectoryEntry(
            seq=1, address="dara@b.go.th", agency_domain="b.go.th", agency_name_th="กรมบี",
            agency_name_en=None, name_th="ดารา", name_en=None, position=None, rank=3,
            unit=None, phone=None, disabled=False,
        )  # fmt: skip
        [created] = await box.directory.apply_entries([dara], remote=True)
        assert created == "dara@b.go.th"
        assert await box.directory.user("dara@b.go.th") is not None  # in the address book

        console = AdminConsole(
            config=box.config, directory=box.directory, mailstore=box.mailstore,
            guard=box.guard, traffic=box.traffic, status_file=box.status_file,
        )  # fmt: skip
        box_wide = AdminScope(admin, None)
        assert [u.address for u in await console.users(box_wide)] == ["admin@a.go.th"]
        assert await console.target(box_wide, "dara@b.go.th") is None
        assert await console.target(box_wide, "admin@a.go.th") is not None
