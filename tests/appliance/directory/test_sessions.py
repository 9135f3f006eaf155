"""Sign-in sessions: tokens, what is stored, expiry, disabling, revoking, the cache."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.directory import DIRECTORY_MIGRATIONS, Directory, User
from appliance.directory.sessions import BROWSER_TTL, Sessions, token_hash
from appliance.store.database import SQLiteDatabase, open_database

DOMAIN = "test.go.th"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteDatabase]:
    async with open_database(tmp_path / "directory.sqlite", DIRECTORY_MIGRATIONS) as database:
        yield database


@pytest.fixture
async def directory(db: SQLiteDatabase) -> Directory:
    directory = Directory(db)
    await directory.add_agency(DOMAIN, "กรมทดสอบ")
    return directory


@pytest.fixture
async def user(directory: Directory) -> User:
    return await directory.add_user(f"somchai@{DOMAIN}", password="ทดสอบ-2567", name_th="สมชาย")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(db: SQLiteDatabase, clock: Clock) -> Sessions:
    # No cache unless a test asks: most tests check what the database says.
    return Sessions(db, clock=clock, cache_seconds=0)


async def create(sessions: Sessions, user: User, ttl: timedelta = BROWSER_TTL) -> str:
    token, _ = await sessions.create(user, client_ip="192.0.2.7", user_agent="Firefox", ttl=ttl)
    return token


async def test_token_resolves_to_its_user(sessions: Sessions, user: User, clock: Clock) -> None:
    token, expires_at = await sessions.create(
        user, client_ip="192.0.2.7", user_agent="Firefox", ttl=BROWSER_TTL
    )
    assert len(token) == 43
    assert expires_at == clock.now + BROWSER_TTL
    assert await sessions.resolve(token) == user
    assert await create(sessions, user) != token


async def test_only_a_hash_of_the_token_is_stored(
    sessions: Sessions, user: User, db: SQLiteDatabase
) -> None:
    token = await create(sessions, user)

    def rows(conn: sqlite3.Connection) -> list[tuple[bytes, str, str]]:
        return conn.execute("SELECT token_hash, client_ip, user_agent FROM sessions").fetchall()

    [(stored, ip, agent)] = await db.read(rows)
    assert (ip, agent) == ("192.0.2.7", "Firefox")
    assert token.encode() not in stored
    assert stored == token_hash(token)
    assert stored != hashlib.sha256(token.encode()).digest(), "hash of the raw 32 bytes"


async def test_expired_session_is_refused_and_pruned(
    sessions: Sessions, user: User, clock: Clock
) -> None:
    token = await create(sessions, user, timedelta(hours=1))
    long = await create(sessions, user, timedelta(days=30))
    clock.now += timedelta(minutes=59)
    assert await sessions.resolve(token) == user
    clock.now += timedelta(minutes=1)
    assert await sessions.resolve(token) is None
    assert await sessions.prune() == 1
    assert await sessions.resolve(long) == user


async def test_disabled_or_deleted_user_is_refused(
    sessions: Sessions, user: User, directory: Directory
) -> None:
    token = await create(sessions, user)
    await directory.set_disabled(user.address, True)
    assert await sessions.resolve(token) is None
    await directory.set_disabled(user.address, False)
    assert await sessions.resolve(token) == user


async def test_revoke_and_revoke_all(sessions: Sessions, user: User, directory: Directory) -> None:
    other = await directory.add_user(f"somsri@{DOMAIN}", password="ทดสอบ-2567", name_th="สมศรี")
    first, second = await create(sessions, user), await create(sessions, user)
    hers = await create(sessions, other)
    assert await sessions.revoke(first) is True
    assert await sessions.revoke(first) is False
    assert await sessions.resolve(first) is None
    assert await sessions.resolve(second) == user
    assert await sessions.revoke_all("SOMCHAI@test.go.th") == 1
    assert await sessions.resolve(second) is None
    assert await sessions.resolve(hers) == other


async def test_cache_spares_the_database_and_revoke_clears_it(
    db: SQLiteDatabase, user: User, directory: Directory, clock: Clock
) -> None:
    sessions = Sessions(db, clock=clock, cache_seconds=5)
    token = await create(sessions, user)
    assert await sessions.resolve(token) == user
    await directory.set_disabled(user.address, True)
    # Within the cache time the answer comes from memory (documented lag) ...
    assert await sessions.resolve(token) == user
    clock.now += timedelta(seconds=5)
    # ... and after it from the database.
    assert await sessions.resolve(token) is None
    await directory.set_disabled(user.address, False)
    assert await sessions.resolve(token) == user
    await sessions.revoke(token)
    assert await sessions.resolve(token) is None, "revoke must not wait for the cache"
    again = await create(sessions, user)
    assert await sessions.resolve(again) == user
    await sessions.revoke_all(user.address)
    assert await sessions.resolve(again) is None


@pytest.mark.parametrize("token", ["", "x", "a" * 43, "!" * 43, "a" * 44, "ก" * 43, "a" * 10_000])
async def test_malformed_tokens_resolve_to_nobody(sessions: Sessions, token: str) -> None:
    assert await sessions.resolve(token) is None
    assert await sessions.revoke(token) is False


async def test_session_needs_a_positive_ttl(sessions: Sessions, user: User) -> None:
    with pytest.raises(ValueError, match="must last"):
        await create(sessions, user, timedelta(0))
