"""Fanout without a database: the ring's per-room index, and parked streams.

`recent` is checked against the rule it must follow (`visible`, scanned event by
event) on random histories; `park` is checked with sinks that take or refuse.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.chat import stream as stream_module
from appliance.chat.models import Event
from appliance.chat.stream import Fanout

ROOMS = ["r1", "r2", "r3"]
PEOPLE = ["a@x.go.th", "b@x.go.th", "c@x.go.th"]


def _event(cursor: int, type_: str, room: str | None, subject: str | None = None,
           **payload: object) -> Event:  # fmt: skip
    return Event(cursor, f"box:{cursor}", type_, room, subject, dict(payload), 0.0)


def _reference(fanout: Fanout, events: list[Event], address: str, after: int) -> list[int]:
    return [e.cursor for e in events if e.cursor > after and fanout.visible(e, address)]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["message.posted", "member.added", "member.removed", "alert"]),
            st.sampled_from(ROOMS),
            st.sampled_from(PEOPLE),
        ),
        max_size=60,
    ),
    st.integers(0, 70),
    st.integers(1, 8),
)
def test_recent_finds_what_visible_allows_page_by_page(
    steps: list[tuple[str, str, str]], start: int, limit: int
) -> None:
    fanout = Fanout(0, [("a@x.go.th", "r1"), ("b@x.go.th", "r2")])
    events = []
    for cursor, (kind, room, person) in enumerate(steps, start=1):
        if kind == "member.added":
            event = _event(cursor, kind, room, addresses=[person])
        elif kind == "member.removed":
            event = _event(cursor, kind, room, person, address=person)
        elif kind == "alert":
            event = _event(cursor, kind, None, person)
        else:
            event = _event(cursor, kind, room)
        fanout.publish([event])
        events.append(event)
    for address in PEOPLE:
        after = min(start, fanout.published)
        want = _reference(fanout, events, address, after)
        got: list[int] = []
        while True:
            page = fanout.recent(address, after, limit)
            assert page is not None
            found, after, more = page
            assert len(found) <= limit
            got += [e.cursor for e in found]
            if not more:
                break
        assert got == want
        assert after == fanout.published


def test_recent_after_the_ring_is_cut_still_indexes_by_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "RING_SIZE", 4)
    fanout = Fanout(0, [("a@x.go.th", "r1"), ("b@x.go.th", "r2")])
    for cursor in range(1, 21):
        fanout.publish([_event(cursor, "message.posted", "r1" if cursor % 2 else "r2")])
    assert fanout.ring_floor > 0
    assert fanout.recent("a@x.go.th", 0, 10) is None  # older than the ring
    page = fanout.recent("a@x.go.th", fanout.ring_floor, 10)
    assert page is not None
    assert [e.cursor for e in page[0]] == [c for c in range(fanout.ring_floor + 1, 21) if c % 2]


def test_the_ring_holds_at_most_its_size_and_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 24: the ring's bound is what a busy hub holds in memory; cut in batches of
    # an eighth, never let to double.
    monkeypatch.setattr(stream_module, "RING_SIZE", 16)
    fanout = Fanout(0, [("a@x.go.th", "r1")])
    held = []
    for cursor in range(1, 101):
        fanout.publish([_event(cursor, "message.posted", "r1")])
        held.append(fanout.published - fanout.ring_floor)  # cursors here are consecutive
    assert max(held) == 16 + 2
    assert min(held[40:]) == 16
    assert fanout.recent("a@x.go.th", fanout.ring_floor, 100) is not None


def test_the_ring_forgets_events_older_than_its_age() -> None:
    # Issue 24: on a quiet box the count bound is hours away, so the ring grew for
    # hours; by age it stops at what RING_AGE (and its eighth of slack) holds.
    now = [0.0]
    fanout = Fanout(0, [("a@x.go.th", "r1")], clock=lambda: now[0])
    age = stream_module.RING_AGE
    held = []
    for cursor in range(1, 401):  # one event every 10 s: 4,000 s, far below RING_SIZE
        now[0] = cursor * 10.0
        fanout.publish([_event(cursor, "message.posted", "r1")])
        held.append(fanout.published - fanout.ring_floor)
    assert max(held) <= age * (1 + stream_module.RING_SLACK) / 10 + 1
    assert min(held[100:]) >= age / 10  # never less than RING_AGE's worth
    assert fanout.recent("a@x.go.th", 0, 10) is None  # the oldest are read from the database
    page = fanout.recent("a@x.go.th", fanout.ring_floor, 1000)
    assert page is not None
    assert [e.cursor for e in page[0]] == list(range(fanout.ring_floor + 1, 401))


def test_a_burst_stays_in_the_ring_however_old_the_ring_was() -> None:
    # The age cut takes only events published long ago, never the burst just published.
    now = [0.0]
    fanout = Fanout(0, [("a@x.go.th", "r1")], clock=lambda: now[0])
    fanout.publish([_event(1, "message.posted", "r1")])
    now[0] = 10 * stream_module.RING_AGE
    fanout.publish([_event(c, "message.posted", "r1") for c in range(2, 50)])
    assert fanout.ring_floor == 1
    page = fanout.recent("a@x.go.th", 1, 100)
    assert page is not None
    assert [e.cursor for e in page[0]] == list(range(2, 50))


async def test_a_parked_stream_gets_events_through_its_sink_without_waking() -> None:
    fanout = Fanout(0, [("a@x.go.th", "r1"), ("b@x.go.th", "r2")])
    subscription = fanout.subscribe("a@x.go.th")
    written: list[str] = []
    returned: list[int] = []

    def sink(texts: list[str]) -> bool:
        written.extend(texts)
        return True

    async def parked() -> None:
        returned.append(await fanout.park(subscription, 0, sink))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        fanout.publish([_event(1, "message.posted", "r1"), _event(2, "message.posted", "r2")])
        fanout.publish([_event(3, "message.posted", "r1")])
        await trio.testing.wait_all_tasks_blocked()
        assert [json.loads(t)["cursor"] for t in written] == [1, 3]  # r2 is not hers
        assert returned == []  # still asleep
        assert subscription.cursor == 3
        nursery.cancel_scope.cancel()
    assert subscription.sink is None


async def test_a_refusing_sink_wakes_the_stream_at_the_last_cursor_it_took() -> None:
    fanout = Fanout(0, [("a@x.go.th", "r1")])
    subscription = fanout.subscribe("a@x.go.th")
    answers = [True, False]
    written: list[str] = []

    def sink(texts: list[str]) -> bool:
        if answers.pop(0):
            written.extend(texts)
            return True
        return False

    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def parked() -> None:
            result.append(await fanout.park(subscription, 0, sink))

        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        fanout.publish([_event(1, "message.posted", "r1")])
        fanout.publish([_event(2, "message.posted", "r1")])  # refused: wakes
        fanout.publish([_event(3, "message.posted", "r1")])  # unparked: not offered
    assert [json.loads(t)["cursor"] for t in written] == [1]
    assert result == [1]  # the stream reads on from 1: events 2 and 3 come once
    page = fanout.recent("a@x.go.th", 1, 10)
    assert page is not None
    assert [e.cursor for e in page[0]] == [2, 3]


async def test_a_membership_change_wakes_parked_streams_instead() -> None:
    fanout = Fanout(0, [("a@x.go.th", "r1")])
    subscription = fanout.subscribe("a@x.go.th")
    offered: list[list[str]] = []

    def sink(texts: list[str]) -> bool:
        offered.append(texts)
        return True

    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def parked() -> None:
            result.append(await fanout.park(subscription, 0, sink))

        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        fanout.publish([_event(1, "member.added", "r1", addresses=["b@x.go.th"])])
    assert offered == []
    assert result == [0]


async def test_park_returns_at_once_when_behind() -> None:
    fanout = Fanout(0, [("a@x.go.th", "r1")])
    fanout.publish([_event(1, "message.posted", "r1")])
    subscription = fanout.subscribe("a@x.go.th")
    with trio.fail_after(1):
        assert await fanout.park(subscription, 0, lambda texts: True) == 0
    assert subscription.sink is None
