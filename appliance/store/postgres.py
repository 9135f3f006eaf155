"""PostgreSQL behind the same port as SQLite: the hub's store when one file is not enough.

A hub selects it with ``hub_database = postgresql://…`` (docs/hub-postgresql.md); every
other box, and a small hub, keeps SQLite. The domain code is written once, against the
connection shape the SQLite stores already have (``execute(sql, params)`` returning rows,
``executemany``, ``changes()``, ``last_insert_rowid()``, ``in_transaction``), and runs
over PostgreSQL through `PgConnection`, which is that shape over a psycopg 3 connection.

The port is deliberately thin. What it carries:

- **placeholders**: SQLite's ``?`` and ``:name`` outside quotes become psycopg's
  ``%s`` and ``%(name)s`` (`translate`; every literal ``%`` is doubled);
- **dialect**: ``INSERT OR IGNORE`` becomes ``INSERT … ON CONFLICT DO NOTHING``;
  ``BEGIN IMMEDIATE`` (SQLite: take the write lock now) becomes ``BEGIN`` plus the
  store's *writer lock*, a transaction-scoped advisory lock, so that every worker
  process writing the store commits one transaction at a time, exactly as SQLite's one
  writer does (see "Why one writer lock" below); ``ROLLBACK TO name`` names its SAVEPOINT;
- the two SQLite functions the domain's SQL uses (``instr``, ``json_each``) exist in
  the PostgreSQL schema as small SQL functions (`SQLITE_FUNCTIONS`), so queries need
  no second spelling;
- **upserts** are written portably in the domain (``ON CONFLICT (k) DO UPDATE SET
  c = table.c + 1``: PostgreSQL wants the old row's column qualified, SQLite allows it);
- **sequences**: ``INTEGER PRIMARY KEY`` columns are identity columns here, and
  ``last_insert_rowid()`` is ``lastval()``: the value the session last took from a
  sequence, which is the row SQLite would name (a table without one changes neither);
- **constraint errors** surface as `ConstraintViolation`, which the domain catches
  beside apsw's and sqlite3's (`CONSTRAINT_ERRORS`).

Why one writer lock. A hub's event log is read by cursor ("the events after N"). With
two processes inserting at once, a transaction can take cursor 11, commit, and be read
before another that took cursor 10 commits: a reader past 11 would never see 10. Taking
``pg_advisory_xact_lock(WRITER_LOCK)`` first in every write transaction makes cursor
order commit order across all workers, and with it each room's order (max + 1 inside
the lock), every rule check (it reads what the previous transaction committed) and the
origin sequences. Workers still parse, check certificates, compress and read in
parallel; only the commit section is serial, as it is on SQLite, and group commit
batches many jobs into it. Readers run in REPEATABLE READ, one snapshot per query.

When the server goes away (a restart; the primary dies and a replica is promoted),
every connection reconnects at the start of its next transaction, to whichever server
the URL names that takes writes: a URL may list several hosts
(``postgresql://h1:5432,h2:5432/db``), and unless it says otherwise every connection asks
for ``target_session_attrs=read-write``, so a hub never settles on a standby. A statement
that fails because the server is gone, or is a standby now, raises
`PostgreSQLUnavailable`: the transaction it belonged to did not commit as far as its
callers know (it may have, if only the answer to COMMIT was lost: boxes send again,
and every sync message applies once), and the hub answers 503 with ``Retry-After``
(`appliance.sync.hub.server`). `CONNECTION_DEFAULTS` bound how long a dead host can
hold a connection up. What a box was told was stored survives the primary's death only
with a synchronous standby (docs/hub-postgresql.md, "Running with a replica").

What this is not: an ORM, a connection pool library, or a place for domain SQL.
psycopg is imported only here and only when a PostgreSQL store is opened, so a box
without libpq never loads it.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import trio

from appliance.store.database import Database, running

log = logging.getLogger("edgebox.store.postgres")

#: libpq settings every connection gets unless the hub's URL sets them itself
#: (https://www.postgresql.org/docs/15/libpq-connect.html#LIBPQ-PARAMKEYWORDS).
#: Why each:
#:
#: - ``target_session_attrs``: with several hosts in the URL, connect to the one that
#:   takes writes (the primary, or the replica once promoted); a standby is skipped.
#: - ``connect_timeout``: seconds per host, so a host that does not answer at all
#:   (a dead machine: no RST, only silence) costs seconds, not the kernel's minutes,
#:   before the next host is tried.
#: - ``keepalives_*`` and ``tcp_user_timeout`` (ms): a connection to a machine that
#:   died mid-statement notices within about 20 s instead of waiting for ever. Over a
#:   Unix socket libpq ignores them.
CONNECTION_DEFAULTS: Final[Mapping[str, str]] = {
    "target_session_attrs": "read-write",
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}

#: Key of the advisory lock every write transaction takes first (see the module doc);
#: one per schema, so the hub's enrolment and chat stores do not wait on each other.
WRITER_LOCK_BASE: Final = 0x6564_6765_0000


class ConstraintViolation(Exception):
    """A UNIQUE, CHECK, NOT NULL or foreign key constraint refused a change (PostgreSQL)."""


class PostgreSQLUnavailable(Exception):
    """psycopg or libpq is missing, or the server cannot be reached; the message says which.

    Raised as well by a statement whose server went away (or became a standby) under
    it: the transaction did not commit as far as anyone was told, and trying again
    later, once the server (or the promoted replica) answers, is right.
    """


def connection_options(url: str) -> dict[str, str]:
    """Return the `CONNECTION_DEFAULTS` that *url* does not set itself."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    return {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}


