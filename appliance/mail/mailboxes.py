"""What IMAP does to mailboxes, as transactions on the mail database.

Each operation here is one `Database.write` job, so each is atomic and durable before
it returns: a MOVE is a copy and an expunge in one transaction (RFC 6851 §3.1), so a
crash can leave the message in the source or in the destination but never in both and
never in neither. The rules every job keeps:

- UIDs come from the mailbox's ``uidnext`` and are never reused (RFC 3501 §2.3.1.1);
  a mailbox recreated under an old name gets a new UIDVALIDITY.
- Every change takes the next MODSEQ of its mailbox, so MODSEQ strictly increases and
  CONDSTORE clients can ask "what changed since N" (RFC 7162 §3.1). Expunged UIDs are
  kept with their MODSEQ for QRESYNC's VANISHED (RFC 7162 §3.2.5.2).
- Blob reference counts follow the rows; a blob whose count reaches zero is deleted
  from disk after the commit that dropped it, or, while an IMAP session not yet told of
  the removal can still read the message, once it cannot (`Mailstore.reclamation`).
- Quota usage follows the rows; a copy or append that would pass the owner's quota is
  refused with `QuotaExceeded` and changes nothing.

Sessions learn of changes through `Mailstore.changes` (see changes.py).

What this is not: the IMAP syntax (mail.imap) or who may open whose mailbox (the
session decides that).
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import trio

from appliance.mail import headers
from appliance.mail.mailstore import (
    SELECT_MESSAGES,
    BlobVanished,
    Mailstore,
    QuotaExceeded,
    StoredMessage,
    next_uidvalidity,
    row_to_message,
)
from appliance.mail.reclamation import Reclamation
from appliance.mail.search_index import SearchIndex

T = TypeVar("T")

#: Hierarchy separator of mailbox names (advertised by LIST).
SEPARATOR = "/"

#: RFC 3501 §2.3.2 system flags, by their lower-case form, for canonical spelling.
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


class MailboxError(Exception):
    """An operation that cannot be done; `code` is the RFC 5530 response code."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class FlagMode(enum.Enum):
    #: STORE FLAGS: replace (RFC 3501 §6.4.6)
    REPLACE = "replace"
    #: STORE +FLAGS
    ADD = "add"
    #: STORE -FLAGS
    REMOVE = "remove"


@dataclass(frozen=True)
class MailboxInfo:
    id: int
    owner: str
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    messages: int
    unseen: int
    size: int
    #: Messages no session has yet seen as \Recent (RFC 3501 §2.3.2; STATUS RECENT).
    recent: int = 0
    #: The lowest UID no session has claimed as \Recent yet.
    first_recent_uid: int = 0


@dataclass(frozen=True)
class MailboxHead:
    """A mailbox as the webmail's folder list shows it: no per-message aggregates
    except the message count, which SQLite answers from the (mailbox_id, uid) index."""

    id: int
    name: str
    special_use: str | None
    uidvalidity: int
    highestmodseq: int
    messages: int


@dataclass(frozen=True)
class MessageState:
    """The part of a message a session tracks: its UID, flags and MODSEQ."""

    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True)
class MailboxMark:
    """Where a mailbox stands, without any per-message aggregate (one indexed row).

    What SELECT and a session's check for changes need; `MailboxInfo` adds the counts
    STATUS needs, which cost a pass over the mailbox's messages.
    """

    id: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    #: The lowest UID no session has claimed as \Recent yet (RFC 3501 §2.3.2).
    first_recent_uid: int


@dataclass(frozen=True)
class Changes:
    """What changed in a mailbox after a MODSEQ, read in one snapshot with its mark."""

    #: The mailbox as of the snapshot; None if it no longer exists.
    mark: MailboxMark | None
    #: Messages added or changed after the MODSEQ, in UID order (RFC 7162 §3.1).
    changed: list[MessageState]
    #: UIDs expunged after it, ascending (RFC 7162 §3.2.5.2).
    vanished: list[int]


@dataclass(frozen=True)
class StoreResult:
    #: Messages whose flags changed, with their new state.
    changed: tuple[MessageState, ...]
    #: UIDs refused by UNCHANGEDSINCE (RFC 7162 §3.1.3: the MODIFIED response code).
    modified: tuple[int, ...]


@dataclass(frozen=True)
class CopyResult:
    """For UIDPLUS COPYUID (RFC 4315 §3): source UIDs and the UIDs they got."""

    uidvalidity: int
    source_uids: tuple[int, ...]
    destination_uids: tuple[int, ...]
    #: For MOVE: what left the source mailbox.
    expunged: tuple[int, ...] = ()


def canonical_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Spell system flags canonically, drop duplicates and \\Recent, keep order."""
    seen: dict[str, str] = {}
    for flag in flags:
        name = SYSTEM_FLAGS.get(flag.lower(), flag)
        if name.lower() != "\\recent" and name.lower() not in seen:
            seen[name.lower()] = name
    return tuple(seen.values())


def normalise_name(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1); other names are kept as given."""
    name = name.strip(SEPARATOR)
    head, sep, rest = name.partition(SEPARATOR)
    return ("INBOX" + sep + rest) if head.upper() == "INBOX" else name


