"""One SQLite database in WAL mode, behind one writer task with group commit.

Every durable change in edgebox goes through `Database.write`. The rules:

- There is exactly one writer connection per database file, owned by one trio task.
  Callers hand it a *job* (a plain function taking a `sqlite3.Connection`); the writer
  takes every job waiting at that moment, runs them in one transaction, commits once
  (one fsync of the WAL, since ``synchronous=FULL``), and only then wakes the callers.
  So "await db.write(job) returned" means "on disk and fsynced" — the promise behind
  SMTP's 250, IMAP's OK and a chat ack (DESIGN.md principle 3).
- Each job runs inside its own SAVEPOINT: a job that raises is rolled back alone and
  its caller gets the exception; the other jobs in the batch still commit.
- Readers run in worker threads on their own connections (WAL lets them read while the
  writer writes), so a slow search never stalls delivery.

What this is not: an ORM, or a place for domain rules. Jobs are plain SQL written by the
capability that owns the tables (mail, directory, chat, ...). The connection type is
open: the mail and directory databases use the stdlib `sqlite3`, the encrypted search
index an `apsw` connection; both only need ``execute`` and ``in_transaction``.
"""

from __future__ import annotations

import ctypes
import math
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import trio

from appliance.store.schema import Migration, migrate

T = TypeVar("T")


class Connection(Protocol):
    """What the writer and readers need of a SQLite connection (sqlite3 or apsw)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, /) -> Any: ...

    def close(self) -> Any: ...


C = TypeVar("C", bound=Connection)

#: How many jobs one transaction may carry. Large enough that a burst of deliveries
#: shares one fsync; small enough that one batch never holds the write lock for long.
MAX_BATCH = 256

#: Readers kept open for reuse; more may be opened under load and are closed after use.
READ_POOL_SIZE = 4


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection with the pragmas every edgebox connection needs."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        # WAL: readers never block the writer. synchronous=FULL: every COMMIT fsyncs
        # the WAL, which is what makes "committed" mean "survives a power cut".
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


#: glibc `mallopt` parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Allocations this big get a mapping of their own (returned to the system when freed)
#: whenever the heaps have no free room for them, instead of growing a heap.
ALLOCATOR_MMAP_THRESHOLD = 64 * 1024
#: Heaps ("arenas") glibc may keep for the process's threads (default: 8 per core).
ALLOCATOR_ARENAS = 2


def limit_allocator_retention() -> bool:
    """Keep glibc from holding freed memory of the stores' worker threads; True if set.

    Call once, first thing in the process, before any thread starts. Why: the stores
    run in trio worker threads (one writer per database, readers, blob encryption),
    and glibc gives threads heaps of their own, up to 8 per core. Mail bodies and
    blobs pass through them as 2-200 KB `bytes`; freed, they leave free space that
    each heap keeps for itself rather than returns. Measured on a hub during a
    catch-up (docs/BENCHMARKS.md "Sync catch-up", 5 % scale): memory in use stayed
    about 20 MB while memory held free grew from 16 to 86 MB, and RSS with it, to a
    192 MB peak; with two heaps the peak was 126 MB, with the fixed mapping threshold
    as well 122 MB, and the catch-up took no longer. The threshold is fixed because
    glibc otherwise raises it to the size of any mapping it frees, so later large
    bodies grow the heaps too. Only glibc has these `mallopt` parameters; elsewhere
    this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's stub returns 0 and changes nothing.
    fixed: bool = mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_MMAP_THRESHOLD) == 1
    limited: bool = mallopt(_M_ARENA_MAX, ALLOCATOR_ARENAS) == 1
    return fixed and limited