def is_postgresql_url(url: str) -> bool:
    """Return whether *url* names a PostgreSQL server (``postgresql://`` / ``postgres://``)."""
    return urlsplit(url).scheme in ("postgresql", "postgres")


def redact(url: str) -> str:
    """Return *url* without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# --- the dialect -------------------------------------------------------------------

_TOKENS = re.compile(
    r"""
    (?P<string>'(?:[^']|'')*')          # a string literal: left alone
  | (?P<ident>"(?:[^"]|"")*")           # a quoted identifier: left alone
  | (?P<named>(?<!:):[A-Za-z_]\w*)      # :name (never the second colon of ::type)
  | (?P<qmark>\?)
  | (?P<percent>%)
    """,
    re.VERBOSE,
)

_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_ROLLBACK_TO = re.compile(r"^\s*ROLLBACK\s+TO\s+(?!SAVEPOINT\b)(\w+)\s*$", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """Return SQLite-flavoured *sql* as PostgreSQL reads it (see the module doc).

    The domain's SQL is fixed text (values are always bound), so the result is cached.
    """

    def token(match: re.Match[str]) -> str:
        kind = match.lastgroup
        text = match.group()
        if kind == "named":
            return f"%({text[1:]})s"
        if kind == "qmark":
            return "%s"
        # psycopg reads %-placeholders everywhere, quotes or not: every % is doubled.
        return text.replace("%", "%%")

    out = _TOKENS.sub(token, sql)
    if _OR_IGNORE.match(out):
        out = _OR_IGNORE.sub("INSERT INTO", out, count=1).rstrip().rstrip(";")
        out += " ON CONFLICT DO NOTHING"
    rollback = _ROLLBACK_TO.match(out)
    if rollback:
        out = f"ROLLBACK TO SAVEPOINT {rollback.group(1)}"
    return out


#: What PostgreSQL needs to read the domain's SQLite-flavoured SQL unchanged. Created
#: in each store's schema by its first migration.
SQLITE_FUNCTIONS: Final = """
CREATE FUNCTION instr(haystack text, needle text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS 'SELECT strpos(haystack, needle)';
CREATE FUNCTION json_each(list text) RETURNS TABLE (value text)
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS 'SELECT json_array_elements_text(list::json)';
"""


# --- the connection ------------------------------------------------------------------


class PgConnection:
    """A psycopg connection with the shape the SQLite stores' jobs use (module doc)."""

    def __init__(
        self,
        raw: Any,
        writer_lock: int | None,
        notify: str = "",
        reopen: Callable[[], Any] | None = None,
        *,
        where: str = "PostgreSQL",
    ) -> None:
        self.raw = raw
        self._writer_lock = writer_lock
        #: Channel told of every commit (`CommitFollower`); "" for none.
        self._notify = notify
        #: Makes a new raw connection after the server went away (`_usable`).
        self._reopen = reopen
        #: The server, password left out, for messages.
        self._where = where
        #: Inside a write batch (BEGIN IMMEDIATE … COMMIT/ROLLBACK).
        self._begun = False
        self._changes = 0
        import psycopg
        from psycopg.errors import ReadOnlySqlTransaction

        self._integrity = psycopg.IntegrityError
        self._operational = psycopg.OperationalError
        self._interface = psycopg.InterfaceError
        self._read_only = ReadOnlySqlTransaction

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        if self.raw.broken or self.raw.closed:
            return False  # nothing left to roll back: the server ended it
        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    def _usable(self) -> None:
        """Reconnect if the server went away between transactions (restart, failover).

        Only ever between transactions: one that was under way when the connection
        broke failed, and its callers were told so (nothing they were promised is
        lost); the next one starts on a new connection to whatever answers the URL.
        """
        if self._reopen is not None and (self.raw.broken or self.raw.closed):
            self.raw.close()
            self.raw = self._reopen()

    @contextmanager
    def _server_errors(self) -> Iterator[None]:
        """Turn "the server is gone, or is a standby now" into `PostgreSQLUnavailable`.

        Everything else (a constraint, a bug in the SQL) passes unchanged.
        """
        try:
            yield
        except self._operational as exc:
            # Lost connection, admin shutdown, crash recovery, cancelled statement:
            # all pass (the next transaction reconnects if the connection is gone).
            self._gone(exc)
        except self._read_only as exc:
            # A write on a server that is no longer the primary (it was demoted, or
            # a URL without target_session_attrs reached a standby): drop the
            # connection so the next transaction looks for the primary again.
            self.raw.close()
            self._gone(exc)
        except self._interface as exc:
            if not (self.raw.broken or self.raw.closed):
                raise  # a misuse of psycopg, not the server: a bug to see
            self._gone(exc)

    def _gone(self, exc: Exception) -> NoReturn:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PostgreSQLUnavailable(f"{self._where}: {first}") from exc

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), /) -> Any:
        """Run one statement; return its cursor (iterable, ``fetchone``, ``fetchall``)."""
        text = sql.strip().upper()
        if text == "ROLLBACK":
            self._rollback()
            return None
        with self._server_errors():
            if text == "COMMIT":
                self._begun = False
            # The first statement of a transaction may go again on a new connection if
            # the old one turns out dead: nothing of the transaction has run. Never a
            # later one: a batch must not go on, in autocommit, on a new connection
            # after the transaction it belonged to was lost.
            first = text == "BEGIN IMMEDIATE" or (not self._begun and not self.in_transaction)
            if first:
                self._usable()
            try:
                return self._execute(text, sql, params)
            except self._operational:
                if not first or self._reopen is None:
                    raise
                self.raw.close()
                self.raw = self._reopen()
                return self._execute(text, sql, params)

    def _rollback(self) -> None:
        """End the transaction; never fail because the server is gone (it ended it)."""
        self._begun = False
        if self.raw.broken or self.raw.closed:
            return
        try:
            if self.raw.autocommit:
                self.raw.execute("ROLLBACK")  # a write batch (Database._commit_batch)
            else:
                self.raw.rollback()  # a reader's snapshot ends (Database.read)
        except (self._operational, self._interface):
            # Whatever the server still holds of it goes with the connection; the
            # next transaction reconnects.
            self.raw.close()

    def _execute(self, text: str, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> Any:
        if text == "COMMIT" and self._notify:
            # Delivered at the commit, to every process that listens (NOTIFY is
            # transactional): their live streams then read what this one wrote.
            self.raw.execute(f'NOTIFY "{self._notify}"')
        if text == "BEGIN IMMEDIATE":
            cursor = self.raw.execute("BEGIN")
            self._begun = True
            if self._writer_lock is not None:
                self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._writer_lock,))
            return cursor
        try:
            # Always with params (even none): psycopg then reads %% as %, which
            # `translate` wrote for every literal %.
            cursor = self.raw.execute(translate(sql), _params(params))
        except self._integrity as exc:
            raise ConstraintViolation(str(exc).splitlines()[0]) from exc
        self._changes = max(cursor.rowcount, 0)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> None:
        with self._server_errors():
            cursor = self.raw.cursor()
            try:
                cursor.executemany(translate(sql), [_params(r) for r in rows])
            except self._integrity as exc:
                raise ConstraintViolation(str(exc).splitlines()[0]) from exc
        self._changes = max(cursor.rowcount, 0)

    def changes(self) -> int:
        """Rows the last statement changed (SQLite's ``changes()``)."""
        return self._changes

    def last_insert_rowid(self) -> int:
        """The value this session last took from a sequence (SQLite's rowid of the insert)."""
        with self._server_errors():
            row = self.raw.execute("SELECT lastval()").fetchone()
        return int(row[0])

    def close(self) -> None:
        self.raw.close()


