"""Messages: secret messages, idempotent posts, files, receipts, hiding, search."""

from __future__ import annotations

import pytest

from appliance.chat import ChatError
from tests.appliance.chat.conftest import World


async def _group(world: World, kind: str = "group", **options: object) -> str:
    room = await world.chat.create_room(
        world.lead,
        kind,
        name="ห้อง",
        members=[world.staff.address, world.peer.address],
        options=dict(options),
    )
    return room.id


def _blob_files(world: World) -> list[str]:
    return list(world.blobs.iter_ids())


def _on_sqlite(world: World) -> bool:
    return world.path.exists()  # a hub's chat on PostgreSQL has no file


def _raw(world: World, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read the chat database directly (with its key), as an auditor would."""
    from appliance.chat.store import KEY_INFO
    from appliance.store.encrypted import connect_encrypted, derive_key
    from tests.appliance.chat.conftest import DATA_KEY

    if not _on_sqlite(world):  # a connection of its own, to the hub's PostgreSQL
        return world.chat._db.read_now(lambda c: [tuple(r) for r in c.execute(sql, params)])
    conn = connect_encrypted(world.path, derive_key(DATA_KEY, KEY_INFO))
    try:
        return [tuple(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


# --- secret messages --------------------------------------------------------------


async def test_secret_message_disappears_for_a_reader_once_read(world: World) -> None:
    room_id = await _group(world, "secret")
    message, _ = await world.chat.post(world.lead, room_id, {"kind": "text", "text": "ลับเฉพาะ"})
    assert [m.id for m in await world.chat.messages(world.staff, room_id)] == [message.id]
    await world.chat.mark_read(world.staff, room_id, [message.id])
    assert await world.chat.messages(world.staff, room_id) == []
    with pytest.raises(ChatError):
        await world.chat.message(world.staff, room_id, message.id)
    assert await world.chat.search(world.staff, "ลับเฉพาะ") == []
    # Not yet for the one who has not read it.
    assert [m.id for m in await world.chat.messages(world.peer, room_id)] == [message.id]


async def test_secret_message_deleted_from_db_index_and_blobs_when_all_read(world: World) -> None:
    room_id = await _group(world, "secret")
    upload = await world.chat.upload(world.lead, b"\x89PNG secret image", "image/png", "แผน.png")
    message, _ = await world.chat.post(
        world.lead, room_id, {"kind": "image", "upload_id": upload["upload_id"], "text": "แผนลับ"}
    )
    assert len(_blob_files(world)) == 1
    indexed = "message_text MATCH '\"แผนลับ\"'" if _on_sqlite(world) else "instr(text, 'แผนลับ') > 0"
    assert _raw(world, f"SELECT count(*) FROM message_text WHERE {indexed}") == [(1,)]  # noqa: S608
    await world.chat.mark_read(world.staff, room_id, [message.id])
    assert _raw(world, "SELECT count(*) FROM messages") == [(1,)]
    await world.chat.mark_read(world.peer, room_id, [message.id])
    assert _raw(world, "SELECT count(*) FROM messages") == [(0,)]
    assert _raw(world, "SELECT count(*) FROM message_text") == [(0,)]
    assert _blob_files(world) == []
    # The secret text was never in an event payload.
    assert not any("แผนลับ" in str(p) for (p,) in _raw(world, "SELECT payload FROM events"))


async def test_secret_message_deleted_after_ttl_even_if_unread(world: World) -> None:
    room_id = await _group(world, "secret", secret_ttl=600)
    upload = await world.chat.upload(world.lead, b"voice bytes", "audio/ogg", "v.ogg")
    await world.chat.post(world.lead, room_id, {"kind": "voice", "upload_id": upload["upload_id"]})
    assert await world.chat.sweep_secrets(world.clock.now + 599) == 0
    assert len(_blob_files(world)) == 1
    assert await world.chat.sweep_secrets(world.clock.now + 600) == 1
    assert _raw(world, "SELECT count(*) FROM messages") == [(0,)]
    assert _raw(world, "SELECT count(*) FROM message_text") == [(0,)]
    assert _blob_files(world) == []
    assert await world.chat.messages(world.staff, room_id) == []


async def test_ordinary_messages_are_not_swept(world: World) -> None:
    room_id = await _group(world)
    await world.chat.post(world.lead, room_id, {"kind": "text", "text": "ธรรมดา"})
    assert await world.chat.sweep_secrets(world.clock.now + 10**8) == 0
    assert len(await world.chat.messages(world.staff, room_id)) == 1


# --- idempotency ------------------------------------------------------------------


async def test_retry_with_same_client_id_returns_the_same_message(world: World) -> None:
    room_id = await _group(world)
    body = {"kind": "text", "text": "ส่งครั้งเดียว", "client_id": "phone-1:42"}
    first, created = await world.chat.post(world.staff, room_id, body)
    again, created_again = await world.chat.post(world.staff, room_id, body)
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert len(await world.chat.messages(world.peer, room_id)) == 1
    # Another sender's equal client_id is their own.
    other, created_other = await world.chat.post(world.peer, room_id, body)
    assert created_other
    assert other.id != first.id


# --- kinds, files, receipts, hiding ------------------------------------------------


async def test_file_message_downloads_for_members_only(world: World) -> None:
    room_id = await _group(world)
    upload = await world.chat.upload(
        world.staff, b"%PDF-1.7 report", "application/pdf", "รายงาน.pdf"
    )
    message, _ = await world.chat.post(
        world.staff, room_id, {"kind": "file", "upload_id": upload["upload_id"]}
    )
    data, media_type, name = await world.chat.file(world.peer, room_id, message.id)
    assert (data, media_type, name) == (b"%PDF-1.7 report", "application/pdf", "รายงาน.pdf")
    with pytest.raises(ChatError) as exc:
        await world.chat.file(world.boss, room_id, message.id)
    assert exc.value.status == 404
    # An upload is used once.
    with pytest.raises(ChatError):
        await world.chat.post(
            world.staff, room_id, {"kind": "file", "upload_id": upload["upload_id"]}
        )


async def test_upload_limit_and_media_type_per_kind(world: World) -> None:
    room_id = await _group(world)
    with pytest.raises(ChatError) as exc:
        await world.chat.upload(world.staff, b"x" * (25 * 1024 * 1024 + 1), "video/mp4", "v.mp4")
    assert exc.value.status == 413
    upload = await world.chat.upload(world.staff, b"not an image", "text/plain", "a.txt")
    with pytest.raises(ChatError) as exc:
        await world.chat.post(
            world.staff, room_id, {"kind": "image", "upload_id": upload["upload_id"]}
        )
    assert exc.value.code == "invalid_upload"


async def test_receipts_name_who_read_and_when(world: World) -> None:
    room_id = await _group(world)
    message, _ = await world.chat.post(world.lead, room_id, {"kind": "text", "text": "อ่านด้วย"})
    await world.chat.mark_read(world.staff, room_id, [message.id])
    receipts = await world.chat.receipts(world.lead, room_id, message.id)
    assert receipts["read"] == [{"reader": world.staff.address, "read_at": world.clock.now}]
    assert receipts["unread"] == [world.peer.address]


async def test_read_up_to_marks_earlier_messages(world: World) -> None:
    room_id = await _group(world)
    ids = [
        (await world.chat.post(world.lead, room_id, {"kind": "text", "text": f"ข้อ {i}"}))[0].id
        for i in range(3)
    ]
    assert await world.chat.mark_read(world.staff, room_id, up_to=ids[1]) == ids[:2]


async def test_reply_must_quote_a_message_of_the_room(world: World) -> None:
    room_id = await _group(world)
    first, _ = await world.chat.post(world.lead, room_id, {"kind": "text", "text": "คำถาม"})
    reply, _ = await world.chat.post(
        world.staff, room_id, {"kind": "text", "text": "คำตอบ", "reply_to": first.id}
    )
    assert reply.reply_to == first.id
    with pytest.raises(ChatError):
        await world.chat.post(
            world.staff, room_id, {"kind": "text", "text": "x", "reply_to": "no:1"}
        )


async def test_media_tab_lists_links(world: World) -> None:
    room_id = await _group(world)
    await world.chat.post(
        world.staff, room_id, {"kind": "link", "url": "https://www.go.th/a", "title": "ระเบียบ"}
    )
    await world.chat.post(world.staff, room_id, {"kind": "text", "text": "ไม่ใช่ลิงก์"})
    [link] = await world.chat.media(world.peer, room_id, "link")
    assert link.content["url"] == "https://www.go.th/a"


async def test_sticker_from_own_agency_pack(world: World) -> None:
    await world.directory.grant_admin(world.lead.address, "a.go.th")
    with pytest.raises(ChatError):
        await world.chat.create_sticker_pack(world.staff, "ชุดแรก")
    pack = await world.chat.create_sticker_pack(world.lead, "ชุดแรก")
    sticker = await world.chat.add_sticker(world.lead, pack["id"], "ยิ้ม", b"GIF89a", "image/gif")
    room_id = await _group(world)
    message, _ = await world.chat.post(
        world.staff, room_id, {"kind": "sticker", "sticker_id": sticker["id"]}
    )
    assert message.content["name"] == "ยิ้ม"
    assert await world.chat.sticker_image(sticker["id"]) == (b"GIF89a", "image/gif")
    room_b = await world.chat.create_room(world.other, "group", members=[world.staff.address])
    with pytest.raises(ChatError):
        await world.chat.post(
            world.other, room_b.id, {"kind": "sticker", "sticker_id": sticker["id"]}
        )


# --- search -----------------------------------------------------------------------


async def test_thai_substring_search_includes_hidden_but_not_other_rooms(world: World) -> None:
    room_id = await _group(world)
    message, _ = await world.chat.post(
        world.lead, room_id, {"kind": "text", "text": "ขอเชิญประชุมคณะกรรมการงบประมาณ"}
    )
    private = await world.chat.create_room(world.boss, "group", members=[world.lead.address])
    await world.chat.post(world.boss, private.id, {"kind": "text", "text": "งบประมาณลับ"})
    await world.chat.hide(world.staff, room_id, message.id, True)
    assert await world.chat.messages(world.staff, room_id) == []
    [found] = await world.chat.search(world.staff, "กรรมการงบ")  # mid-word substring
    assert found.id == message.id
    assert found.hidden
    # One and two characters scan instead of using trigrams.
    assert [m.id for m in await world.chat.search(world.staff, "งบ")] == [message.id]
    assert len(await world.chat.search(world.lead, "งบประมาณ")) == 2


async def test_search_skips_deleted_messages(world: World) -> None:
    room_id = await _group(world)
    message, _ = await world.chat.post(world.staff, room_id, {"kind": "text", "text": "ลบทิ้งแล้ว"})
    await world.chat.delete_message(world.staff, room_id, message.id)
    assert await world.chat.search(world.peer, "ลบทิ้ง") == []
    assert _raw(world, "SELECT count(*) FROM message_text") == [(0,)]


# SQLite only: a hub's PostgreSQL keeps its files in the clear, on an encrypted volume
# (docs/hub-postgresql.md).
@pytest.mark.parametrize("hub_store", [""], ids=["sqlite"])
async def test_database_file_holds_no_plaintext(world: World) -> None:
    room_id = await _group(world)
    marker = "zqxj-chat-marker-5521"
    await world.chat.post(world.staff, room_id, {"kind": "text", "text": marker})
    files = list(world.path.parent.glob("chat.sqlite*"))  # the database, its WAL, shm
    assert world.path in files
    for path in files:
        assert marker.encode() not in path.read_bytes(), path.name


async def test_an_empty_upload_is_refused(world: World) -> None:
    with pytest.raises(ChatError) as refused:
        await world.chat.upload(world.lead, b"", "image/png", "empty.png")
    assert refused.value.status == 422
