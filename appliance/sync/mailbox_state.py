"""What mailbox replication remembers between rounds: ``DATA/db/sync.sqlite``.

Per replicated mailbox (a *pair*: one local mailbox and its central twin) four cursors,
and per message one row of the UID map. The cursors only move forward in the same
transaction that commits the map rows they cover, so a round cut at any point leaves
either the old cursor (the work is redone, and matching by content makes redoing it
harmless) or the new cursor with all its rows:

- ``remote_uidvalidity`` / ``local_uidvalidity``: the UIDVALIDITY each side had when
  the map was made (RFC 9051 §2.3.1.1). If either changes, the map means nothing and
  the pair starts over (matching by content hash keeps that from duplicating mail).
- ``remote_next_uid``: central UIDs below it have been fetched down or matched.
- ``remote_modseq``: central changes up to this HIGHESTMODSEQ are applied (RFC 7162).
- ``local_next_uid`` / ``local_modseq``: the same for the box's side.

A map row holds ``flags``, the flags both sides last agreed on: the common ancestor of
the three-way merge that decides which side's flag change wins.

What this is not: the mail itself (mail.sqlite) or the rules of a round (mailbox.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from appliance.store.database import SQLiteDatabase
from appliance.store.schema import Migration

MAILBOX_SYNC_MIGRATIONS = (
    Migration(
        1,
        "mailbox replication: pairs with their cursors, and the UID map",
        """
        CREATE TABLE mailbox_pairs (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            local_name TEXT NOT NULL,
            remote_name TEXT NOT NULL,
            local_uidvalidity INTEGER NOT NULL DEFAULT 0,
            remote_uidvalidity INTEGER NOT NULL DEFAULT 0,
            remote_next_uid INTEGER NOT NULL DEFAULT 1,
            remote_modseq INTEGER NOT NULL DEFAULT 0,
            local_next_uid INTEGER NOT NULL DEFAULT 1,
            local_modseq INTEGER NOT NULL DEFAULT 0,
            UNIQUE (owner, local_name)
        );
        CREATE TABLE mailbox_uid_map (
            pair_id INTEGER NOT NULL REFERENCES mailbox_pairs (id),
            local_uid INTEGER NOT NULL,
            remote_uid INTEGER NOT NULL,
            flags TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (pair_id, local_uid)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX mailbox_uid_map_remote ON mailbox_uid_map (pair_id, remote_uid);
        """,
    ),
)


@dataclass(frozen=True)
class Pair:
    """One replicated mailbox and its cursors (see the module docstring)."""

    id: int
    owner: str
    local_name: str
    remote_name: str
    local_uidvalidity: int
    remote_uidvalidity: int
    remote_next_uid: int
    remote_modseq: int
    local_next_uid: int
    local_modseq: int


@dataclass(frozen=True)
class Mapped:
    """A message known on both sides, with the flags both last agreed on."""

    local_uid: int
    remote_uid: int
    flags: tuple[str, ...]


_PAIR_COLUMNS = (
    "id, owner, local_name, remote_name, local_uidvalidity, remote_uidvalidity,"
    " remote_next_uid, remote_modseq, local_next_uid, local_modseq"
)


class MailboxSyncState:
    """Reads and writes of ``sync.sqlite``; every write is one group-committed job."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    async def pairs(self, owner: str) -> list[Pair]:
        def query(conn: sqlite3.Connection) -> list[Pair]:
            rows = conn.execute(
                f"SELECT {_PAIR_COLUMNS} FROM mailbox_pairs WHERE owner = ? ORDER BY id",  # noqa: S608
                (owner,),
            )
            return [Pair(*row) for row in rows]

        return await self.db.read(query)

    async def pair(self, owner: str, local_name: str, remote_name: str) -> Pair:
        """The pair for *local_name*, made (with empty cursors) if new."""

        def job(conn: sqlite3.Connection) -> Pair:
            conn.execute(
                "INSERT OR IGNORE INTO mailbox_pairs (owner, local_name, remote_name)"
                " VALUES (?, ?, ?)",
                (owner, local_name, remote_name),
            )
            row = conn.execute(
                f"SELECT {_PAIR_COLUMNS} FROM mailbox_pairs WHERE owner = ? AND local_name = ?",  # noqa: S608
                (owner, local_name),
            ).fetchone()
            return Pair(*row)

        return await self.db.write(job)

    async def restart(self, pair: Pair, local_uidvalidity: int, remote_uidvalidity: int) -> Pair:
        """Forget the map and cursors: a side's UIDVALIDITY changed (or first sight)."""
        fresh = replace(
            pair,
            local_uidvalidity=local_uidvalidity,
            remote_uidvalidity=remote_uidvalidity,
            remote_next_uid=1,
            remote_modseq=0,
            local_next_uid=1,
            local_modseq=0,
        )

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM mailbox_uid_map WHERE pair_id = ?", (pair.id,))
            _save(conn, fresh)

        await self.db.write(job)
        return fresh

    async def rename(self, pair: Pair, local_name: str, remote_name: str) -> Pair:
        """Follow a folder renamed on either side: the map and cursors stay valid."""
        renamed = replace(pair, local_name=local_name, remote_name=remote_name)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE mailbox_pairs SET local_name = ?, remote_name = ? WHERE id = ?",
                (local_name, remote_name, pair.id),
            )

        await self.db.write(job)
        return renamed

    async def forget(self, pair: Pair) -> None:
        """Drop a pair whose folder is gone on both sides, with its map."""

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM mailbox_uid_map WHERE pair_id = ?", (pair.id,))
            conn.execute("DELETE FROM mailbox_pairs WHERE id = ?", (pair.id,))

        await self.db.write(job)

    async def commit(
        self,
        pair: Pair,
        *,
        add: Sequence[Mapped] = (),
        remove_local: Collection[int] = (),
        remove_remote: Collection[int] = (),
    ) -> None:
        """Save *pair*'s cursors with map changes, in one transaction."""

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM mailbox_uid_map WHERE pair_id = ? AND local_uid = ?",
                [(pair.id, uid) for uid in remove_local],
            )
            conn.executemany(
                "DELETE FROM mailbox_uid_map WHERE pair_id = ? AND remote_uid = ?",
                [(pair.id, uid) for uid in remove_remote],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO mailbox_uid_map (pair_id, local_uid, remote_uid, flags)"
                " VALUES (?, ?, ?, ?)",
                [(pair.id, m.local_uid, m.remote_uid, " ".join(m.flags)) for m in add],
            )
            _save(conn, pair)

        await self.db.write(job)

    async def by_remote(self, pair: Pair, remote_uids: Collection[int]) -> dict[int, Mapped]:
        return await self._lookup(pair, "remote_uid", remote_uids)

    async def by_local(self, pair: Pair, local_uids: Collection[int]) -> dict[int, Mapped]:
        return await self._lookup(pair, "local_uid", local_uids)

    async def _lookup(self, pair: Pair, column: str, uids: Collection[int]) -> dict[int, Mapped]:
        def query(conn: sqlite3.Connection) -> dict[int, Mapped]:
            found: dict[int, Mapped] = {}
            wanted = sorted(set(uids))
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for local, remote, flags in conn.execute(
                    "SELECT local_uid, remote_uid, flags FROM mailbox_uid_map"  # noqa: S608
                    f" WHERE pair_id = ? AND {column} IN ({marks})",
                    (pair.id, *chunk),
                ):
                    mapped = Mapped(int(local), int(remote), tuple(flags.split()))
                    found[mapped.remote_uid if column == "remote_uid" else mapped.local_uid] = (
                        mapped
                    )
            return found

        return await self.db.read(query)

    async def mapped_page(self, pair: Pair, after_remote_uid: int, limit: int) -> list[Mapped]:
        """Up to *limit* map rows with remote UID above *after_remote_uid*, in order."""

        def query(conn: sqlite3.Connection) -> list[Mapped]:
            rows = conn.execute(
                "SELECT local_uid, remote_uid, flags FROM mailbox_uid_map"
                " WHERE pair_id = ? AND remote_uid > ? ORDER BY remote_uid LIMIT ?",
                (pair.id, after_remote_uid, limit),
            )
            return [Mapped(int(a), int(b), tuple(f.split())) for a, b, f in rows]

        return await self.db.read(query)

    async def count(self, pair: Pair) -> int:
        return await self.db.read(
            lambda conn: int(
                conn.execute(
                    "SELECT count(*) FROM mailbox_uid_map WHERE pair_id = ?", (pair.id,)
                ).fetchone()[0]
            )
        )


def _save(conn: sqlite3.Connection, pair: Pair) -> None:
    conn.execute(
        "UPDATE mailbox_pairs SET remote_name = ?, local_uidvalidity = ?, remote_uidvalidity = ?,"
        " remote_next_uid = ?, remote_modseq = ?, local_next_uid = ?, local_modseq = ?"
        " WHERE id = ?",
        (
            pair.remote_name, pair.local_uidvalidity, pair.remote_uidvalidity,
            pair.remote_next_uid, pair.remote_modseq, pair.local_next_uid, pair.local_modseq,
            pair.id,
        ),
    )  # fmt: skip
