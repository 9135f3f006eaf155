"""Sign-in sessions: the bearer tokens that the web pages and the phone app present.

A session is created after `Directory.authenticate` accepted a password and lives in the
``sessions`` table of the directory database (migration 3). The rules:

- A token is 32 random bytes, URL-safe base64 (43 characters). Only its SHA-256 is
  stored, so the table (a backup, a stolen disk) lets nobody act as a user. A plain
  hash is enough here, unlike passwords: 256 random bits cannot be guessed offline.
- `resolve` answers the user only while the session is unexpired and the user still
  exists and is enabled; disabling a user ends their sessions at once (up to the cache
  below), without anybody remembering to revoke them.
- Browsers get 12 hours (`BROWSER_TTL`), the phone app 30 days (`APP_TTL`). No sliding
  renewal: a stolen token is good for at most its TTL.
- Resolved tokens are cached in memory for `CACHE_SECONDS`, so a page that fires twenty
  API calls reads SQLite once. `revoke` and `revoke_all` clear the cache at once; a user
  disabled through `Directory` is refused at most `CACHE_SECONDS` later.

What this is not: password checking (`Directory.authenticate`), lock-out
(`appliance.security.guard`) or cookies and HTTP (`appliance.web.session_api`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import secrets
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import trio

from appliance.directory.directory import (
    _USER_COLUMNS,
    DirectoryError,
    _user_from_row,
    normalise_address,
)
from appliance.directory.models import User
from appliance.store.database import SQLiteDatabase

log = logging.getLogger("edgebox.directory")

BROWSER_TTL: Final = timedelta(hours=12)
APP_TTL: Final = timedelta(days=30)
TOKEN_BYTES: Final = 32
#: How long a resolved token is trusted without asking the database again.
CACHE_SECONDS: Final = 5.0
#: Cached tokens at most; beyond this the cache is emptied (a flood of random tokens
#: must not grow memory; those are never cached anyway, see `resolve`).
CACHE_MAX: Final = 10_000
#: The user agent is kept for "where am I signed in"; it is the client's text, so short.
MAX_USER_AGENT: Final = 256


def _utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """Return *moment* as stored: UTC, millisecond ISO 8601, like the schema's defaults."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def token_hash(token: str) -> bytes | None:
    """Return the stored form of *token*, or None if it cannot be one of ours."""
    if len(token) != 43:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_BYTES:
        return None
    return hashlib.sha256(raw).digest()


class Sessions:
    """The sessions table of the directory database, with a short in-memory cache."""

    def __init__(
        self,
        db: SQLiteDatabase,
        *,
        clock: Callable[[], datetime] = _utc_now,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._cache_seconds = cache_seconds
        #: token hash -> (user, session expiry, cached until)
        self._cache: dict[bytes, tuple[User, datetime, datetime]] = {}

    async def create(
        self, user: User, *, client_ip: str | None, user_agent: str | None, ttl: timedelta
    ) -> tuple[str, datetime]:
        """Start a session for *user*; return the token (shown once) and its expiry."""
        if ttl <= timedelta(0):
            raise ValueError(f"a session must last some time, not {ttl}")
        raw = secrets.token_bytes(TOKEN_BYTES)
        token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        digest = hashlib.sha256(raw).digest()
        # Stored at millisecond precision; answer the same instant the table holds.
        expires_at = parse_time(format_time(self._clock() + ttl))
        agent = None if user_agent is None else user_agent[:MAX_USER_AGENT]

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at, client_ip, user_agent)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest, user.id, format_time(expires_at), client_ip, agent),
            )

        await self._db.write(job)
        return token, expires_at

    async def resolve(self, token: str) -> User | None:
        """Return the user of an unexpired session of an enabled user, else None."""
        digest = token_hash(token)
        if digest is None:
            return None
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None:
            user, expires_at, fresh_until = cached
            if now < fresh_until and now < expires_at:
                return user
            del self._cache[digest]

        def query(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                "SELECT s.expires_at, s.user_id FROM sessions s"
                " WHERE s.token_hash = ? AND s.expires_at > ?",
                (digest, format_time(now)),
            ).fetchone()
            if row is None:
                return None
            user_row = conn.execute(_USER_COLUMNS + " WHERE u.id = ?", (row[1],)).fetchone()
            if user_row is None:
                return None
            return _user_from_row(user_row), str(row[0])

        found = await self._db.read(query)
        if found is None or found[0].disabled:
            return None
        user, expires_text = found
        expires_at = parse_time(expires_text)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (user, expires_at, now + timedelta(seconds=self._cache_seconds))
        return user

    async def revoke(self, token: str) -> bool:
        """End the session of *token*; return whether there was one."""
        digest = token_hash(token)
        if digest is None:
            return False
        self._cache.pop(digest, None)

        def job(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM sessions WHERE token_hash = ?", (digest,))
            return cursor.rowcount > 0

        return await self._db.write(job)

    async def revoke_all(self, address: str) -> int:
        """End every session of the user at *address* (password change, theft); return
        how many there were."""
        try:
            address = normalise_address(address)
        except DirectoryError:
            return 0
        for digest, (user, _, _) in list(self._cache.items()):
            if user.address == address:
                del self._cache[digest]

        def job(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE address = ?)",
                (address,),
            )
            return int(cursor.rowcount)

        return await self._db.write(job)

    async def prune(self) -> int:
        """Delete expired sessions; return how many. Run it now and then (hourly)."""
        now = format_time(self._clock())

        def job(conn: sqlite3.Connection) -> int:
            cursor = conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            return int(cursor.rowcount)

        removed = await self._db.write(job)
        self._cache = {
            digest: entry for digest, entry in self._cache.items() if entry[1] > self._clock()
        }
        return removed


class SessionExpiry:
    """A supervised service that deletes expired sessions every hour.

    Expired sessions are refused by `Sessions.resolve` anyway; this only keeps the table
    from growing with every sign-in the box has ever seen.
    """

    name = "session-expiry"

    def __init__(self, sessions: Sessions, interval: float = 3600.0) -> None:
        self.sessions = sessions
        self.interval = interval

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            removed = await self.sessions.prune()
            if removed:
                log.info("sessions: deleted %d expired sessions", removed)
            await trio.sleep(self.interval)
