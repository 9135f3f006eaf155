"""Tell open IMAP sessions that a mailbox changed, so they can look.

A notice carries no data: a session that wakes re-reads what changed since the MODSEQ
and UIDNEXT it last reported (RFC 7162 makes that one cheap query). So a notice can
never be stale or out of order, and losing one is impossible by construction: a
session takes its `Watch` *before* it reads, and any change committed after that sets
it. Only writes made in this process notify; the CLI changes directory data, not
mailboxes.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio


class ChangeFeed:
    """One `trio.Event` per watched mailbox, replaced each time it fires."""

    def __init__(self) -> None:
        self._events: dict[int, trio.Event] = {}

    def watch(self, mailbox_id: int) -> trio.Event:
        """Return the event the next change of *mailbox_id* will set."""
        event = self._events.get(mailbox_id)
        if event is None:
            event = self._events[mailbox_id] = trio.Event()
        return event

    def changed(self, mailbox_ids: Iterable[int]) -> None:
        """Wake every session watching one of *mailbox_ids* (call after commit)."""
        for mailbox_id in set(mailbox_ids):
            event = self._events.pop(mailbox_id, None)
            if event is not None:
                event.set()
