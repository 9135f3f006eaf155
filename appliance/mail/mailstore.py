"""Mailboxes, messages and the outbound queue: the mail database and its blob files.

A message is two things: its bytes, encrypted once in the `BlobStore` however many local
recipients it has, and one row per mailbox copy carrying what IMAP and sync need (UID,
UIDVALIDITY via the mailbox, MODSEQ, flags, internal date, size, Message-ID, content hash,
classification, urgency). Rows point at blobs through the ``blobs`` table, which counts
references, so a blob is deleted only when its last copy is.

Crash safety comes from ordering: blob files are written and fsynced *before* the rows
that name them are committed, so a committed row never points at a missing file. A
crash in between leaves an unreferenced file, which `remove_orphan_blobs` deletes at
start-up before any service runs. A blob whose last row went stays on disk while an
IMAP session not yet told of the expunge can still read it (reclamation.py).

What this is not: the SMTP or IMAP view of mail. Protocols call it; it knows neither.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from appliance.mail.changes import ChangeFeed
from appliance.mail.reclamation import Reclamation
from appliance.mail.search_index import SearchIndex
from appliance.store.blobs import BlobCorrupt, BlobMissing, BlobStore
from appliance.store.database import SQLiteDatabase
from appliance.store.schema import Migration

T = TypeVar("T")

log = logging.getLogger("edgebox.mail")

#: Mailboxes every user gets, with their RFC 6154 special-use attribute.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)

MAIL_MIGRATIONS = (
    Migration(
        1,
        "mailboxes, messages, blob references, quota usage, outbound queue",
        """
        CREATE TABLE mailboxes (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            special_use TEXT,
            uidvalidity INTEGER NOT NULL,
            uidnext INTEGER NOT NULL DEFAULT 1,
            highestmodseq INTEGER NOT NULL DEFAULT 1,
            subscribed INTEGER NOT NULL DEFAULT 1,
            UNIQUE (owner, name)
        );
        CREATE TABLE blobs (
            id TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            refs INTEGER NOT NULL CHECK (refs >= 0)
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id),
            uid INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            flags TEXT NOT NULL DEFAULT '',
            internal_date INTEGER NOT NULL,
            size INTEGER NOT NULL,
            blob_id TEXT NOT NULL REFERENCES blobs (id),
            message_id_digest TEXT,
            content_hash TEXT NOT NULL,
            classification INTEGER NOT NULL DEFAULT 0,
            urgency INTEGER NOT NULL DEFAULT 0,
            UNIQUE (mailbox_id, uid)
        );
        CREATE INDEX messages_by_modseq ON messages (mailbox_id, modseq);
        CREATE INDEX messages_by_message_id ON messages (message_id_digest);
        CREATE INDEX messages_by_blob ON messages (blob_id);
        CREATE TABLE quota_usage (
            owner TEXT PRIMARY KEY,
            bytes INTEGER NOT NULL DEFAULT 0,
            messages INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE outbound (
            id INTEGER PRIMARY KEY,
            queue_id TEXT NOT NULL,
            blob_id TEXT NOT NULL REFERENCES blobs (id),
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            notify TEXT,
            orcpt TEXT,
            ret TEXT,
            envid TEXT,
            classification INTEGER NOT NULL DEFAULT 0,
            urgency INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            next_attempt_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT
        );
        -- Most urgent first, oldest first within a level (REQUIREMENTS.md §4).
        CREATE INDEX outbound_order ON outbound (urgency DESC, created_at, id);
        """,
    ),
    Migration(
        2,
        "expunged UIDs for QRESYNC, and a UIDVALIDITY counter that never repeats",
        """
        -- RFC 7162 §3.2.5.2: VANISHED (EARLIER) needs the UIDs expunged since a MODSEQ.
        CREATE TABLE expunged (
            mailbox_id INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            PRIMARY KEY (mailbox_id, uid)
        ) WITHOUT ROWID;
        CREATE INDEX expunged_by_modseq ON expunged (mailbox_id, modseq);
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );
        INSERT INTO meta (key, value)
            SELECT 'last_uidvalidity', coalesce(max(uidvalidity), 0) FROM mailboxes;
        """,
    ),
    Migration(
        3,
        "messages listed from the centre whose body is not here yet",
        """
        -- Not NULL: the body is pending. The row's blob is then the header block only,
        -- size is the central RFC822.SIZE, content_hash is '' and this column holds the
        -- central BODYSTRUCTURE in our own shape (mime.stored_structure).
        ALTER TABLE messages ADD COLUMN pending_structure TEXT;
        CREATE INDEX messages_pending ON messages (mailbox_id, uid)
            WHERE pending_structure IS NOT NULL;
        """,
    ),
    Migration(
        4,
        "copies accepted recently, so a message sent again after a lost reply is dropped",
        """
        -- One row per (message, recipient) accepted in the last RESEND_WINDOW, as a
        -- keyed digest (`Delivery.resend_key`): nothing readable, only matchable.
        CREATE TABLE accepted_copies (
            digest TEXT PRIMARY KEY,
            accepted_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX accepted_copies_by_age ON accepted_copies (accepted_at);
        """,
    ),
    Migration(
        5,
        "the outbound queue indexed by blob, for the foreign key from outbound to blobs",
        """
        -- Deleting a blob row makes SQLite look for outbound rows still naming it;
        -- without this index that is a scan of the whole queue per sent message, and
        -- draining a week's queue of 60,000 rows took quadratic time (docs/BENCHMARKS.md).
        CREATE INDEX outbound_by_blob ON outbound (blob_id);
        """,
    ),
    Migration(
        6,
        "\\Recent per mailbox, and subscriptions kept apart from the mailboxes they name",
        """
        -- RFC 3501 §2.3.2: a message is \\Recent in the one session that first sees it.
        -- UIDs at or above this mark have not been claimed by any session yet; a
        -- read-write SELECT (and a selected session learning of new mail) moves it to
        -- uidnext. Existing mail is not recent after the upgrade.
        ALTER TABLE mailboxes ADD COLUMN first_recent_uid INTEGER NOT NULL DEFAULT 1;
        UPDATE mailboxes SET first_recent_uid = uidnext;
        -- RFC 3501 §6.3.6 and §6.3.9: a subscription names a mailbox that may not exist
        -- (DELETE keeps it; CREATE does not add one). mailboxes.subscribed is no longer
        -- read.
        CREATE TABLE subscriptions (
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (owner, name)
        ) WITHOUT ROWID;
        INSERT INTO subscriptions (owner, name)
            SELECT owner, name FROM mailboxes WHERE subscribed = 1;
        """,
    ),
)

#: How long a reader (an IMAP FETCH, the webmail) waits for a pending body it asked
#: the replicator for before it answers "unavailable": long enough for a small body
#: over a slow link, short enough that no client times out or looks hung.
BODY_WAIT_SECONDS = 5.0

#: How long an accepted copy is remembered for dropping a resend of it. A sender resends
#: only while the message is in its queue, which gives up after 14 days by default.
RESEND_WINDOW_SECONDS = 16 * 86400

#: Message bytes the search index reads and parses for one index transaction (besides
#: the count the indexer batches by). Without it a batch of 200 queued 1 MiB messages
#: held 200 MiB of bodies and as much extracted text at once: the 344-412 MB peaks of
#: `bench_smtp --mode large` (docs/BENCHMARKS.md, issue 21), against a 256 MB bound.
INDEX_BATCH_BYTES = 8 * 1024 * 1024


class BlobVanished(Exception):
    """The blob file a new row would name was deleted meanwhile; write it again."""


class BodyUnavailable(Exception):
    """A message's body is not on the box yet and could not be fetched now (link down).

    IMAP answers it with ``NO [UNAVAILABLE]`` (RFC 5530 §3).
    """


class BodyFetcher(Protocol):
    """Fetches pending bodies from the centre (mailbox replication provides it).

    Called with message row ids (`StoredMessage.id`); returns when it has stored what it could,
    or raises `BodyUnavailable` at once when it knows it cannot (the link is down).
    The caller bounds the wait; a fetch still under way when it gives up goes on.
    """

    async def __call__(self, message_ids: Sequence[int]) -> None: ...


class QuotaExceeded(Exception):
    """Delivering would take a mailbox over its owner's quota; nothing was written."""

    def __init__(self, owner: str) -> None:
        super().__init__(f"mailbox of {owner} is over quota")
        self.owner = owner


@dataclass(frozen=True)
class StoredMessage:
    """One message row as IMAP and sync see it."""

    id: int
    owner: str
    mailbox: str
    uid: int
    uidvalidity: int
    modseq: int
    flags: tuple[str, ...]
    internal_date: int
    size: int
    blob_id: str
    #: `BlobStore.digest` of the Message-ID: matchable, but not readable.
    message_id_digest: str | None
    content_hash: str
    classification: int
    urgency: int
    #: Not None while the body is still at the centre (see migration 3): the blob holds
    #: only the header block, and this is the central BODYSTRUCTURE to serve meanwhile.
    pending_structure: str | None = None

    @property
    def body_pending(self) -> bool:
        return self.pending_structure is not None


@dataclass(frozen=True)
class LocalCopy:
    """A delivery into one user's mailbox."""

    owner: str
    quota_bytes: int
    mailbox: str = "INBOX"


@dataclass(frozen=True)
class OutboundCopy:
    """A recipient on another domain, to leave through the outbound queue."""

    recipient: str
    notify: str | None = None
    orcpt: str | None = None


@dataclass(frozen=True)
class NewMessage:
    """A message whose blob is already written, ready to be committed."""

    queue_id: str
    blob_id: str
    size: int
    content_hash: str
    message_id_digest: str | None
    sender: str
    classification: int
    urgency: int
    ret: str | None = None
    envid: str | None = None
    internal_date: int | None = None
    #: Makes a copy's digest in ``accepted_copies`` (see `Mailstore.commit`); None for
    #: a message that is never a resend (a report we made, mail without a Message-ID).
    resend_key: Callable[[str], str] | None = None


class Mailstore:
    """The mail database plus the blob store; all writes are group-committed."""

    def __init__(
        self, db: SQLiteDatabase, blobs: BlobStore, search: SearchIndex | None = None
    ) -> None:
        self.db = db
        self.blobs = blobs
        #: The encrypted full-text index; a cache of the mail database, which is the truth.
        self.search = search
        #: Set by the running box's `SearchIndexer`: new messages are indexed in the
        #: background rather than on the delivery path.
        self.index_queue: trio.MemorySendChannel[tuple[int, int]] | None = None
        #: Wakes IMAP sessions (and IDLE) when a mailbox they show has changed.
        self.changes = ChangeFeed()
        #: Removed messages that sessions not yet told may still read (reclamation.py).
        self.reclamation = Reclamation()
        #: Set by mailbox replication while it runs: asks the centre for pending bodies.
        self.body_fetcher: BodyFetcher | None = None
        self.body_wait = BODY_WAIT_SECONDS

    async def create_mailboxes(self, owner: str) -> None:
        """Give *owner* the default mailboxes (idempotent)."""
        await self.db.write(lambda conn: _ensure_mailboxes(conn, owner))

    async def commit(
        self,
        message: NewMessage,
        local: Sequence[LocalCopy],
        outbound: Sequence[OutboundCopy],
        *,
        content: bytes | None = None,
    ) -> list[str]:
        """Commit every copy of *message* in one transaction, or raise and commit none.

        Returns the recipients whose copy was dropped as a resend: the same message was
        accepted for them within `RESEND_WINDOW_SECONDS`. SMTP cannot tell a sender
        whose connection broke after the final dot whether its message was taken
        (RFC 5321 §4.1.1.4, RFC 1047), so it sends again; remembering each copy in
        the same transaction that stores it makes the second one a no-op.

        With *content*, a blob deleted meanwhile by an expunge is written again.
        """
        now = int(time.time())

        def job(conn: sqlite3.Connection) -> tuple[list[tuple[int, int]], list[str], int]:
            resent: list[str] = []
            kept_local, kept_outbound = list(local), list(outbound)
            if message.resend_key is not None:
                resent = _remember_copies(conn, message.resend_key, local, outbound, now)
                kept_local = [copy for copy in local if copy.owner not in resent]
                kept_outbound = [copy for copy in outbound if copy.recipient not in resent]
            copies = len(kept_local) + len(kept_outbound)
            if copies:
                self.reference_blob(conn, message.blob_id, message.size, copies)
            placed = [_insert_local(conn, message, copy, now) for copy in kept_local]
            for out in kept_outbound:
                conn.execute(
                    "INSERT INTO outbound (queue_id, blob_id, sender, recipient, notify, orcpt,"
                    " ret, envid, classification, urgency, created_at, next_attempt_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message.queue_id, message.blob_id, message.sender, out.recipient,
                        out.notify, out.orcpt, message.ret, message.envid,
                        message.classification, message.urgency, now, now,
                    ),
                )  # fmt: skip
            return placed, resent, copies

        placed, resent, copies = await self.write_with_blob(job, message.blob_id, content)
        if not copies:
            await self.release_blobs([message.blob_id])
        self.changes.changed(mailbox_id for mailbox_id, _ in placed)
        if content is not None:
            await self.index([(mailbox_id, uid, content) for mailbox_id, uid in placed])
        return resent

    def reference_blob(self, conn: sqlite3.Connection, blob_id: str, size: int, count: int) -> None:
        """Add *count* references to a blob inside a write job.

        Blobs are shared by content, and a blob whose last reference goes is deleted
        after that commit (`release_blobs`). A writer that found the file already on
        disk and skipped writing it may be racing that deletion; so whoever creates the
        row afresh checks the file is there, and `release_blobs` deletes only under the
        same writer when no row has come back. Write jobs run one at a time, so one of
        the two always sees the other.
        """
        known = conn.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if known is None and not self.blobs.exists(blob_id):
            raise BlobVanished(blob_id)
        conn.execute(
            "INSERT INTO blobs (id, size, refs) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET refs = refs + excluded.refs",
            (blob_id, size, count),
        )

    async def write_with_blob(self, job: Callable[[sqlite3.Connection], T], blob_id: str,
                              content: bytes | None = None) -> T:  # fmt: skip
        """Run *job*; if its blob vanished under it, write the blob again and retry."""
        for _ in range(3):
            try:
                return await self.db.write(job)
            except BlobVanished:
                if content is None:
                    raise
                await trio.to_thread.run_sync(self.blobs.put, content)
        return await self.db.write(job)

    async def release_blobs(self, blob_ids: Sequence[str]) -> None:
        """Delete the files of blobs no row names any more (after the commit that freed
        them; a crash before this leaves files the start-up sweep removes).

        The unlink runs under the writer (see `reference_blob`) but is not fsynced: a
        crash that undoes it leaves a file no row names, which the same sweep removes,
        and the writer does not wait a directory fsync per message meanwhile. A blob a
        session may still read (an expunge it has not been told of) stays until that
        session lets go (`Reclamation`), and is then passed here again.
        """
        if not blob_ids:
            return

        def job(conn: sqlite3.Connection) -> None:
            for blob_id in blob_ids:
                if conn.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone():
                    continue  # referenced again meanwhile
                if not self.reclamation.keep(blob_id):
                    self.blobs.delete(blob_id, durable=False)

        await self.db.write(job)

    async def index(self, items: Sequence[tuple[int, int, bytes]]) -> None:
        """Add messages to the search index (best effort: it is a cache).

        With a background indexer attached (`SearchIndexer`, the running box), only
        ``(mailbox, uid)`` is queued: indexing costs as much CPU as delivery, and an
        SMTP 250 or an APPEND OK must not wait for it. SEARCH reads messages the index
        does not hold yet, so nothing is missed meanwhile. Without one (tools, tests)
        the messages are indexed before returning. A failure never turns a stored
        message into an error: `reconcile_search_index` repairs the index.
        """
        if self.search is None or not items:
            return
        if self.index_queue is not None:
            for mailbox_id, uid, _ in items:
                self.index_queue.send_nowait((mailbox_id, uid))
            return
        try:
            await self.search.add_many(items)
        except Exception:
            log.exception("search index: could not index %d messages", len(items))

    async def index_queued(self, keys: Sequence[tuple[int, int]]) -> None:
        """Index queued ``(mailbox, uid)`` pairs that still exist (the indexer's job)."""
        if self.search is None or not keys:
            return
        rows = await self.db.read(partial(_blobs_of, keys=keys))
        batch = _IndexBatch(self.search)
        for (mailbox_id, uid), blob_id in rows.items():
            try:
                content = await trio.to_thread.run_sync(self.blobs.get, blob_id)
            except (BlobMissing, BlobCorrupt):
                continue  # expunged and freed since it was queued
            await batch.add(mailbox_id, uid, content)
        await batch.flush()

    async def update_index(self, action: Callable[[SearchIndex], Awaitable[object]]) -> None:
        """Apply *action* to the search index if there is one, logging failures."""
        if self.search is None:
            return
        try:
            await action(self.search)
        except Exception:
            log.exception("search index update failed; reconciliation will repair it")

    async def reconcile_search_index(self) -> int:
        """Make the index hold exactly the messages the mail database holds.

        Run at start-up: it repairs what a crash between the mail commit and the index
        commit left, and fills a new or rebuilt index. Returns how many were indexed.
        """
        if self.search is None:
            return 0
        search = self.search
        mailboxes = await self.db.read(
            lambda conn: [row[0] for row in conn.execute("SELECT id FROM mailboxes")]
        )
        added = 0
        for mailbox_id in mailboxes:
            rows = await self.db.read(partial(_blobs_by_uid, mailbox_id=mailbox_id))
            indexed = await search.indexed_uids(mailbox_id)
            extra = indexed - rows.keys()
            if extra:
                await search.remove(mailbox_id, extra)
            missing = sorted(rows.keys() - indexed)
            batch = _IndexBatch(search)
            for uid in missing:
                content = await trio.to_thread.run_sync(self.blobs.get, rows[uid])
                await batch.add(mailbox_id, uid, content)
            added += await batch.flush()
        return added

    async def usage(self, owner: str) -> int:
        """Return the bytes *owner*'s mailboxes hold."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT bytes FROM quota_usage WHERE owner = ?", (owner,)).fetchone()
            return int(row[0]) if row else 0

        # One primary-key lookup, asked for every RCPT: a thread hop would cost far more.
        return self.db.read_now(query)

    async def messages(self, owner: str, mailbox: str = "INBOX") -> list[StoredMessage]:
        """Return the messages of one mailbox in UID order."""
        return await self.db.read(lambda conn: _select_messages(conn, owner, mailbox))

    async def content(self, message: StoredMessage) -> bytes:
        """Return the decrypted bytes of *message* (its header block while it is pending)."""
        return await trio.to_thread.run_sync(self.blobs.get, message.blob_id)

    # --- bodies listed but not fetched yet (mailbox replication on a slow link) ------

    async def ensure_bodies(self, rows: Sequence[StoredMessage]) -> list[StoredMessage]:
        """Return *rows* with every pending body fetched, or raise `BodyUnavailable`.

        Asks the `body_fetcher` and waits at most `body_wait` seconds: never a hang. A
        row expunged meanwhile is left out of the result.
        """
        wanted = sorted({m.id for m in rows if m.body_pending})
        if not wanted:
            return list(rows)
        fetcher = self.body_fetcher
        if fetcher is None:
            raise BodyUnavailable("the message body is still on the central server")
        with trio.move_on_after(self.body_wait):
            await fetcher(wanted)
        fresh = await self.db.read(partial(_rows_by_id, ids=wanted))
        if any(row.body_pending for row in fresh.values()):
            raise BodyUnavailable("the message body is still on the central server")
        return [fresh[m.id] if m.body_pending else m for m in rows
                if not m.body_pending or m.id in fresh]  # fmt: skip

    async def read_for_display(self, message: StoredMessage) -> tuple[bytes, bool]:
        """``(content, body still pending)`` for a reader: the webmail's message page.

        A pending body is asked for (bounded wait); if it does not come, the header
        block is returned with True, so the page can say so instead of failing.
        """
        if message.body_pending:
            try:
                (message,) = await self.ensure_bodies([message])
            except (BodyUnavailable, ValueError):
                return await self.content(message), True
        return await self.content(message), False

    async def fill_body(self, mailbox_id: int, uid: int, content: bytes) -> bool:
        """Store the body of a pending message in one commit; True if it was filled.

        *content* must start with the header block the row holds (the same message);
        otherwise nothing changes. Every pending row sharing that header blob and size
        (the same message in another mailbox, or another local user's copy) is filled
        by the same commit. Filling twice is harmless: the second finds nothing pending.
        """
        row = await self.db.read(partial(_pending_row, mailbox_id=mailbox_id, uid=uid))
        if row is None:
            return False
        header_blob, size = row
        header = await trio.to_thread.run_sync(self.blobs.get, header_blob)
        if not content.startswith(header):
            log.warning("body of %d/%d does not match its listed header; not stored",
                        mailbox_id, uid)  # fmt: skip
            return False
        blob_id = await trio.to_thread.run_sync(self.blobs.put, content)
        content_hash = hashlib.sha256(content).hexdigest()

        def job(conn: sqlite3.Connection) -> tuple[list[tuple[int, int]], list[str]]:
            rows = conn.execute(
                "SELECT m.id, m.mailbox_id, m.uid, m.size, b.owner FROM messages m"
                " JOIN mailboxes b ON b.id = m.mailbox_id WHERE m.blob_id = ?"
                " AND m.pending_structure IS NOT NULL"
                " AND (m.size = ? OR (m.mailbox_id = ? AND m.uid = ?))",
                (header_blob, size, mailbox_id, uid),
            ).fetchall()
            if not rows:
                return [], []
            self.reference_blob(conn, blob_id, len(content), len(rows))
            for row_id, _, _, old_size, owner in rows:
                conn.execute(
                    "UPDATE messages SET blob_id = ?, content_hash = ?, size = ?,"
                    " pending_structure = NULL WHERE id = ?",
                    (blob_id, content_hash, len(content), row_id),
                )
                if old_size != len(content):  # a server whose RFC822.SIZE was wrong
                    conn.execute(
                        "UPDATE quota_usage SET bytes = bytes + ? WHERE owner = ?",
                        (len(content) - old_size, owner),
                    )
            return [(int(r[1]), int(r[2])) for r in rows], _unreference(
                conn, header_blob, len(rows)
            )

        filled, freed = await self.write_with_blob(job, blob_id, content)
        await self.release_blobs(freed)
        if filled:
            # Indexed only now: a pending message is never in the index (SEARCH reads
            # its header block directly), so a crash here leaves it for reconciliation.
            await self.index([(mb, u, content) for mb, u in filled])
            self.changes.changed(mb for mb, _ in filled)
        return bool(filled)

    async def pending_bodies(self, owner: str, limit: int) -> list[tuple[int, int, str, int, int]]:
        """``(message id, mailbox_id, mailbox name, uid, size)`` of *owner*'s pending
        bodies, newest first (by internal date): the order replication fetches them in."""

        def query(conn: sqlite3.Connection) -> list[tuple[int, int, str, int, int]]:
            rows = conn.execute(
                "SELECT m.id, m.mailbox_id, b.name, m.uid, m.size FROM messages m"
                " JOIN mailboxes b ON b.id = m.mailbox_id"
                " WHERE b.owner = ? AND m.pending_structure IS NOT NULL"
                " ORDER BY m.internal_date DESC, m.id DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
            return [(int(a), int(b), str(c), int(d), int(e)) for a, b, c, d, e in rows]

        return await self.db.read(query)

    async def pending_count(self, owner: str) -> int:
        """How many of *owner*'s messages wait for their body."""

        def query(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute(
                "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
                " WHERE b.owner = ? AND m.pending_structure IS NOT NULL",
                (owner,),
            ).fetchone()
            return int(count)

        return await self.db.read(query)

    async def locate(self, message_id: int) -> tuple[int, str, str, int, bool] | None:
        """``(mailbox_id, owner, mailbox name, uid, body pending)`` of one message row."""

        def query(conn: sqlite3.Connection) -> tuple[int, str, str, int, bool] | None:
            row = conn.execute(
                "SELECT m.mailbox_id, b.owner, b.name, m.uid, m.pending_structure IS NOT NULL"
                " FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE m.id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            return int(row[0]), str(row[1]), str(row[2]), int(row[3]), bool(row[4])

        return await self.db.read(query)

    async def outbound_length(self) -> int:
        """Return how many recipients wait in the outbound queue."""
        return await self.db.read(
            lambda conn: int(conn.execute("SELECT count(*) FROM outbound").fetchone()[0])
        )

    def remove_orphan_blobs(self, conn: sqlite3.Connection) -> int:
        """Delete blob files no committed row names; run at start-up.

        They are left by a crash between a blob's write and its row's commit, and by
        a stop while sessions still held expunged messages (`Reclamation`): either
        way no row names them, and no session survived the stop to read them.
        """
        known = {row[0] for row in conn.execute("SELECT id FROM blobs")}
        removed = 0
        for blob_id in list(self.blobs.iter_ids()):
            if blob_id not in known:
                self.blobs.delete(blob_id)
                removed += 1
        return removed + self.blobs.clean_temp()

    # --- read-only views of the outbound queue, for the admin console (appliance.admin)

    async def outbound_groups(self) -> list[tuple[int, str, int, int]]:
        """Return ``(urgency, sender, recipients waiting, oldest created_at)`` per group.

        One row per urgency level and envelope sender: few rows however long the queue,
        and enough for a caller to count only the senders it may see.
        """

        def query(conn: sqlite3.Connection) -> list[tuple[int, str, int, int]]:
            rows = conn.execute(
                "SELECT urgency, sender, count(*), min(created_at) FROM outbound"
                " GROUP BY urgency, sender"
            ).fetchall()
            return [(int(u), str(s), int(n), int(t)) for u, s, n, t in rows]

        return await self.db.read(query)

    async def outbound_entries(
        self, limit: int, sender_domains: Sequence[str] | None = None
    ) -> list[tuple[int, str, str, int, int, int, str | None]]:
        """Return up to *limit* queued recipients in the order they will leave.

        Rows are ``(id, recipient, sender, urgency, created_at, attempts, last_error)``,
        most urgent first and oldest first within a level (the ``outbound_order``
        index). With *sender_domains*, only rows whose envelope sender is at one of
        them (an empty sequence: none).
        """
        where, args = "", []
        if sender_domains is not None:
            if not sender_domains:
                return []
            # LIKE matches ASCII letters in any case, as domains are compared.
            where = " WHERE " + " OR ".join("sender LIKE ? ESCAPE '\\'" for _ in sender_domains)
            for domain in sender_domains:
                escaped = domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                args.append("%@" + escaped)

        def query(
            conn: sqlite3.Connection,
        ) -> list[tuple[int, str, str, int, int, int, str | None]]:
            # *where* holds only "?" placeholders; the domains travel as parameters.
            rows = conn.execute(
                "SELECT id, recipient, sender, urgency, created_at, attempts, last_error"  # noqa: S608
                " FROM outbound" + where + " ORDER BY urgency DESC, created_at, id LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [tuple(row) for row in rows]

        return await self.db.read(query)

    # --- the outbound relay (appliance.sync.relay): due rows, and settling them --------
    # Owned by the relay. A queue row is removed only in the writer transaction that
    # follows the relay's 250 for DATA, so a restart resends nothing already accepted.

    #: Columns of a queued recipient, in the order `outbound_due` returns them.
    OUTBOUND_COLUMNS = (
        "id", "queue_id", "blob_id", "sender", "recipient", "notify", "orcpt", "ret",
        "envid", "urgency", "created_at", "attempts", "last_error",
    )  # fmt: skip

    async def outbound_due(self, now: int, limit: int) -> list[tuple[Any, ...]]:
        """Return up to *limit* rows due by *now*, most urgent first, oldest first."""
        columns = ", ".join(self.OUTBOUND_COLUMNS)
        return await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {columns} FROM outbound WHERE next_attempt_at <= ?"  # noqa: S608
                " ORDER BY urgency DESC, created_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
        )

    async def outbound_expired(self, created_before: int, limit: int) -> list[tuple[Any, ...]]:
        """Return up to *limit* rows queued before *created_before* (due or not)."""
        columns = ", ".join(self.OUTBOUND_COLUMNS)
        return await self.db.read(
            lambda conn: conn.execute(
                f"SELECT {columns} FROM outbound WHERE created_at < ?"  # noqa: S608
                " ORDER BY created_at, id LIMIT ?",
                (created_before, limit),
            ).fetchall()
        )

    async def outbound_next_attempt(self) -> int | None:
        """Return the earliest next_attempt_at in the queue (None: the queue is empty)."""
        row = await self.db.read(
            lambda conn: conn.execute("SELECT min(next_attempt_at) FROM outbound").fetchone()
        )
        return None if row[0] is None else int(row[0])

    async def outbound_settle(
        self,
        *,
        done: Sequence[int] = (),
        deferred: Sequence[tuple[int, int, str]] = (),
        report: NewMessage | None = None,
        report_local: Sequence[LocalCopy] = (),
        report_outbound: Sequence[OutboundCopy] = (),
        report_content: bytes | None = None,
    ) -> None:
        """Settle queue rows in one transaction: fsynced when it returns.

        *done*: row ids delivered or given up, deleted (their blob references released);
        *deferred*: ``(id, next_attempt_at, error)``, one attempt more; *report*: a
        bounce whose blob is written, committed in the same transaction for the sender
        (*report_local* / *report_outbound*). Rows already gone are skipped, so settling
        twice has the effect of once. Raises `QuotaExceeded` (nothing written) if the
        sender's mailbox has no room for the report.
        """
        now = int(time.time())

        def job(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[int, int]]]:
            freed: list[str] = []
            for row_id in done:
                gone = conn.execute(
                    "DELETE FROM outbound WHERE id = ? RETURNING blob_id", (row_id,)
                ).fetchone()
                if gone is None:
                    continue
                (refs,) = conn.execute(
                    "UPDATE blobs SET refs = refs - 1 WHERE id = ? RETURNING refs", (gone[0],)
                ).fetchone()
                if refs == 0:
                    conn.execute("DELETE FROM blobs WHERE id = ?", (gone[0],))
                    freed.append(str(gone[0]))
            conn.executemany(
                "UPDATE outbound SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE id = ?",
                [(when, error[:500], row_id) for row_id, when, error in deferred],
            )
            placed: list[tuple[int, int]] = []
            if report is not None:
                copies = len(report_local) + len(report_outbound)
                self.reference_blob(conn, report.blob_id, report.size, copies)
                placed = [_insert_local(conn, report, copy, now) for copy in report_local]
                for out in report_outbound:
                    conn.execute(
                        "INSERT INTO outbound (queue_id, blob_id, sender, recipient, notify,"
                        " orcpt, ret, envid, classification, urgency, created_at,"
                        " next_attempt_at) VALUES (?, ?, ?, ?, 'NEVER', ?, NULL, NULL, ?, ?,"
                        " ?, ?)",
                        (report.queue_id, report.blob_id, report.sender, out.recipient,
                         out.orcpt, report.classification, report.urgency, now, now),
                    )  # fmt: skip
            return freed, placed

        if report is None:
            freed, placed = await self.db.write(job)
        else:
            freed, placed = await self.write_with_blob(job, report.blob_id, report_content)
        await self.release_blobs(freed)
        if placed:
            self.changes.changed(mailbox_id for mailbox_id, _ in placed)
            if report_content is not None:
                await self.index([(mailbox_id, uid, report_content) for mailbox_id, uid in placed])


def _rows_by_id(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, StoredMessage]:
    found: dict[int, StoredMessage] = {}
    for message_id in ids:
        row = conn.execute(f"{SELECT_MESSAGES} WHERE m.id = ?", (message_id,)).fetchone()
        if row is not None:
            found[message_id] = row_to_message(row)
    return found


def _pending_row(conn: sqlite3.Connection, mailbox_id: int, uid: int) -> tuple[str, int] | None:
    row = conn.execute(
        "SELECT blob_id, size FROM messages WHERE mailbox_id = ? AND uid = ?"
        " AND pending_structure IS NOT NULL",
        (mailbox_id, uid),
    ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def _unreference(conn: sqlite3.Connection, blob_id: str, count: int) -> list[str]:
    """Drop *count* references to a blob; return it in a list if that was the last."""
    (refs,) = conn.execute(
        "UPDATE blobs SET refs = refs - ? WHERE id = ? RETURNING refs", (count, blob_id)
    ).fetchone()
    if refs <= 0:
        conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
        return [blob_id]
    return []


def _blobs_of(
    conn: sqlite3.Connection, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    found: dict[tuple[int, int], str] = {}
    for mailbox_id, uid in keys:
        row = conn.execute(
            "SELECT blob_id FROM messages WHERE mailbox_id = ? AND uid = ?"
            " AND pending_structure IS NULL",  # indexed when the body comes
            (mailbox_id, uid),
        ).fetchone()
        if row is not None:
            found[(mailbox_id, uid)] = str(row[0])
    return found


def _blobs_by_uid(conn: sqlite3.Connection, mailbox_id: int) -> dict[int, str]:
    rows = conn.execute(
        "SELECT uid, blob_id FROM messages WHERE mailbox_id = ? AND pending_structure IS NULL",
        (mailbox_id,),
    )
    return {int(uid): str(blob_id) for uid, blob_id in rows}


def _ensure_mailboxes(conn: sqlite3.Connection, owner: str) -> None:
    if conn.execute(
        "SELECT 1 FROM mailboxes WHERE owner = ? AND name = 'INBOX'", (owner,)
    ).fetchone():
        return
    for name, use in DEFAULT_MAILBOXES:
        conn.execute(
            "INSERT OR IGNORE INTO mailboxes (owner, name, special_use, uidvalidity)"
            " VALUES (?, ?, ?, ?)",
            (owner, name, use, next_uidvalidity(conn)),
        )
        # The standard folders are subscribed, so clients that show only subscribed
        # folders show them.
        conn.execute(
            "INSERT OR IGNORE INTO subscriptions (owner, name) VALUES (?, ?)", (owner, name)
        )
    conn.execute("INSERT OR IGNORE INTO quota_usage (owner) VALUES (?)", (owner,))


def next_uidvalidity(conn: sqlite3.Connection) -> int:
    """Return a UIDVALIDITY no mailbox of this box ever had (RFC 3501 §2.3.1.1).

    A mailbox deleted and recreated under the same name must get a new one, even within
    the same second; the creation time keeps values growing across factory resets.
    """
    (last,) = conn.execute("SELECT value FROM meta WHERE key = 'last_uidvalidity'").fetchone()
    value = max(int(time.time()), int(last) + 1)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'last_uidvalidity'", (value,))
    return value


def _remember_copies(
    conn: sqlite3.Connection, resend_key: Callable[[str], str],
    local: Sequence[LocalCopy], outbound: Sequence[OutboundCopy], now: int,
) -> list[str]:  # fmt: skip
    """Record each copy as accepted; return the recipients it was already recorded for."""
    # Forget old copies a few at a time, so no single delivery pays for a large sweep.
    conn.execute(
        "DELETE FROM accepted_copies WHERE digest IN (SELECT digest FROM accepted_copies"
        " WHERE accepted_at < ? ORDER BY accepted_at LIMIT 64)",
        (now - RESEND_WINDOW_SECONDS,),
    )
    resent: list[str] = []
    recipients = [copy.owner for copy in local] + [copy.recipient for copy in outbound]
    for recipient in dict.fromkeys(recipients):
        # A row past the window that the sweep has not reached yet counts as new.
        inserted = conn.execute(
            "INSERT INTO accepted_copies (digest, accepted_at) VALUES (?, ?)"
            " ON CONFLICT (digest) DO UPDATE SET accepted_at = excluded.accepted_at"
            " WHERE accepted_at < ? RETURNING 1",
            (resend_key(recipient), now, now - RESEND_WINDOW_SECONDS),
        ).fetchone()
        if inserted is None:
            resent.append(recipient)
    return resent


def _insert_local(
    conn: sqlite3.Connection, message: NewMessage, copy: LocalCopy, now: int
) -> tuple[int, int]:
    _ensure_mailboxes(conn, copy.owner)
    used = conn.execute("SELECT bytes FROM quota_usage WHERE owner = ?", (copy.owner,)).fetchone()[
        0
    ]
    if used + message.size > copy.quota_bytes:
        raise QuotaExceeded(copy.owner)
    # UID and MODSEQ are taken from the mailbox row inside the write transaction, so
    # they are strictly increasing and never reused (RFC 3501 §2.3.1.1, RFC 7162 §3.1.1).
    mailbox_id, uid, modseq = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
        " WHERE owner = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
        (copy.owner, copy.mailbox),
    ).fetchone()
    conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_id,"
        " message_id_digest, content_hash, classification, urgency)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            mailbox_id, uid, modseq, message.internal_date or now, message.size,
            message.blob_id, message.message_id_digest, message.content_hash,
            message.classification, message.urgency,
        ),
    )  # fmt: skip
    conn.execute(
        "UPDATE quota_usage SET bytes = bytes + ?, messages = messages + 1 WHERE owner = ?",
        (message.size, copy.owner),
    )
    return int(mailbox_id), int(uid)


#: Every StoredMessage column, in field order; callers add WHERE and ORDER BY.
class _IndexBatch:
    """Messages for the search index, handed on by the transaction's count or bytes."""

    #: Messages per index transaction (as the indexer's batches).
    COUNT = 200

    def __init__(self, search: SearchIndex) -> None:
        self.search = search
        self.items: list[tuple[int, int, bytes]] = []
        self.held = 0
        self.added = 0

    async def add(self, mailbox_id: int, uid: int, content: bytes) -> None:
        self.items.append((mailbox_id, uid, content))
        self.held += len(content)
        if len(self.items) >= self.COUNT or self.held >= INDEX_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> int:
        """Index what is held in one transaction; return how many since the start."""
        if self.items:
            items, self.items, self.held = self.items, [], 0
            await self.search.add_many(items)
            self.added += len(items)
        return self.added


SELECT_MESSAGES = (
    "SELECT m.id, b.owner, b.name, m.uid, b.uidvalidity, m.modseq, m.flags,"
    " m.internal_date, m.size, m.blob_id, m.message_id_digest, m.content_hash,"
    " m.classification, m.urgency, m.pending_structure"
    " FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
)


def _select_messages(conn: sqlite3.Connection, owner: str, mailbox: str) -> list[StoredMessage]:
    rows = conn.execute(
        f"{SELECT_MESSAGES} WHERE b.owner = ? AND b.name = ? ORDER BY m.uid",
        (owner, mailbox),
    )
    return [row_to_message(row) for row in rows]


def row_to_message(row: tuple[Any, ...]) -> StoredMessage:
    """Build a StoredMessage from a row of `SELECT_MESSAGES` (flags space-separated)."""
    values = list(row)
    values[6] = tuple(values[6].split())
    return StoredMessage(*values)
