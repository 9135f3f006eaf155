"""Deferred reclamation: an expunged message stays readable to the sessions not yet told.

RFC 3501 §7.4.1 and RFC 9051 §7.5.1: a session's sequence numbers change only when the
server sends it EXPUNGE, and it may not do so during FETCH, STORE or SEARCH. So a
message that another session (or the webmail, or mailbox replication) expunged is still
message *n* to a session that has not been told: its client may FETCH it, and the
answer must be the message. The mail database forgets the row at the expunge's commit
(UIDs, quota and reference counts stay exact); what the untold sessions still need is
kept here, in memory, and its blob file stays on disk until nobody can reach it:

- a session that selects a mailbox opens a `MailboxReader` on it *before* it loads its
  view, so no expunge can fall between the two unseen;
- each job that removes rows from a mailbox gives every reader open on it those rows
  ("ghosts") and counts a hold on each ghost's blob (`Reclamation.retire`, on the
  writer thread, so a blob release later in the same batch sees the hold), and the
  caller gives them again right after the commit, to readers opened meanwhile (a
  rolled-back job leaves ghosts of rows that still exist: never read, and they hold
  only blobs that rows still name);
- `Mailstore.release_blobs`, under the database writer, deletes a blob whose last
  reference went only if no ghost holds it (`keep`); a held one waits in ``pending``;
- a reader drops a ghost once its client has been sent the EXPUNGE (the view no longer
  holds the UID), and all of them when it closes (UNSELECT, another SELECT, the end of
  the connection); a pending blob whose last hold goes is handed back to be deleted.

The writer thread and the sessions' trio thread both change ghosts and holds, hence
the lock. Crash: a pending blob has no row in ``blobs`` (its last
reference was committed away), so the start-up sweep (`Mailstore.remove_orphan_blobs`)
deletes it; sessions do not outlive a restart, so nothing they held is lost.

What this is not: a cache of content, or durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.mail.mailstore import StoredMessage


class Reclamation:
    """Which blobs of removed messages sessions can still reach, for one mail store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: dict[int, set[MailboxReader]] = {}
        #: Blob id → ghosts naming it, over every reader.
        self._holds: dict[str, int] = {}
        #: Blobs with no database reference left, kept on disk for a hold.
        self._pending: set[str] = set()

    def open(self, mailbox_id: int) -> MailboxReader:
        """Start reading *mailbox_id*: removals committed from now on are kept for us."""
        reader = MailboxReader(self, mailbox_id)
        with self._lock:
            self._readers.setdefault(mailbox_id, set()).add(reader)
        return reader

    def retire(self, mailbox_id: int, rows: Iterable[StoredMessage]) -> None:
        """Give every reader of *mailbox_id* the rows a job removes from it (idempotent).

        Called in the writer job that removes them, and again right after its commit
        (before the next checkpoint) for readers opened in between.
        """
        with self._lock:
            readers = self._readers.get(mailbox_id)
            if not readers:
                return
            removed = list(rows)
            for reader in readers:
                for row in removed:
                    if row.uid not in reader.ghosts:
                        reader.ghosts[row.uid] = row
                        self._holds[row.blob_id] = self._holds.get(row.blob_id, 0) + 1

    def keep(self, blob_id: str) -> bool:
        """Whether a blob no row names must stay on disk for a reader (writer thread)."""
        with self._lock:
            if blob_id in self._holds:
                self._pending.add(blob_id)
                return True
            self._pending.discard(blob_id)
            return False

    @property
    def pending(self) -> frozenset[str]:
        """Blobs freed by the database and kept on disk for a session."""
        with self._lock:
            return frozenset(self._pending)

    def readers(self, mailbox_id: int) -> int:
        """How many readers are open on *mailbox_id*."""
        with self._lock:
            return len(self._readers.get(mailbox_id, ()))

    def _drop(
        self, reader: MailboxReader, keep: Callable[[int], bool], *, close: bool
    ) -> list[str]:
        freed: list[str] = []
        # Under the lock: the writer thread may be adding ghosts (`retire`) meanwhile.
        with self._lock:
            for uid in [uid for uid in reader.ghosts if not keep(uid)]:
                row = reader.ghosts.pop(uid)
                left = self._holds[row.blob_id] - 1
                if left:
                    self._holds[row.blob_id] = left
                    continue
                del self._holds[row.blob_id]
                if row.blob_id in self._pending:
                    self._pending.discard(row.blob_id)
                    freed.append(row.blob_id)
            if close:
                readers = self._readers.get(reader.mailbox_id)
                if readers is not None:
                    readers.discard(reader)
                    if not readers:
                        del self._readers[reader.mailbox_id]
        return freed


class MailboxReader:
    """One session's hold on a selected mailbox's removed messages (its ghosts)."""

    def __init__(self, reclamation: Reclamation, mailbox_id: int) -> None:
        self._reclamation = reclamation
        self.mailbox_id = mailbox_id
        #: UID → the row as it was when removed; only for UIDs removed while open.
        self.ghosts: dict[int, StoredMessage] = {}
        self.closed = False

    def ghost(self, uid: int) -> StoredMessage | None:
        """The removed row of *uid*, if it was removed while this reader was open."""
        return self.ghosts.get(uid)

    def release(self, still_shown: Callable[[int], bool]) -> list[str]:
        """Drop the ghosts whose UID the client no longer sees; return blobs now free.

        *still_shown* says whether the client's view still holds a UID (it was not
        sent the EXPUNGE yet). The returned blob ids go to `Mailstore.release_blobs`.
        """
        if not self.ghosts:
            return []
        return self._reclamation._drop(self, still_shown, close=False)

    def close(self) -> list[str]:
        """Stop reading: drop every ghost; return blobs now free. Idempotent."""
        if self.closed:
            return []
        self.closed = True
        return self._reclamation._drop(self, lambda uid: False, close=True)
