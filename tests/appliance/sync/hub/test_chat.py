"""The hub's chat routes: idempotent push, the hub as authority, pull by agency, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.chat.errors import ChatError
from appliance.sync.codec.chat import parse_answers, parse_event, parse_page
from appliance.sync.transport import HubRefused, Peer
from tests.appliance.sync.chatnet import A1, A2, B1, B2, A, B, Net, history, hub_history, post


async def _push(net: Net, events: list[dict[str, Any]], peer: Peer | None = None) -> Any:
    link = net.link_a
    if peer is not None:
        return await link.routes["/sync/v1/chat/push"](peer, {"events": events})
    return await link("/sync/v1/chat/push", {"events": events})


async def _outbox(net: Net) -> list[dict[str, Any]]:
    return [e.to_json() for e in await net.a.chat.outbox(500)]


async def test_push_is_idempotent_and_orders_each_room(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[B1])
    await post(net, net.a, A1, room.id, "หนึ่ง")
    await post(net, net.a, A1, room.id, "สอง")
    events = await _outbox(net)
    first = await _push(net, events)
    again = await _push(net, events)
    assert first == again
    assert [(r["status"], r["room_order"]) for r in first["results"]] == [
        ("accepted", 1),
        ("accepted", 2),
        ("accepted", 3),
    ]
    held, _, _ = await net.hub.chat.hub_pull(B, 0, 500)
    assert [e.id for e in held] == [e["id"] for e in events]  # once each


async def test_hub_refuses_what_the_rules_refuse_with_thai_and_english(net: Net) -> None:
    room = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[A1])
    await net.sync_b.sync_once()
    await net.sync_a.sync_once()
    # A2 is not in the room at the hub; A's box claims a post by them anyway.
    forged = {
        "id": f"{net.a.identity.box_id}:900",
        "type": "message.posted",
        "room_id": room.id,
        "subject": None,
        "payload": {"message_id": f"{net.a.identity.box_id}:900"},
        "created_at": 1.0,
        "message": {"sender": A2, "kind": "text", "content": {"text": "แอบเข้า"}},
    }
    # A's box renames B1's room: only the owner may, and B1 is not A's to act for.
    rename = {
        "id": f"{net.a.identity.box_id}:901",
        "type": "room.renamed",
        "room_id": room.id,
        "subject": None,
        "payload": {"name": "ของเรา", "by": A1},
        "created_at": 1.0,
    }
    as_b1 = {**rename, "id": f"{net.a.identity.box_id}:902", "payload": {"name": "x", "by": B1}}
    from_b = {**rename, "id": f"{net.b.identity.box_id}:903"}
    answer = await _push(net, [forged, rename, as_b1, from_b])
    codes = [(r["status"], r.get("code")) for r in answer["results"]]
    assert codes == [
        ("rejected", "not_found"),
        ("rejected", "not_owner"),
        ("rejected", "not_your_agency"),
        ("rejected", "foreign_origin"),
    ]
    for result in answer["results"]:
        assert result["message_en"]
        assert result["message_th"]
    assert [e.id for e in (await net.hub.chat.hub_pull(A, 0, 500))[0]] == [room.id]


async def test_a_malformed_event_is_refused_alone_and_changes_nothing(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2])
    [created] = await _outbox(net)
    broken = {**created, "id": f"{net.a.identity.box_id}:77", "type": "room.created"}
    broken["payload"] = {"room": {"kind": "group"}, "addresses": "everyone"}
    answer = await _push(net, [broken, created])
    assert [r["status"] for r in answer["results"]] == ["rejected", "accepted"]
    assert answer["results"][0]["code"] == "invalid_event"
    assert [e.id for e in (await net.hub.chat.hub_pull(A, 0, 500))[0]] == [room.id]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([], 400),
        ({"events": "all"}, 400),
        ({"events": [{"type": "message.posted"}]}, 400),
        ({"events": [{}] * 501}, 413),
    ],
)
async def test_a_malformed_request_is_refused_whole(net: Net, body: Any, status: int) -> None:
    with pytest.raises(HubRefused) as exc:
        await net.link_a("/sync/v1/chat/push", body)
    assert exc.value.status == status


async def test_pull_gives_each_agency_its_rooms_and_its_peoples_removals(net: Net) -> None:
    only_b = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[B2])
    shared = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[A1, A2])
    await net.b.chat.remove_member(net.user(net.b, B1), shared.id, A1)
    await net.sync_b.sync_once()
    events, cursor, more = await net.hub.chat.hub_pull(A, 0, 500)
    assert [(e.type, e.room_id) for e in events] == [
        ("room.created", shared.id),
        ("member.removed", shared.id),
    ]
    assert not more
    assert [e.room_order for e in events] == [1, 2]
    # Paging: the cursor covers what was examined; nothing is sent twice.
    first, c1, more1 = await net.hub.chat.hub_pull(A, 0, 1)
    rest, c2, _ = await net.hub.chat.hub_pull(A, c1, 500)
    assert more1
    assert [e.id for e in first + rest] == [e.id for e in events]
    assert c2 == cursor
    assert (await net.hub.chat.hub_pull(A, cursor, 500))[0] == []
    with pytest.raises(HubRefused) as exc:
        await net.link_a("/sync/v1/chat/history", {"room_id": only_b.id, "before_order": 9})
    assert exc.value.status == 404


async def test_a_box_does_not_pull_back_its_own_events(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[B1])
    await post(net, net.a, A1, room.id, "ของเอง")
    await net.sync_a.push()
    await net.sync_b.sync_once()  # B learns the room
    await post(net, net.b, B1, room.id, "จาก ข")
    await net.sync_b.sync_once()
    page = parse_page(await net.link_a("/sync/v1/chat/pull", {"after": 0, "limit": 500}))
    assert [e.origin for e in page.events] == [net.b.identity.box_id]  # B's post only
    assert not page.more
    held, cursor, _ = await net.hub.chat.hub_pull(A, 0, 500)
    assert len(held) == 3
    assert page.cursor == cursor  # the cursor passed A's own events all the same


async def test_the_hubs_own_changes_are_ordered_before_anyone_pulls_them(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[B1])
    await net.sync_a.sync_once()
    await post(net, net.hub, B1, room.id, "จากศูนย์")  # someone working at the hub itself
    await net.sync_b.sync_once()
    [created, message] = (await net.hub.chat.hub_pull(B, 0, 500))[0]
    assert (created.room_order, message.room_order) == (1, 2)


# --- the wire parsers meet garbage -----------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["box:1", "box:0", ":1", "x" * 70 + ":1"]) | st.text(max_size=10),
        "type": st.sampled_from(["message.posted", "alert", "room.created"]) | _JSON,
        "room_id": st.sampled_from(["box:1", None]) | _JSON,
        "subject": _JSON,
        "payload": st.dictionaries(st.text(max_size=8), _JSON, max_size=3) | _JSON,
        "created_at": st.floats() | st.integers() | _JSON,
        "message": _JSON,
        "room_order": st.integers() | _JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(value=_EVENTISH | _JSON)
def test_parsers_accept_well_formed_input_or_refuse_it_cleanly(value: Any) -> None:
    for parse in (parse_event, parse_answers, parse_page):
        refusal: ChatError | None = None
        try:
            parsed = parse(value)
        except ChatError as exc:
            refusal = exc
        if refusal is not None:
            assert (refusal.status, refusal.code) == (422, "invalid_event")
        elif parse is parse_event:
            # What parses survives the wire and parses to the same event.
            assert parse_event(json.loads(json.dumps(parsed.to_json()))) == parsed


# --- wire format 2 and the batched apply --------------------------------------------


async def test_wire_2_sends_a_messages_text_once_and_the_hub_reads_it(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2, B1])
    await post(net, net.a, A1, room.id, "ครั้งเดียว")
    edited = await post(net, net.a, A2, room.id, "ก่อนแก้")
    await net.a.chat.edit(net.user(net.a, A2), room.id, edited, "หลังแก้")
    full = await net.a.chat.outbox(500)
    compact = await net.a.chat.outbox(500, compact=True)
    assert [e.id for e in full] == [e.id for e in compact]
    by_type = {e.type: e for e in compact}
    # Posted, then edited: the row no longer matches the payload, so the snapshot stays.
    assert [e.message is None for e in compact if e.type == "message.posted"] == [True, False]
    assert by_type["message.edited"].message == {"sender": A2}
    assert sum(len(json.dumps(e.to_json())) for e in compact) < sum(
        len(json.dumps(e.to_json())) for e in full
    )
    answer = await _push(net, [e.to_json() for e in compact])
    assert answer["wire"] == 2
    assert [r["status"] for r in answer["results"]] == ["accepted"] * len(compact)
    assert [m[2] for m in await hub_history(net, room.id)] == ["ครั้งเดียว", "หลังแก้"]
    # Sent again in the other form: the same answers, no second effect.
    again = await _push(net, [e.to_json() for e in full])
    assert again == answer
    assert len(await hub_history(net, room.id)) == 2


async def test_a_compact_post_is_checked_like_a_whole_one(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2])
    await post(net, net.a, A1, room.id, "ของ ก")
    [created, posted] = [e.to_json() for e in await net.a.chat.outbox(500, compact=True)]
    assert "message" not in posted
    # The payload claims someone of another agency posted it: refused, as whole.
    forged = json.loads(json.dumps(posted))
    forged["payload"]["message"]["sender"] = B1
    answer = await _push(net, [created, forged])
    assert [(r["status"], r.get("code")) for r in answer["results"]] == [
        ("accepted", None),
        ("rejected", "not_your_agency"),
    ]


async def test_pull_in_wire_2_leaves_out_repeated_snapshots_only_when_asked(net: Net) -> None:
    room = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[A1])
    await post(net, net.b, B1, room.id, "จาก ข")
    await net.sync_b.sync_once()
    old = await net.link_a("/sync/v1/chat/pull", {"after": 0, "limit": 500})
    new = await net.link_a("/sync/v1/chat/pull", {"after": 0, "limit": 500, "wire": 2})
    [old_post] = [e for e in old["events"] if e["type"] == "message.posted"]
    [new_post] = [e for e in new["events"] if e["type"] == "message.posted"]
    assert old_post["message"]["content"] == {"text": "จาก ข"}
    assert "message" not in new_post
    assert {**old_post, "message": None} == {**new_post, "message": None}
    await net.sync_a.sync_once()  # pulls in wire 2
    assert [m[2] for m in await history(net, net.a, A1, room.id)] == ["จาก ข"]


async def test_a_batch_sees_each_change_of_a_room_before_the_next_event(net: Net) -> None:
    """The apply reads a room once per batch, but again after an event changes it."""
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2, B1])
    await post(net, net.a, A2, room.id, "ยังเป็นสมาชิก")
    await net.a.chat.remove_member(net.user(net.a, A1), room.id, A2)
    events = [e.to_json() for e in await net.a.chat.outbox(500, compact=True)]
    box = net.a.identity.box_id
    late = {**events[1], "id": f"{box}:900", "payload": {
        **events[1]["payload"], "message_id": f"{box}:900",
        "message": {**events[1]["payload"]["message"], "id": f"{box}:900"},
    }}  # fmt: skip
    other = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2])
    [other_created] = [e.to_json() for e in await net.a.chat.outbox(500) if e.id == other.id]
    # created, posted, removed, then A2 posts again (no longer a member), the same
    # event twice in one batch, and a second room in between.
    batch = [*events, late, other_created, events[1]]
    answer = await _push(net, batch)
    got = [(r["status"], r.get("room_order"), r.get("code")) for r in answer["results"]]
    assert got == [
        ("accepted", 1, None),
        ("accepted", 2, None),
        ("accepted", 3, None),
        ("rejected", None, "not_found"),
        ("accepted", 1, None),
        ("accepted", 2, None),  # named twice: the same answer, applied once
    ]
    assert [m[2] for m in await hub_history(net, room.id)] == ["ยังเป็นสมาชิก"]
    # The next batch goes on from each room's last order.
    await post(net, net.a, A1, room.id, "ต่อ")
    await post(net, net.a, A1, other.id, "ห้องสอง")
    pending = [e.to_json() for e in await net.a.chat.outbox(500) if e.id not in {
        e["id"] for e in batch
    }]  # fmt: skip
    answer = await _push(net, pending)
    assert [r["room_order"] for r in answer["results"]] == [4, 2]


# --- issue 16: the hub keeps the group rank rule and the broadcast setting -----------


def _as_an_older_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the box make what it now refuses, as a box of an older version would."""
    from appliance.chat.rules import RoomPolicy

    monkeypatch.setattr(RoomPolicy, "check_not_disguised_direct", lambda *a, **k: None)
    monkeypatch.setattr(RoomPolicy, "check_broadcast_creator", lambda *a, **k: None)