def release_free_heap() -> bool:
    """Give the system back the free pages glibc's heaps hold; True if any went back.

    Called after the supervisor's periodic full collection, which is when a minute's
    closed connections and their buffers have just been freed: without it the freed
    pages stay in the heap they came from until something reuses them, so the
    resident size follows the minute's peak rather than what is in use (up to 4 MB
    of free heap held in the issue 24 soak, up and down). `malloc_trim(0)` keeps every
    allocation where it is; only whole free pages go back. Only glibc has it;
    elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


class DatabaseClosed(Exception):
    """A write was queued after (or while) the database shut down; nothing was written."""


@dataclass(eq=False)
class _Job:
    run: Callable[[Any], Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class Database(Generic[C]):
    """A SQLite file with one writer task; see the module docstring for the rules."""

    def __init__(
        self, path: Path, writer: C, connect_reader: Callable[[], C] | None = None
    ) -> None:
        self.path = path
        self._writer = writer
        self._connect_reader = connect_reader
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)
        self._readers: list[C] = []
        self._inline_reader: C | None = None
        self._read_limiter = trio.CapacityLimiter(READ_POOL_SIZE)
        #: Transactions committed and jobs run since open; `edgebox status` and the
        #: benchmarks show the ratio (how well group commit batches).
        self.commits = 0
        self.jobs = 0

    async def write(self, job: Callable[[C], T]) -> T:
        """Run *job* in the next group-committed transaction; return once fsynced."""
        pending = _Job(job)
        try:
            self._send.send_nowait(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # Closed by us, or the writer has stopped (its end is closed on the way out).
            raise DatabaseClosed(f"{self.path.name} is closed") from None
        # Shielded: once a job is queued, its caller must learn whether it committed,
        # otherwise a cancelled SMTP session could not tell "stored" from "not stored".
        with trio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    async def read(self, query: Callable[[C], T]) -> T:
        """Run *query* on a reader connection in a worker thread."""
        async with self._read_limiter:
            if self._readers:
                conn = self._readers.pop()
            else:
                conn = await trio.to_thread.run_sync(self._new_reader)
            try:
                return await trio.to_thread.run_sync(query, conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._readers.append(conn)

    def read_now(self, query: Callable[[C], T]) -> T:
        """Run a tiny *query* (an indexed lookup) on the calling thread, at once.

        For hot paths where a thread hop, and its wait for the event loop to pick up
        the result, costs far more than the query: under load that wait, not SQLite,
        is the time. The query blocks the event loop while it runs, so only what
        takes microseconds belongs here.
        """
        if self._inline_reader is None:
            self._inline_reader = self._new_reader()
        conn = self._inline_reader
        try:
            return query(conn)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _new_reader(self) -> C:
        if self._connect_reader is not None:
            return self._connect_reader()
        return connect(self.path)  # type: ignore[return-value]

    async def _run_writer(self) -> None:
        try:
            async for first in self._receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break  # nothing more now, or closed: commit what we hold
                # A batch that started must finish and report, even during shutdown.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._commit_batch, batch)
                for job in batch:
                    job.done.set()
        finally:
            # Cancelled while idle: whatever is still queued was never run; say so
            # rather than leave its callers waiting. Then refuse new jobs: a task of the
            # same cancelled scope may reach `write` after this (cancellation reaches
            # each task at its own next checkpoint), and would wait shielded, forever.
            while True:
                try:
                    job = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                job.error = DatabaseClosed(f"{self.path.name} closed before the write ran")
                job.done.set()
            self._receive.close()  # no checkpoint since the loop: nothing slipped in

    def _commit_batch(self, batch: list[_Job]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.run(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    job.error = exc
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except BaseException as exc:
            # The transaction itself failed (disk full, I/O error): nothing in the
            # batch is durable, so every caller must hear about it.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None
            return
        self.commits += 1
        self.jobs += len(batch)

    def close(self) -> None:
        self._writer.close()
        if self._inline_reader is not None:
            self._readers.append(self._inline_reader)
            self._inline_reader = None
        for conn in self._readers:
            conn.close()
        self._readers.clear()


#: The mail and directory databases: stdlib sqlite3 connections.
SQLiteDatabase = Database[sqlite3.Connection]


@asynccontextmanager
async def open_database(
    path: Path, migrations: Sequence[Migration]
) -> AsyncIterator[SQLiteDatabase]:
    """Open (creating and migrating as needed) the database at *path* with its writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = connect(path)
    try:
        migrate(writer, migrations)
    except BaseException:
        writer.close()
        raise
    async with running(Database(path, writer)) as db:
        yield db


@asynccontextmanager
async def open_readonly_database(path: Path) -> AsyncIterator[SQLiteDatabase]:
    """Open *path* for reading only: no migrations, no writer; a write raises DatabaseClosed.

    For a process beside the one that owns the database (an MX worker's policy
    look-ups, appliance.mail.smtp.pool): the owner keeps the one writer, and WAL lets
    this process read while it writes.
    """

    def reader() -> sqlite3.Connection:
        return connect(path, readonly=True)

    db = Database(path, reader(), reader)
    db._send.close()  # nothing may queue a write here
    try:
        yield db
    finally:
        db.close()


@asynccontextmanager
async def running(db: Database[C]) -> AsyncIterator[Database[C]]:
    """Run *db*'s writer task for the duration of the block, then close it."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db._run_writer)
            try:
                yield db
            finally:
                # Let queued writes finish before the writer stops: a caller that
                # was promised a commit gets one.
                db._send.close()
    except BaseExceptionGroup as group:
        # The writer task itself never raises, so a group here wraps the one error
        # raised by the caller's block: give the caller their own exception back.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        db.close()
