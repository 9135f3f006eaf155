"""Encrypted SQLite files: SQLite3 Multiple Ciphers connections and their migrations.

A database opened here is encrypted as a whole (pages, WAL, shared memory) with
ChaCha20-Poly1305 by the ``apsw-sqlite3mc`` build of apsw, under a key derived from the
box data key with HKDF-SHA256 and a per-database ``info`` label (so a leaked key of one
file says nothing about another). The chat database and the mail search index
(`appliance.mail.search_index`, which turns these errors into its own) use it.

The connections fit `appliance.store.database.Database` (one writer with group commit,
readers in worker threads): `open_encrypted_database` returns a writer and a factory for
readers with the same key.

What this is not: key management (`appliance.security.keys` holds the data key) or a
place for any capability's tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import apsw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.store.schema import (
    Migration,
    _statements,
    floor_statements,
    refuse_if_too_new,
)

#: The SQLite3 Multiple Ciphers cipher: ChaCha20-Poly1305, authenticated per page.
CIPHER = "chacha20"
#: The writer's page cache in KiB (SQLite's default is 2,000); readers keep the default.
WRITER_CACHE_KIB = 16 * 1024


class EncryptionUnavailable(Exception):
    """This apsw has no SQLite3 Multiple Ciphers: it would write plaintext."""


class Undecryptable(Exception):
    """The file cannot be decrypted: a wrong key or a damaged file."""


def derive_key(data_key: bytes, info: bytes) -> bytes:
    """Return a database's 256-bit key from the box data key and the database's label."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def connect_encrypted(path: Path, key: bytes) -> apsw.Connection:
    """Open *path* with the cipher and key set before anything else touches the file."""
    conn = apsw.Connection(str(path))
    try:
        # An apsw without SQLite3 Multiple Ciphers ignores these pragmas and would write
        # plaintext; refuse rather than break DESIGN.md principle 5 silently.
        if conn.pragma("cipher", CIPHER) != CIPHER:
            raise EncryptionUnavailable(
                "this SQLite has no encryption (is apsw-sqlite3mc installed?)"
            )
        # x'<64 hex>': a raw 256-bit key, used as is (no passphrase KDF on every open).
        conn.pragma("key", f"x'{key.hex()}'")
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except (apsw.NotADBError, apsw.CorruptError) as exc:
            raise Undecryptable(
                f"{path.name} cannot be decrypted (wrong key or damaged file)"
            ) from exc
        conn.set_busy_timeout(10_000)
        # Temporary tables and sorts stay in memory: no plaintext in temp files.
        conn.pragma("temp_store", "memory")
        conn.pragma("foreign_keys", 1)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate_encrypted(conn: apsw.Connection, migrations: Sequence[Migration]) -> int:
    """Bring *conn* up to the last of *migrations* (SQL steps only); return the version.

    The same rules as `appliance.store.schema.migrate` (``PRAGMA user_version``, one
    transaction per step, refuse a newer file), for an apsw connection.
    """
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, got {versions}")
    row = conn.execute("PRAGMA user_version").fetchone()
    current = 0 if row is None else int(row[0])
    refuse_if_too_new(conn, current, len(migrations))
    for step in migrations[current:]:
        if step.run is not None:
            raise ValueError("encrypted databases take SQL-only migrations")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(step.sql):
                conn.execute(statement)
            for statement in floor_statements(conn, step):
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int we control.
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return max(current, len(migrations))


def open_encrypted_database(
    path: Path, key: bytes, migrations: Sequence[Migration]
) -> tuple[apsw.Connection, Callable[[], apsw.Connection]]:
    """Open (creating, migrating) *path*; return its writer and a reader factory.

    The writer runs in WAL mode with ``synchronous=FULL``: unlike the search index this
    is for databases that are the truth, where "committed" must survive a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = connect_encrypted(path, key)
    try:
        writer.pragma("journal_mode", "wal")
        writer.pragma("synchronous", "full")
        # Every page read from the file is decrypted, so a page-cache miss costs a
        # decryption as well as a read, and the default 2 MiB misses more and more as a
        # hub's chat grows past the indexes it fits: 16 MiB took 9-14 % off the hub's
        # CPU per pushed event at 100,000 messages (tests/bench/bench_chat_push.py).
        writer.pragma("cache_size", -WRITER_CACHE_KIB)
        migrate_encrypted(writer, migrations)
    except BaseException:
        writer.close()
        raise
    return writer, lambda: connect_encrypted(path, key)
