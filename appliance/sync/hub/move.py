"""Move a hub's stores from its SQLite files to PostgreSQL, and prove nothing changed.

``edgebox hub migrate-to-postgresql --from DATA --to URL`` (docs/hub-postgresql.md).
With the hub stopped, in this order, refusing at the first problem:

1. open the SQLite stores (the encrypted ``chat.sqlite`` under the box's data key, and
   ``hub.sqlite``), bringing them to this release's schema, and hold each one's write
   lock (``BEGIN IMMEDIATE``) for the whole move, so a hub started by mistake cannot
   write behind the copy;
2. create the PostgreSQL schemas (``chat``, ``hub``) with their migrations and refuse
   if any of their tables already holds rows: a move never merges two hubs;
3. copy every table with COPY, in one PostgreSQL transaction per store, and set the
   identity sequences past the highest cursor and message seq copied, so new events
   continue the old numbering (a box's pull cursor stays valid);
4. compare, table by table, the row count and a content hash computed the same way
   on both sides (`TableDigest`); any difference rolls the store's copy back.

What moves: the hub's chat (rooms, events and their room orders, messages, receipts,
settings the boxes declared…) and enrolment (tokens, boxes). What stays where it is:
the directory, mail and blobs (chat files) under DATA, which every worker on the same
machine shares; keys and certificates. The SQLite files are left as they were, so
going back is setting ``hub_database`` empty again (before new traffic arrives).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.chat.schema import CHAT_MIGRATIONS, CHAT_PG_MIGRATIONS
from appliance.chat.store import CHAT_SCHEMA, KEY_INFO
from appliance.security.keys import load_data_key
from appliance.store.encrypted import derive_key, open_encrypted_database
from appliance.store.postgres import PgConnection, PgMigration, PgStore, migrate_store
from appliance.store.schema import migrate
from appliance.sync.hub.enrolment import HUB_DB, HUB_MIGRATIONS, HUB_PG_MIGRATIONS, HUB_SCHEMA

#: Tables of the SQLite files that are bookkeeping of SQLite itself, not hub data.
_NOT_DATA: Final = ("sqlite_%", "message_text_%", "edgebox_schema_floor")
#: Identity columns whose sequences continue after the copied rows.
_IDENTITIES: Final = (("events", "cursor"), ("messages", "seq"))


class MoveRefused(Exception):
    """The move cannot start or did not verify; nothing in PostgreSQL was kept."""


@dataclass(frozen=True)
class TableDigest:
    """A table's row count and an order-free hash of its rows.

    Order-free (the sum of each row's SHA-256 modulo 2^256) because the two engines
    sort text by different collations, and a hub's event log does not fit in memory
    to be sorted here. Values are normalised so that the same row reads the same from
    either engine: REAL as ``repr(float)``, BLOB and bytea as hex.
    """

    table: str
    rows: int
    digest: str


def _value(value: Any) -> str:
    if value is None:
        return "\x00null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def digest_rows(table: str, rows: Iterable[Sequence[Any]]) -> TableDigest:
    """Return the `TableDigest` of *rows* of *table*."""
    total, count = 0, 0
    for row in rows:
        text = "\x1f".join(_value(v) for v in row)
        total = (total + int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")) % (1 << 256)
        count += 1
    return TableDigest(table, count, f"{total:064x}")


@dataclass(frozen=True)
class MovedStore:
    """What was moved of one store, table by table, verified equal on both sides."""

    schema: str
    tables: tuple[TableDigest, ...]


def move_hub_to_postgresql(data_dir: Path, url: str) -> list[MovedStore]:
    """Copy the hub at *data_dir* into the PostgreSQL at *url*; verify; see the module doc.

    Blocking (run it in a thread or from the command line). Raises `MoveRefused`.
    """
    data_dir = Path(data_dir)
    chat_path = data_dir / "db" / "chat.sqlite"
    hub_path = data_dir / HUB_DB
    if not chat_path.exists() and not hub_path.exists():
        raise MoveRefused(f"{data_dir} holds no hub stores (db/chat.sqlite, db/hub.sqlite)")
    moved: list[MovedStore] = []
    if chat_path.exists():
        key = derive_key(load_data_key(data_dir / "keys"), KEY_INFO)
        writer, _ = open_encrypted_database(chat_path, key, CHAT_MIGRATIONS)
        try:
            moved.append(_move(writer, PgStore(url, CHAT_SCHEMA), CHAT_PG_MIGRATIONS))
        finally:
            writer.close()
    if hub_path.exists():
        conn = sqlite3.connect(hub_path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            migrate(conn, HUB_MIGRATIONS)
            moved.append(_move(conn, PgStore(url, HUB_SCHEMA), HUB_PG_MIGRATIONS))
        finally:
            conn.close()
    return moved


def _tables(source: Any) -> list[tuple[str, list[str]]]:
    """The data tables of a SQLite source and the columns to copy (generated ones not)."""
    skip = " AND ".join("name NOT LIKE ?" for _ in _NOT_DATA)
    names = [
        str(r[0])
        for r in source.execute(
            f"SELECT name FROM sqlite_master WHERE type = 'table' AND {skip} ORDER BY name",  # noqa: S608 - fixed text
            _NOT_DATA,
        ).fetchall()
    ]
    # Parents before children, so each foreign key finds its row when it is copied.
    parents = {
        name: {str(r[2]) for r in source.execute(f'PRAGMA foreign_key_list("{name}")')}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= {*ordered, n}]
        if not ready:
            raise MoveRefused(
                f"foreign keys form a cycle among {sorted(set(names) - set(ordered))}"
            )
        ordered += ready
    tables = []
    for name in ordered:
        if name == "message_text":  # FTS5: its rowid is the message's seq
            tables.append((name, ["rowid", "text"]))
            continue
        # table_xinfo's "hidden" is 2 or 3 for generated columns: the target computes them.
        info = source.execute(f'PRAGMA table_xinfo("{name}")').fetchall()
        tables.append((name, [str(c[1]) for c in info if c[6] == 0]))
    return tables


def _move(source: Any, store: PgStore, migrations: Sequence[PgMigration]) -> MovedStore:
    migrate_store(store, migrations)
    source.execute("BEGIN IMMEDIATE")  # the source's write lock, for the whole move
    try:
        target = store.connect(writer=True)
        try:
            return _copy_and_verify(source, target, store.schema)
        finally:
            target.close()
    finally:
        source.execute("ROLLBACK")


def _copy_and_verify(source: Any, target: PgConnection, schema: str) -> MovedStore:
    raw = target.raw
    digests: list[TableDigest] = []
    tables = _tables(source)
    with raw.transaction():
        for table, _ in tables:
            held = raw.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # noqa: S608 - a table name read from the schema
            if held:
                raise MoveRefused(
                    f"{schema}.{table} in PostgreSQL already holds {held} rows; a move never"
                    " merges two hubs (drop the schema or use an empty database)"
                )
        for table, columns in tables:
            listed = ", ".join(f'"{c}"' for c in columns)
            rows = source.execute(f'SELECT {listed} FROM "{table}"')  # noqa: S608 - names from the schema
            with raw.cursor().copy(f'COPY "{table}" ({listed}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
        for table, column in _IDENTITIES:
            if any(t == table for t, _ in tables):
                # Names from _IDENTITIES, fixed above.
                resume = (
                    "SELECT setval(pg_get_serial_sequence(%s, %s),"  # noqa: S608
                    f' coalesce(max("{column}"), 1), max("{column}") IS NOT NULL)'
                    f' FROM "{table}"'
                )
                raw.execute(resume, (table, column))
        for table, columns in tables:
            listed = ", ".join(f'"{c}"' for c in columns)
            before = digest_rows(table, source.execute(f'SELECT {listed} FROM "{table}"'))  # noqa: S608 - names from the schema
            after = digest_rows(table, raw.execute(f'SELECT {listed} FROM "{table}"'))  # noqa: S608 - names from the schema
            if before != after:
                # Leaving the `with` by an exception rolls the whole store's copy back.
                raise MoveRefused(
                    f"{schema}.{table} did not verify: SQLite {before.rows} rows"
                    f" {before.digest[:12]}, PostgreSQL {after.rows} rows {after.digest[:12]};"
                    " nothing was kept"
                )
            digests.append(after)
    return MovedStore(schema, tuple(digests))
