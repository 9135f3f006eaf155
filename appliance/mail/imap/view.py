"""The selected mailbox as one session last described it to its client, packed small.

An IMAP session must know, for every message of its selected mailbox, the UID behind
each sequence number (RFC 3501 §2.3.1.2) and the flags and MODSEQ it last reported, so
that it can tell the client what changed (§7.4.1, RFC 7162 §3.2.5). With 100,000
messages a dict of small objects costs tens of megabytes per session; here the same
facts live in three typed arrays — 8 bytes of UID, 8 of MODSEQ and 2 of flag-set number
per message — and the few distinct flag sets of a mailbox are stored once each. A
100,000-message mailbox costs about 1.8 MB per session, and loading it never builds an
object per message.

Sessions of one mailbox share one picture: `MailboxViews` keeps the view of each
mailbox as of its last reading and hands every SELECT a copy-on-write twin of it, brought
up to date with only what changed since (RFC 7162's MODSEQ makes that one indexed query).
So SELECT of a 100,000-message mailbox copies no array and reads no row when nothing
changed; a session's twin takes its own arrays at its first change.

What this is not: the truth (the mail database is) or a cache of message content.
"""

from __future__ import annotations

import bisect
import sys
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import compress

import trio

from appliance.mail.mailboxes import MailboxError, Mailboxes, MailboxMark, MessageState

_LITTLE_ENDIAN = sys.byteorder == "little"

#: Above this many removals at once the arrays are rebuilt instead of shifted per UID.
_REBUILD_AT = 16


