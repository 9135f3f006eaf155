"""One test per room rule and per room kind; each fails if its rule is removed.

The rules are those of REQUIREMENTS.md §3 "Control rules", enforced by
`appliance.chat.rules.RoomPolicy` through `Chat`. Every refusal is also checked to
change nothing.
"""

from __future__ import annotations

import pytest

from appliance.chat import ChatError
from tests.appliance.chat.conftest import MONDAY_10, World


def _code(exc: pytest.ExceptionInfo[ChatError]) -> str:
    return exc.value.code


# --- direct rooms -----------------------------------------------------------------


async def test_direct_room_is_unique_per_pair(world: World) -> None:
    room, created = await world.chat.open_direct(world.staff, world.peer.address)
    again, created_again = await world.chat.open_direct(world.peer, world.staff.address)
    assert created
    assert not created_again
    assert again.id == room.id
    assert room.members == {world.staff.address, world.peer.address}


async def test_cannot_open_direct_chat_upwards_in_normal_mode(world: World) -> None:
    with pytest.raises(ChatError) as exc:
        await world.chat.open_direct(world.staff, world.boss.address)
    assert exc.value.status == 403
    assert _code(exc) == "higher_rank"
    assert await world.chat.rooms(world.staff) == []


async def test_senior_may_start_and_junior_may_reply(world: World) -> None:
    room, _ = await world.chat.open_direct(world.boss, world.staff.address)
    # Opening it from the junior side finds the existing room instead of refusing.
    found, created = await world.chat.open_direct(world.staff, world.boss.address)
    assert (found.id, created) == (room.id, False)
    reply, _ = await world.chat.post(world.staff, room.id, {"kind": "text", "text": "รับทราบครับ"})
    assert reply.sender == world.staff.address


async def test_public_mode_allows_direct_chat_upwards(world: World) -> None:
    await world.directory.grant_admin(world.lead.address, "a.go.th")
    await world.chat.set_public_mode(world.lead, "a.go.th", True)
    room, created = await world.chat.open_direct(world.staff, world.boss.address)
    assert created
    assert world.boss.address in room.members


async def test_only_admins_switch_public_mode(world: World) -> None:
    with pytest.raises(ChatError) as exc:
        await world.chat.set_public_mode(world.staff, "a.go.th", True)
    assert exc.value.status == 403
    assert not await world.chat.public_mode("a.go.th")


async def test_no_private_chat_room_blocks_direct_chats_between_members(world: World) -> None:
    await world.chat.create_room(
        world.lead,
        "group",
        name="ทีมงาน",
        members=[world.staff.address, world.peer.address],
        options={"no_private_chat": True},
    )
    with pytest.raises(ChatError) as exc:
        await world.chat.open_direct(world.staff, world.peer.address)
    assert _code(exc) == "no_private_chat"
    # The owner who set the restriction may still talk to a member alone.
    room, _ = await world.chat.open_direct(world.lead, world.staff.address)
    assert room.kind == "direct"


async def test_members_must_be_users_of_the_box(world: World) -> None:
    with pytest.raises(ChatError) as exc:
        await world.chat.create_room(world.staff, "group", members=["nobody@c.go.th"])
    assert exc.value.status == 422
    assert _code(exc) == "unknown_user"
    assert await world.chat.rooms(world.staff) == []


async def test_disabled_users_cannot_be_added(world: World) -> None:
    await world.directory.set_disabled(world.peer.address, True)
    with pytest.raises(ChatError) as exc:
        await world.chat.create_room(world.staff, "group", members=[world.peer.address])
    assert _code(exc) == "unknown_user"


async def test_rooms_may_cross_agencies_of_the_box(world: World) -> None:
    room = await world.chat.create_room(world.staff, "group", members=[world.other.address])
    assert world.other.address in room.members


# --- owner-only changes -----------------------------------------------------------


async def _group(world: World) -> str:
    room = await world.chat.create_room(
        world.lead, "group", name="โครงการ", members=[world.staff.address, world.peer.address]
    )
    return room.id


