"""Schema versions and migrations for every edgebox SQLite database.

Each database (mail, directory, later chat and sync) owns an ordered list of
`Migration`s. The applied version lives in SQLite's own ``PRAGMA user_version``, so a
database file always says which schema it has, with no side table to get out of step.
Migrations run in one transaction each, at open, before any service starts: a box that
is updated in the field moves its data forward on the next boot, or refuses to start
with a clear message if the file is newer than the code (a rolled-back update must not
write into a schema it does not understand).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass


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
    if current > latest:
        raise SchemaTooNew(
            f"database schema is version {current}, this edgebox knows only up to {latest}; "
            "refusing to open it (was the software rolled back?)"
        )
    for step in migrations[current:]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(step.sql):
                conn.execute(statement)
            if step.run is not None:
                step.run(conn)
            # PRAGMA takes no parameters; the value is an int we control.
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return latest


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