class MessageView:
    """UID, flags and MODSEQ per message, in sequence-number (= ascending UID) order."""

    def __init__(self, rows: Iterable[tuple[int, str, int]] = ()) -> None:
        """Load from ``(uid, flags as space-separated text, modseq)`` rows in UID order."""
        self.uids = array("Q")
        self._modseqs = array("Q")
        self._flag_ids = array("H")
        self._flag_sets: list[tuple[str, ...]] = []
        self._flag_numbers: dict[str, int] = {}
        #: The arrays may be another view's too (`share`): copy them before a change.
        self._shared = False
        for uid, flags, modseq in rows:
            self.uids.append(uid)
            self._modseqs.append(modseq)
            self._flag_ids.append(self._number(flags))

    @classmethod
    def of(cls, states: Iterable[MessageState]) -> MessageView:
        return cls((s.uid, " ".join(s.flags), s.modseq) for s in states)

    def share(self) -> MessageView:
        """Return a twin holding the same arrays until either of the two changes."""
        twin = MessageView.__new__(MessageView)
        twin.uids, twin._modseqs, twin._flag_ids = self.uids, self._modseqs, self._flag_ids
        twin._flag_sets, twin._flag_numbers = self._flag_sets, self._flag_numbers
        twin._shared = self._shared = True
        return twin

    def _own(self) -> None:
        """Take private copies of shared arrays before changing them (copy on write)."""
        if self._shared:
            self.uids, self._modseqs = self.uids[:], self._modseqs[:]
            self._flag_ids = self._flag_ids[:]
            self._flag_sets, self._flag_numbers = list(self._flag_sets), dict(self._flag_numbers)
            self._shared = False

    def _number(self, flags: str) -> int:
        number = self._flag_numbers.get(flags)
        if number is None:
            number = len(self._flag_sets)
            if number > 0xFFFF:
                # 65,536 distinct keyword combinations in one mailbox: start afresh
                # rather than overflow (compaction keeps only the sets still in use).
                self._compact_flag_sets()
                return self._number(flags)
            self._flag_sets.append(tuple(flags.split()))
            self._flag_numbers[flags] = number
        return number

    def _compact_flag_sets(self) -> None:
        used = [" ".join(self._flag_sets[i]) for i in self._flag_ids]
        self._flag_sets, self._flag_numbers = [], {}
        self._flag_ids = array("H", (self._number(f) for f in used))

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        i = bisect.bisect_left(self.uids, uid)
        return i < len(self.uids) and self.uids[i] == uid

    def __iter__(self) -> Iterator[int]:
        return iter(self.uids)

    @property
    def top(self) -> int:
        """The highest UID, or 0 for an empty mailbox."""
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int:
        """The sequence number of *uid* (which must be present)."""
        return bisect.bisect_left(self.uids, uid) + 1

    def _index(self, uid: int) -> int:
        i = bisect.bisect_left(self.uids, uid)
        if i == len(self.uids) or self.uids[i] != uid:
            raise KeyError(uid)
        return i

    def state(self, uid: int) -> MessageState:
        i = self._index(uid)
        return MessageState(uid, self._flag_sets[self._flag_ids[i]], self._modseqs[i])

    def flags(self, uid: int) -> tuple[str, ...]:
        return self._flag_sets[self._flag_ids[self._index(uid)]]

    def modseq(self, uid: int) -> int:
        return self._modseqs[self._index(uid)]

    def highest_modseq(self, uids: Iterable[int]) -> int:
        return max((self.modseq(u) for u in uids), default=0)

    def keywords(self) -> set[str]:
        """Every keyword (a flag without a backslash) some message has now."""
        # Only the few sets holding a keyword are looked for, each by a scan in C.
        with_keywords = [
            (i, flags)
            for i, flags in enumerate(self._flag_sets)
            if any(not f.startswith("\\") for f in flags)
        ]
        return {f for i, flags in with_keywords if i in self._flag_ids for f in flags
                if not f.startswith("\\")}  # fmt: skip

    def first_with_flags(self, predicate: Callable[[tuple[str, ...]], bool]) -> int | None:
        """The lowest UID whose flags satisfy *predicate* (asked once per distinct set)."""
        first = len(self._flag_ids)
        for number, flags in enumerate(self._flag_sets):
            if predicate(flags):
                try:  # array.index scans in C and stops at the first match
                    first = min(first, self._flag_ids.index(number, 0, first))
                except ValueError:
                    continue
        return self.uids[first] if first < len(self._flag_ids) else None

    def with_flags(
        self, uids: Iterable[int], predicate: Callable[[tuple[str, ...]], bool]
    ) -> set[int]:
        """Those of *uids* whose flags satisfy *predicate*, asked once per distinct set."""
        wanted = {i for i, flags in enumerate(self._flag_sets) if predicate(flags)}
        if not wanted:
            return set()
        # compress() and map() over a C method: no Python step per message.
        matching = set(compress(self.uids, map(wanted.__contains__, self._flag_ids)))
        return matching.intersection(uids)

    def flag_mask(self, predicate: Callable[[tuple[str, ...]], bool]) -> bytes:
        """One byte per message in sequence order: 1 where its flags satisfy *predicate*.

        *predicate* is asked once per distinct flag set. For a SEARCH that depends on
        flags only (UNSEEN, DELETED, NOT KEYWORD $Junk...), the answer over 100,000
        messages without a Python step per message: with under 256 distinct sets (the
        usual case) the flag-set numbers are translated to the mask in C.
        """
        table = bytes(1 if predicate(flags) else 0 for flags in self._flag_sets)
        if not table:
            return bytes(len(self._flag_ids))
        if len(table) <= 256 and _LITTLE_ENDIAN and self._flag_ids.itemsize == 2:
            # Each 16-bit number below 256 is its low byte followed by a zero byte.
            return self._flag_ids.tobytes()[::2].translate(table.ljust(256, b"\0"))
        return bytes(map(table.__getitem__, self._flag_ids))

    def uids_where(self, mask: bytes) -> list[int]:
        """The UIDs of the messages *mask* (from `flag_mask`) marks, ascending."""
        return list(compress(self.uids, mask))

    def seqs_where(self, mask: bytes) -> list[int]:
        """The sequence numbers of the messages *mask* marks, ascending."""
        return list(compress(range(1, len(self.uids) + 1), mask))

    def seqs_of(self, uids: Collection[int]) -> list[int]:
        """The sequence numbers of *uids* (all present), ascending.

        For a SEARCH answer of tens of thousands of messages: one pass in C over the
        mailbox rather than a bisection per message.
        """
        if len(uids) < len(self.uids) // 64:
            return sorted(bisect.bisect_left(self.uids, uid) + 1 for uid in uids)
        wanted = uids if isinstance(uids, set | frozenset) else set(uids)
        return list(compress(range(1, len(self.uids) + 1), map(wanted.__contains__, self.uids)))

    def entries(self, uids: Sequence[int]) -> Iterator[tuple[int, int, int, int]]:
        """Yield (sequence number, UID, flag-set number, MODSEQ) of each of *uids*.

        Every UID must be present. For a FETCH of flags over the whole mailbox, no
        object per message: a run of consecutive messages (what `UID FETCH 1:*` asks)
        is read straight off the arrays, anything else with one bisection each.
        `flag_set` turns the number into flags, so a caller renders each of the few
        sets once.
        """
        all_uids, flag_ids, modseqs = self.uids, self._flag_ids, self._modseqs
        if not uids:
            return iter(())
        first = bisect.bisect_left(all_uids, uids[0])
        stop = first + len(uids)
        if all_uids[first:stop].tolist() == list(uids):
            return zip(
                range(first + 1, stop + 1),
                all_uids[first:stop],
                flag_ids[first:stop],
                modseqs[first:stop],
                strict=True,
            )
        return self._each_entry(uids)

    def run_columns(
        self, uids: Sequence[int]
    ) -> tuple[int, array[int], array[int], array[int]] | None:
        """(sequence number of the first, UIDs, flag-set numbers, MODSEQs) of *uids*, or None.

        Only for a run of consecutive messages of the view (what `UID FETCH 1:*` asks,
        batch by batch): slices of the arrays, for a caller that makes every line in C.
        None for anything else, or for UIDs not all present.
        """
        if not uids:
            return None
        first = bisect.bisect_left(self.uids, uids[0])
        stop = first + len(uids)
        run = self.uids[first:stop]
        if len(run) != len(uids) or run[-1] != uids[-1] or run.tolist() != list(uids):
            return None
        return first + 1, run, self._flag_ids[first:stop], self._modseqs[first:stop]

    def _each_entry(self, uids: Iterable[int]) -> Iterator[tuple[int, int, int, int]]:
        all_uids, flag_ids, modseqs = self.uids, self._flag_ids, self._modseqs
        for uid in uids:
            i = bisect.bisect_left(all_uids, uid)
            if i == len(all_uids) or all_uids[i] != uid:
                raise KeyError(uid)
            yield i + 1, uid, flag_ids[i], modseqs[i]

    def flag_set(self, number: int) -> tuple[str, ...]:
        """The flags of flag-set *number* (as `entries` gives it)."""
        return self._flag_sets[number]

    def uid_range(self, first: int, last: int) -> Sequence[int]:
        """The UIDs present in first..last inclusive."""
        start = bisect.bisect_left(self.uids, first)
        stop = bisect.bisect_right(self.uids, last)
        return self.uids[start:stop]

    # -- changing --------------------------------------------------------------------

    def update(self, state: MessageState) -> None:
        """Record the flags and MODSEQ last reported for a message already present."""
        i = self._index(state.uid)
        if self._modseqs[i] == state.modseq and self._flag_sets[self._flag_ids[i]] == state.flags:
            return  # as recorded: no need to take shared arrays
        self._own()
        self._modseqs[i] = state.modseq
        self._flag_ids[i] = self._number(" ".join(state.flags))

    def append(self, state: MessageState) -> None:
        """Add a new message; UIDs only grow (RFC 3501 §2.3.1.1), so it goes last."""
        if state.uid <= self.top:
            raise ValueError(f"UID {state.uid} is not above {self.top}")
        self._own()
        self.uids.append(state.uid)
        self._modseqs.append(state.modseq)
        self._flag_ids.append(self._number(" ".join(state.flags)))

    def remove(self, uids: Iterable[int]) -> None:
        """Forget expunged messages (absent UIDs are ignored)."""
        gone = {u for u in uids if u in self}
        if not gone:
            return
        if len(gone) < _REBUILD_AT:
            self._own()
            for uid in sorted(gone, reverse=True):
                i = self._index(uid)
                del self.uids[i], self._modseqs[i], self._flag_ids[i]
            return
        keep = [i for i, uid in enumerate(self.uids) if uid not in gone]
        self.uids = array("Q", (self.uids[i] for i in keep))
        self._modseqs = array("Q", (self._modseqs[i] for i in keep))
        self._flag_ids = array("H", (self._flag_ids[i] for i in keep))


