"""Schema versions and migrations for every edgebox SQLite database.

Each database (mail, directory, later chat and sync) owns an ordered list of
`Migration`s. The applied version lives in SQLite's own ``PRAGMA user_version``, so a
database file always says which schema it has, with no side table to get out of step.
Migrations run in one transaction each, at open, before any service starts: a box that
is updated in the field moves its data forward on the next boot, or refuses to start
with a clear message if the file is newer than the code (a rolled-back update must not
write into a schema it does not understand).

Rolling back an update (docs/updates.md) runs release N on data release N+1 has
migrated, so the rule for a release's migrations is: **forward only, and additive where
at all possible** — new tables, new columns with a default or NULL, new indexes — and
such a step is marked ``older_releases_may_open=True``. Release N then opens the file as
it is (no migration runs, ``user_version`` stays N+1) and reads and writes it, ignoring
what it does not know. A step that older code would misread (a rename, a new NOT NULL
column without default, rewritten data) leaves the flag False; the file then records
that nothing older than that step may open it, and release N refuses with SchemaTooNew.
The record is the one-row table ``edgebox_schema_floor``, present only while the floor
is below ``user_version``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


class SchemaTooNew(Exception):
    """The database was written by a newer edgebox than this one."""


@dataclass(frozen=True)
class Migration:
    """One step forward: *version* is the schema version after it has run."""

    version: int
    description: str
    sql: str = ""
    #: For steps that need code (data rewrites); runs after *sql*, in the same transaction.
    run: Callable[[sqlite3.Connection], None] | None = None
    #: Additive only: a release that knows only the steps before this one can still open,
    #: read and write the file (see the module docstring).
    older_releases_may_open: bool = False


FLOOR_TABLE = "edgebox_schema_floor"


def read_floor(conn: Any, version: int) -> int:
    """The oldest schema version that may open a file at *version* (works for apsw too)."""
    exists = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (FLOOR_TABLE,)
    ).fetchone()[0]
    if not exists:
        return version
    row = conn.execute(f"SELECT version FROM {FLOOR_TABLE}").fetchone()  # noqa: S608 - ours
    return int(row[0]) if row else version


def refuse_if_too_new(conn: Any, current: int, latest: int) -> None:
    """Raise `SchemaTooNew` unless this code (schema *latest*) may open the file."""
    if current <= latest:
        return
    floor = read_floor(conn, current)
    if floor > latest:
        raise SchemaTooNew(
            f"database schema is version {current}, this edgebox knows only up to {latest}; "
            "refusing to open it (was the software rolled back?)"
        )


def floor_statements(conn: Any, step: Migration) -> list[str]:
    """What keeps ``edgebox_schema_floor`` right after *step* (same transaction)."""
    before = step.version - 1
    floor = read_floor(conn, before) if step.older_releases_may_open else step.version
    if floor >= step.version:
        return [f"DROP TABLE IF EXISTS {FLOOR_TABLE}"]
    return [
        f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (version INTEGER NOT NULL)",
        f"DELETE FROM {FLOOR_TABLE}",  # noqa: S608 - ours
        f"INSERT INTO {FLOOR_TABLE} (version) VALUES ({int(floor)})",  # noqa: S608 - an int
    ]


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version recorded in the database file."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration]) -> int:
    """Bring *conn*'s database up to the last of *migrations*; return the new version."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, got {versions}")
    current = schema_version(conn)
    latest = len(migrations)
    refuse_if_too_new(conn, current, latest)
    for step in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(step.sql):
                conn.execute(statement)
            if step.run is not None:
                step.run(conn)
            for statement in floor_statements(conn, step):
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int we control.
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(current, latest)


def _statements(sql: str) -> list[str]:
    """Split a migration script into statements (executescript would auto-commit).

    Splits at every ";" and joins pieces back until SQLite says the statement is
    complete, so a ";" inside a string or a trigger body does not end it.
    """
    statements: list[str] = []
    buffer = ""
    *pieces, last = sql.split(";")
    for piece in pieces:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if _has_code(buffer[:-1]):
                statements.append(buffer.strip())
            buffer = ""
    leftover = buffer + last
    if _has_code(leftover):
        raise ValueError(f"incomplete SQL statement in migration: {leftover.strip()[:60]!r}")
    return statements


def _has_code(sql: str) -> bool:
    """Return whether *sql* holds more than white space and ``--`` comments."""
    return any(line.split("--", 1)[0].strip() for line in sql.splitlines())
