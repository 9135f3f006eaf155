"""Chat sync from the boxes' side: offline work, catch-up, retries, refusals, one order."""

from __future__ import annotations

import base64
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.chat.errors import ChatError
from appliance.sync.chat import FILE_GET_PATH, FILE_PUT_PATH, PULL_CURSOR, ChatReplicator
from appliance.sync.codec.chat import REJECTED_TYPE
from appliance.sync.reconnect import box_rng
from appliance.sync.status import read_sync_status
from appliance.sync.transport import HubRefused, HubUnavailable
from tests.appliance.sync.chatnet import A1, A2, B1, B2, Net, history, hub_history, open_net, post


async def _converge(net: Net) -> None:
    """Restore both links and sync until nothing moves (bounded)."""
    net.link_a.up = net.link_b.up = True
    for _ in range(3):
        await net.sync_a.sync_once()
        await net.sync_b.sync_once()


async def _shared_room(net: Net, members: tuple[str, ...] = (A2, B1, B2)) -> str:
    room = await net.a.chat.create_room(
        net.user(net.a, A1), "group", name="ข้ามกรม", members=members
    )
    await _converge(net)
    return room.id


async def _same_everywhere(net: Net, room_id: str) -> list[tuple[str, str, object]]:
    on_a = await history(net, net.a, A1, room_id)
    on_b = await history(net, net.b, B1, room_id)
    at_hub = await hub_history(net, room_id)
    assert on_a == on_b == at_hub
    ids = [m[0] for m in on_a]
    assert len(ids) == len(set(ids)), "a message appears twice"
    return on_a


async def test_room_cut_off_on_one_side_converges_in_one_order(net: Net) -> None:
    room_id = await _shared_room(net)
    assert await history(net, net.b, B1, room_id) == []  # B holds the room made on A
    net.link_a.up = False
    sent_a = [await post(net, net.a, A1, room_id, f"เอ {i}") for i in range(3)]
    sent_b = [await post(net, net.b, B1, room_id, f"บี {i}") for i in range(3)]
    await net.sync_b.sync_once()
    with pytest.raises(HubUnavailable):
        await net.sync_a.sync_once()
    # While cut, A's people keep chatting locally and see their own messages.
    assert [m[0] for m in await history(net, net.a, A2, room_id)] == sent_a
    await _converge(net)
    merged = await _same_everywhere(net, room_id)
    # The hub ordered B's messages (it had them first), then A's after the restore.
    assert [m[0] for m in merged] == sent_b + sent_a
    assert await net.a.chat.sync_backlog() == 0


async def test_catch_up_sends_everything_in_bounded_batches(tmp_path: Path) -> None:
    async with open_net(tmp_path, batch=7) as net:
        room_id = await _shared_room(net)
        net.link_a.up = False
        sent = [await post(net, net.a, A1, room_id, f"ข้อ {i}") for i in range(40)]
        net.link_a.calls.clear()
        net.link_a.up = True
        pushed, _, done = await net.sync_a.sync_once()
        assert (pushed, done) == (40, True)
        pushes = [c for c in net.link_a.calls if c.endswith("/push")]
        assert len(pushes) == 6  # ceil(40 / 7): every batch bounded, all of the backlog
        await net.sync_b.sync_once()
        assert [m[0] for m in await _same_everywhere(net, room_id)] == sent


async def test_snapshots_are_left_out_only_once_the_hub_said_it_reads_wire_2(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, batch=3) as net:
        room_id = await _shared_room(net)
        bodies: list[dict[str, Any]] = []
        call = net.link_a.__call__

        async def spy(path: str, body: dict[str, Any]) -> Any:
            if path.endswith("/push"):
                bodies.append(body)
            return await call(path, body)

        net.sync_a.hub = spy
        net.sync_a.hub_wire = 1  # as after a restart: the hub has not said yet
        for i in range(6):
            await post(net, net.a, A1, room_id, f"ข้อ {i}")
        assert net.sync_a.hub_wire == 1
        await net.sync_a.push()
        assert net.sync_a.hub_wire == 2
        snapshots = [["message" in e for e in body["events"]] for body in bodies]
        assert snapshots == [[True] * 3, [False] * 3]  # whole first, then format 2
        await net.sync_b.sync_once()
        assert [m[2] for m in await _same_everywhere(net, room_id)] == [f"ข้อ {i}" for i in range(6)]


