"""Tests of `appliance.store.sqlite_memory`: one budget bounds both copies of SQLite.

The limit is process-wide, so every test puts it back to none when done.
"""

from __future__ import annotations

import gc
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.store.database import connect
from appliance.store.encrypted import open_encrypted_database
from appliance.store.schema import Migration
from appliance.store.sqlite_memory import APSW_SHARE, limit_sqlite_memory, sqlite_memory_used

MIB = 1024 * 1024
KEY = bytes(range(32))
STEPS = [Migration(1, "one table", "CREATE TABLE t (k BLOB UNIQUE, v BLOB);")]


@pytest.fixture(autouse=True)
def no_limit_after() -> Iterator[None]:
    yield
    limit_sqlite_memory(0)


def _fill(execute: Callable[..., Any], megabytes: int) -> None:
    """Insert about *megabytes* of rows with random keys: pages all over the index."""
    for _ in range(megabytes * 4):
        execute("BEGIN")
        for _ in range(1000):
            execute("INSERT INTO t VALUES (?, ?)", (os.urandom(16), os.urandom(200)))
        execute("COMMIT")


def _stdlib_growth(path: Path, megabytes: int) -> int:
    gc.collect()
    before = sqlite_memory_used()["system"]
    writer = connect(path)
    try:
        writer.execute("PRAGMA cache_size = -16384")  # a writer's cache larger than the budget
        writer.execute("CREATE TABLE IF NOT EXISTS t (k BLOB UNIQUE, v BLOB)")
        _fill(writer.execute, megabytes)
        return sqlite_memory_used()["system"] - before
    finally:
        writer.close()


def test_the_stdlib_databases_stay_within_their_share(tmp_path: Path) -> None:
    unlimited = _stdlib_growth(tmp_path / "free.sqlite", 4)
    shares = limit_sqlite_memory(2 * MIB)
    assert shares == {"apsw": int(2 * MIB * APSW_SHARE), "system": 2 * MIB - shares["apsw"]}
    limited = _stdlib_growth(tmp_path / "held.sqlite", 4)
    assert unlimited > shares["system"] + MIB  # without it, the cache grows with the data
    assert limited <= shares["system"] + MIB // 2


def test_the_encrypted_databases_stay_within_their_share(tmp_path: Path) -> None:
    shares = limit_sqlite_memory(2 * MIB)
    writer, _ = open_encrypted_database(tmp_path / "x.sqlite", KEY, STEPS)
    try:
        _fill(writer.execute, 4)  # the writer's own cache_size is 16 MiB
        assert sqlite_memory_used()["apsw"] <= shares["apsw"] + MIB // 2
    finally:
        writer.close()
    limit_sqlite_memory(0)
    writer, _ = open_encrypted_database(tmp_path / "y.sqlite", KEY, STEPS)
    try:
        _fill(writer.execute, 4)
        assert sqlite_memory_used()["apsw"] > shares["apsw"] + MIB  # without it, it grows
    finally:
        writer.close()


def test_none_is_sqlites_default() -> None:
    assert limit_sqlite_memory(0) == {"apsw": 0, "system": 0}
    assert sqlite3.sqlite_version  # the stdlib module is what the system share limits
