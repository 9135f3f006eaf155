"""Two hub workers on one PostgreSQL take the same rooms' events at once.

A hub that runs several worker processes keeps each room's one order and every room
rule in the database (`appliance.store.postgres`: every write transaction holds the
store's writer lock), not in a process. Here two workers are two `Chat`s with their own
connections to one PostgreSQL database (their writers commit from their own threads,
so the transactions really do overlap), and the boxes of two agencies sync through
whichever worker hypothesis picks, both at once, while their people post, the owner
removes and adds a member of the other agency, and changes the room's rules.

What must hold, whatever the interleaving:

- one order per room: the hub's room orders are 1..n, each once;
- nothing lost or duplicated: every event a box made is answered (held at the hub
  once, or refused with a reason), and both boxes end with the hub's history;
- every rule held: the hub's events, replayed one by one in its order into a hub on
  SQLite with one process, are each accepted again with the same room order, so no
  worker accepted an event the room's state at its place in the order refuses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.chat import Chat, open_chat
from appliance.chat.errors import ChatError
from appliance.chat.store import CHAT_NOTIFY, CHAT_SCHEMA
from appliance.directory import Directory
from appliance.store.postgres import CommitFollower, PgStore
from appliance.sync.hub.chat import PUSH_PATH, chat_hub_routes
from appliance.sync.transport import JSON, Peer
from tests.appliance.sync.chatnet import A1, A2, B1, B2, A, B, Net, history, open_net, post
from tests.postgres import PrivatePostgres

Handler = Callable[[Peer, JSON], Awaitable[JSON]]


@dataclass
class _Worker:
    """What `chatnet.Link` takes of a hub: its chat and its directory."""

    chat: Chat
    directory: Directory

    def routes(self) -> dict[str, Handler]:
        return {r.path: r.handler for r in chat_hub_routes(self.chat, self.directory)}


_STEP = st.one_of(
    st.tuples(st.just("post"), st.sampled_from([A1, A2, B1, B2])),
    # Several posts on both boxes: their next syncs race for the same room orders.
    st.tuples(st.just("burst"), st.integers(2, 6)),
    st.tuples(st.just("remove"), st.just(B1)),
    st.tuples(st.just("add"), st.just(B1)),
    st.tuples(st.just("rule"), st.booleans()),  # every message must carry a location
    st.tuples(st.just("rename"), st.integers(0, 9)),
    # Both boxes sync at once, each through the worker named (0 or 1).
    st.tuples(st.just("sync"), st.tuples(st.integers(0, 1), st.integers(0, 1))),
)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=24))
async def test_two_workers_keep_one_order_and_every_rule(
    postgresql: PrivatePostgres, steps: list[tuple[str, Any]]
) -> None:
    url = postgresql.new_database()
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            net = await stack.enter_async_context(open_net(Path(tmp), hub_database=url))
            hub = net.hub
            second = await stack.enter_async_context(
                open_chat(
                    Path(tmp) / "worker2.sqlite", bytes(32), hub.chat._blobs, hub.directory,
                    hub.identity.box_id, database_url=url,
                )
            )  # fmt: skip
            workers = [_Worker(hub.chat, hub.directory), _Worker(second, hub.directory)]
            routes = [w.routes() for w in workers]
            room = await net.a.chat.create_room(
                net.user(net.a, A1), "group", name="ข้ามกรม", members=[A2, B1, B2]
            )
            await _sync_both(net, routes, (0, 1))
            await _sync_both(net, routes, (1, 0))
            for index, (action, arg) in enumerate(steps):
                if action == "sync":
                    await _sync_both(net, routes, arg)
                    continue
                try:
                    await _act(net, room.id, index, action, arg)
                except ChatError:
                    pass  # refused on the box itself (e.g. B1 is not in the room there)
            for _ in range(3):
                await _sync_both(net, routes, (0, 1))
                await _sync_both(net, routes, (1, 0))
            await _check(net, room.id, Path(tmp))


async def _act(net: Net, room_id: str, index: int, action: str, arg: Any) -> None:
    owner = net.user(net.a, A1)
    if action == "post":
        box = net.a if arg in (A1, A2) else net.b
        await post(net, box, arg, room_id, f"{index} {arg}")
    elif action == "burst":
        for i in range(arg):
            await post(net, net.a, A2, room_id, f"{index}.{i} a")
            await post(net, net.b, B2, room_id, f"{index}.{i} b")
    elif action == "remove":
        await net.a.chat.remove_member(owner, room_id, arg)
    elif action == "add":
        await net.a.chat.add_members(owner, room_id, [arg])
    elif action == "rule":
        await net.a.chat.update_room(owner, room_id, options={"auto_location": arg})
    elif action == "rename":
        await net.a.chat.update_room(owner, room_id, name=f"ห้อง {arg}", rename=True)


async def _sync_both(net: Net, routes: list[dict[str, Handler]], via: tuple[int, int]) -> None:
    """Both boxes push and pull at once, box A through worker via[0], B through via[1]."""
    net.link_a.routes = routes[via[0]]
    net.link_b.routes = routes[via[1]]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.sync_a.sync_once)
        nursery.start_soon(net.sync_b.sync_once)


async def _check(net: Net, room_id: str, tmp: Path) -> None:
    chat = net.hub.chat

    def hub_events(conn: Any) -> list[tuple[Any, ...]]:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT id, room_id, room_order FROM events WHERE room_order IS NOT NULL"
                " ORDER BY cursor"
            )
        ]

    rows = await chat._db.read(hub_events)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), "an event is held twice"
    # One order per room: 1..n, each once, given in the order the hub committed them.
    by_room: dict[str, list[int]] = {}
    for _, room, order in rows:
        by_room.setdefault(room, []).append(int(order))
    for orders in by_room.values():
        assert orders == list(range(1, len(orders) + 1))
    # Nothing lost: each box's events were all answered (held, or refused and kept).
    assert await net.a.chat.sync_backlog() == 0
    assert await net.b.chat.sync_backlog() == 0
    # Both boxes read the room as the hub does.
    at_hub = await history(net, net.hub, A1, room_id)
    assert await history(net, net.a, A1, room_id) == at_hub
    assert await history(net, net.b, B2, room_id) == at_hub
    await _replay_in_order(net, tmp)


async def _replay_in_order(net: Net, tmp: Path) -> None:
    """Every rule held: one SQLite hub, one event at a time, accepts the same order."""
    events, _, more = await net.hub.chat.hub_pull(A, 0, 500)
    assert not more
    domains = {net.a.identity.box_id: A, net.b.identity.box_id: B}
    hub = net.hub
    async with open_chat(
        tmp / "reference.sqlite", bytes(32), hub.chat._blobs, hub.directory, "reference"
    ) as reference:
        push = _Worker(reference, hub.directory).routes()[PUSH_PATH]
        for event in events:
            origin = event.id.rpartition(":")[0]
            peer = Peer(origin, domains[origin])
            answer = cast(dict[str, Any], await push(peer, {"events": [event.to_json()]}))
            (result,) = answer["results"]
            assert (result["status"], result.get("room_order")) == (
                "accepted",
                event.room_order,
            ), (event.type, event.id, result)


async def test_a_worker_that_lost_a_race_reads_the_winner_s_order(
    tmp_path: Path, pg_url: str
) -> None:
    """A deterministic case of the property: both workers order one room at once."""
    async with AsyncExitStack() as stack:
        net = await stack.enter_async_context(open_net(tmp_path, hub_database=pg_url))
        hub = net.hub
        second = await stack.enter_async_context(
            open_chat(
                tmp_path / "w2.sqlite", bytes(32), hub.chat._blobs, hub.directory,
                hub.identity.box_id, database_url=pg_url,
            )
        )  # fmt: skip
        routes = [
            _Worker(hub.chat, hub.directory).routes(),
            _Worker(second, hub.directory).routes(),
        ]
        room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2, B1, B2])
        await _sync_both(net, routes, (0, 1))
        await _sync_both(net, routes, (0, 1))
        for round_ in range(5):
            for i in range(4):
                await post(net, net.a, A1, room.id, f"a {round_}.{i}")
                await post(net, net.b, B1, room.id, f"b {round_}.{i}")
            await _sync_both(net, routes, (round_ % 2, 1 - round_ % 2))
        for _ in range(2):
            await _sync_both(net, routes, (0, 1))
        await _check(net, room.id, tmp_path)
        assert len(await history(net, net.hub, A1, room.id)) == 40


async def test_the_hub_s_own_streams_hear_what_a_worker_accepted(
    tmp_path: Path, pg_url: str
) -> None:
    """The main process publishes events a worker committed, after the store's notice."""
    async with AsyncExitStack() as stack:
        net = await stack.enter_async_context(open_net(tmp_path, hub_database=pg_url))
        hub = net.hub
        worker = await stack.enter_async_context(
            open_chat(
                tmp_path / "w2.sqlite", bytes(32), hub.chat._blobs, hub.directory,
                hub.identity.box_id, database_url=pg_url,
            )
        )  # fmt: skip
        follower = CommitFollower(
            PgStore(pg_url, CHAT_SCHEMA, notify=CHAT_NOTIFY), hub.chat.publish_committed
        )
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(follower.serve)
        room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2, B1])
        before = hub.chat.head_cursor
        # Box A pushes through the worker only: the main process wrote nothing.
        routes = [_Worker(worker, hub.directory).routes()] * 2
        await _sync_both(net, routes, (0, 1))
        with trio.fail_after(30):
            await hub.chat.fanout.wait(before)
        assert hub.chat.head_cursor > before
        events = await hub.chat.events_for(A1, before)
        assert [e.room_id for e in events.events] == [room.id]
        nursery.cancel_scope.cancel()