async def test_only_the_owner_adds_members_and_it_takes_effect_at_once(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.add_members(world.staff, room_id, [world.boss.address])
    assert _code(exc) == "not_owner"
    room = await world.chat.add_members(world.lead, room_id, [world.boss.address])
    assert world.boss.address in room.members
    # No acceptance step: the new member sees the room straight away.
    assert [r.id for r in await world.chat.rooms(world.boss)] == [room_id]


async def test_only_the_owner_removes_members(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.remove_member(world.staff, room_id, world.peer.address)
    assert _code(exc) == "not_owner"
    room = await world.chat.remove_member(world.lead, room_id, world.peer.address)
    assert world.peer.address not in room.members
    assert await world.chat.rooms(world.peer) == []


async def test_only_the_owner_renames(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.update_room(world.staff, room_id, name="ชื่อใหม่", rename=True)
    assert _code(exc) == "not_owner"
    assert (await world.chat.room(world.staff, room_id)).name == "โครงการ"
    room = await world.chat.update_room(world.lead, room_id, name="ชื่อใหม่", rename=True)
    assert room.name == "ชื่อใหม่"


async def test_only_the_owner_deletes_the_room(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.delete_room(world.staff, room_id)
    assert _code(exc) == "not_owner"
    await world.chat.delete_room(world.lead, room_id)
    assert await world.chat.rooms(world.staff) == []


async def test_ownership_transfers_only_to_a_member_and_only_by_the_owner(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.transfer_ownership(world.staff, room_id, world.staff.address)
    assert _code(exc) == "not_owner"
    with pytest.raises(ChatError) as exc:
        await world.chat.transfer_ownership(world.lead, room_id, world.boss.address)
    assert _code(exc) == "owner_must_be_member"
    room = await world.chat.transfer_ownership(world.lead, room_id, world.staff.address)
    assert room.owner == world.staff.address
    # The former owner lost the owner's powers.
    with pytest.raises(ChatError):
        await world.chat.add_members(world.lead, room_id, [world.boss.address])


async def test_members_cannot_leave(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.leave(world.staff, room_id)
    assert exc.value.status == 403
    assert "ask the owner" in exc.value.message_en
    assert world.staff.address in (await world.chat.room(world.staff, room_id)).members


async def test_the_owner_cannot_be_removed(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.remove_member(world.lead, room_id, world.lead.address)
    assert _code(exc) == "owner_stays"


async def test_direct_rooms_keep_their_two_members(world: World) -> None:
    room, _ = await world.chat.open_direct(world.staff, world.peer.address)
    with pytest.raises(ChatError) as exc:
        await world.chat.add_members(world.staff, room.id, [world.lead.address])
    assert _code(exc) == "direct_room_fixed"


async def test_non_members_cannot_see_a_room(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.room(world.boss, room_id)
    assert exc.value.status == 404
    with pytest.raises(ChatError):
        await world.chat.post(world.boss, room_id, {"kind": "text", "text": "hi"})


# --- room kinds and options -------------------------------------------------------


async def test_group_room_members_post(world: World) -> None:
    room_id = await _group(world)
    message, _ = await world.chat.post(world.peer, room_id, {"kind": "text", "text": "สวัสดี"})
    assert message.kind == "text"


async def _broadcaster(world: World) -> None:
    """Make boss an agency admin: only admins create broadcasts by default (issue 16)."""
    await world.directory.grant_admin(world.boss.address, world.boss.agency_domain)


async def test_broadcast_reaches_the_agency_and_only_owner_and_posters_post(world: World) -> None:
    await _broadcaster(world)
    room = await world.chat.create_room(
        world.boss, "broadcast", name="ประกาศกรม", options={"posters": [world.lead.address]}
    )
    # Everyone of agency A, nobody of agency B.
    assert room.members == {u.address for u in (world.boss, world.lead, world.staff, world.peer)}
    await world.chat.post(world.boss, room.id, {"kind": "text", "text": "ประกาศ"})
    await world.chat.post(world.lead, room.id, {"kind": "text", "text": "ประกาศ 2"})
    with pytest.raises(ChatError) as exc:
        await world.chat.post(world.staff, room.id, {"kind": "text", "text": "ตอบ"})
    assert _code(exc) == "broadcast_only"
    assert len(await world.chat.messages(world.staff, room.id)) == 2


async def test_broadcast_to_chosen_units(world: World) -> None:
    await _broadcaster(world)
    room = await world.chat.create_room(
        world.boss, "broadcast", options={"audience": {"units": ["กองช่าง"]}}
    )
    assert room.members == {world.boss.address, world.staff.address, world.peer.address}


async def test_staff_who_join_later_receive_the_broadcasts_of_their_audience(
    world: World,
) -> None:
    await _broadcaster(world)
    agency = await world.chat.create_room(world.boss, "broadcast", name="ประกาศกรม")
    units = await world.chat.create_room(
        world.boss, "broadcast", options={"audience": {"units": ["กองช่าง"]}}
    )
    newcomer = await world.directory.add_user(
        f"new@{world.boss.agency_domain}", password="ลับมาก-2567", name_th="พนักงาน ใหม่",
        unit="กองคลัง",
    )  # fmt: skip
    assert await world.chat.join_audiences(newcomer) == 1  # the agency's, not กองช่าง's
    assert newcomer.address in (await world.chat.room(newcomer, agency.id)).members
    assert newcomer.address not in (await world.chat.room(world.boss, units.id)).members
    assert await world.chat.join_audiences(newcomer) == 0  # once only
    # Outsiders of the agency never join.
    assert await world.chat.join_audiences(world.other) == 0


async def test_auto_location_room_refuses_messages_without_location(world: World) -> None:
    room = await world.chat.create_room(
        world.lead, "group", members=[world.staff.address], options={"auto_location": True}
    )
    with pytest.raises(ChatError) as exc:
        await world.chat.post(world.staff, room.id, {"kind": "text", "text": "ถึงแล้ว"})
    assert _code(exc) == "location_required"
    assert await world.chat.messages(world.staff, room.id) == []
    message, _ = await world.chat.post(
        world.staff,
        room.id,
        {"kind": "text", "text": "ถึงแล้ว", "location": {"lat": 13.75, "lon": 100.5}},
    )
    assert message.content["location"]["lat"] == 13.75


async def test_working_hours_room_hidden_and_closed_outside_hours(world: World) -> None:
    hours = {"days": [0, 1, 2, 3, 4], "start": "08:30", "end": "16:30"}
    room = await world.chat.create_room(
        world.lead, "group", members=[world.staff.address], options={"working_hours": hours}
    )
    await world.chat.post(world.staff, room.id, {"kind": "text", "text": "ในเวลา"})
    world.clock.now = MONDAY_10 + 8 * 3600  # Monday 18:00 Bangkok
    assert await world.chat.rooms(world.staff) == []
    with pytest.raises(ChatError) as exc:
        await world.chat.post(world.staff, room.id, {"kind": "text", "text": "นอกเวลา"})
    assert _code(exc) == "outside_working_hours"
    assert "08:30" in exc.value.message_th
    world.clock.now = MONDAY_10 + 5 * 86400  # Saturday 10:00
    assert await world.chat.rooms(world.staff) == []
    world.clock.now = MONDAY_10 + 86400  # Tuesday 10:00
    assert [r.id for r in await world.chat.rooms(world.staff)] == [room.id]


async def test_secret_one_to_one_follows_the_rank_rule(world: World) -> None:
    with pytest.raises(ChatError) as exc:
        await world.chat.create_room(world.staff, "secret", members=[world.boss.address])
    assert _code(exc) == "higher_rank"


async def test_only_the_sender_edits_or_deletes(world: World) -> None:
    room_id = await _group(world)
    message, _ = await world.chat.post(world.staff, room_id, {"kind": "text", "text": "ร่าง"})
    with pytest.raises(ChatError) as exc:
        await world.chat.edit(world.peer, room_id, message.id, "แก้")
    assert _code(exc) == "not_sender"
    with pytest.raises(ChatError) as exc:
        await world.chat.delete_message(world.lead, room_id, message.id)
    assert _code(exc) == "not_sender"
    edited = await world.chat.edit(world.staff, room_id, message.id, "ฉบับแก้")
    assert edited.content["text"] == "ฉบับแก้"
    await world.chat.delete_message(world.staff, room_id, message.id)
    [tombstone] = await world.chat.messages(world.peer, room_id)
    assert tombstone.deleted
    assert tombstone.content == {}


async def test_new_members_read_the_whole_history(world: World) -> None:
    room_id = await _group(world)
    await world.chat.post(world.staff, room_id, {"kind": "text", "text": "ก่อนเข้าร่วม"})
    await world.chat.add_members(world.lead, room_id, [world.boss.address])
    [message] = await world.chat.messages(world.boss, room_id)
    assert message.content["text"] == "ก่อนเข้าร่วม"


# --- issue 16: a group cannot be a direct chat with a senior in disguise ------------


async def test_a_group_of_only_seniors_is_refused(world: World) -> None:
    for members in ([world.boss.address], [world.boss.address, world.lead.address]):
        with pytest.raises(ChatError) as exc:
            await world.chat.create_room(world.staff, "group", members=members)
        assert exc.value.status == 403
        assert _code(exc) == "higher_rank_group"
        assert "ตำแหน่งสูงกว่า" in exc.value.message_th
    # A secret room of several people, too.
    members = [world.boss.address, world.lead.address]
    with pytest.raises(ChatError) as exc:
        await world.chat.create_room(world.staff, "secret", members=members)
    assert _code(exc) == "higher_rank_group"
    assert await world.chat.rooms(world.staff) == []


async def test_a_group_with_a_peer_or_started_by_the_senior_is_allowed(world: World) -> None:
    mixed = await world.chat.create_room(
        world.staff, "group", members=[world.boss.address, world.peer.address]
    )
    assert world.boss.address in mixed.members
    own = await world.chat.create_room(world.boss, "group", members=[world.staff.address])
    assert own.owner == world.boss.address
    alone = await world.chat.create_room(world.staff, "group", name="โน้ตของฉัน")
    assert alone.members == {world.staff.address}


async def test_removing_the_last_peer_is_refused(world: World) -> None:
    room = await world.chat.create_room(
        world.staff, "group", members=[world.boss.address, world.peer.address]
    )
    with pytest.raises(ChatError) as exc:
        await world.chat.remove_member(world.staff, room.id, world.peer.address)
    assert _code(exc) == "higher_rank_group"
    assert (await world.chat.room(world.staff, room.id)).members == room.members
    # Removing the senior instead is fine.
    await world.chat.remove_member(world.staff, room.id, world.boss.address)


async def test_adding_only_seniors_is_refused(world: World) -> None:
    alone = await world.chat.create_room(world.staff, "group", name="ห้องว่าง")
    with pytest.raises(ChatError) as exc:
        await world.chat.add_members(world.staff, alone.id, [world.boss.address])
    assert _code(exc) == "higher_rank_group"
    assert (await world.chat.room(world.staff, alone.id)).members == {world.staff.address}
    # With a peer in the room, a senior may be added.
    await world.chat.add_members(world.staff, alone.id, [world.peer.address])
    room = await world.chat.add_members(world.staff, alone.id, [world.boss.address])
    assert world.boss.address in room.members


async def test_public_mode_lifts_the_group_rule(world: World) -> None:
    await world.directory.grant_admin(world.lead.address, "a.go.th")
    await world.chat.set_public_mode(world.lead, "a.go.th", True)
    room = await world.chat.create_room(world.staff, "group", members=[world.boss.address])
    assert room.members == {world.staff.address, world.boss.address}


# --- issue 16: who creates broadcast rooms -------------------------------------------


async def test_only_admins_create_broadcasts_by_default(world: World) -> None:
    agency = world.staff.agency_domain
    assert not await world.chat.broadcast_by_everyone(agency)
    with pytest.raises(ChatError) as exc:
        await world.chat.create_room(world.staff, "broadcast", name="ประกาศ")
    assert exc.value.status == 403
    assert _code(exc) == "broadcast_admins_only"
    # Only an admin may open it to everyone.
    with pytest.raises(ChatError) as exc:
        await world.chat.set_broadcast_creators(world.staff, agency, True)
    assert _code(exc) == "not_admin"
    await world.directory.grant_admin(world.lead.address, agency)
    await world.chat.create_room(world.lead, "broadcast", name="ประกาศกอง")
    await world.chat.set_broadcast_creators(world.lead, agency, True)
    assert await world.chat.broadcast_by_everyone(agency)
    room = await world.chat.create_room(world.staff, "broadcast", name="ประกาศ")
    assert room.kind == "broadcast"
    settings = await world.chat.agency_settings(agency)
    assert settings == {
        "public_mode": False,
        "broadcast_creators": "everyone",
        "admins": [world.lead.address],
    }
