"""Tests of `appliance.store.schema`: ordered, versioned, all-or-nothing migrations."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import pytest

from appliance.chat.schema import CHAT_MIGRATIONS
from appliance.directory.schema import DIRECTORY_MIGRATIONS
from appliance.mail.mailstore import MAIL_MIGRATIONS
from appliance.store.database import connect, open_database
from appliance.store.schema import Migration, SchemaTooNew, migrate, schema_version
from appliance.sync.hub.enrolment import HUB_MIGRATIONS
from appliance.sync.mailbox_state import MAILBOX_SYNC_MIGRATIONS


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(tmp_path / "test.sqlite")
    yield connection
    connection.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


def recording(log: list[int], version: int) -> Migration:
    """A migration that creates table t<version> and notes that it ran."""

    def run(conn: sqlite3.Connection) -> None:
        log.append(version)

    return Migration(version, f"step {version}", f"CREATE TABLE t{version} (x INTEGER);", run)


def test_fresh_database_is_version_0(conn: sqlite3.Connection) -> None:
    assert schema_version(conn) == 0


def test_migrations_run_in_order_and_record_the_version(conn: sqlite3.Connection) -> None:
    log: list[int] = []
    steps = [recording(log, v) for v in (1, 2, 3)]

    assert migrate(conn, steps) == 3

    assert log == [1, 2, 3]
    assert schema_version(conn) == 3
    assert {"t1", "t2", "t3"} <= tables(conn)


def test_only_pending_migrations_run(conn: sqlite3.Connection) -> None:
    log: list[int] = []
    migrate(conn, [recording(log, 1)])
    assert log == [1]

    migrate(conn, [recording(log, 1), recording(log, 2), recording(log, 3)])

    assert log == [1, 2, 3]
    assert schema_version(conn) == 3


def test_migrate_twice_is_a_no_op(conn: sqlite3.Connection) -> None:
    log: list[int] = []
    steps = [recording(log, 1), recording(log, 2)]
    migrate(conn, steps)

    assert migrate(conn, steps) == 2

    assert log == [1, 2]
    assert schema_version(conn) == 2


def test_sql_runs_before_code_in_the_same_step(conn: sqlite3.Connection) -> None:
    def fill(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO items (name) VALUES ('ลับ')")

    migrate(conn, [Migration(1, "items", "CREATE TABLE items (name TEXT);", fill)])

    assert conn.execute("SELECT name FROM items").fetchall() == [("ลับ",)]


def test_multi_line_script_with_a_trigger(conn: sqlite3.Connection) -> None:
    # A trigger body holds semicolons inside BEGIN ... END; it must stay one statement.
    sql = """
        CREATE TABLE a (x INTEGER);
        CREATE TABLE log (x INTEGER);
        CREATE TRIGGER a_log AFTER INSERT ON a BEGIN
            INSERT INTO log (x) VALUES (new.x);
        END;
        INSERT INTO a (x) VALUES (7);
    """
    migrate(conn, [Migration(1, "trigger", sql)])

    assert conn.execute("SELECT x FROM log").fetchall() == [(7,)]


@pytest.mark.parametrize("versions", [[1, 3], [2], [0, 1], [2, 1], [1, 1]])
def test_numbering_must_be_1_to_n_without_gaps(
    conn: sqlite3.Connection, versions: list[int]
) -> None:
    steps = [Migration(v, f"step {v}", f"CREATE TABLE t{i} (x);") for i, v in enumerate(versions)]

    with pytest.raises(ValueError, match="without gaps"):
        migrate(conn, steps)

    assert schema_version(conn) == 0
    assert tables(conn) == set()


def test_database_newer_than_code_is_refused(conn: sqlite3.Connection) -> None:
    log: list[int] = []
    migrate(conn, [recording(log, 1), recording(log, 2)])

    with pytest.raises(SchemaTooNew, match="version 2"):
        migrate(conn, [recording(log, 1)])

    assert schema_version(conn) == 2


def test_failing_sql_rolls_back_the_whole_step(conn: sqlite3.Connection) -> None:
    migrate(conn, [Migration(1, "base", "CREATE TABLE base (x);")])
    broken = Migration(
        2,
        "half",
        "CREATE TABLE partial (x);\n"
        "INSERT INTO base (x) VALUES (1);\n"
        "INSERT INTO nowhere VALUES (1);",
    )

    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        migrate(conn, [Migration(1, "base", "CREATE TABLE base (x);"), broken])

    assert schema_version(conn) == 1
    assert "partial" not in tables(conn)
    assert conn.execute("SELECT count(*) FROM base").fetchone() == (0,)
    assert not conn.in_transaction


def test_failing_code_step_rolls_back_its_sql(conn: sqlite3.Connection) -> None:
    def boom(c: sqlite3.Connection) -> None:
        raise RuntimeError("data rewrite failed")

    with pytest.raises(RuntimeError, match="data rewrite failed"):
        migrate(conn, [Migration(1, "with code", "CREATE TABLE partial (x);", boom)])

    assert schema_version(conn) == 0
    assert tables(conn) == set()


def test_failed_step_can_be_retried_after_a_fix(conn: sqlite3.Connection) -> None:
    bad = Migration(1, "bad", "CREATE TABLE t (x);\nCREATE TABLE t (x);")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [bad])

    migrate(conn, [Migration(1, "fixed", "CREATE TABLE t (x);")])

    assert schema_version(conn) == 1
    assert tables(conn) == {"t"}


def test_incomplete_statement_is_refused_before_anything_runs(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="incomplete SQL"):
        migrate(conn, [Migration(1, "cut off", "CREATE TABLE a (x);\nCREATE TABLE b (x")])

    assert schema_version(conn) == 0
    assert tables(conn) == set()


def test_two_statements_on_one_line(conn: sqlite3.Connection) -> None:
    migrate(conn, [Migration(1, "one line", "CREATE TABLE a (x); CREATE TABLE b (x);")])

    assert tables(conn) == {"a", "b"}


def test_trailing_comment_after_last_statement(conn: sqlite3.Connection) -> None:
    migrate(conn, [Migration(1, "commented", "CREATE TABLE a (x);\n-- a closes the step\n")])

    assert tables(conn) == {"a"}


async def test_open_database_migrates_and_reopens_idempotently(tmp_path: Path) -> None:
    log: list[int] = []
    path = tmp_path / "box.sqlite"
    steps = [recording(log, 1), recording(log, 2)]

    async with open_database(path, steps) as db:
        assert await db.read(schema_version) == 2
    async with open_database(path, steps) as db:
        assert await db.read(schema_version) == 2

    assert log == [1, 2]


async def test_open_database_refuses_a_newer_file(tmp_path: Path) -> None:
    path = tmp_path / "box.sqlite"
    log: list[int] = []
    async with open_database(path, [recording(log, 1), recording(log, 2)]):
        pass

    with pytest.raises(SchemaTooNew):
        async with open_database(path, [recording(log, 1)]):
            pytest.fail("the body must not run on a schema that is too new")


def _unindexed_foreign_keys(conn: sqlite3.Connection) -> list[str]:
    """Child columns of foreign keys that no index (or rowid) starts with."""
    missing = []
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in names:
        leading = {
            conn.execute(f"PRAGMA index_info('{index[1]}')").fetchone()[2]
            for index in conn.execute(f"PRAGMA index_list('{table}')")
        }
        # An INTEGER PRIMARY KEY is the rowid itself: the table is keyed by it.
        leading |= {
            column[1]
            for column in conn.execute(f"PRAGMA table_info('{table}')")
            if column[5] == 1 and column[2].upper() == "INTEGER"
        }
        for key in conn.execute(f"PRAGMA foreign_key_list('{table}')"):
            if key[3] not in leading:
                missing.append(f"{table}.{key[3]} -> {key[2]}")
    return missing


@pytest.mark.parametrize(
    "migrations",
    [MAIL_MIGRATIONS, CHAT_MIGRATIONS, DIRECTORY_MIGRATIONS, HUB_MIGRATIONS,
     MAILBOX_SYNC_MIGRATIONS],
    ids=["mail", "chat", "directory", "hub", "mailbox-sync"],
)  # fmt: skip
def test_every_foreign_key_has_an_index(
    conn: sqlite3.Connection, migrations: Sequence[Migration]
) -> None:
    """Deleting a parent row makes SQLite find its children (foreign keys are on).

    Without an index on the child column that is a scan of the whole child table per
    deleted row: on a box draining a week's queue, every sent message's blob row was
    deleted with a scan of the 60,000-row outbound table (docs/BENCHMARKS.md).
    """
    migrate(conn, migrations)

    assert _unindexed_foreign_keys(conn) == []


# -- release N opening what release N+1 left (docs/updates.md, "Data compatibility") ----


def release(n: int, *, additive: Collection[int] = ()) -> list[Migration]:
    return [
        Migration(v, f"step {v}", f"CREATE TABLE t{v} (x);", older_releases_may_open=v in additive)
        for v in range(1, n + 1)
    ]


def test_an_older_release_opens_and_writes_a_file_whose_newer_steps_are_additive(
    conn: sqlite3.Connection,
) -> None:
    migrate(conn, release(3, additive={3}))
    assert migrate(conn, release(2)) == 3  # opened as it is: nothing ran, nothing lowered
    assert schema_version(conn) == 3
    conn.execute("INSERT INTO t2 (x) VALUES (1)")
    assert conn.execute("SELECT x FROM t2").fetchall() == [(1,)]
    # Release 3 again (the fixed update): nothing to do.
    assert migrate(conn, release(3, additive={3})) == 3


def test_a_breaking_step_sets_the_floor_and_older_releases_are_refused(
    conn: sqlite3.Connection,
) -> None:
    migrate(conn, release(4, additive={2, 4}))
    # Step 3 breaks older readers: 3 may open a version-4 file, 2 may not.
    assert migrate(conn, release(3)) == 4
    with pytest.raises(SchemaTooNew, match="version 4"):
        migrate(conn, release(2))
    assert schema_version(conn) == 4


def test_the_floor_table_exists_only_while_older_releases_may_open(
    conn: sqlite3.Connection,
) -> None:
    migrate(conn, release(1))
    assert "edgebox_schema_floor" not in tables(conn)
    migrate(conn, release(2, additive={2}))
    assert "edgebox_schema_floor" in tables(conn)
    migrate(conn, release(3, additive={2}))
    assert "edgebox_schema_floor" not in tables(conn)