def is_postgresql(conn: object) -> bool:
    """Return whether a job's *conn* is PostgreSQL's (for the rare SQL only SQLite has)."""
    return isinstance(conn, PgConnection)


def _params(params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
    # SQLite takes bytes-like values as BLOBs; psycopg wants bytes (memoryview is fine).
    if isinstance(params, Mapping):
        return params
    return tuple(bytes(p) if isinstance(p, bytearray) else p for p in params)


@dataclass(frozen=True)
class PgStore:
    """Where one store lives: the server's *url* and the schema holding its tables."""

    url: str
    schema: str
    #: A channel every write transaction notifies at its commit ("" = none).
    notify: str = ""

    @property
    def writer_lock(self) -> int:
        # A stable number per schema name (hash() is salted per process).
        return WRITER_LOCK_BASE + sum(self.schema.encode()) % 0xFFFF

    def connect(self, *, writer: bool) -> PgConnection:
        """Open a connection whose ``search_path`` is the store's schema."""
        try:
            import psycopg
        except ImportError as exc:  # no psycopg, or no libpq5 under it
            raise PostgreSQLUnavailable(
                f"PostgreSQL support needs psycopg and Debian's libpq5: {exc}"
            ) from None
        reopen = functools.partial(self._raw, psycopg, writer=writer)
        where = redact(self.url)
        if not writer:
            return PgConnection(reopen(), None, reopen=reopen, where=where)
        return PgConnection(reopen(), self.writer_lock, self.notify, reopen=reopen, where=where)

    def _raw(self, psycopg: Any, *, writer: bool) -> Any:
        try:
            raw = psycopg.connect(
                self.url,
                autocommit=writer,
                options=f"-c search_path={self.schema},pg_catalog",
                application_name="edgebox-hub",
                **connection_options(self.url),
            )
        except psycopg.OperationalError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PostgreSQLUnavailable(f"{redact(self.url)}: {message}") from None
        if not writer:
            # One snapshot per read query (Database.read rolls back after each one).
            raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            raw.read_only = True
        return raw


# --- migrations ------------------------------------------------------------------------

VERSION_TABLE: Final = "edgebox_schema_version"


@dataclass(frozen=True)
class PgMigration:
    """One step of a store's PostgreSQL schema: *version* is the version after it."""

    version: int
    description: str
    sql: str


def migrate_store(store: PgStore, migrations: Sequence[PgMigration]) -> int:
    """Create the store's schema and bring it to the last of *migrations*; return it.

    Safe when several workers start at once: the first takes the migration lock and
    the others wait for it, then find nothing left to do. A database whose version is
    newer than *migrations* is refused, as SQLite's is (`appliance.store.schema`).
    """
    from appliance.store.schema import SchemaTooNew

    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, got {versions}")
    conn = store.connect(writer=True)
    try:
        raw = conn.raw
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (store.writer_lock,))
            raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{store.schema}"')
            raw.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
            row = raw.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()  # noqa: S608 - ours
            current = int(row[0]) if row and row[0] is not None else 0
            latest = len(migrations)
            if current > latest:
                raise SchemaTooNew(
                    f"the {store.schema} schema is version {current}, this edgebox knows only"
                    f" up to {latest}; refusing to open it (was the software rolled back?)"
                )
            for step in migrations[current:]:
                raw.execute(step.sql)
                raw.execute(f"DELETE FROM {VERSION_TABLE}")  # noqa: S608 - ours
                raw.execute(
                    f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)",  # noqa: S608 - ours
                    (step.version,),
                )
        return max(current, len(migrations))
    finally:
        conn.close()


