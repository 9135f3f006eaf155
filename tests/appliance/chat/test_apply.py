"""One write path per event type: a local change and its replicated twin leave the same rows.

A box makes changes of every replicated type; a second box applies the events the
first would push (`outbox`, snapshots and all) as a pulled page. Both databases must
then hold the same rooms, members, messages, search rows, receipts, secret-unread
rows and invitations: the local command and the replicated event reached the tables
by the same code (`appliance.chat.apply`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from appliance.chat import Chat, open_chat
from appliance.chat.tables import Conn
from tests.appliance.chat.conftest import DATA_KEY, World

#: What each table holds of a change, without this box's own bookkeeping (blob ids,
#: sharing, the hub's order and local row numbers).
_TABLES = {
    "rooms": "SELECT id, kind, name, owner, created_by, options, pair, created_at, deleted"
    " FROM rooms ORDER BY id",
    "members": "SELECT room_id, address, added_at FROM members ORDER BY room_id, address",
    "messages": "SELECT id, room_id, sender, kind, content, reply_to, client_id, created_at,"
    " edited_at, deleted, secret, expires_at FROM messages ORDER BY id",
    "message_text": "SELECT m.id, t.text FROM message_text t JOIN messages m ON m.seq = t.rowid"
    " ORDER BY m.id",
    "receipts": "SELECT message_id, reader, read_at FROM receipts ORDER BY message_id, reader",
    "secret_unread": "SELECT message_id, reader FROM secret_unread ORDER BY message_id, reader",
    "invitations": "SELECT id, room_id, organiser, title, starts_at, ends_at, place, created_at"
    " FROM invitations ORDER BY id",
    "invitees": "SELECT invitation_id, address, answer, answered_at FROM invitees"
    " ORDER BY invitation_id, address",
}


async def _tables(chat: Chat) -> dict[str, list[tuple[Any, ...]]]:
    def read(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
        return {name: [tuple(r) for r in conn.execute(sql)] for name, sql in _TABLES.items()}

    return await chat._db.read(read)


@pytest.fixture
async def mirror(world: World) -> AsyncIterator[Chat]:
    """A second box's chat over the same directory, which only receives."""
    path = world.path.with_name("mirror.sqlite")
    async with open_chat(
        path, DATA_KEY, world.blobs, world.directory, "box2", clock=world.clock
    ) as chat:
        yield chat


async def test_a_local_change_and_its_replica_write_the_same_rows(
    world: World, mirror: Chat
) -> None:
    chat, lead, staff, peer = world.chat, world.lead, world.staff, world.peer
    room = await chat.create_room(lead, "group", name="งานคลัง", members=[staff.address])
    await chat.update_room(lead, room.id, name="งานคลังใหม่", rename=True)
    await chat.update_room(lead, room.id, options={"secret_ttl": 3600})
    await chat.add_members(lead, room.id, [peer.address])
    first, _ = await chat.post(staff, room.id, {"kind": "text", "text": "สวัสดี", "client_id": "c1"})
    reply, _ = await chat.post(lead, room.id, {"kind": "text", "text": "ตอบ", "reply_to": first.id})
    await chat.edit(staff, room.id, first.id, "สวัสดีครับ")
    await chat.mark_read(lead, room.id, [first.id])
    await chat.delete_message(lead, room.id, reply.id)
    invitation = await chat.invite(
        lead, room.id, title="ประชุม", starts_at="2024-01-09T10:00:00+07:00", place="ห้อง 1"
    )
    await chat.answer(staff, invitation["id"], "accept")
    await chat.remove_member(lead, room.id, peer.address)
    await chat.transfer_ownership(lead, room.id, staff.address)
    direct, _ = await chat.open_direct(lead, staff.address)
    await chat.post(staff, direct.id, {"kind": "text", "text": "ส่วนตัว"})
    secret = await chat.create_room(lead, "secret", members=[staff.address, peer.address])
    hush, _ = await chat.post(lead, secret.id, {"kind": "text", "text": "ลับ"})
    await chat.edit(lead, secret.id, hush.id, "ลับกว่า")
    await chat.mark_read(staff, secret.id, [hush.id])
    gone = await chat.create_room(lead, "group", members=[staff.address])
    await chat.post(staff, gone.id, {"kind": "text", "text": "ห้องที่จะลบ"})
    await chat.delete_room(lead, gone.id)

    events = await chat.outbox(1000)
    assert {e.type for e in events} >= {
        "room.created", "room.renamed", "room.updated", "room.deleted",
        "room.owner_changed", "member.added", "member.removed", "message.posted",
        "message.edited", "message.deleted", "receipt", "invitation.created",
        "invitation.answered",
    }  # fmt: skip
    assert await mirror.apply_pulled(events) == len(events)

    here, there = await _tables(chat), await _tables(mirror)
    for name in _TABLES:
        assert there[name] == here[name], name
    # Each table was written (a comparison of two empty tables would prove nothing).
    assert all(here[name] for name in _TABLES if name != "receipts")
