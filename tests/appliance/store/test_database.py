"""Tests of `appliance.store.database`: one writer task, group commit, savepoints, readers."""

from __future__ import annotations

import platform
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.store.database import Database, DatabaseClosed, open_database
from appliance.store.schema import Migration

MIGRATIONS = (Migration(1, "items", "CREATE TABLE items (n INTEGER PRIMARY KEY, text TEXT);"),)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(tmp_path / "test.sqlite", MIGRATIONS) as database:
        yield database


def insert(n: int, text: str = "") -> Callable[[sqlite3.Connection], int]:
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO items (n, text) VALUES (?, ?)", (n, text))
        return n

    return job


def all_items(conn: sqlite3.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT n FROM items ORDER BY n")]


def fail(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO items (n) VALUES (-1)")
    raise KeyError("job failed after writing")


class Blocker:
    """A job that holds the writer busy until released, so later jobs queue up."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> str:
        self.running.set()
        assert self.release.wait(10), "the test never released the writer"
        return "blocker"


async def wait_until_running(blocker: Blocker) -> None:
    assert await trio.to_thread.run_sync(blocker.running.wait, 10), "the writer never ran it"


# --- group commit ---------------------------------------------------------------------


async def test_concurrent_writes_share_commits(db: Database) -> None:
    results: dict[int, int] = {}

    async def write(n: int) -> None:
        results[n] = await db.write(insert(n))

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(write, n)

    assert results == {n: n for n in range(200)}
    assert db.jobs == 200
    assert 1 <= db.commits < db.jobs
    assert await db.read(all_items) == list(range(200))


async def test_jobs_queued_while_writer_is_busy_go_in_one_batch(db: Database) -> None:
    blocker = Blocker()
    outcomes: dict[str, object] = {}

    async def run(name: str, job: Callable[[sqlite3.Connection], object]) -> None:
        try:
            outcomes[name] = await db.write(job)
        except KeyError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "blocker", blocker)
        await wait_until_running(blocker)
        commits_before = db.commits
        nursery.start_soon(run, "first", insert(1))
        nursery.start_soon(run, "bad", fail)
        nursery.start_soon(run, "last", insert(3))
        await trio.testing.wait_all_tasks_blocked()
        blocker.release.set()

    # One commit for the blocker's batch, one for the three queued behind it.
    assert db.commits == commits_before + 2
    assert outcomes["blocker"] == "blocker"
    assert outcomes["first"] == 1
    assert outcomes["last"] == 3
    assert isinstance(outcomes["bad"], KeyError)
    # The failed job's own insert (-1) is gone; its neighbours' inserts are not.
    assert await db.read(all_items) == [1, 3]


async def test_failing_job_raises_its_own_exception(db: Database) -> None:
    with pytest.raises(KeyError, match="job failed after writing"):
        await db.write(fail)

    assert await db.read(all_items) == []
    assert await db.write(insert(5)) == 5
    assert await db.read(all_items) == [5]


async def test_sqlite_error_in_a_job_reaches_its_caller(db: Database) -> None:
    await db.write(insert(1))

    with pytest.raises(sqlite3.IntegrityError):
        await db.write(insert(1))

    assert await db.read(all_items) == [1]


async def test_failing_transaction_fails_every_job_in_the_batch(db: Database) -> None:
    # A job that ends the transaction itself makes COMMIT fail for the whole batch:
    # every caller must hear about it rather than believe its write is durable.
    blocker = Blocker()
    errors: dict[str, BaseException] = {}

    def end_transaction(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items (n) VALUES (2)")
        conn.execute("ROLLBACK")

    async def run(name: str, job: Callable[[sqlite3.Connection], object]) -> None:
        try:
            await db.write(job)
        except sqlite3.Error as exc:
            errors[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "blocker", blocker)
        await wait_until_running(blocker)
        nursery.start_soon(run, "first", insert(1))
        nursery.start_soon(run, "rogue", end_transaction)
        nursery.start_soon(run, "last", insert(3))
        await trio.testing.wait_all_tasks_blocked()
        blocker.release.set()

    assert set(errors) == {"first", "rogue", "last"}
    assert await db.read(all_items) == []


# --- durability settings and readers ---------------------------------------------------


async def test_writer_uses_wal_and_synchronous_full(db: Database) -> None:
    def pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = conn.execute("PRAGMA synchronous").fetchone()[0]
        return journal, synchronous

    # synchronous is per connection: ask the writer's own connection.
    assert await db.write(pragmas) == ("wal", 2)  # 2 = FULL


async def test_file_is_in_wal_mode_for_any_reader(db: Database, tmp_path: Path) -> None:
    await db.write(insert(1))
    plain = sqlite3.connect(tmp_path / "test.sqlite")
    try:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        plain.close()


async def test_reads_run_in_worker_threads_and_see_committed_data(db: Database) -> None:
    main_thread = threading.get_ident()
    await db.write(insert(1, "ด่วน"))

    def query(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, str]]]:
        rows = conn.execute("SELECT n, text FROM items").fetchall()
        return threading.get_ident(), rows

    thread, rows = await db.read(query)

    assert thread != main_thread
    assert rows == [(1, "ด่วน")]


async def test_read_now_runs_on_the_calling_thread_and_sees_each_commit(db: Database) -> None:
    main_thread = threading.get_ident()

    def query(conn: sqlite3.Connection) -> tuple[int, list[int]]:
        conn.execute("BEGIN")  # left open on purpose: read_now must not keep a snapshot
        return threading.get_ident(), all_items(conn)

    await db.write(insert(1))
    thread, rows = db.read_now(query)
    assert thread == main_thread
    assert rows == [1]
    await db.write(insert(2))
    assert db.read_now(query)[1] == [1, 2]


async def test_reader_sees_a_write_made_after_its_previous_read(db: Database) -> None:
    # Reader connections are pooled; a reused one must not keep an old snapshot.
    assert await db.read(all_items) == []
    await db.write(insert(1))
    assert await db.read(all_items) == [1]
    await db.write(insert(2))
    assert await db.read(all_items) == [1, 2]


async def test_many_concurrent_reads(db: Database) -> None:
    await db.write(insert(1))
    seen: list[list[int]] = []

    async def read() -> None:
        seen.append(await db.read(all_items))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(read)

    assert seen == [[1]] * 20


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "test.sqlite"
    async with open_database(path, MIGRATIONS) as db:
        await db.write(insert(1, "ลับมาก"))
    async with open_database(path, MIGRATIONS) as db:
        assert await db.read(lambda c: c.execute("SELECT n, text FROM items").fetchall()) == [
            (1, "ลับมาก")
        ]


# --- shutdown ---------------------------------------------------------------------------


async def test_write_after_close_raises_database_closed(tmp_path: Path) -> None:
    async with open_database(tmp_path / "test.sqlite", MIGRATIONS) as db:
        await db.write(insert(1))

    with pytest.raises(DatabaseClosed):
        await db.write(insert(2))


async def test_a_write_after_the_writer_was_cancelled_fails_instead_of_hanging(
    tmp_path: Path,
) -> None:
    """A cancelled scope reaches each task at its own next checkpoint: the writer may
    stop first and a task of the same scope still call `write`, shielded. It must be
    told at once, not wait forever (seen as a hung mailbox-sync round)."""
    outcome: list[BaseException] = []
    with trio.move_on_after(5) as guard, trio.CancelScope() as scope:
        async with open_database(tmp_path / "test.sqlite", MIGRATIONS) as db:
            scope.cancel()
            await trio.lowlevel.cancel_shielded_checkpoint()  # the writer sees it first
            try:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.01)  # ... while this task is still busy
                    await db.write(insert(1))
            except DatabaseClosed as exc:
                outcome.append(exc)
    assert not guard.cancelled_caught, "write waited forever"
    assert len(outcome) == 1


async def test_batch_in_flight_at_close_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "test.sqlite"
    results: list[int] = []
    async with trio.open_nursery() as nursery, open_database(path, MIGRATIONS) as db:

        async def write(n: int) -> None:
            results.append(await db.write(insert(n)))

        for n in range(10):
            nursery.start_soon(write, n)
        # The writer has taken all ten into its batch and is committing them.
        await trio.testing.wait_all_tasks_blocked()

    assert sorted(results) == list(range(10))
    async with open_database(path, MIGRATIONS) as db:
        assert await db.read(all_items) == list(range(10))


# Writes still *queued* when the block ends. With the bug below the callers wait forever
# (their wait is shielded), so the scenario runs in a child process with a watchdog.
QUEUED_AT_CLOSE = r"""
import os, sqlite3, sys, threading
from pathlib import Path

import trio
import trio.testing

from appliance.store.database import open_database
from appliance.store.schema import Migration

watchdog = threading.Timer(10, os._exit, (3,))
watchdog.daemon = True
watchdog.start()

MIGRATIONS = (Migration(1, "items", "CREATE TABLE items (n INTEGER PRIMARY KEY);"),)
path = Path(sys.argv[1])
running, release = threading.Event(), threading.Event()

def blocker(conn):
    running.set()
    release.wait(10)

def insert(n):
    return lambda conn: conn.execute("INSERT INTO items (n) VALUES (?)", (n,))

async def main():
    async with trio.open_nursery() as nursery:
        async with open_database(path, MIGRATIONS) as db:
            nursery.start_soon(db.write, blocker)
            while not running.is_set():
                await trio.sleep(0.001)
            for n in range(10):
                nursery.start_soon(db.write, insert(n))
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    conn = sqlite3.connect(path)
    print("committed", conn.execute("SELECT count(*) FROM items").fetchone()[0])

trio.run(main)
"""


def test_writes_queued_at_close_are_committed(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", QUEUED_AT_CLOSE, str(tmp_path / "test.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["committed", "10"]


async def test_exception_in_body_reaches_caller_unwrapped(tmp_path: Path) -> None:
    async def use_and_fail() -> None:
        async with open_database(tmp_path / "test.sqlite", MIGRATIONS) as db:
            await db.write(insert(1))
            raise KeyError("from the body")

    with pytest.raises(KeyError) as caught:
        await use_and_fail()

    assert type(caught.value) is KeyError
    assert caught.value.args == ("from the body",)


async def test_body_exception_still_commits_finished_writes(tmp_path: Path) -> None:
    path = tmp_path / "test.sqlite"

    async def use_and_fail() -> None:
        async with open_database(path, MIGRATIONS) as db:
            await db.write(insert(1))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await use_and_fail()

    async with open_database(path, MIGRATIONS) as db:
        assert await db.read(all_items) == [1]


async def test_cancelled_caller_still_learns_the_outcome(db: Database) -> None:
    # The wait for a queued job is shielded: cancelling the caller does not abandon a
    # write that may already be committed.
    blocker = Blocker()
    result: list[int] = []

    async def cancelled_write() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            result.append(await db.write(insert(9)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.write, blocker)
        await wait_until_running(blocker)
        nursery.start_soon(cancelled_write)
        await trio.testing.wait_all_tasks_blocked()
        blocker.release.set()

    assert result == [9]
    assert await db.read(all_items) == [9]


# glibc only, and process-wide: run in a child so this test process keeps its allocator.
ALLOCATOR = r"""
import ctypes, sys, threading

from appliance.store.database import limit_allocator_retention

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    )]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2

