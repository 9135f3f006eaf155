"""Directory replication: each box's users up to the hub, everyone else's down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import load_config
from appliance.directory import DirectoryEntry, DirectoryError
from appliance.sync.clock import ManualClock
from appliance.sync.directory import PULL_CURSOR, PUSH_CURSOR, DirectoryReplicator
from appliance.sync.hub.directory import directory_routes
from appliance.sync.hub.errors import HubError
from appliance.sync.status import SyncStatus, read_sync_status
from appliance.sync.transport import JSON, HubRefused, HubUnavailable, Peer


class DirectHub:
    """`HubCall` straight into the hub's handlers, with the JSON round trip of the wire."""

    def __init__(self, hub: Box, peer: Peer) -> None:
        self.routes = {r.path: r.handler for r in directory_routes(hub.directory, hub.mailstore)}
        self.peer = peer
        self.sent: list[tuple[str, Any]] = []
        #: Paths whose answer is lost after the hub committed (a cut at the worst time).
        self.lose_answer: set[str] = set()
        self.down = False

    async def __call__(self, path: str, body: JSON) -> JSON:
        if self.down:
            raise HubUnavailable("cut")
        wire = json.loads(json.dumps(body))
        self.sent.append((path, wire))
        try:
            answer = await self.routes[path](self.peer, wire)
        except HubError as exc:
            raise HubRefused(exc.status, exc.code, exc.message) from None
        if path in self.lose_answer:
            self.lose_answer.discard(path)
            raise HubUnavailable("answer lost")
        return json.loads(json.dumps(answer))


@asynccontextmanager
async def boxes(root: Path, *domains: str) -> AsyncIterator[list[Box]]:
    async with AsyncExitStack() as stack:
        opened = []
        for domain in domains:
            data = root / domain
            await init_box(data, domain)
            opened.append(await stack.enter_async_context(open_box(load_config(data))))
        yield opened


def replicator(
    box: Box, hub: Box, root: Path, batch: int = 200
) -> tuple[DirectoryReplicator, DirectHub]:
    direct = DirectHub(hub, Peer(box.identity.box_id, box.identity.domain))
    clock = ManualClock()
    status = SyncStatus(box.config.data_dir, clock)
    replicator = DirectoryReplicator(
        box.directory, box.identity.domain, direct, status, clock, batch=batch
    )
    return replicator, direct