async def test_push_retried_after_a_lost_answer_mid_backlog_has_no_duplicate(
    tmp_path: Path,
) -> None:
    async with open_net(tmp_path, batch=3) as net:
        room_id = await _shared_room(net)
        net.link_a.calls.clear()
        sent = [await post(net, net.a, A1, room_id, f"ข้อ {i}") for i in range(8)]
        # The hub commits the second batch, then the link drops before A hears back.
        net.link_a.lose = {2}
        with pytest.raises(HubUnavailable, match="answer lost"):
            await net.sync_a.sync_once()
        assert await net.a.chat.sync_backlog() == 5  # the first batch is settled, not more
        net.link_a.lose = set()
        await _converge(net)
        assert [m[0] for m in await _same_everywhere(net, room_id)] == sent


async def test_pull_retried_after_a_lost_answer_has_no_duplicate(tmp_path: Path) -> None:
    async with open_net(tmp_path, batch=2) as net:
        room_id = await _shared_room(net)
        sent = [await post(net, net.a, A1, room_id, f"ข้อ {i}") for i in range(5)]
        await net.sync_a.sync_once()
        before = await net.b.chat.sync_cursor(PULL_CURSOR)
        net.link_b.calls.clear()
        net.link_b.lose = {2}  # B's second pull page is lost on the way back
        with pytest.raises(HubUnavailable, match="answer lost"):
            await net.sync_b.sync_once()
        # The first page is applied and its cursor committed with it.
        assert await net.b.chat.sync_cursor(PULL_CURSOR) > before
        net.link_b.lose = set()
        await _converge(net)
        assert [m[0] for m in await _same_everywhere(net, room_id)] == sent


async def test_applying_pulled_events_twice_has_the_effect_of_once(net: Net) -> None:
    room_id = await _shared_room(net)
    await post(net, net.a, A1, room_id, "ครั้งเดียว")
    await net.sync_a.sync_once()
    events, _, _ = await net.hub.chat.hub_pull("b.go.th", 0, 500)
    for _ in range(2):
        await net.b.chat.apply_pulled(events)
    assert await net.b.chat.apply_pulled(events) == 0
    await net.sync_b.sync_once()
    assert [m[2] for m in await _same_everywhere(net, room_id)] == ["ครั้งเดียว"]
    page = await net.b.chat.events_for(B1, 0, 1000)
    ids = [e.id for e in page.events]
    assert len(ids) == len(set(ids))


async def test_post_of_a_member_removed_at_the_hub_is_refused_with_a_notice(net: Net) -> None:
    room = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[A1, B2])
    await _converge(net)
    net.link_a.up = False
    await net.b.chat.remove_member(net.user(net.b, B1), room.id, A1)
    await net.sync_b.sync_once()
    # A does not know yet: A1 still posts, offline, and sees the message locally.
    offline = await post(net, net.a, A1, room.id, "ยังอยู่ไหม")
    assert [m[0] for m in await history(net, net.a, A1, room.id)] == [offline]
    head = net.a.chat.head_cursor
    await _converge(net)
    # The hub refused it: gone from A, never on B or at the hub ...
    assert await history(net, net.b, B1, room.id) == []
    assert await hub_history(net, room.id) == []
    with pytest.raises(Exception, match="not found"):
        await history(net, net.a, A1, room.id)  # ... and A1 is out of the room now.
    # ... and A1 was told, in Thai and English, with their own words back.
    page = await net.a.chat.events_for(A1, head, 100)
    [notice] = [e for e in page.events if e.type == REJECTED_TYPE]
    assert notice.payload["event_id"] == offline
    assert notice.payload["code"] == "not_found"
    assert notice.payload["message_th"]
    assert notice.payload["message_en"]
    assert notice.payload["content"] == {"text": "ยังอยู่ไหม"}
    assert [e.type for e in page.events].count("member.removed") == 1
    assert await net.a.chat.sync_backlog() == 0


