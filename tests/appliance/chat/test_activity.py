"""What the pages read from chat: unread counts, last messages, receipts, invitations."""

from __future__ import annotations

import pytest

from appliance.chat import posts
from appliance.chat.models import Room
from appliance.directory import User
from tests.appliance.chat.conftest import World


async def group(world: World, *members: User) -> Room:
    return await world.chat.create_room(
        world.lead, "group", name="ทีม", members=[m.address for m in members]
    )


async def say(world: World, who: User, room: Room, text: str) -> str:
    message, _ = await world.chat.post(who, room.id, {"kind": "text", "text": text})
    return message.id


async def unread(world: World, who: User, room: Room) -> int:
    (activity,) = await world.chat.activity(who, [room.id])
    return activity.unread


async def test_unread_counts_others_messages_after_the_last_read(world: World) -> None:
    room = await group(world, world.staff, world.peer)
    first = await say(world, world.staff, room, "หนึ่ง")
    await say(world, world.peer, room, "สอง")
    third = await say(world, world.staff, room, "สาม")
    assert await unread(world, world.lead, room) == 3
    assert await unread(world, world.peer, room) == 1  # staff's last; never one's own
    assert await unread(world, world.staff, room) == 0  # wrote after peer's message

    await world.chat.mark_read(world.lead, room.id, [first])
    assert await unread(world, world.lead, room) == 2
    await world.chat.mark_read(world.lead, room.id, up_to=third)
    assert await unread(world, world.lead, room) == 0

    # Replying counts as having read what came before.
    await say(world, world.peer, room, "สี่")
    await say(world, world.staff, room, "ห้า")
    assert await unread(world, world.peer, room) == 1


async def test_hidden_and_deleted_messages_are_not_unread(world: World) -> None:
    room = await group(world, world.staff)
    gone = await say(world, world.staff, room, "ลบทิ้ง")
    hidden = await say(world, world.staff, room, "ซ่อน")
    kept = await say(world, world.staff, room, "เหลือ")
    await world.chat.delete_message(world.staff, room.id, gone)
    await world.chat.hide(world.lead, room.id, hidden, True)
    (activity,) = await world.chat.activity(world.lead, [room.id])
    assert activity.unread == 1
    assert activity.last is not None
    assert activity.last.id == kept
    await world.chat.hide(world.lead, room.id, kept, True)
    (activity,) = await world.chat.activity(world.lead, [room.id])
    assert activity.last is not None
    assert activity.last.deleted  # the tombstone is now the last thing shown


async def test_unread_stops_at_the_cap(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(posts, "MAX_UNREAD", 3)
    room = await group(world, world.staff)
    for n in range(5):
        await say(world, world.staff, room, f"ข้อความ {n}")
    assert await unread(world, world.lead, room) == 3


async def test_activity_leaves_out_rooms_of_others_and_hides_secrets(world: World) -> None:
    mine = await group(world, world.staff)
    # (The senior makes it: issue 16 forbids a junior a group of only seniors.)
    theirs = await world.chat.create_room(world.boss, "group", members=[world.peer.address])
    secret = await world.chat.create_room(world.lead, "secret", members=[world.staff.address])
    await world.chat.post(world.lead, secret.id, {"kind": "text", "text": "รหัสตู้เซฟ"})
    found = await world.chat.activity(world.staff, [mine.id, theirs.id, secret.id, "nope:1"])
    assert [a.room_id for a in found] == [mine.id, secret.id]
    assert found[0].last is None
    assert found[0].to_json() == {"room_id": mine.id, "unread": 0, "last_message": None}
    shown = found[1].to_json()
    assert shown["unread"] == 1
    assert shown["last_message"]["content"] == {}  # a list never shows a secret


async def test_readers_of_a_page_of_messages(world: World) -> None:
    room = await group(world, world.staff, world.peer)
    other = await group(world, world.staff)
    one = await say(world, world.lead, room, "หนึ่ง")
    two = await say(world, world.lead, room, "สอง")
    elsewhere = await say(world, world.lead, other, "ห้องอื่น")
    world.clock.now += 5
    await world.chat.mark_read(world.staff, room.id, up_to=two)
    world.clock.now += 5
    await world.chat.mark_read(world.peer, room.id, [one])
    await world.chat.mark_read(world.staff, other.id, [elsewhere])
    readers = await world.chat.readers(world.lead, room.id, [one, two, elsewhere])
    assert readers[one] == [
        (world.staff.address, world.clock.now - 5),
        (world.peer.address, world.clock.now),
    ]
    assert readers[two] == [(world.staff.address, world.clock.now - 5)]
    assert readers[elsewhere] == []  # not a message of this room
    with pytest.raises(posts.ChatError):
        await world.chat.readers(world.other, room.id, [one])


async def test_room_invitations_newest_first_and_location_sharing(world: World) -> None:
    room = await group(world, world.staff)
    for title in ("ประชุมแรก", "ประชุมสอง"):
        world.clock.now += 1
        await world.chat.invite(
            world.lead, room.id, title=title, starts_at="2026-02-02T09:00:00+07:00"
        )
    listed = await world.chat.room_invitations(world.staff, room.id)
    assert [i["title"] for i in listed] == ["ประชุมสอง", "ประชุมแรก"]
    assert listed[0]["invitees"] == [
        {"address": world.staff.address, "answer": None, "answered_at": None}
    ]
    with pytest.raises(posts.ChatError):
        await world.chat.room_invitations(world.peer, room.id)

    assert not await world.chat.sharing_location(world.staff)
    await world.chat.set_location(world.staff, True, {"lat": 13.7, "lon": 100.5})
    assert await world.chat.sharing_location(world.staff)
    await world.chat.set_location(world.staff, False)
    assert not await world.chat.sharing_location(world.staff)


async def test_head_cursor_is_the_last_published_event(world: World) -> None:
    before = world.chat.head_cursor
    room = await group(world, world.staff)
    await say(world, world.staff, room, "ใหม่")
    page = await world.chat.events_for(world.staff.address, before)
    assert world.chat.head_cursor == page.events[-1].cursor > before


async def test_sticker_picker_lists_a_packs_stickers(world: World) -> None:
    # The picker's list: stickers is a WITHOUT ROWID table, so the order is by name.
    await world.directory.grant_admin(world.lead.address, world.lead.agency_domain)
    pack = await world.chat.create_sticker_pack(world.lead, "ชุดแรก")
    for name in ("ยิ้ม", "ขอบคุณ"):
        await world.chat.add_sticker(world.lead, pack["id"], name, b"GIF89a", "image/gif")
    (listed,) = await world.chat.sticker_packs(world.staff)
    assert [s["name"] for s in listed["stickers"]] == ["ขอบคุณ", "ยิ้ม"]
    assert await world.chat.sticker_packs(world.other) == []