async def test_users_flow_from_one_box_through_the_hub_to_another(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th", "moph.go.th") as (hub, a, b):
        await add_user(a, "somchai@moe.go.th", "pw-somchai-1", name_th="สมชาย", rank=8,
                       unit="กองคลัง", position="ผู้อำนวยการ", phone="02-1")  # fmt: skip
        await add_user(a, "malee@moe.go.th", "pw-malee-123", name_th="มาลี")
        await add_user(b, "dara@moph.go.th", "pw-dara-1234", name_th="ดารา")
        rep_a, wire_a = replicator(a, hub, tmp_path)
        rep_b, _ = replicator(b, hub, tmp_path)
        assert await rep_a.sync_round()
        assert await rep_b.sync_round()
        assert await rep_a.sync_round()

        # B sees A's users, as users of an agency it does not serve.
        somchai = await b.directory.user("somchai@moe.go.th")
        assert somchai is not None
        assert somchai.remote
        assert (somchai.name_th, somchai.rank, somchai.unit, somchai.position, somchai.phone) == (
            "สมชาย",
            8,
            "กองคลัง",
            "ผู้อำนวยการ",
            "02-1",
        )
        assert "somchai@moe.go.th" in {u.address for u in await b.directory.users()}
        # ...and A sees B's.
        dara = await a.directory.user("dara@moph.go.th")
        assert dara is not None
        assert dara.remote

        # Served agencies and local delivery are unchanged.
        assert await b.directory.local_domains() == frozenset({"moph.go.th"})
        assert [x.domain for x in await b.directory.agencies()] == ["moph.go.th"]

        # No password hash (or anything like it) ever goes on the wire.
        assert "scrypt" not in json.dumps(wire_a.sent)
        assert "password" not in json.dumps(wire_a.sent)

        # The hub has them as users of an agency it serves, with mailboxes, no password.
        at_hub = await hub.directory.user("somchai@moe.go.th")
        assert at_hub is not None
        assert not at_hub.remote
        assert await hub.directory.authenticate("somchai@moe.go.th", "pw-somchai-1") is None
        inbox = await hub.mail_db.read(
            lambda c: c.execute(
                "SELECT 1 FROM mailboxes WHERE owner = ? AND name = 'INBOX'",
                ("somchai@moe.go.th",),
            ).fetchone()
        )
        assert inbox is not None

        status = read_sync_status(a.config.data_dir)["directory"]
        assert status["last_error"] is None
        assert status["pushed"] == 0  # nothing new in the third round


async def test_remote_users_cannot_sign_in_or_be_edited(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th", "moph.go.th") as (hub, a, b):
        await add_user(a, "somchai@moe.go.th", "pw-somchai-1", name_th="สมชาย")
        rep_a, _ = replicator(a, hub, tmp_path)
        rep_b, _ = replicator(b, hub, tmp_path)
        await rep_a.sync_round()
        await rep_b.sync_round()
        assert await b.directory.authenticate("somchai@moe.go.th", "pw-somchai-1") is None
        assert await a.directory.authenticate("somchai@moe.go.th", "pw-somchai-1") is not None
        with pytest.raises(DirectoryError, match="another box"):
            await b.directory.set_password("somchai@moe.go.th", "new-password-1")
        with pytest.raises(DirectoryError, match="another box"):
            await b.directory.set_disabled("somchai@moe.go.th", True)
        with pytest.raises(DirectoryError):
            await add_user(b, "intruder@moe.go.th", "pw-intruder-1", name_th="x")
        with pytest.raises(DirectoryError, match="another box"):
            await b.directory.add_agency("moe.go.th")
        service = await add_user(b, "sync@moph.go.th", "pw-service-12", name_th="s", service=True)
        assert await b.directory.act_as(service, "somchai@moe.go.th") is None


async def test_changes_and_disabling_propagate(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th", "moph.go.th") as (hub, a, b):
        await add_user(a, "somchai@moe.go.th", "pw-somchai-1", name_th="สมชาย")
        rep_a, _ = replicator(a, hub, tmp_path)
        rep_b, _ = replicator(b, hub, tmp_path)
        await rep_a.sync_round()
        await rep_b.sync_round()
        await a.directory.set_names("somchai@moe.go.th", "สมชาย ใจดี", "Somchai")
        await a.directory.set_disabled("somchai@moe.go.th", True)
        await a.directory.set_password("somchai@moe.go.th", "a-new-password")  # not sent
        await rep_a.sync_round()
        await rep_b.sync_round()
        user = await b.directory.user("somchai@moe.go.th")
        assert user is not None
        assert (user.name_th, user.name_en, user.disabled) == ("สมชาย ใจดี", "Somchai", True)


async def test_lost_answer_repeats_the_batch_with_the_effect_of_once(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th") as (hub, a):
        for i in range(5):
            await add_user(a, f"u{i}@moe.go.th", f"password-{i}xx", name_th=f"u{i}")
        rep_a, wire = replicator(a, hub, tmp_path, batch=2)
        wire.lose_answer.add("/sync/v1/directory/push")
        assert not await rep_a.sync_round()
        assert await a.directory.sync_cursor(PUSH_CURSOR) == 0  # not acknowledged
        hub_seq = await hub.directory.entries_after(0, 100, agency="moe.go.th")
        assert [e.address for e in hub_seq] == ["u0@moe.go.th", "u1@moe.go.th"]
        assert await rep_a.sync_round()
        after = await hub.directory.entries_after(0, 100, agency="moe.go.th")
        assert [e.address for e in after] == [f"u{i}@moe.go.th" for i in range(5)]
        # The repeated batch changed nothing at the hub: same change numbers.
        assert [e.seq for e in after[:2]] == [e.seq for e in hub_seq]
        pushes = [body for path, body in wire.sent if path.endswith("/push")]
        assert [len(b["entries"]) for b in pushes] == [2, 2, 2, 1]


async def test_pull_cursor_moves_with_the_data_and_skips_nothing(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th", "moph.go.th") as (hub, a, b):
        for i in range(7):
            await add_user(a, f"u{i}@moe.go.th", f"password-{i}xx", name_th=f"u{i}")
        rep_a, _ = replicator(a, hub, tmp_path)
        await rep_a.sync_round()
        rep_b, wire_b = replicator(b, hub, tmp_path, batch=3)
        wire_b.down = True
        assert not await rep_b.sync_round()
        assert read_sync_status(b.config.data_dir)["directory"]["last_error"]
        wire_b.down = False
        assert await rep_b.sync_round()
        users = await b.directory.users("moe.go.th")
        assert [u.address for u in users] == [f"u{i}@moe.go.th" for i in range(7)]
        assert await b.directory.sync_cursor(PULL_CURSOR) > 0


async def test_a_box_may_push_only_its_own_agency(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th") as (hub,):
        direct = DirectHub(hub, Peer("box-a", "moe.go.th"))
        entry = {
            "seq": 1, "address": "x@moph.go.th", "agency": {"domain": "moph.go.th"},
            "name_th": "x", "rank": 0, "disabled": False,
        }  # fmt: skip
        with pytest.raises(HubRefused) as refused:
            await direct("/sync/v1/directory/push", {"entries": [entry]})
        assert (refused.value.status, refused.value.code) == (403, "foreign_agency")
        assert await hub.directory.user("x@moph.go.th") is None
        bad = {**entry, "address": "x\n@moe.go.th", "agency": {"domain": "moe.go.th"}}
        with pytest.raises(HubRefused) as refused:
            await direct("/sync/v1/directory/push", {"entries": [bad]})
        assert refused.value.status == 400


async def test_service_accounts_are_never_replicated(tmp_path: Path) -> None:
    async with boxes(tmp_path, "hub.go.th", "moe.go.th") as (hub, a):
        await add_user(a, "sync@moe.go.th", "pw-service-12", name_th="s", service=True)
        await add_user(a, "somchai@moe.go.th", "pw-somchai-1", name_th="สมชาย")
        rep_a, wire = replicator(a, hub, tmp_path)
        await rep_a.sync_round()
        assert "sync@moe.go.th" not in json.dumps(wire.sent)
        assert await hub.directory.user("sync@moe.go.th") is None


async def test_pulled_entries_never_overwrite_the_boxs_own_users(tmp_path: Path) -> None:
    async with boxes(tmp_path, "moe.go.th") as (a,):
        await add_user(a, "somchai@moe.go.th", "pw-somchai-1", name_th="สมชาย")
        forged = DirectoryEntry(
            99, "somchai@moe.go.th", "moe.go.th", None, None, "forged", None, None, 0,
            None, None, True,
        )  # fmt: skip
        assert await a.directory.apply_entries([forged], remote=True) == []
        user = await a.directory.user("somchai@moe.go.th")
        assert user is not None
        assert (user.name_th, user.disabled, user.remote) == ("สมชาย", False, False)


async def test_two_hub_workers_share_the_directory(tmp_path: Path, pg_url: str) -> None:
    """Two processes of one hub (its data directory opened twice, as by `edgebox hub
    worker`): each box pushes to one and pulls from the other, at once."""
    async with boxes(tmp_path, "moe.go.th", "moph.go.th") as (a, b), AsyncExitStack() as stack:
        data = tmp_path / "hub"
        await init_box(data, "hub.go.th")
        flags = {"role": "hub", "hub_database": pg_url}
        workers = [
            await stack.enter_async_context(open_box(load_config(data, flags=flags)))
            for _ in range(2)
        ]
        for n in range(6):
            await add_user(a, f"a{n}@moe.go.th", f"pw-a-{n}-long", name_th=f"เอ {n}")
            await add_user(b, f"b{n}@moph.go.th", f"pw-b-{n}-long", name_th=f"บี {n}")
        rep_a, hub_a = replicator(a, workers[0], tmp_path, batch=2)
        rep_b, hub_b = replicator(b, workers[1], tmp_path, batch=2)
        for _ in range(4):
            # Each box's next round goes to the other worker.
            hub_a.routes, hub_b.routes = hub_b.routes, hub_a.routes
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rep_a.sync_round)
                nursery.start_soon(rep_b.sync_round)
        for n in range(6):
            assert await a.directory.user(f"b{n}@moph.go.th") is not None
            assert await b.directory.user(f"a{n}@moe.go.th") is not None
        for worker in workers:
            assert len([u for u in await worker.directory.users() if "@mo" in u.address]) == 12
