"""Events: global ids, cursors, resume without gap or duplicate, replication, alerts."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.chat import Chat, ChatError
from appliance.chat.models import Event
from tests.appliance.chat.conftest import BOX_ID, World


async def _all_events(chat: Chat, address: str, after: int = 0, limit: int = 3) -> list[Event]:
    """Page through every event visible to *address*, in small pages."""
    seen: list[Event] = []
    cursor = after
    while True:
        page = await chat.events_for(address, cursor, limit)
        seen += page.events
        assert page.cursor >= cursor
        if not page.more and page.cursor == cursor:
            return seen
        cursor = page.cursor


async def test_events_have_global_ids_and_increasing_cursors(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    message, _ = await world.chat.post(world.staff, room.id, {"kind": "text", "text": "หนึ่ง"})
    events = await _all_events(world.chat, world.staff.address)
    assert [e.type for e in events] == ["room.created", "message.posted"]
    assert events[0].id == room.id
    assert events[1].id == message.id
    assert all(e.id.startswith(f"{BOX_ID}:") for e in events)
    assert events[0].cursor < events[1].cursor


async def test_resume_from_any_cursor_has_no_gap_and_no_duplicate(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    other = await world.chat.create_room(world.boss, "group", members=[world.peer.address])
    for i in range(7):
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": f"ข้อ {i}"})
        await world.chat.post(world.boss, other.id, {"kind": "text", "text": f"อื่น {i}"})
    everything = await _all_events(world.chat, world.staff.address, limit=1000)
    assert len(everything) == 8  # room.created + 7 messages; nothing of the other room
    # A client that disconnected after each event resumes from its cursor.
    for index, event in enumerate(everything):
        rest = await _all_events(world.chat, world.staff.address, after=event.cursor)
        assert [e.id for e in rest] == [e.id for e in everything[index + 1 :]]


async def test_database_path_and_memory_path_agree(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    for i in range(5):
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": f"ข้อ {i}"})
    from_memory = await _all_events(world.chat, world.staff.address)
    # Pretend the ring was trimmed: every page must now come from the database.
    world.chat.fanout.ring_floor = world.chat.fanout.published
    from_db = await _all_events(world.chat, world.staff.address)
    assert [(e.cursor, e.id, e.payload) for e in from_db] == [
        (e.cursor, e.id, e.payload) for e in from_memory
    ]


async def test_removed_member_sees_their_removal_and_nothing_after(world: World) -> None:
    room = await world.chat.create_room(
        world.lead, "group", members=[world.staff.address, world.peer.address]
    )
    await world.chat.remove_member(world.lead, room.id, world.peer.address)
    await world.chat.post(world.lead, room.id, {"kind": "text", "text": "หลังจากนั้น"})
    page = await world.chat.events_for(world.peer.address, 0, 100)
    assert [e.type for e in page.events] == ["member.removed"]


async def test_deleted_message_content_is_scrubbed_from_events(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    message, _ = await world.chat.post(world.lead, room.id, {"kind": "text", "text": "พิมพ์ผิด"})
    await world.chat.delete_message(world.lead, room.id, message.id)
    for source in ("memory", "database"):
        if source == "database":
            world.chat.fanout.ring_floor = world.chat.fanout.published
        events = await _all_events(world.chat, world.staff.address)
        assert "พิมพ์ผิด" not in str([e.payload for e in events]), source
        assert events[-1].type == "message.deleted"


async def test_remote_event_applied_twice_counts_once(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    remote = {
        "id": "hubbox:17",
        "type": "message.posted",
        "room_id": room.id,
        "payload": {"message_id": "hubbox:17", "message": {"content": {"text": "จากศูนย์"}}},
        "created_at": 1.0,
    }
    assert await world.chat.apply_remote(remote) is True
    assert await world.chat.apply_remote(remote) is False
    events = await _all_events(world.chat, world.staff.address)
    assert [e.id for e in events].count("hubbox:17") == 1
    with pytest.raises(ChatError):
        await world.chat.apply_remote({"id": "not an id", "type": "x", "payload": {}})


async def test_wait_wakes_when_an_event_commits(world: World, autojump_clock: object) -> None:
    import trio

    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    head = world.chat.fanout.published
    woke = trio.Event()

    async def waiter() -> None:
        await world.chat.wait(head)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        assert not woke.is_set()
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": "ปลุก"})
        await woke.wait()


async def test_alert_reaches_only_opted_in_people_within_the_radius(world: World) -> None:
    await world.directory.grant_admin(world.boss.address, "a.go.th")
    bangkok = {"lat": 13.7563, "lon": 100.5018}
    await world.chat.set_location(world.staff, True, {"lat": 13.7600, "lon": 100.5018})  # ~400 m
    await world.chat.set_location(world.peer, True, {"lat": 18.7883, "lon": 98.9853})  # Chiang Mai
    # lead shares nothing: never alerted, wherever they are.
    with pytest.raises(ChatError) as exc:
        await world.chat.send_alert(world.staff, location=bangkok, radius_m=1000, text="x")
    assert exc.value.status == 403
    sent = await world.chat.send_alert(world.boss, location=bangkok, radius_m=1000, text="น้ำท่วม")
    assert sent == 1
    [alert] = (await world.chat.events_for(world.staff.address, 0, 100)).events
    assert (alert.type, alert.payload["text"]) == ("alert", "น้ำท่วม")
    assert (await world.chat.events_for(world.peer.address, 0, 100)).events == []
    # Opting out forgets the location.
    await world.chat.set_location(world.staff, False)
    assert await world.chat.send_alert(world.boss, location=bangkok, radius_m=1000, text="อีก") == 0


async def test_room_owner_alerts_the_room_members(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    await world.chat.set_location(world.staff, True, {"lat": 13.0, "lon": 100.0})
    await world.chat.set_location(world.peer, True, {"lat": 13.0, "lon": 100.0})
    sent = await world.chat.send_alert(
        world.lead, location={"lat": 13.0, "lon": 100.0}, radius_m=50, text="ที่นี่", room_id=room.id
    )
    assert sent == 1  # staff is in the room, peer is not


async def test_invitation_accept_decline_and_who_answered(world: World) -> None:
    room = await world.chat.create_room(
        world.lead, "group", members=[world.staff.address, world.peer.address]
    )
    invitation = await world.chat.invite(
        world.lead,
        room.id,
        title="ประชุมประจำเดือน",
        starts_at="2024-01-10T09:00:00+07:00",
        place="ห้องประชุม 1",
    )
    await world.chat.answer(world.staff, invitation["id"], "accept")
    result = await world.chat.answer(world.peer, invitation["id"], "decline")
    answers = {i["address"]: i["answer"] for i in result["invitees"]}
    assert answers == {world.staff.address: "accept", world.peer.address: "decline"}
    with pytest.raises(ChatError):
        await world.chat.answer(world.lead, invitation["id"], "accept")  # organiser not invited
    with pytest.raises(ChatError):
        await world.chat.invite(world.lead, room.id, title="x", starts_at="tomorrow")


def test_haversine_distance_bangkok_to_chiang_mai() -> None:
    from appliance.chat.geo import distance_m

    # About 580 km as the crow flies.
    assert 570_000 < distance_m(13.7563, 100.5018, 18.7883, 98.9853) < 600_000
    assert distance_m(13.0, 100.0, 13.0, 100.0) == 0


async def test_a_stream_wakes_only_for_what_its_user_may_see(world: World) -> None:
    room = await world.chat.create_room(world.lead, "group", members=[world.staff.address])
    head = world.chat.fanout.published
    woken: list[str] = []

    async def stream_of(address: str) -> None:
        await world.chat.wait(head, address)
        woken.append(address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_of, world.staff.address)
        nursery.start_soon(stream_of, world.peer.address)
        await trio.testing.wait_all_tasks_blocked()
        await world.chat.post(world.lead, room.id, {"kind": "text", "text": "ถึงสมาชิก"})
        await trio.testing.wait_all_tasks_blocked()
        # The member woke; the outsider still sleeps (every stream waking for every
        # message is what made 1,000 streams slow).
        assert woken == [world.staff.address]
        nursery.cancel_scope.cancel()