async def test_a_room_joined_later_brings_its_whole_history(net: Net) -> None:
    room = await net.b.chat.create_room(net.user(net.b, B1), "group", members=[B2])
    earlier = [await post(net, net.b, B2, room.id, f"ก่อน {i}") for i in range(3)]
    await _converge(net)  # A's cursor passes these events: none of A's people is in the room
    await net.b.chat.add_members(net.user(net.b, B1), room.id, [A1])
    later = await post(net, net.b, B1, room.id, "ยินดีต้อนรับ")
    await _converge(net)
    assert [m[0] for m in await _same_everywhere(net, room.id)] == [*earlier, later]


async def test_remote_events_reach_local_streams(net: Net) -> None:
    room_id = await _shared_room(net)
    head = net.b.chat.head_cursor
    woke = trio.Event()

    async def stream_of_b1() -> None:
        await net.b.chat.wait(head, B1)
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream_of_b1)
        await trio.testing.wait_all_tasks_blocked()
        await post(net, net.a, A1, room_id, "สด")
        await net.sync_a.sync_once()
        await net.sync_b.sync_once()
        await woke.wait()
    page = await net.b.chat.events_for(B1, head, 10)
    assert [e.payload["message"]["content"]["text"] for e in page.events] == ["สด"]


async def test_secret_messages_reach_the_other_box_with_their_content(net: Net) -> None:
    room = await net.a.chat.create_room(net.user(net.a, A1), "secret", members=[B1])
    message, _ = await net.a.chat.post(net.user(net.a, A1), room.id, {"kind": "text", "text": "ลับ"})
    await _converge(net)
    got = await net.b.chat.message(net.user(net.b, B1), room.id, message.id)
    assert got.content == {"text": "ลับ"}
    # Reading it on B deletes it everywhere once the receipt has gone round.
    await net.b.chat.mark_read(net.user(net.b, B1), room.id, [message.id])
    await _converge(net)
    assert await history(net, net.a, A1, room.id) == []


async def _post_file(net: Net, room_id: str, data: bytes, name: str = "แผนที่.png") -> str:
    upload = await net.a.chat.upload(net.user(net.a, A1), data, "image/png", name)
    message, _ = await net.a.chat.post(
        net.user(net.a, A1), room_id, {"kind": "image", "upload_id": upload["upload_id"]}
    )
    return message.id


async def test_a_file_posted_on_one_box_opens_on_the_other(net: Net) -> None:
    room_id = await _shared_room(net)
    data = b"\x89PNG " + bytes(range(256)) * 40
    message_id = await _post_file(net, room_id, data)
    await _converge(net)
    assert net.link_a.calls.count(FILE_PUT_PATH) == 1
    # B holds the message, not yet its content: the first member to open it fetches it.
    got = await net.b.chat.file(net.user(net.b, B1), room_id, message_id)
    assert got == (data, "image/png", "แผนที่.png")
    assert net.link_b.calls.count(FILE_GET_PATH) == 1
    # From then on it is B's own copy: it opens with the link cut, and is not fetched again.
    net.link_b.up = False
    assert (await net.b.chat.file(net.user(net.b, B2), room_id, message_id))[0] == data
    assert net.link_b.calls.count(FILE_GET_PATH) == 1
    # Nor is it sent anywhere again: B's copy is not B's to share, A's went once.
    await _converge(net)
    assert FILE_PUT_PATH not in net.link_b.calls
    assert net.link_a.calls.count(FILE_PUT_PATH) == 1


async def test_a_file_not_yet_here_is_a_clear_503_while_the_link_is_down(net: Net) -> None:
    room_id = await _shared_room(net)
    message_id = await _post_file(net, room_id, b"\x89PNG plan")
    await net.sync_a.push()  # ordered at the hub, the content not sent yet
    await net.sync_b.pull()
    with pytest.raises(ChatError) as not_yet:
        await net.b.chat.file(net.user(net.b, B1), room_id, message_id)
    assert (not_yet.value.status, not_yet.value.code) == (503, "file_not_yet_shared")
    await net.sync_a.sync_once()
    net.link_b.up = False
    with pytest.raises(ChatError) as cut:
        await net.b.chat.file(net.user(net.b, B1), room_id, message_id)
    assert (cut.value.status, cut.value.code) == (503, "file_unavailable")
    assert "ส่วนกลาง" in cut.value.message_th
    net.link_b.up = True
    assert (await net.b.chat.file(net.user(net.b, B1), room_id, message_id))[0] == b"\x89PNG plan"


