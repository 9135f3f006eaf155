"""Moving a hub from its SQLite files to PostgreSQL: same rows, same order, numbering goes on."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.cli import main
from appliance.store.postgres import PgStore
from appliance.sync.clock import ManualClock
from appliance.sync.hub.enrolment import Enrolment, open_hub_database
from appliance.sync.hub.move import MoveRefused, digest_rows, move_hub_to_postgresql
from tests.appliance.sync.chatnet import A1, A2, B1, B2, A, B, open_net, post

FP = bytes(range(32))


def _event_rows(conn: Any) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT cursor, id, type, room_id, room_order, payload, created_at FROM events"
            " ORDER BY cursor"
        )
    ]


async def _a_hub_with_history(
    tmp_path: Path,
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]], list[Any]]:
    """Run a SQLite hub with two agencies' traffic; return its events, rows and boxes."""
    async with open_net(tmp_path) as net:
        room = await net.a.chat.create_room(net.user(net.a, A1), "group", members=[A2, B1, B2])
        secret = await net.b.chat.create_room(net.user(net.b, B1), "secret", members=[A1, B2])
        for _ in range(2):
            await net.sync_a.sync_once()
            await net.sync_b.sync_once()
        for i in range(5):
            await post(net, net.a, A2, room.id, f"ก {i} 100%")
            await post(net, net.b, B2, room.id, f"ข {i} 'quoted' ?")
        await post(net, net.b, B1, secret.id, "ลับ")
        await net.a.chat.remove_member(net.user(net.a, A1), room.id, B1)
        for _ in range(2):
            await net.sync_a.sync_once()
            await net.sync_b.sync_once()
        events, _, _ = await net.hub.chat.hub_pull(A, 0, 500)
        more, _, _ = await net.hub.chat.hub_pull(B, 0, 500)
        rows = await net.hub.chat._db.read(_event_rows)
        wire = sorted((e.to_json() for e in {e.id: e for e in [*events, *more]}.values()),
                      key=lambda e: str(e["id"]))  # fmt: skip
    async with open_hub_database(tmp_path / "hub") as db:
        enrolment = Enrolment(db, ManualClock())
        for n in range(3):
            token = await enrolment.issue_token(A, FP)
            await enrolment.redeem(token, f"box{n}", 0x100 + n, f"sync-box{n}@{A}")
        await enrolment.issue_token(B, FP)  # one left unused
        await enrolment.revoke("box1")
        boxes = await enrolment.boxes()
    return wire, rows, boxes


async def test_a_moved_hub_holds_the_same_rows_and_goes_on_numbering(
    tmp_path: Path, pg_url: str
) -> None:
    wire, rows, boxes = await _a_hub_with_history(tmp_path)
    moved = await trio.to_thread.run_sync(move_hub_to_postgresql, tmp_path / "hub", pg_url)
    tables = {f"{m.schema}.{t.table}": t.rows for m in moved for t in m.tables}
    assert tables["chat.events"] >= len(wire) > 10
    assert tables["chat.messages"] > 0
    assert tables["chat.message_text"] > 0
    assert tables["hub.tokens"] == 4
    assert tables["hub.boxes"] == 3
    chat_digests = {t.table: t for m in moved if m.schema == "chat" for t in m.tables}
    assert await trio.to_thread.run_sync(_digests, pg_url) == chat_digests

    # The hub on PostgreSQL serves the same events, with the same cursors and orders.
    hub = tmp_path / "hub"
    async with open_hub_database(hub, pg_url) as db:
        assert await Enrolment(db, ManualClock()).boxes() == boxes
    async with open_net(tmp_path / "after", hub_database=pg_url) as net:
        chat = net.hub.chat
        events, _, _ = await chat.hub_pull(A, 0, 500)
        more, _, _ = await chat.hub_pull(B, 0, 500)
        again = sorted((e.to_json() for e in {e.id: e for e in [*events, *more]}.values()),
                       key=lambda e: str(e["id"]))  # fmt: skip
        assert again == wire
        assert await chat._db.read(_event_rows) == rows
        # A new event continues the numbering: no cursor is handed out twice.
        room = await chat.create_room(net.user(net.hub, A1), "group", members=[A2, B1])
        assert room.id
        cursor = await chat._db.read(
            lambda conn: conn.execute("SELECT max(cursor) FROM events").fetchone()[0]
        )
        assert cursor > rows[-1][0]

    # A second move into the same database would merge two hubs: refused, nothing changed.
    before = await trio.to_thread.run_sync(_digests, pg_url)
    with pytest.raises(MoveRefused, match="already holds"):
        await trio.to_thread.run_sync(move_hub_to_postgresql, hub, pg_url)
    assert await trio.to_thread.run_sync(_digests, pg_url) == before


def _digests(url: str) -> dict[str, Any]:
    conn = PgStore(url, "chat").connect(writer=True)
    try:
        names = [
            r[0]
            for r in conn.raw.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'chat'"
                " AND table_name <> 'edgebox_schema_version'"
            )
        ]
        out = {}
        for name in names:
            columns = [
                r[0]
                for r in conn.raw.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'chat' AND table_name = %s"
                    " AND is_generated = 'NEVER' ORDER BY ordinal_position",
                    (name,),
                )
            ]
            listed = ", ".join(f'"{c}"' for c in columns)
            query = f'SELECT {listed} FROM "{name}"'  # noqa: S608 - names from the catalogue
            out[name] = digest_rows(name, conn.raw.execute(query))
        return out
    finally:
        conn.close()


async def test_the_command_moves_and_prints_what_it_verified(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await _a_hub_with_history(tmp_path)
    argv = ["hub", "migrate-to-postgresql", "--from", str(tmp_path / "hub"), "--to", pg_url]
    assert await trio.to_thread.run_sync(main, argv) == 0
    out = capsys.readouterr().out
    assert "chat.events\t" in out
    assert "hub.boxes\t3 rows" in out
    assert "moved and verified" in out
    assert await trio.to_thread.run_sync(main, argv) != 0  # not twice
    assert "already holds" in capsys.readouterr().err


def test_the_digest_reads_a_row_the_same_from_either_engine() -> None:
    sqlite_row = sqlite3.connect(":memory:").execute("SELECT 1.0, 2, x'00ff', NULL, 'ก'").fetchone()
    assert digest_rows("t", [sqlite_row]) == digest_rows("t", [(1.0, 2, b"\x00\xff", None, "ก")])
    assert digest_rows("t", [(1, "a"), (2, "b")]) == digest_rows("t", [(2, "b"), (1, "a")])
    assert digest_rows("t", [(1, None)]) != digest_rows("t", [(1, "\x00null ")])
    assert digest_rows("t", [(1, "a")]) != digest_rows("t", [(1, "a"), (1, "a")])
