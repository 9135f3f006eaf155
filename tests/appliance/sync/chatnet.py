"""Three boxes in one test for chat sync: a hub and two edges of different agencies.

Each edge reaches the hub through a `Link`, a `HubCall` that calls the hub's chat
route handlers directly with the edge's `Peer` (the HTTPS/mTLS transport is tested
on its own), passes every request and answer through JSON as the wire would, and can
be cut (``up = False`` raises `HubUnavailable`) or lose answers after the hub acted
(``lose`` = the numbers of the calls whose answer never arrives).

Every box's directory holds the people of both agencies, as directory sync leaves it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.box import Box, init_box, open_box
from appliance.config import load_config
from appliance.directory import User
from appliance.sync.chat import ChatReplicator
from appliance.sync.clock import ManualClock
from appliance.sync.hub.chat import chat_hub_routes
from appliance.sync.hub.errors import HubError
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubBusy, HubRefused, HubUnavailable, Peer

A = "a.go.th"
B = "b.go.th"
HUB = "hub.go.th"
A1, A2 = f"a1@{A}", f"a2@{A}"
B1, B2 = f"b1@{B}", f"b2@{B}"
PASSWORD = "ลับมาก-2567"


@dataclass
class Link:
    """The edge's `HubCall` in tests: the hub's handlers, called directly."""

    hub: Box
    peer: Peer
    up: bool = True
    #: Call numbers (1-based) whose answer is lost after the hub has acted on them.
    lose: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    #: Set: the hub answers every call "busy, retry after this many seconds" (`HubBusy`).
    busy: float | None = None
    busy_calls: int = 0

    def __post_init__(self) -> None:
        self.routes = {
            r.path: r.handler for r in chat_hub_routes(self.hub.chat, self.hub.directory)
        }

    async def __call__(self, path: str, body: JSON) -> JSON:
        if not self.up:
            raise HubUnavailable("link cut")
        if self.busy is not None:
            self.busy_calls += 1
            raise HubBusy(f"{path}: hub busy", self.busy, "waited_too_long")
        self.calls.append(path)
        try:
            answer = await self.routes[path](self.peer, json.loads(json.dumps(body)))
        except HubError as exc:
            raise HubRefused(exc.status, exc.code, exc.message) from None
        if len(self.calls) in self.lose:
            raise HubUnavailable("answer lost")
        return json.loads(json.dumps(answer))


@dataclass
class Net:
    hub: Box
    a: Box
    b: Box
    link_a: Link
    link_b: Link
    sync_a: ChatReplicator
    sync_b: ChatReplicator
    clock: ManualClock

    def user(self, box: Box, address: str) -> User:
        return self._users[(box.identity.box_id, address)]

    _users: dict[tuple[str, str], User] = field(default_factory=dict)


async def _box(
    stack: AsyncExitStack, data: Path, domain: str, flags: dict[str, Any] | None = None
) -> Box:
    await init_box(data, domain)
    box = await stack.enter_async_context(open_box(load_config(data, flags=flags)))
    return box


@asynccontextmanager
async def open_net(
    tmp_path: Path, *, batch: int = 200, hub_database: str = ""
) -> AsyncIterator[Net]:
    """Open a hub and the edges of agencies A and B, each with everyone's directory.

    With *hub_database* (a PostgreSQL URL) the hub keeps its chat there.
    """
    async with AsyncExitStack() as stack:
        hub_flags = {"role": "hub", "hub_database": hub_database} if hub_database else None
        hub = await _box(stack, tmp_path / "hub", HUB, hub_flags)
        a = await _box(stack, tmp_path / "a", A)
        b = await _box(stack, tmp_path / "b", B)
        users: dict[tuple[str, str], User] = {}
        for box in (hub, a, b):
            for domain in (A, B):
                if await box.directory.agency(domain) is None:
                    await box.directory.add_agency(domain, f"กรม {domain}")
            for address, rank in ((A1, 5), (A2, 1), (B1, 5), (B2, 1)):
                user = await box.directory.add_user(
                    address, password=PASSWORD, name_th=address, rank=rank
                )
                users[(box.identity.box_id, address)] = user
        clock = ManualClock()
        link_a = Link(hub, Peer(a.identity.box_id, A))
        link_b = Link(hub, Peer(b.identity.box_id, B))
        sync_a = ChatReplicator(
            a.chat, A, link_a, SyncStatus(tmp_path / "a", clock), clock, batch=batch
        )
        sync_b = ChatReplicator(
            b.chat, B, link_b, SyncStatus(tmp_path / "b", clock), clock, batch=batch
        )
        yield Net(hub, a, b, link_a, link_b, sync_a, sync_b, clock, users)


async def post(net: Net, box: Box, address: str, room_id: str, text: str) -> str:
    message, _ = await box.chat.post(
        net.user(box, address), room_id, {"kind": "text", "text": text}
    )
    return message.id


async def history(net: Net, box: Box, address: str, room_id: str) -> list[tuple[str, str, Any]]:
    """Return the room as *address* reads it on *box*, oldest first: (id, sender, text)."""
    newest_first = await box.chat.messages(net.user(box, address), room_id, limit=500)
    return [(m.id, m.sender, m.content.get("text")) for m in reversed(newest_first)]


async def hub_history(net: Net, room_id: str) -> list[tuple[str, str, Any]]:
    """The room at the hub, read by any member of it."""
    room = await net.hub.chat._db.read(lambda conn: net.hub.chat._room(conn, room_id))
    assert room is not None
    reader = sorted(room.members)[0]
    return await history(net, net.hub, reader, room_id)