async def test_a_file_send_whose_answer_was_lost_is_sent_again_harmlessly(net: Net) -> None:
    room_id = await _shared_room(net)
    message_id = await _post_file(net, room_id, b"\x89PNG twice")
    await net.sync_a.push()
    net.link_a.lose = {len(net.link_a.calls) + 2}  # the pull, then the file's answer
    with pytest.raises(HubUnavailable):
        await net.sync_a.sync_once()
    await _converge(net)
    assert net.link_a.calls.count(FILE_PUT_PATH) == 2
    got = await net.b.chat.file(net.user(net.b, B1), room_id, message_id)
    assert got[0] == b"\x89PNG twice"
    # The hub kept one copy, not one per send.
    assert len(list(net.hub.mailstore.blobs.iter_ids())) == 1


async def test_the_hub_takes_a_file_only_from_the_posters_agency_and_gives_it_to_members(
    net: Net,
) -> None:
    room_id = await _shared_room(net, members=(A2,))  # no one of B in it
    message_id = await _post_file(net, room_id, b"\x89PNG inside")
    await net.sync_a.push()
    content = base64.b64encode(b"\x89PNG forged").decode()
    # The right size from the wrong agency, the wrong size from the right one.
    with pytest.raises(HubRefused) as forged:
        await net.link_b(FILE_PUT_PATH, {"message_id": message_id, "content": content})
    assert (forged.value.status, forged.value.code) == (403, "not_the_poster")
    short = base64.b64encode(b"\x89PNG").decode()
    with pytest.raises(HubRefused) as wrong_size:
        await net.link_a(FILE_PUT_PATH, {"message_id": message_id, "content": short})
    assert (wrong_size.value.status, wrong_size.value.code) == (422, "size_mismatch")
    with pytest.raises(HubRefused) as bad:
        await net.link_a(FILE_PUT_PATH, {"message_id": message_id, "content": "not base64!"})
    assert bad.value.status == 400
    assert await net.sync_a.share_files()
    # B's agency has no member in the room: to B the file does not exist.
    with pytest.raises(HubRefused) as hidden:
        await net.link_b(FILE_GET_PATH, {"message_id": message_id})
    assert hidden.value.status == 404
    answer = await net.link_a(FILE_GET_PATH, {"message_id": message_id})
    assert base64.b64decode(answer["content"]) == b"\x89PNG inside"


async def test_a_file_deleted_before_it_was_sent_is_not_sent(net: Net) -> None:
    room_id = await _shared_room(net)
    message_id = await _post_file(net, room_id, b"\x89PNG regret")
    await net.sync_a.push()
    await net.a.chat.delete_message(net.user(net.a, A1), room_id, message_id)
    await _converge(net)
    assert FILE_PUT_PATH not in net.link_a.calls
    assert await net.a.chat.files_to_share(10) == []


async def _until_idle(sync: ChatReplicator) -> None:
    """Wait until the service sleeps between rounds (bounded: database work runs in threads)."""
    for _ in range(1000):
        await trio.testing.wait_all_tasks_blocked()
        if sync.idle:
            return
        await trio.sleep(0.005)
    raise AssertionError("the replicator never went idle")


async def _run_for(net: Net, sync: ChatReplicator, seconds: int) -> None:
    """Move the manual clock second by second, letting each round finish first."""
    for _ in range(seconds):
        await _until_idle(sync)
        await net.clock.advance(1)
    await _until_idle(sync)


async def test_service_backs_off_while_cut_and_pushes_at_once_when_woken(net: Net) -> None:
    room_id = await _shared_room(net)
    sync = net.sync_a
    net.link_a.up = False
    async with trio.open_nursery() as nursery:
        await nursery.start(sync.serve)
        await _run_for(net, sync, 60)
        # Back-off: tries at 0, 1, 3, 7, 15 and 31 s, not once a second.
        assert sync.failures == 6
        status = read_sync_status(net.a.config.data_dir)["chat"]
        assert "unavailable" in status["last_error"]
        message = await post(net, net.a, A1, room_id, "ระหว่างตัดขาด")
        await _until_idle(sync)
        assert sync.failures == 6  # a local post during back-off does not hammer the hub
        net.link_a.up = True
        sync.wake()
        await trio.sleep(0.01)
        await _until_idle(sync)
        assert await net.a.chat.sync_backlog() == 0
        assert sync.failures == 0
        # Link up and idle: a new local message is pushed without waiting for the poll.
        second = await post(net, net.a, A1, room_id, "สด")
        await trio.sleep(0.01)
        await _until_idle(sync)
        assert await net.a.chat.sync_backlog() == 0
        nursery.cancel_scope.cancel()
    status = read_sync_status(net.a.config.data_dir)["chat"]
    assert status["last_error"] is None
    assert status["backlog"] == 0
    await net.sync_b.sync_once()
    assert [m[0] for m in await hub_history(net, room_id)] == [message, second]