class Mailboxes:
    """Mailbox-level operations for one box; see the module docstring for the rules."""

    def __init__(self, store: Mailstore) -> None:
        self.store = store
        self.db = store.db

    # -- reading ---------------------------------------------------------------------

    async def of(self, owner: str) -> list[MailboxInfo]:
        """Every mailbox of *owner*, INBOX first (what LIST and STATUS show)."""
        return await self.db.read(lambda conn: _infos(conn, owner, None))

    async def get(self, owner: str, name: str) -> MailboxInfo:
        name = normalise_name(name)
        found = await self.db.read(lambda conn: _infos(conn, owner, name))
        if not found:
            raise MailboxError("NONEXISTENT", f"no mailbox {name!r}")
        return found[0]

    def mark_now(self, owner: str, name: str) -> MailboxMark:
        """Where *owner*'s mailbox *name* stands, read at once (one indexed row)."""
        name = normalise_name(name)
        found = self.db.read_now(
            lambda conn: conn.execute(
                f"SELECT {_MARK} FROM mailboxes WHERE owner = ? AND name = ?",  # noqa: S608 - our own columns
                (owner, name),
            ).fetchone()
        )
        if found is None:
            raise MailboxError("NONEXISTENT", f"no mailbox {name!r}")
        return MailboxMark(*found)

    def names_now(self, owner: str) -> dict[str, str | None]:
        """*owner*'s mailbox names and special uses, read at once (no per-message work).

        What LIST needs when it returns no STATUS: a few rows of the mailboxes table by
        its owner index, read on the calling thread (`Database.read_now`), where `of`
        sums over every message of every mailbox in a worker thread.
        """
        rows = self.db.read_now(
            lambda conn: conn.execute(
                "SELECT name, special_use FROM mailboxes WHERE owner = ?", (owner,)
            ).fetchall()
        )
        return {str(name): use for name, use in rows}

    def subscriptions_now(self, owner: str) -> set[str]:
        """`subscriptions`, read at once: a handful of rows by the owner index."""
        rows = self.db.read_now(
            lambda conn: conn.execute(
                "SELECT name FROM subscriptions WHERE owner = ?", (owner,)
            ).fetchall()
        )
        return {str(name) for (name,) in rows}

    def mark_of_now(self, mailbox_id: int) -> MailboxMark | None:
        """Where mailbox *mailbox_id* stands, read at once; None if it is gone."""
        return self.db.read_now(lambda conn: _mark(conn, mailbox_id))

    async def changes(self, mailbox_id: int, modseq: int) -> Changes:
        """What changed after *modseq*, with the mark, in one snapshot (RFC 7162)."""

        def query(conn: sqlite3.Connection) -> Changes:
            conn.execute("BEGIN")  # the mark and the changes must see the same commit
            mark = _mark(conn, mailbox_id)
            if mark is None:
                return Changes(None, [], [])
            return Changes(
                mark, _states(conn, mailbox_id, modseq), _vanished(conn, mailbox_id, modseq)
            )

        return await self.db.read(query)

    async def snapshot(
        self, mailbox_id: int, build: Callable[[Iterable[tuple[int, str, int]]], T]
    ) -> tuple[MailboxMark | None, T]:
        """`load_states` and the mailbox's mark, in one snapshot."""

        def query(conn: sqlite3.Connection) -> tuple[MailboxMark | None, T]:
            conn.execute("BEGIN")
            mark = _mark(conn, mailbox_id)
            return mark, build(
                conn.execute(
                    "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid",
                    (mailbox_id,),
                )
            )

        return await self.db.read(query)

    async def states(self, mailbox_id: int) -> list[MessageState]:
        """Every message's UID, flags and MODSEQ in UID order (what SELECT shows)."""
        return await self.db.read(lambda conn: _states(conn, mailbox_id, 0))

    async def load_states(
        self, mailbox_id: int, build: Callable[[Iterable[tuple[int, str, int]]], T]
    ) -> T:
        """Feed ``(uid, flags text, modseq)`` rows in UID order to *build*, in the reader.

        For 100k-message mailboxes: the rows stream from SQLite into whatever compact
        form *build* makes, with no object per message on the way.
        """

        def query(conn: sqlite3.Connection) -> T:
            return build(
                conn.execute(
                    "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? ORDER BY uid",
                    (mailbox_id,),
                )
            )

        return await self.db.read(query)

    async def messages(self, mailbox_id: int, uids: Collection[int]) -> list[StoredMessage]:
        """The stored rows of *uids* (those that still exist), in UID order."""
        return await self.db.read(lambda conn: _messages(conn, mailbox_id, uids))

    def messages_now(self, mailbox_id: int, uids: Collection[int]) -> list[StoredMessage]:
        """`messages` read at once, on the calling thread: for a handful of UIDs only."""
        return self.db.read_now(lambda conn: _messages(conn, mailbox_id, uids))

    async def messages_then(
        self, mailbox_id: int, uids: Collection[int], then: Callable[[list[StoredMessage]], T]
    ) -> tuple[list[StoredMessage], T]:
        """The rows of *uids* and what *then* makes of them, in one worker call.

        For a FETCH batch: the rows, then their decrypted bodies, for one thread hop
        where two would double the wait a client pipelining one FETCH per message sees.
        """

        def query(conn: sqlite3.Connection) -> tuple[list[StoredMessage], T]:
            rows = _messages(conn, mailbox_id, uids)
            return rows, then(rows)

        return await self.db.read(query)

    def any_pending_now(self, mailbox_id: int) -> bool:
        """Whether any body of the mailbox is still at the centre, read at once.

        One probe of a partial index that holds only such rows: no thread hop before
        every FETCH of a mailbox that has none.
        """
        return bool(
            self.db.read_now(
                lambda conn: conn.execute(
                    "SELECT 1 FROM messages WHERE mailbox_id = ? AND pending_structure IS NOT NULL"
                    " LIMIT 1",
                    (mailbox_id,),
                ).fetchone()
            )
        )

    async def pending_uids(self, mailbox_id: int) -> set[int]:
        """UIDs whose body is still at the centre (on a partial index: cheap when none)."""

        def query(conn: sqlite3.Connection) -> set[int]:
            rows = conn.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND pending_structure IS NOT NULL",
                (mailbox_id,),
            )
            return {int(uid) for (uid,) in rows}

        return await self.db.read(query)

    async def changes_since(
        self, mailbox_id: int, modseq: int
    ) -> tuple[list[MessageState], list[int]]:
        """Messages changed after *modseq*, and UIDs expunged after it (RFC 7162)."""

        def query(conn: sqlite3.Connection) -> tuple[list[MessageState], list[int]]:
            vanished = _vanished(conn, mailbox_id, modseq)
            return _states(conn, mailbox_id, modseq), vanished

        return await self.db.read(query)

    # -- mailbox management ----------------------------------------------------------

    async def create(
        self, owner: str, name: str, special_use: str | None = None, *, subscribe: bool = False
    ) -> None:
        """Make a mailbox; IMAP CREATE does not subscribe to it (RFC 3501 §6.3.3).

        *subscribe*: also subscribe, for the folders the box makes on the user's behalf
        (mirrored from the centre, or a standard folder made again).
        """
        name = normalise_name(name)
        if not name or any(not part for part in name.split(SEPARATOR)):
            raise MailboxError("CANNOT", "mailbox names must not be empty")

        def job(conn: sqlite3.Connection) -> None:
            if _mailbox_id(conn, owner, name) is not None:
                raise MailboxError("ALREADYEXISTS", f"mailbox {name!r} already exists")
            conn.execute(
                "INSERT INTO mailboxes (owner, name, special_use, uidvalidity) VALUES (?, ?, ?, ?)",
                (owner, name, special_use, next_uidvalidity(conn)),
            )
            if subscribe:
                conn.execute(
                    "INSERT OR IGNORE INTO subscriptions (owner, name) VALUES (?, ?)",
                    (owner, name),
                )

        await self.db.write(job)

    async def delete(self, owner: str, name: str) -> None:
        name = normalise_name(name)
        if name == "INBOX":
            raise MailboxError("CANNOT", "INBOX cannot be deleted")

        def job(conn: sqlite3.Connection) -> tuple[int, Removal]:
            mailbox_id = _existing(conn, owner, name)
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE owner = ? AND name LIKE ? ESCAPE '\\' LIMIT 1",
                (owner, _like_prefix(name + SEPARATOR)),
            ).fetchone():
                raise MailboxError("HASCHILDREN", f"{name!r} has child mailboxes")
            removal = _remove(conn, mailbox_id, owner, _all_uids(conn, mailbox_id), record=False,
                              reclamation=self.store.reclamation)  # fmt: skip
            conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (mailbox_id,))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            return mailbox_id, removal

        mailbox_id, removal = await self.db.write(job)
        self._retire(mailbox_id, removal)
        await self.store.update_index(lambda search: search.remove_mailbox(mailbox_id))
        await self._after(mailbox_id, removal.freed)

    async def rename(self, owner: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if not new or new == "INBOX":
            raise MailboxError("CANNOT", f"cannot rename to {new!r}")

        def job(conn: sqlite3.Connection) -> tuple[int, CopyResult | None, int, Removal | None]:
            source = _existing(conn, owner, old)
            if _mailbox_id(conn, owner, new) is not None:
                raise MailboxError("ALREADYEXISTS", f"mailbox {new!r} already exists")
            if old == "INBOX":
                # RFC 3501 §6.3.5: renaming INBOX moves its messages to a new mailbox
                # and leaves INBOX empty.
                target = conn.execute(
                    "INSERT INTO mailboxes (owner, name, uidvalidity) VALUES (?, ?, ?)"
                    " RETURNING id",
                    (owner, new, next_uidvalidity(conn)),
                ).fetchone()[0]
                uids = _all_uids(conn, source)
                pairs = _copy(conn, source, target, owner, uids, check_quota=False)
                removal = _remove(conn, source, owner, uids, record=True, uncharge=False,
                                  reclamation=self.store.reclamation)  # fmt: skip
                moved = CopyResult(0, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
                return int(source), moved, int(target), removal
            # A renamed mailbox keeps its UIDVALIDITY only if clients cannot confuse it
            # with the old name: they cannot, the old name stops existing. Children move.
            for child_id, child in conn.execute(
                "SELECT id, name FROM mailboxes WHERE owner = ? AND (name = ? OR name LIKE ?"
                " ESCAPE '\\')",
                (owner, old, _like_prefix(old + SEPARATOR)),
            ).fetchall():
                conn.execute(
                    "UPDATE mailboxes SET name = ? WHERE id = ?",
                    (new + child[len(old) :], child_id),
                )
            # Subscriptions follow the folders they name, so a client that shows only
            # subscribed folders still shows the renamed ones.
            conn.execute(
                "UPDATE OR REPLACE subscriptions SET name = ? || substr(name, ?)"
                " WHERE owner = ? AND (name = ? OR name LIKE ? ESCAPE '\\')",
                (new, len(old) + 1, owner, old, _like_prefix(old + SEPARATOR)),
            )
            return int(source), None, 0, None

        source, moved, target, removal = await self.db.write(job)
        if removal is not None:
            self._retire(source, removal)
        self.store.changes.changed([source])
        if moved is not None:
            await self._index_moves(source, target, moved, move=True)

    async def subscribe(self, owner: str, name: str, subscribed: bool) -> None:
        """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 §6.3.6-7).

        Only an existing mailbox can be subscribed to; a subscription outlives its
        mailbox (DELETE keeps it, §6.3.9), so UNSUBSCRIBE works on any subscribed name.
        """
        name = normalise_name(name)

        def job(conn: sqlite3.Connection) -> None:
            if subscribed:
                _existing(conn, owner, name)
                conn.execute(
                    "INSERT OR IGNORE INTO subscriptions (owner, name) VALUES (?, ?)",
                    (owner, name),
                )
                return
            gone = conn.execute(
                "DELETE FROM subscriptions WHERE owner = ? AND name = ? RETURNING name",
                (owner, name),
            ).fetchone()
            if gone is None:
                raise MailboxError("NONEXISTENT", f"not subscribed to {name!r}")

        await self.db.write(job)

    async def subscriptions(self, owner: str) -> set[str]:
        """Every name *owner* is subscribed to, whether or not it exists now."""

        def query(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute("SELECT name FROM subscriptions WHERE owner = ?", (owner,))
            return {str(name) for (name,) in rows}

        return await self.db.read(query)

    async def claim_recent(self, mailbox_id: int) -> tuple[int, int]:
        """Claim the messages no session has seen yet as \\Recent; return their UID range.

        RFC 3501 §2.3.2: a message is recent in exactly one session. The caller owns
        UIDs first <= uid < last; every later claim starts at *last*.
        """

        def job(conn: sqlite3.Connection) -> tuple[int, int]:
            first, last = conn.execute(
                "SELECT first_recent_uid, uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if last > first:
                conn.execute(
                    "UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?", (last, mailbox_id)
                )
            return int(first), int(last)

        return await self.db.write(job)

    async def first_recent_uid(self, mailbox_id: int) -> int:
        """The lowest UID not yet claimed as \\Recent (for a read-only EXAMINE)."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self.db.read(query)

    # -- messages --------------------------------------------------------------------

    async def append(
        self,
        owner: str,
        name: str,
        content: bytes,
        *,
        quota_bytes: int,
        flags: Sequence[str] = (),
        internal_date: int | None = None,
    ) -> tuple[int, int]:
        """Store *content* in a mailbox (IMAP APPEND); return (UIDVALIDITY, UID).

        Encrypted and single-instance like delivered mail (the same blob store), with
        the same classification and urgency read from its header (list badges, sync
        order), so Sent and Drafts copies carry them too.
        """
        name = normalise_name(name)
        blob_id = await trio.to_thread.run_sync(self.store.blobs.put, content)
        content_hash = hashlib.sha256(content).hexdigest()
        classification, urgency = headers.levels(headers.parse_headers(content))
        flag_text = " ".join(canonical_flags(flags))
        now = int(time.time())

        def job(conn: sqlite3.Connection) -> tuple[int, int, int]:
            mailbox_id = _existing(conn, owner, name)
            _charge(conn, owner, len(content), quota_bytes)
            self.store.reference_blob(conn, blob_id, len(content), 1)
            uid, modseq = _next_uid(conn, mailbox_id)
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size,"
                " blob_id, content_hash, classification, urgency)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, modseq, flag_text, internal_date or now, len(content),
                 blob_id, content_hash, classification, urgency),
            )  # fmt: skip
            uidvalidity = conn.execute(
                "SELECT uidvalidity FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()[0]
            return mailbox_id, int(uidvalidity), uid

        mailbox_id, uidvalidity, uid = await self.store.write_with_blob(job, blob_id, content)
        self.store.changes.changed([mailbox_id])
        await self.store.index([(mailbox_id, uid, content)])
        return uidvalidity, uid

    async def append_many(
        self,
        owner: str,
        name: str,
        messages: Sequence[tuple[bytes, Sequence[str], int | None]],
        *,
        quota_bytes: int,
    ) -> tuple[int, list[int]]:
        """Store several ``(content, flags, internal date)`` in one mailbox at once, or
        none of them (IMAP MULTIAPPEND, RFC 3502 §6.3.11); return (UIDVALIDITY, UIDs).

        The blobs are written and fsynced first (one worker call for all), then one
        transaction inserts every row and charges the quota for the total: a crash
        or a refusal (quota, missing mailbox) leaves no row, only blob files that the
        start-up sweep removes.
        """
        name = normalise_name(name)
        blobs = self.store.blobs

        def put_all() -> list[str]:
            return [blobs.put(content) for content, _, _ in messages]

        blob_ids = await trio.to_thread.run_sync(put_all)
        now = int(time.time())
        prepared = []
        for (content, flags, internal_date), blob_id in zip(messages, blob_ids, strict=True):
            classification, urgency = headers.levels(headers.parse_headers(content))
            prepared.append((
                blob_id, len(content), hashlib.sha256(content).hexdigest(),
                " ".join(canonical_flags(flags)), internal_date or now, classification, urgency,
            ))  # fmt: skip

        def job(conn: sqlite3.Connection) -> tuple[int, int, list[int]]:
            mailbox_id = _existing(conn, owner, name)
            total = sum(size for _, size, *_ in prepared)
            _charge(conn, owner, total, quota_bytes, len(prepared))
            uids = []
            for blob_id, size, content_hash, flag_text, when, classification, urgency in prepared:
                self.store.reference_blob(conn, blob_id, size, 1)
                uid, modseq = _next_uid(conn, mailbox_id)
                conn.execute(
                    "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size,"
                    " blob_id, content_hash, classification, urgency)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (mailbox_id, uid, modseq, flag_text, when, size, blob_id, content_hash,
                     classification, urgency),
                )  # fmt: skip
                uids.append(uid)
            uidvalidity = conn.execute(
                "SELECT uidvalidity FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()[0]
            return mailbox_id, int(uidvalidity), uids

        contents = dict(zip(blob_ids, (content for content, _, _ in messages), strict=True))
        for _ in range(3):
            try:
                mailbox_id, uidvalidity, uids = await self.db.write(job)
                break
            except BlobVanished as exc:
                # A concurrent expunge freed a shared blob between put and commit
                # (see `Mailstore.reference_blob`): write it again and retry.
                await trio.to_thread.run_sync(blobs.put, contents[exc.args[0]])
        else:
            mailbox_id, uidvalidity, uids = await self.db.write(job)
        self.store.changes.changed([mailbox_id])
        placed = zip(uids, (content for content, _, _ in messages), strict=True)
        await self.store.index([(mailbox_id, uid, content) for uid, content in placed])
        return uidvalidity, uids

    async def append_pending(
        self,
        owner: str,
        name: str,
        header: bytes,
        size: int,
        structure: str,
        *,
        quota_bytes: int,
        flags: Sequence[str] = (),
        internal_date: int | None = None,
    ) -> tuple[int, int]:
        """Store a message listed by the centre whose body comes later; return
        (UIDVALIDITY, UID).

        *header* is its header block (through the empty line), *size* its RFC822.SIZE
        and *structure* its BODYSTRUCTURE (`mime.stored_structure`). The quota is
        charged the full size now, so the body, when it comes, always fits. The row is
        not search-indexed until the body is stored (`Mailstore.fill_body`).
        """
        name = normalise_name(name)
        blob_id = await trio.to_thread.run_sync(self.store.blobs.put, header)
        fields = headers.parse_headers(header)
        message_id = headers.message_id(fields)
        digest = None if message_id is None else self.store.blobs.digest(message_id.encode())
        classification, urgency = headers.levels(fields)
        flag_text = " ".join(canonical_flags(flags))
        now = int(time.time())

        def job(conn: sqlite3.Connection) -> tuple[int, int, int]:
            mailbox_id = _existing(conn, owner, name)
            _charge(conn, owner, size, quota_bytes)
            self.store.reference_blob(conn, blob_id, len(header), 1)
            uid, modseq = _next_uid(conn, mailbox_id)
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size,"
                " blob_id, message_id_digest, content_hash, classification, urgency,"
                " pending_structure) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?)",
                (mailbox_id, uid, modseq, flag_text, internal_date or now, size, blob_id,
                 digest, classification, urgency, structure),
            )  # fmt: skip
            uidvalidity = conn.execute(
                "SELECT uidvalidity FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()[0]
            return mailbox_id, int(uidvalidity), uid

        mailbox_id, uidvalidity, uid = await self.store.write_with_blob(job, blob_id, header)
        self.store.changes.changed([mailbox_id])
        return uidvalidity, uid

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Collection[int],
        mode: FlagMode,
        flags: Sequence[str],
        unchanged_since: int | None = None,
    ) -> StoreResult:
        """Change flags (IMAP STORE); one new MODSEQ for everything this call changes."""
        wanted = canonical_flags(flags)

        def job(conn: sqlite3.Connection) -> StoreResult:
            rows = _rows(conn, mailbox_id, uids, "uid, flags, modseq")
            changed: list[tuple[int, tuple[str, ...]]] = []
            modified: list[int] = []
            for uid, text, modseq in rows:
                if unchanged_since is not None and modseq > unchanged_since:
                    modified.append(uid)  # RFC 7162 §3.1.3
                    continue
                current = tuple(text.split())
                new = _apply(current, mode, wanted)
                if {f.lower() for f in new} != {f.lower() for f in current}:
                    changed.append((uid, new))
            if not changed:
                return StoreResult((), tuple(modified))
            modseq = _bump(conn, mailbox_id)
            conn.executemany(
                "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                [(" ".join(new), modseq, mailbox_id, uid) for uid, new in changed],
            )
            return StoreResult(
                tuple(MessageState(uid, new, modseq) for uid, new in changed), tuple(modified)
            )

        result = await self.db.write(job)
        if result.changed:
            self.store.changes.changed([mailbox_id])
        return result

    async def copy(
        self, mailbox_id: int, uids: Collection[int], owner: str, destination: str,
        *, quota_bytes: int, move: bool = False,
    ) -> CopyResult:  # fmt: skip
        """COPY (RFC 3501 §6.4.7) or MOVE (RFC 6851) to another mailbox of *owner*."""
        destination = normalise_name(destination)

        def job(conn: sqlite3.Connection) -> tuple[CopyResult, int, Removal | None]:
            # The destination may be the source itself: RFC 3501 §6.4.7 and RFC 6851 do
            # not forbid it and clients use it (a MOVE there renumbers the messages:
            # new UIDs, the old ones expunged, as `doveadm sync` through imapc expects).
            target = _existing(conn, owner, destination)
            rows = _rows(conn, mailbox_id, uids, "uid, pending_structure IS NOT NULL")
            if any(pending for _, pending in rows):
                # The copy would have to be uploaded, and its body is not here: the
                # caller fetches pending bodies first (`Mailstore.ensure_bodies`).
                raise MailboxError("UNAVAILABLE", "a message body is still on the central server")
            present = [uid for uid, _ in rows]
            pairs = _copy(conn, mailbox_id, target, owner, present, check_quota=not move,
                          quota_bytes=quota_bytes)  # fmt: skip
            uidvalidity = conn.execute(
                "SELECT uidvalidity FROM mailboxes WHERE id = ?", (target,)
            ).fetchone()[0]
            removal = None
            if move:
                # Same owner on both sides: usage does not change, and every blob keeps
                # the reference the copy just added, so nothing is freed.
                removal = _remove(conn, mailbox_id, owner, present, record=True, uncharge=False,
                                  reclamation=self.store.reclamation)  # fmt: skip
            result = CopyResult(
                int(uidvalidity),
                tuple(src for src, _, _ in pairs),
                tuple(dst for _, dst, _ in pairs),
                tuple(present) if move else (),
            )
            return result, int(target), removal

        result, target, removal = await self.db.write(job)
        if removal is not None:
            self._retire(mailbox_id, removal)
        self.store.changes.changed([target, mailbox_id] if move else [target])
        await self._index_moves(mailbox_id, target, result, move=move)
        return result

    async def _index_moves(
        self, source: int, target: int, result: CopyResult, *, move: bool
    ) -> None:
        # The index entry follows the message without re-reading it (one stored text).
        async def apply(search: SearchIndex) -> None:
            for src, dst in zip(result.source_uids, result.destination_uids, strict=True):
                await search.copy(source, src, target, dst)
            if move:
                await search.remove(source, result.source_uids)

        await self.store.update_index(apply)

    async def expunge(
        self, mailbox_id: int, owner: str, uids: Collection[int] | None = None
    ) -> list[int]:
        """Remove messages flagged \\Deleted (all, or those among *uids*: UID EXPUNGE)."""

        def job(conn: sqlite3.Connection) -> tuple[list[int], Removal]:
            scope = _all_uids(conn, mailbox_id) if uids is None else uids
            candidates = _rows(conn, mailbox_id, scope, "uid, flags")
            doomed = sorted(uid for uid, text in candidates if "\\deleted" in text.lower().split())
            return doomed, _remove(conn, mailbox_id, owner, doomed, record=True,
                                   reclamation=self.store.reclamation)  # fmt: skip

        doomed, removal = await self.db.write(job)
        self._retire(mailbox_id, removal)
        if doomed:
            self.store.changes.changed([mailbox_id])
            await self.store.update_index(lambda search: search.remove(mailbox_id, doomed))
        await self._delete_blobs(removal.freed)
        return doomed

    def _retire(self, mailbox_id: int, removal: Removal) -> None:
        # `_remove` gave the rows to the readers open when the job ran; this gives them
        # to any reader opened since, whose view may have been read before the commit.
        # Before any checkpoint after the commit, so before any later writer job.
        self.store.reclamation.retire(mailbox_id, removal.rows)

    async def _after(self, mailbox_id: int, freed: list[str]) -> None:
        self.store.changes.changed([mailbox_id])
        await self._delete_blobs(freed)

    async def _delete_blobs(self, blob_ids: list[str]) -> None:
        await self.store.release_blobs(blob_ids)

    # -- reading for the webmail (read-only, cheap on 100k-message mailboxes) ------

    async def heads(self, owner: str) -> list[MailboxHead]:
        """Every mailbox of *owner*, INBOX first, with its message count (index only)."""

        def query(conn: sqlite3.Connection) -> list[MailboxHead]:
            rows = conn.execute(
                "SELECT b.id, b.name, b.special_use, b.uidvalidity, b.highestmodseq,"
                " (SELECT count(*) FROM messages m WHERE m.mailbox_id = b.id)"
                " FROM mailboxes b WHERE b.owner = ? ORDER BY b.name = 'INBOX' DESC, b.name",
                (owner,),
            )
            return [MailboxHead(*row) for row in rows]

        return await self.db.read(query)

    async def newest(self, mailbox_id: int, offset: int, limit: int) -> list[StoredMessage]:
        """One page of a mailbox, newest (highest UID) first, walked on the UID index."""

        def query(conn: sqlite3.Connection) -> list[StoredMessage]:
            rows = conn.execute(
                f"{SELECT_MESSAGES} WHERE m.mailbox_id = ? ORDER BY m.uid DESC LIMIT ? OFFSET ?",
                (mailbox_id, limit, offset),
            )
            return [row_to_message(row) for row in rows]

        return await self.db.read(query)

    async def unseen_uids(self, mailbox_id: int) -> tuple[int, set[int]]:
        """``(HIGHESTMODSEQ, UIDs without \\Seen)`` read in one snapshot (a full scan)."""

        def query(conn: sqlite3.Connection) -> tuple[int, set[int]]:
            conn.execute("BEGIN")  # both statements must see the same commit
            modseq = _highestmodseq(conn, mailbox_id)
            rows = conn.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ?"
                " AND instr(' ' || lower(flags) || ' ', ' \\seen ') = 0",
                (mailbox_id,),
            )
            return modseq, {int(uid) for (uid,) in rows}

        return await self.db.read(query)

    async def flag_changes(
        self, mailbox_id: int, modseq: int
    ) -> tuple[int, list[tuple[int, str]], list[int]]:
        """``(HIGHESTMODSEQ, (uid, flags) changed after *modseq*, UIDs expunged after it)``.

        One snapshot, both on the MODSEQ indexes: what keeps an unread count up to
        date without rescanning the mailbox (RFC 7162's CONDSTORE bookkeeping).
        """

        def query(conn: sqlite3.Connection) -> tuple[int, list[tuple[int, str]], list[int]]:
            conn.execute("BEGIN")
            current = _highestmodseq(conn, mailbox_id)
            changed = [
                (int(uid), str(flags))
                for uid, flags in conn.execute(
                    "SELECT uid, flags FROM messages WHERE mailbox_id = ? AND modseq > ?",
                    (mailbox_id, modseq),
                )
            ]
            gone = [
                int(uid)
                for (uid,) in conn.execute(
                    "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?",
                    (mailbox_id, modseq),
                )
            ]
            return current, changed, gone

        return await self.db.read(query)


# -- jobs' building blocks (run inside a write transaction) ---------------------------


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _mailbox_id(conn: sqlite3.Connection, owner: str, name: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM mailboxes WHERE owner = ? AND name = ?", (owner, name)
    ).fetchone()
    return None if row is None else int(row[0])


def _existing(conn: sqlite3.Connection, owner: str, name: str) -> int:
    mailbox_id = _mailbox_id(conn, owner, name)
    if mailbox_id is None:
        raise MailboxError("NONEXISTENT", f"no mailbox {name!r}")
    return mailbox_id


def _infos(conn: sqlite3.Connection, owner: str, name: str | None) -> list[MailboxInfo]:
    rows = conn.execute(
        "SELECT b.id, b.owner, b.name, b.special_use, b.uidvalidity, b.uidnext,"
        " b.highestmodseq,"
        " EXISTS (SELECT 1 FROM subscriptions s WHERE s.owner = b.owner AND s.name = b.name),"
        " count(m.id),"
        " coalesce(sum(instr(' ' || lower(m.flags) || ' ', ' \\seen ') = 0), 0),"
        " coalesce(sum(m.size), 0), coalesce(sum(m.uid >= b.first_recent_uid), 0),"
        " b.first_recent_uid"
        " FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id"
        " WHERE b.owner = ? AND (? IS NULL OR b.name = ?)"
        " GROUP BY b.id ORDER BY b.name = 'INBOX' DESC, b.name",
        (owner, name, name),
    ).fetchall()
    return [
        MailboxInfo(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10], r[11], r[12]
        )
        for r in rows
    ]


_MARK = "id, uidvalidity, uidnext, highestmodseq, first_recent_uid"


def _mark(conn: sqlite3.Connection, mailbox_id: int) -> MailboxMark | None:
    row = conn.execute(f"SELECT {_MARK} FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()  # noqa: S608 - our own columns
    return None if row is None else MailboxMark(*row)


def _vanished(conn: sqlite3.Connection, mailbox_id: int, since: int) -> list[int]:
    return [
        int(uid)
        for (uid,) in conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, since),
        )
    ]


def _highestmodseq(conn: sqlite3.Connection, mailbox_id: int) -> int:
    row = conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    return 0 if row is None else int(row[0])


def _states(conn: sqlite3.Connection, mailbox_id: int, since: int) -> list[MessageState]:
    return [
        MessageState(uid, tuple(flags.split()), modseq)
        for uid, flags, modseq in conn.execute(
            "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ? AND modseq > ?"
            " ORDER BY uid",
            (mailbox_id, since),
        )
    ]


def _rows(conn: sqlite3.Connection, mailbox_id: int, uids: Collection[int] | None,
          columns: str) -> list[tuple[Any, ...]]:  # fmt: skip
    if uids is None:
        return []
    # A temporary table keeps one query for any number of UIDs (100k-message mailboxes).
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (uid INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM wanted")
    conn.executemany("INSERT OR IGNORE INTO wanted (uid) VALUES (?)", ((u,) for u in uids))
    return conn.execute(
        f"SELECT {columns} FROM messages WHERE mailbox_id = ? AND uid IN (SELECT uid FROM wanted)"  # noqa: S608 - columns are ours
        " ORDER BY uid",
        (mailbox_id,),
    ).fetchall()


def _messages(conn: sqlite3.Connection, mailbox_id: int, uids: Collection[int]
              ) -> list[StoredMessage]:  # fmt: skip
    wanted = sorted(set(uids))
    found: list[StoredMessage] = []
    # Chunks keep the statement under SQLite's variable limit on huge sets.
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"{SELECT_MESSAGES} WHERE m.mailbox_id = ? AND m.uid IN ({marks}) ORDER BY m.uid",
            (mailbox_id, *chunk),
        )
        found.extend(row_to_message(row) for row in rows)
    return found


def _all_uids(conn: sqlite3.Connection, mailbox_id: int) -> list[int]:
    return [
        int(uid)
        for (uid,) in conn.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
        )
    ]


def _bump(conn: sqlite3.Connection, mailbox_id: int) -> int:
    (modseq,) = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?"
        " RETURNING highestmodseq",
        (mailbox_id,),
    ).fetchone()
    return int(modseq)


def _next_uid(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int]:
    uid, modseq = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
        " WHERE id = ? RETURNING uidnext - 1, highestmodseq",
        (mailbox_id,),
    ).fetchone()
    return int(uid), int(modseq)


def _charge(
    conn: sqlite3.Connection, owner: str, size: int, quota_bytes: int, count: int = 1
) -> None:
    conn.execute("INSERT OR IGNORE INTO quota_usage (owner) VALUES (?)", (owner,))
    (used,) = conn.execute("SELECT bytes FROM quota_usage WHERE owner = ?", (owner,)).fetchone()
    if used + size > quota_bytes:
        raise QuotaExceeded(owner)
    conn.execute(
        "UPDATE quota_usage SET bytes = bytes + ?, messages = messages + ? WHERE owner = ?",
        (size, count, owner),
    )


def _copy(conn: sqlite3.Connection, source: int, target: int, owner: str, uids: Sequence[int],
          *, check_quota: bool, quota_bytes: int = 0) -> list[tuple[int, int, int]]:  # fmt: skip
    rows = _rows(conn, source, uids, "uid, flags, internal_date, size, blob_id, message_id_digest,"
                 " content_hash, classification, urgency, pending_structure")  # fmt: skip
    pairs = []
    for (
        uid,
        flags,
        internal_date,
        size,
        blob_id,
        digest,
        content_hash,
        cls,
        urgency,
        pending,
    ) in rows:
        new_uid, modseq = _next_uid(conn, target)
        conn.execute(
            "INSERT INTO messages (mailbox_id, uid, modseq, flags, internal_date, size, blob_id,"
            " message_id_digest, content_hash, classification, urgency, pending_structure)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (target, new_uid, modseq, flags, internal_date, size, blob_id, digest, content_hash,
             cls, urgency, pending),
        )  # fmt: skip
        conn.execute("UPDATE blobs SET refs = refs + 1 WHERE id = ?", (blob_id,))
        pairs.append((uid, new_uid, size))
    if check_quota:
        _charge(conn, owner, sum(size for *_, size in pairs), quota_bytes, len(pairs))
    return pairs


class Removal(NamedTuple):
    """What `_remove` took out: the rows as they were, and blobs left with no reference."""

    rows: list[StoredMessage]
    freed: list[str]


def _remove(conn: sqlite3.Connection, mailbox_id: int, owner: str, uids: Sequence[int], *,
            record: bool, reclamation: Reclamation, uncharge: bool = True) -> Removal:  # fmt: skip
    """Delete message rows; return them, and the blob ids whose last reference went.

    *record*: keep the UIDs for VANISHED; *uncharge*: give the bytes back to the quota
    (not when the same owner just got a copy, as in MOVE). The rows go to the sessions
    reading the mailbox now, in the writer: a blob release queued in the same batch
    must already see them held (the caller gives them again after the commit).
    """
    if not uids:
        return Removal([], [])
    _rows(conn, mailbox_id, uids, "uid")  # fills the temporary table `wanted`
    removed = [
        row_to_message(row)
        for row in conn.execute(
            f"{SELECT_MESSAGES} WHERE m.mailbox_id = ? AND m.uid IN (SELECT uid FROM wanted)"  # noqa: S608 - our own columns
            " ORDER BY m.uid",
            (mailbox_id,),
        )
    ]
    rows = [(m.uid, m.size, m.blob_id) for m in removed]
    reclamation.retire(mailbox_id, removed)
    modseq = _bump(conn, mailbox_id) if record else 0
    conn.execute(
        "DELETE FROM messages WHERE mailbox_id = ? AND uid IN (SELECT uid FROM wanted)",
        (mailbox_id,),
    )
    if record:
        conn.executemany(
            "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, uid, modseq) for uid, _, _ in rows],
        )
    if uncharge:
        conn.execute(
            "UPDATE quota_usage SET bytes = bytes - ?, messages = messages - ? WHERE owner = ?",
            (sum(size for _, size, _ in rows), len(rows), owner),
        )
    freed: list[str] = []
    for _, _, blob_id in rows:
        (refs,) = conn.execute(
            "UPDATE blobs SET refs = refs - 1 WHERE id = ? RETURNING refs", (blob_id,)
        ).fetchone()
        if refs == 0:
            conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
            freed.append(blob_id)
    return Removal(removed, freed)


def _apply(current: tuple[str, ...], mode: FlagMode, flags: tuple[str, ...]) -> tuple[str, ...]:
    if mode is FlagMode.REPLACE:
        return flags
    lowered = {f.lower() for f in flags}
    if mode is FlagMode.ADD:
        return canonical_flags(current + flags)
    return tuple(f for f in current if f.lower() not in lowered)


# ===================================================================================
# Reads for mailbox replication (appliance.sync.mailbox). Read-only, paged on the
# (mailbox_id, uid) and (mailbox_id, modseq) indexes so a replicator never holds a whole
# mailbox; nothing above this block depends on it.


async def sync_highestmodseq(store: Mailstore, mailbox_id: int) -> int:
    """The mailbox's HIGHESTMODSEQ now (0 if it no longer exists)."""
    return await store.db.read(lambda conn: _highestmodseq(conn, mailbox_id))


async def sync_new_messages(
    store: Mailstore, mailbox_id: int, from_uid: int, limit: int
) -> list[StoredMessage]:
    """Up to *limit* messages with UID >= *from_uid*, in UID order."""

    def query(conn: sqlite3.Connection) -> list[StoredMessage]:
        rows = conn.execute(
            f"{SELECT_MESSAGES} WHERE m.mailbox_id = ? AND m.uid >= ? ORDER BY m.uid LIMIT ?",
            (mailbox_id, from_uid, limit),
        )
        return [row_to_message(row) for row in rows]

    return await store.db.read(query)


async def sync_changed_flags(
    store: Mailstore, mailbox_id: int, since_modseq: int, after_uid: int, below_uid: int,
    limit: int,
) -> list[tuple[int, tuple[str, ...]]]:  # fmt: skip
    """``(uid, flags)`` of up to *limit* messages changed after *since_modseq*, with
    *after_uid* < UID < *below_uid*, in UID order (one page of RFC 7162 CHANGEDSINCE)."""

    def query(conn: sqlite3.Connection) -> list[tuple[int, tuple[str, ...]]]:
        rows = conn.execute(
            "SELECT uid, flags FROM messages WHERE mailbox_id = ? AND modseq > ?"
            " AND uid > ? AND uid < ? ORDER BY uid LIMIT ?",
            (mailbox_id, since_modseq, after_uid, below_uid, limit),
        )
        return [(int(uid), tuple(flags.split())) for uid, flags in rows]

    return await store.db.read(query)


async def sync_expunged_since(
    store: Mailstore, mailbox_id: int, since_modseq: int, after_uid: int, limit: int
) -> list[int]:
    """Up to *limit* UIDs expunged after *since_modseq*, above *after_uid*, in order."""

    def query(conn: sqlite3.Connection) -> list[int]:
        rows = conn.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? AND uid > ?"
            " ORDER BY uid LIMIT ?",
            (mailbox_id, since_modseq, after_uid, limit),
        )
        return [int(uid) for (uid,) in rows]

    return await store.db.read(query)


async def sync_flags_of(
    store: Mailstore, mailbox_id: int, uids: Collection[int]
) -> dict[int, tuple[str, ...]]:
    """Current flags of those of *uids* that exist."""

    def query(conn: sqlite3.Connection) -> dict[int, tuple[str, ...]]:
        found: dict[int, tuple[str, ...]] = {}
        wanted = sorted(set(uids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for uid, flags in conn.execute(
                f"SELECT uid, flags FROM messages WHERE mailbox_id = ? AND uid IN ({marks})",  # noqa: S608 - only "?" marks
                (mailbox_id, *chunk),
            ):
                found[int(uid)] = tuple(flags.split())
        return found

    return await store.db.read(query)


async def sync_find_copies(
    store: Mailstore, mailbox_id: int, content_hash: str, message_id_digest: str | None,
    min_uid: int, below_uid: int,
) -> list[int]:  # fmt: skip
    """UIDs in [*min_uid*, *below_uid*) of messages with this content hash, lowest first.

    Tried first through the Message-ID digest index; then by content hash alone, for
    copies stored without a digest (IMAP APPEND) or mail without a Message-ID.
    """

    def query(conn: sqlite3.Connection) -> list[int]:
        if message_id_digest is not None:
            rows = conn.execute(
                "SELECT uid FROM messages WHERE message_id_digest = ? AND mailbox_id = ?"
                " AND uid >= ? AND uid < ? AND content_hash = ? ORDER BY uid",
                (message_id_digest, mailbox_id, min_uid, below_uid, content_hash),
            ).fetchall()
            if rows:
                return [int(uid) for (uid,) in rows]
        rows = conn.execute(
            "SELECT uid FROM messages WHERE mailbox_id = ? AND uid >= ? AND uid < ?"
            " AND content_hash = ? ORDER BY uid",
            (mailbox_id, min_uid, below_uid, content_hash),
        ).fetchall()
        return [int(uid) for (uid,) in rows]

    return await store.db.read(query)


async def sync_find_listed_copies(
    store: Mailstore, mailbox_id: int, message_id_digest: str | None, size: int,
    min_uid: int, below_uid: int,
) -> list[tuple[int, str]]:  # fmt: skip
    """``(uid, blob_id)`` in [*min_uid*, *below_uid*) that may be a message the centre
    listed without its body: the same size and Message-ID digest, else (copies stored
    by APPEND carry no digest) the same size alone, lowest UID first. The caller
    compares header blocks to be sure."""

    def query(conn: sqlite3.Connection) -> list[tuple[int, str]]:
        if message_id_digest is not None:
            rows = conn.execute(
                "SELECT uid, blob_id FROM messages WHERE message_id_digest = ?"
                " AND mailbox_id = ? AND uid >= ? AND uid < ? AND size = ? ORDER BY uid",
                (message_id_digest, mailbox_id, min_uid, below_uid, size),
            ).fetchall()
            if rows:
                return [(int(uid), str(blob_id)) for uid, blob_id in rows]
        rows = conn.execute(
            "SELECT uid, blob_id FROM messages WHERE mailbox_id = ? AND uid >= ?"
            " AND uid < ? AND size = ? ORDER BY uid",
            (mailbox_id, min_uid, below_uid, size),
        ).fetchall()
        return [(int(uid), str(blob_id)) for uid, blob_id in rows]

    return await store.db.read(query)
