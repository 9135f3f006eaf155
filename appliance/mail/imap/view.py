"""The selected mailbox as one session last described it to its client, packed small.

An IMAP session must know, for every message of its selected mailbox, the UID behind
each sequence number (RFC 3501 §2.3.1.2) and the flags and MODSEQ it last reported, so
that it can tell the client what changed (§7.4.1, RFC 7162 §3.2.5). With 100,000
messages a dict of small objects costs tens of megabytes per session; here the same
facts live in three typed arrays — 8 bytes of UID, 8 of MODSEQ and 2 of flag-set number
per message — and the few distinct flag sets of a mailbox are stored once each. A
100,000-message mailbox costs about 1.8 MB per session, and loading it never builds an
object per message.

What this is not: the truth (the mail database is) or a cache of message content.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from appliance.mail.mailboxes import MessageState

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
        for uid, flags, modseq in rows:
            self.uids.append(uid)
            self._modseqs.append(modseq)
            self._flag_ids.append(self._number(flags))

    @classmethod
    def of(cls, states: Iterable[MessageState]) -> MessageView:
        return cls((s.uid, " ".join(s.flags), s.modseq) for s in states)

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
        used = set(self._flag_ids)
        return {f for i in used for f in self._flag_sets[i] if not f.startswith("\\")}

    def first_with_flags(self, predicate: Callable[[tuple[str, ...]], bool]) -> int | None:
        """The lowest UID whose flags satisfy *predicate* (asked once per distinct set)."""
        wanted = {i for i, flags in enumerate(self._flag_sets) if predicate(flags)}
        if wanted:
            for uid, number in zip(self.uids, self._flag_ids, strict=True):
                if number in wanted:
                    return uid
        return None

    def with_flags(
        self, uids: Iterable[int], predicate: Callable[[tuple[str, ...]], bool]
    ) -> set[int]:
        """Those of *uids* whose flags satisfy *predicate*, asked once per distinct set."""
        wanted = {i for i, flags in enumerate(self._flag_sets) if predicate(flags)}
        if not wanted:
            return set()
        matching = {u for u, f in zip(self.uids, self._flag_ids, strict=True) if f in wanted}
        return matching.intersection(uids)

    def uid_range(self, first: int, last: int) -> Sequence[int]:
        """The UIDs present in first..last inclusive."""
        start = bisect.bisect_left(self.uids, first)
        stop = bisect.bisect_right(self.uids, last)
        return self.uids[start:stop]

    # -- changing --------------------------------------------------------------------

    def update(self, state: MessageState) -> None:
        """Record the flags and MODSEQ last reported for a message already present."""
        i = self._index(state.uid)
        self._modseqs[i] = state.modseq
        self._flag_ids[i] = self._number(" ".join(state.flags))

    def append(self, state: MessageState) -> None:
        """Add a new message; UIDs only grow (RFC 3501 §2.3.1.1), so it goes last."""
        if state.uid <= self.top:
            raise ValueError(f"UID {state.uid} is not above {self.top}")
        self.uids.append(state.uid)
        self._modseqs.append(state.modseq)
        self._flag_ids.append(self._number(" ".join(state.flags)))

    def remove(self, uids: Iterable[int]) -> None:
        """Forget expunged messages (absent UIDs are ignored)."""
        gone = {u for u in uids if u in self}
        if not gone:
            return
        if len(gone) < _REBUILD_AT:
            for uid in sorted(gone, reverse=True):
                i = self._index(uid)
                del self.uids[i], self._modseqs[i], self._flag_ids[i]
            return
        keep = [i for i, uid in enumerate(self.uids) if uid not in gone]
        self.uids = array("Q", (self.uids[i] for i in keep))
        self._modseqs = array("Q", (self._modseqs[i] for i in keep))
        self._flag_ids = array("H", (self._flag_ids[i] for i in keep))