async def test_a_busy_hub_is_waited_for_as_it_asked_not_backed_off_or_hammered(net: Net) -> None:
    room_id = await _shared_room(net)
    sync = net.sync_a
    sync.rng = random.Random(5)
    net.link_a.busy = 30.0
    message = await post(net, net.a, A1, room_id, "หลังตัดขาดทั้งประเทศ")
    async with trio.open_nursery() as nursery:
        await nursery.start(sync.serve)
        await _run_for(net, sync, 29)
        # One try, then the hub's 30 s: no second call, however the box is nudged.
        assert net.link_a.busy_calls == 1
        sync.wake()  # the link monitor: "the link is back"
        await post(net, net.a, A1, room_id, "อีกข้อความ")  # a local post
        await _run_for(net, sync, 0)
        assert net.link_a.busy_calls == 1
        assert sync.failures == 0  # busy is no failure: the back-off does not grow
        status = read_sync_status(net.a.config.data_dir)["chat"]
        assert "hub busy" in status["last_error"]
        # Retry-After plus at most a quarter (jitter): tried again by 37.5 s.
        await _run_for(net, sync, 9)
        assert net.link_a.busy_calls == 2
        net.link_a.busy = None
        await _run_for(net, sync, 40)
        assert await net.a.chat.sync_backlog() == 0
        nursery.cancel_scope.cancel()
    assert sync.failures == 0
    assert read_sync_status(net.a.config.data_dir)["chat"]["last_error"] is None
    await net.sync_b.sync_once()
    assert message in [m[0] for m in await hub_history(net, room_id)]


async def test_boxes_cut_together_back_off_apart(net: Net) -> None:
    """Issue 22: each box's back-off is stretched from its own random source, never shortened."""
    waits = []
    for sync, box_id in ((net.sync_a, "box-a"), (net.sync_b, "box-b")):
        sync.rng = box_rng(box_id)
        waits.append([sync._failed("hub unavailable: cut", refused=False) for _ in range(6)])
    for n, (a, b) in enumerate(zip(*waits, strict=True)):
        assert 2.0**n <= a < 1.25 * 2.0**n
        assert 2.0**n <= b < 1.25 * 2.0**n
        assert a != b


async def test_a_file_asked_for_while_the_hub_is_busy_says_when_to_try_again(net: Net) -> None:
    net.link_a.busy = 12.0
    with pytest.raises(ChatError) as busy:
        await net.sync_a.fetch_file("box:1")
    assert (busy.value.status, busy.value.code) == (503, "hub_busy")
    assert "12 s" in busy.value.message_en


# --- the property: any interleaving converges ----------------------------------------------

_STEP = st.sampled_from(
    ["post_a", "post_b", "cut_a", "cut_b", "heal_a", "heal_b", "sync_a", "sync_b"]
)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, max_size=30))
async def test_random_interleavings_converge(steps: list[str]) -> None:
    # Each example runs in a trio run of its own, so it opens its own three boxes.
    with tempfile.TemporaryDirectory() as tmp:
        async with open_net(Path(tmp), batch=3) as net:
            room_id = await _shared_room(net)
            posted: list[str] = []
            for index, step in enumerate(steps):
                action, side = step.split("_")
                link, sync = (net.link_a, net.sync_a) if side == "a" else (net.link_b, net.sync_b)
                if action == "post":
                    box, author = (net.a, A1) if side == "a" else (net.b, B1)
                    posted.append(await post(net, box, author, room_id, f"{step} {index}"))
                elif action in ("cut", "heal"):
                    link.up = action == "heal"
                elif link.up:
                    await sync.sync_once()
            await _converge(net)
            merged = await _same_everywhere(net, room_id)
            assert sorted(m[0] for m in merged) == sorted(posted)