if sys.argv[1] == "limit":
    print("set", limit_allocator_retention())

# Free one 200 KB mapping: glibc's own rule then raises its threshold to 200 KB...
libc.free(libc.malloc(200 * 1024))
# ... so, unless the threshold is fixed, 100 KB bodies grow a heap rather than get
# mappings. (glibc maps only when its free space cannot hold a block: hence fifty.)
before = libc.mallinfo2().hblks
bodies = [libc.malloc(100 * 1024) for _ in range(50)]
print("mapped", libc.mallinfo2().hblks - before)
for body in bodies:
    libc.free(body)

# Threads that allocate at once get heaps of their own, up to the limit.
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(300))
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
path = sys.argv[2].encode()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
out = libc.fopen(path, b"w")
libc.malloc_info(0, out)
libc.fclose(out)
print("heaps", open(path).read().count("<heap nr="))
"""


def _allocator_child(mode: str, tmp_path: Path) -> dict[str, str]:
    child = subprocess.run(
        [sys.executable, "-c", ALLOCATOR, mode, str(tmp_path / f"{mode}.xml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return dict(line.split() for line in child.stdout.splitlines())


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc",
    reason="mallopt's parameters are glibc's",
)
def test_limit_allocator_retention_fixes_threshold_and_heaps(tmp_path: Path) -> None:
    limited = _allocator_child("limit", tmp_path)
    default = _allocator_child("default", tmp_path)

    assert limited["set"] == "True"
    # A large body gets a mapping of its own (returned when freed), not a heap hole.
    assert int(limited["mapped"]) >= 45
    assert int(default["mapped"]) <= 5  # glibc's drifting threshold, which the fix stops
    assert int(limited["heaps"]) <= 2


# In a child too: it measures the process's resident memory around the trim.
TRIM = r"""
import ctypes

from appliance.store.database import release_free_heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)

def anon():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("RssAnon:"))

# 40 MB of 1 KB blocks, touched; then all freed but every 64th, which keeps the heap's
# top in use, so glibc's own trimming of the top cannot give the pages back.
blocks = [libc.malloc(1024) for _ in range(40_000)]
for block in blocks:
    ctypes.memset(block, 1, 1024)
for n, block in enumerate(blocks):
    if n % 64:
        libc.free(block)
held = anon()
print("released", release_free_heap())
print("freed_kib", held - anon())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_gives_freed_pages_back() -> None:
    child = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    found = dict(line.split() for line in child.stdout.splitlines())
    assert found["released"] == "True"
    assert int(found["freed_kib"]) > 20_000  # of the ~39 MB free between the survivors