#: Messages the shared views may hold in all, at about 18 bytes each: the mailboxes
#: selected last stay ready for the next SELECT; the least recently used go first.
VIEW_BUDGET = 2_000_000


class MailboxViews:
    """Each mailbox's `MessageView` as of its last reading, shared by its sessions.

    `current` answers SELECT: a copy-on-write twin of the held view when the mailbox's
    HIGHESTMODSEQ says nothing changed, else the held view brought forward by what
    changed since (RFC 7162 §3.1: every change takes a new MODSEQ, expunges are kept
    with theirs), and only for a mailbox never read, or pushed out by the budget, a
    reading of every row. One per mail store (`of`), so the IMAP and IMAPS listeners
    share it.
    """

    def __init__(self, mailboxes: Mailboxes, budget: int = VIEW_BUDGET) -> None:
        self.mailboxes = mailboxes
        self.budget = budget
        #: (mailbox id, UIDVALIDITY) -> the view and the mark it shows, oldest use first.
        #: UIDVALIDITY too: SQLite may give a deleted mailbox's id to a new one.
        self._held: OrderedDict[tuple[int, int], tuple[MessageView, MailboxMark]] = OrderedDict()
        self._locks: dict[tuple[int, int], trio.Lock] = {}

    @classmethod
    def of(cls, mailboxes: Mailboxes) -> MailboxViews:
        """The views of *mailboxes*' mail store, made on first use."""
        store = mailboxes.store
        views = _VIEWS.get(store)
        if views is None:
            views = _VIEWS[store] = cls(mailboxes)
        return views

    async def current(self, mark: MailboxMark) -> tuple[MessageView, MailboxMark]:
        """A view of the mailbox no older than *mark*, for one session, and its mark.

        The mark returned is the one the view shows: everything up to its
        HIGHESTMODSEQ is in the view, and its UIDNEXT is above every UID in it.
        Raises `MailboxError` NONEXISTENT if the mailbox went meanwhile.
        """
        key = (mark.id, mark.uidvalidity)
        held = self._held.get(key)
        if held is not None and held[1].highestmodseq >= mark.highestmodseq:
            self._held.move_to_end(key)
            return held[0].share(), held[1] if held[1].highestmodseq > mark.highestmodseq else mark
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                held = self._held.get(key)  # another session may have read it meanwhile
                if held is None or held[1].highestmodseq < mark.highestmodseq:
                    try:
                        held = await self._read(mark, held)
                    except MailboxError:
                        self._held.pop(key, None)
                        raise
                    self._held[key] = held
                    self._keep_to_budget(key)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)
        self._held.move_to_end(key)
        return held[0].share(), held[1]

    def forget(self) -> None:
        """Drop every held view (sessions keep theirs)."""
        self._held.clear()

    async def _read(
        self, mark: MailboxMark, held: tuple[MessageView, MailboxMark] | None
    ) -> tuple[MessageView, MailboxMark]:
        if held is not None:
            view, since = held
            changes = await self.mailboxes.changes(mark.id, since.highestmodseq)
            caught_up = _same_mailbox(changes.mark, mark)
            if _catch_up(view, changes.changed, changes.vanished):
                return view, caught_up
        read, view = await self.mailboxes.snapshot(mark.id, MessageView)
        return view, _same_mailbox(read, mark)

    def _keep_to_budget(self, newest: tuple[int, int]) -> None:
        total = sum(len(view) for view, _ in self._held.values())
        for key in list(self._held):
            if total <= self.budget:
                break
            if key != newest:
                total -= len(self._held.pop(key)[0])


_VIEWS: weakref.WeakKeyDictionary[object, MailboxViews] = weakref.WeakKeyDictionary()


def _same_mailbox(now: MailboxMark | None, mark: MailboxMark) -> MailboxMark:
    if now is None or now.uidvalidity != mark.uidvalidity:
        # Deleted (and perhaps made again under the same id) since *mark* was read.
        raise MailboxError("NONEXISTENT", "the mailbox no longer exists")
    return now


def _catch_up(view: MessageView, changed: Sequence[MessageState], vanished: Sequence[int]) -> bool:
    """Apply changes read after the view's MODSEQ; False if they do not fit it."""
    view.remove(vanished)
    for state in changed:  # in UID order: changes to known messages, then new ones
        if state.uid in view:
            view.update(state)
        elif state.uid > view.top:
            view.append(state)
        else:
            return False  # a UID below the top that the view never had: read afresh
    return True