def pg_database(
    store: PgStore, migrations: Sequence[PgMigration], name: str
) -> tuple[PgConnection, Callable[[], PgConnection]]:
    """Migrate *store* and return its writer connection and a reader factory.

    Blocking: call it in a worker thread. *name* labels the store in messages.
    """
    del name
    migrate_store(store, migrations)
    return store.connect(writer=True), functools.partial(store.connect, writer=False)


@asynccontextmanager
async def open_pg_database(
    store: PgStore, migrations: Sequence[PgMigration]
) -> AsyncIterator[Database[Any]]:
    """Open (creating, migrating) *store* behind a `Database` with its writer task.

    The same `Database` as SQLite's: jobs, group commit, readers in worker threads;
    only the connections differ (`PgConnection`).
    """
    writer, connect_reader = await trio.to_thread.run_sync(
        pg_database, store, migrations, store.schema
    )
    db: Database[Any] = Database(Path(f"{store.schema}@postgresql"), writer, connect_reader)
    async with running(db):
        yield db


class CommitFollower:
    """Call *on_commit* after other processes commit to *store* (LISTEN, RFC-free).

    A hub's workers share the chat store, but each process hands events to its own
    live streams (`appliance.chat.stream.Fanout`) only after its own commits. This
    listens on the store's notify channel and calls *on_commit* (which reads and
    publishes what is new, in cursor order) after each burst of notifications, so the
    hub's own users see an event a worker accepted from a box at once.

    When the server goes away (a restart, a failover) the follower connects again,
    every `RETRY` to `MAX_RETRY` seconds, and then calls *on_commit* once: what was
    committed while nobody listened is published too. Only a failure at the first
    connection is raised (the hub should not start against a server it cannot reach).
    """

    name = "commit-follower"

    #: Seconds one wait for notifications lasts before it is asked again (so that
    #: cancellation is noticed without leaving a thread behind for long).
    POLL = 5.0
    #: Seconds before the first attempt to listen again after the server went away,
    #: doubled after each failed attempt up to `MAX_RETRY`.
    RETRY = 0.5
    MAX_RETRY = 10.0

    def __init__(self, store: PgStore, on_commit: Callable[[], Awaitable[None]]) -> None:
        if not store.notify:
            raise ValueError("the store has no notify channel")
        self.store = store
        self.on_commit = on_commit
        #: Times the follower listened again after losing the server (tests, status).
        self.reconnects = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        conn = await trio.to_thread.run_sync(self._listen)
        task_status.started([])
        retry = self.RETRY
        while True:
            try:
                await self._follow(conn)
            except PostgreSQLUnavailable as exc:
                log.warning("commit follower lost the server (%s); listening again", exc)
            finally:
                conn.close()
            while True:
                await trio.sleep(retry)
                retry = min(retry * 2, self.MAX_RETRY)
                try:
                    conn = await trio.to_thread.run_sync(self._listen)
                except PostgreSQLUnavailable as exc:
                    log.info("commit follower: the server is still away (%s)", exc)
                    continue
                try:
                    # Whatever committed while nobody listened.
                    await self.on_commit()
                except BaseException as exc:
                    conn.close()
                    if isinstance(exc, PostgreSQLUnavailable):
                        continue
                    raise
                break
            self.reconnects += 1
            retry = self.RETRY
            log.warning("commit follower listening again")

    async def _follow(self, conn: PgConnection) -> None:
        while True:
            heard = await trio.to_thread.run_sync(self._wait, conn, abandon_on_cancel=True)
            if heard:
                await self.on_commit()

    def _listen(self) -> PgConnection:
        conn = self.store.connect(writer=True)
        try:
            with conn._server_errors():
                conn.raw.execute(f'LISTEN "{self.store.notify}"')
        except BaseException:
            conn.close()
            raise
        return conn

    def _wait(self, conn: PgConnection) -> int:
        # psycopg ≥ 3.2: return after the first notification, or after POLL seconds.
        with conn._server_errors():
            return sum(1 for _ in conn.raw.notifies(timeout=self.POLL, stop_after=1))