async def test_hub_refuses_a_group_of_only_seniors(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        _as_an_older_box(patch)
        await net.a.chat.create_room(net.user(net.a, A2), "group", members=[B1])
    answer = await _push(net, await _outbox(net))
    (result,) = answer["results"]
    assert (result["status"], result["code"]) == ("rejected", "higher_rank_group")
    assert result["message_th"]
    assert (await net.hub.chat.hub_pull(B, 0, 500))[0] == []


async def test_hub_refuses_removing_the_last_peer(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A2), "group", members=[B1, B2])
    await net.sync_a.sync_once()
    with monkeypatch.context() as patch:
        _as_an_older_box(patch)
        await net.a.chat.remove_member(net.user(net.a, A2), room.id, B2)
    answer = await _push(net, await _outbox(net))
    (result,) = answer["results"]
    assert (result["status"], result["code"]) == ("rejected", "higher_rank_group")


async def test_hub_refuses_a_broadcast_by_a_non_admin_the_box_declared(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The box's replicator declares its agency's settings with every push.
    await net.a.directory.grant_admin(A1, A)
    await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2])
    await net.sync_a.sync_once()
    declared = await net.hub.chat.declared_settings(A)
    assert declared == {"public_mode": False, "broadcast_creators": "admins", "admins": [A1]}
    with monkeypatch.context() as patch:
        _as_an_older_box(patch)
        await net.a.chat.create_room(net.user(net.a, A2), "broadcast", name="ประกาศ")
    answer = await _push(net, await _outbox(net))
    (result,) = answer["results"]
    assert (result["status"], result["code"]) == ("rejected", "broadcast_admins_only")


async def test_the_hub_s_own_users_find_messages_on_either_store(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[B1])
    await post(net, net.a, A1, room.id, "ประชุมงบประมาณ 100% วันพุธ")
    await post(net, net.a, A1, room.id, "อื่น ๆ")
    await net.sync_a.sync_once()
    hub_a1 = net.user(net.hub, A1)
    for query in ("งบประมาณ", "ปร", "100%"):  # trigram-long, short, a literal %
        found = await net.hub.chat.search(hub_a1, query)
        assert [m.content["text"] for m in found] == ["ประชุมงบประมาณ 100% วันพุธ"]
