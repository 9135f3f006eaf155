"""The PostgreSQL store across a failover: the primary killed, its synchronous standby promoted.

A real pair (`tests.postgres.ReplicatedPostgres`) reached through one multi-host URL.
What must hold: every write the store acknowledged is on the promoted standby; while
no server takes writes, reads and writes fail with `PostgreSQLUnavailable` (never hang,
never succeed against the standby); once the standby is promoted, the same `Database`
and the same commit follower carry on without being reopened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from appliance.store.postgres import (
    CONNECTION_DEFAULTS,
    CommitFollower,
    PgStore,
    PostgreSQLUnavailable,
    connection_options,
    open_pg_database,
)
from tests.appliance.store.test_postgres import STEPS
from tests.postgres import ReplicatedPostgres

pytestmark = pytest.mark.slow

#: Writers racing the kill, and writes each attempts at most (bounded either way).
WRITERS = 4
ATTEMPTS = 400


@pytest.fixture
def replicated() -> Iterator[ReplicatedPostgres]:
    pair = ReplicatedPostgres()
    try:
        yield pair
    finally:
        print(pair.logs())
        pair.stop()


def _insert(key: str) -> Callable[[Any], None]:
    return lambda conn: conn.execute("INSERT INTO t (k, v) VALUES (?, 1)", (key,))


def _keys(conn: Any) -> set[str]:
    return {r[0] for r in conn.execute("SELECT k FROM t")}


def test_every_connection_asks_for_the_primary_unless_the_url_says_otherwise() -> None:
    url = "postgresql://hub@db1:5432,db2:5432/edgebox_hub"
    assert connection_options(url) == dict(CONNECTION_DEFAULTS)
    assert connection_options(url)["target_session_attrs"] == "read-write"
    own = connection_options(url + "?target_session_attrs=any&connect_timeout=30")
    assert "target_session_attrs" not in own
    assert "connect_timeout" not in own


async def test_a_write_that_reaches_a_standby_is_refused_as_unavailable(
    replicated: ReplicatedPostgres,
) -> None:
    """A URL that lets a connection settle on a standby (a demoted primary, say)."""
    database = replicated.new_database().rpartition("/")[2].split("?")[0]
    async with open_pg_database(
        PgStore(replicated.url_of(replicated.primary_port, database), "port"), STEPS
    ):
        pass  # the schema, on the primary, streamed to the standby
    await trio.to_thread.run_sync(replicated.wait_for_replay)
    standby = replicated.url_of(replicated.replica_port, database)
    store = PgStore(standby + "?target_session_attrs=any", "port")
    conn = await trio.to_thread.run_sync(lambda: store.connect(writer=True))
    try:
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(PostgreSQLUnavailable, match="read-only"):
            conn.execute("INSERT INTO t (k, v) VALUES (?, 1)", ("on-standby",))
        assert conn.raw.closed  # the next transaction looks for the primary again
    finally:
        conn.close()
    # Without the override, the hub never settles on the standby at all.
    with pytest.raises(PostgreSQLUnavailable):
        PgStore(standby, "port").connect(writer=True)


async def test_acknowledged_writes_survive_the_primary_and_the_store_follows_the_replica(
    replicated: ReplicatedPostgres,
) -> None:
    url = replicated.new_database()
    acknowledged: set[str] = set()
    refused: list[str] = []
    under_way = trio.Event()  # enough writes acknowledged: time for the crash
    async with open_pg_database(PgStore(url, "port"), STEPS) as db:

        async def writer(number: int) -> None:
            for n in range(ATTEMPTS):
                key = f"w{number}-{n}"
                try:
                    await db.write(_insert(key))
                except PostgreSQLUnavailable:
                    refused.append(key)
                    return  # this writer met the crash
                acknowledged.add(key)
                if len(acknowledged) >= 40:
                    under_way.set()

        async with trio.open_nursery() as nursery:
            for number in range(WRITERS):
                nursery.start_soon(writer, number)
            # The kill lands while every writer is still mid-stream.
            with trio.fail_after(60):
                await under_way.wait()
            await trio.to_thread.run_sync(replicated.kill_primary)
        assert refused, "no write met the crash; the test proves nothing"
        assert len(acknowledged) < WRITERS * ATTEMPTS

        # No server takes writes: clear errors, at once; the standby is never used.
        with trio.fail_after(30):
            with pytest.raises(PostgreSQLUnavailable):
                await db.write(_insert("nowhere"))
            with pytest.raises(PostgreSQLUnavailable):
                await db.read(_keys)

        await trio.to_thread.run_sync(replicated.promote)
        # The same Database: its writer and its readers reconnect by themselves.
        await db.write(_insert("after"))
        present = await db.read(_keys)
    assert acknowledged <= present  # nothing acknowledged is lost
    assert "after" in present
    assert "nowhere" not in present
    # What the crash cut off may or may not have committed (only its answer was
    # lost), but nothing else is there.
    assert present - acknowledged <= {*refused, "after"}


async def test_the_commit_follower_listens_again_on_the_promoted_replica(
    replicated: ReplicatedPostgres,
) -> None:
    url = replicated.new_database()
    store = PgStore(url, "port", notify="port_commits")
    heard = trio.Semaphore(0, max_value=10_000)

    async def on_commit() -> None:
        heard.release()

    async with open_pg_database(store, STEPS) as db, trio.open_nursery() as nursery:
        follower = CommitFollower(store, on_commit)
        await nursery.start(follower.serve)
        await db.write(_insert("before"))
        with trio.fail_after(30):
            await heard.acquire()
        await trio.to_thread.run_sync(replicated.kill_primary)
        await trio.to_thread.run_sync(replicated.promote)
        with trio.fail_after(60):
            await heard.acquire()  # the catch-up call after listening again
        assert follower.reconnects == 1
        await db.write(_insert("after"))
        with trio.fail_after(30):
            await heard.acquire()
        nursery.cancel_scope.cancel()
