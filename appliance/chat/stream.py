"""Live delivery of chat events: one shared wake-up, membership held in memory.

The stream of a user is every stored event of the rooms they are a member of, plus the
events addressed to them alone (alerts, their own removal), in cursor order. A client
holds the cursor of the last event it saw and resumes after it: nothing is skipped and
nothing is sent twice, because the cursor is the database's own order of commits.

How 1,000 streams stay cheap at 200 messages a second:

- After a write commits, the writing task *publishes*: one query reads the events
  after the last published cursor (one query per commit, shared by every stream) and
  appends them to a ring of recent events in memory, in cursor order. Publishing is
  serialised by a lock, so the ring never holds a later cursor before an earlier one,
  whichever writer's task wakes first.
- Membership (address -> set of room ids) is kept in memory, updated from the same
  events as they are published, so a stream decides what its user may see with a set
  lookup, never a query.
- A stream that has sent everything up to the head *parks* (`park`) with a sink: a
  function that writes messages to its socket at once if the socket takes them without
  waiting. While it is parked, `publish` itself hands each new event the user may see
  to the sink, in cursor order, and the stream's task stays asleep: a message to a
  room of 50 costs 50 socket writes, not 50 task wake-ups, 50 ring look-ups and 50
  trips through the scheduler. When a sink refuses (the client is behind, the socket
  is full, another send is under way) or a batch changes membership, the stream is
  unparked and woken instead, and reads from its cursor as any stream does.
- Otherwise a stream waits on an event of its own user, set only when something that
  user may see is published: a message to a room of 50 wakes those 50 streams, not all
  1,000 (waking every stream for every message would cost 200,000 task switches a
  second).
- The ring is also indexed by room and by subject (cursors only), so a woken stream
  looks at the events of its own rooms, not at every event since its cursor: with 20
  rooms that is one event instead of twenty, at thousands of wake-ups a second.
- A stream whose cursor is older than the ring (a client back after a long absence)
  reads from the database until it catches up with the ring.

Typing notices are ephemeral: never stored, sent only to the live streams of the room's
members, dropped for a stream that is not keeping up.

What this is not: the WebSocket itself (the web server) or the rules of who may see a
room (that is membership, kept by the chat tables, `appliance.chat.rooms`).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.chat.models import Event

log = logging.getLogger("edgebox.chat")

#: Recent events kept in memory: at 200 messages/s, almost a minute of them.
RING_SIZE = 10_000
#: How far past RING_SIZE the ring grows before its oldest events are dropped, as a
#: share of RING_SIZE: they go a batch at a time, as each cut shifts the whole list.
#: An event takes about 2-3 KB in memory (a text post: its decoded payload, and its
#: stream text once sent), so this share is what bounds the ring: 11,250 events, 22-34
#: MB. Twice RING_SIZE, as before, let it reach 20,000 and 40-60 MB on a busy hub
#: (issue 24 soak, where it was part of what grew).
RING_SLACK = 1 / 8
#: Seconds an event stays in the ring at most (and an eighth more, as the cut comes in
#: batches). The ring is for streams that are live, seconds behind; a client back after
#: minutes away reads from the database, as one older than the ring always did. Without
#: this a quiet box's ring only ever grew, by every event until the 10,000th (hours or
#: days of an office's chat, 20-30 MB, at a post a second), so its memory was still
#: rising after a day of service; with it, a box's ring stops growing after five
#: minutes at whatever its rate of events holds (issue 24's soak).
RING_AGE = 300.0

#: Ephemeral notices queued per stream before further ones are dropped.
EPHEMERAL_BUFFER = 64

#: Events that change who sees what: a batch holding one wakes its streams instead of
#: writing to them (they re-read under the new membership).
MEMBERSHIP_TYPES = frozenset({"room.created", "member.added", "member.removed"})

#: Events whose payload the store scrubs when a message is deleted or expires.
SCRUBBED_TYPES = frozenset({"message.posted", "message.edited"})
#: Events that remove a message's content, and so scrub earlier events about it.
REMOVING_TYPES = frozenset({"message.deleted", "message.expired"})


def scrubbed_payload(message_id: str) -> dict[str, Any]:
    """Return what an event about a removed message says instead of its content."""
    return {"message_id": message_id, "removed": True}


#: Writes a stream's messages now if its socket takes them without waiting (True), or
#: sends nothing (False). See `Fanout.park`.
Sink = Callable[[list[str]], bool]


@dataclass(eq=False)
class Subscription:
    """One live stream of one user: where its ephemeral notices and parked events go."""

    address: str
    send: trio.MemorySendChannel[dict[str, Any]]
    receive: trio.MemoryReceiveChannel[dict[str, Any]]
    #: The last cursor the client acknowledged (advisory: for status and benchmarks).
    acked: int = 0
    dropped: int = field(default=0)
    #: While parked: where `publish` writes new events; everything visible up to
    #: `cursor` has been sent.
    sink: Sink | None = None
    cursor: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)


class Fanout:
    """The in-process fan-out of one chat database: published events, membership, streams."""

    def __init__(
        self,
        head: int,
        memberships: Iterable[tuple[str, str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: The last cursor published: every event up to it is in the ring or older.
        self.published = head
        #: Events with a cursor above this are all in the ring.
        self.ring_floor = head
        self._ring: list[Event] = []
        self._cursors: list[int] = []
        #: When each event of the ring was published (`clock`, ascending): the age cut.
        self._published_at: list[float] = []
        self._clock = clock
        #: Cursors of the ring's events by room, and by subject (ascending).
        self._by_room: dict[str, list[int]] = {}
        self._by_subject: dict[str, list[int]] = {}
        self._rooms: dict[str, set[str]] = defaultdict(set)
        self._members: dict[str, set[str]] = defaultdict(set)
        for address, room_id in memberships:
            self._rooms[address].add(room_id)
            self._members[room_id].add(address)
        self._wake = trio.Event()
        #: Streams waiting for news, by user.
        self._waiting: dict[str, trio.Event] = {}
        self.lock = trio.Lock()
        self._subscriptions: dict[str, set[Subscription]] = defaultdict(set)

    # --- membership ---

    def rooms_of(self, address: str) -> frozenset[str]:
        return frozenset(self._rooms.get(address, ()))

    def members_of(self, room_id: str) -> frozenset[str]:
        return frozenset(self._members.get(room_id, ()))

    def visible(self, event: Event, address: str) -> bool:
        """Return whether *address* sees *event* (the same rule as the database query)."""
        if event.subject == address:
            return True
        return event.room_id is not None and event.room_id in self._rooms.get(address, ())

    # --- publishing ---

    def publish(self, events: Iterable[Event]) -> None:
        """Append committed *events* (ascending cursors) and wake every stream."""
        added: list[Event] = []
        concerned: set[str] = set()
        membership = False
        now = self._clock()
        for event in events:
            if event.cursor <= self.published:
                continue  # published already by an earlier caller
            membership = membership or event.type in MEMBERSHIP_TYPES
            if event.room_id is not None:
                concerned |= self._members.get(event.room_id, set())  # before a removal
            self._apply_membership(event)
            if event.room_id is not None:
                concerned |= self._members.get(event.room_id, set())  # after an addition
            if event.subject is not None:
                concerned.add(event.subject)
            if event.type in REMOVING_TYPES and event.payload.get("message_id"):
                self._scrub(str(event.payload["message_id"]))
            self._ring.append(event)
            self._cursors.append(event.cursor)
            self._published_at.append(now)
            if event.room_id is not None:
                self._by_room.setdefault(event.room_id, []).append(event.cursor)
            if event.subject is not None:
                self._by_subject.setdefault(event.subject, []).append(event.cursor)
            self.published = event.cursor
            added.append(event)
        if len(self._ring) > RING_SIZE + max(1, int(RING_SIZE * RING_SLACK)):
            self._drop_oldest(len(self._ring) - RING_SIZE)
        elif self._published_at and now - self._published_at[0] > RING_AGE * (1 + RING_SLACK):
            self._drop_oldest(bisect.bisect_left(self._published_at, now - RING_AGE))
        if added:
            wake, self._wake = self._wake, trio.Event()
            wake.set()
            for address in concerned:
                waiting = self._waiting.pop(address, None)
                if waiting is not None:
                    waiting.set()
                for subscription in self._subscriptions.get(address, ()):
                    if subscription.sink is not None:
                        self._hand_over(subscription, added, membership)

    def _drop_oldest(self, cut: int) -> None:
        """Drop the ring's *cut* oldest events; streams behind them read the database."""
        self.ring_floor = self._cursors[cut - 1]
        del self._ring[:cut]
        del self._cursors[:cut]
        del self._published_at[:cut]
        for index in (self._by_room, self._by_subject):
            for key in list(index):
                cursors = index[key]
                del cursors[: bisect.bisect_right(cursors, self.ring_floor)]
                if not cursors:
                    del index[key]

    def _hand_over(self, subscription: Subscription, added: list[Event], membership: bool) -> None:
        """Give a parked stream the new events it may see, or unpark and wake it."""
        assert subscription.sink is not None
        if not membership:
            # `visible`, inlined: it runs for every member of every room in the batch.
            address = subscription.address
            rooms = self._rooms.get(address, ())
            texts = [e.stream_text for e in added if e.subject == address or e.room_id in rooms]
            try:
                taken = subscription.sink(texts)
            except Exception:
                # A broken sink must not stop publishing to every other stream; its
                # own task, woken below, meets the fault when it sends.
                log.exception("stream sink failed for %s", subscription.address)
                taken = False
            if taken:
                subscription.cursor = self.published
                return
        subscription.sink = None
        subscription.wakeup.set()

    def _apply_membership(self, event: Event) -> None:
        payload = event.payload
        if event.room_id is None:
            return
        if event.type in ("room.created", "member.added"):
            for address in payload.get("addresses", ()):
                self._rooms[address].add(event.room_id)
                self._members[event.room_id].add(address)
        elif event.type == "member.removed":
            address = payload.get("address")
            if isinstance(address, str):
                self._rooms[address].discard(event.room_id)
                self._members[event.room_id].discard(address)

    def _scrub(self, message_id: str) -> None:
        for index, old in enumerate(self._ring):
            if old.type in SCRUBBED_TYPES and old.payload.get("message_id") == message_id:
                self._ring[index] = Event(
                    old.cursor,
                    old.id,
                    old.type,
                    old.room_id,
                    old.subject,
                    scrubbed_payload(message_id),
                    old.created_at,
                )

    def recent(self, address: str, after: int, limit: int) -> tuple[list[Event], int, bool] | None:
        """Return (visible events, cursor examined, more?) from the ring, or None if too old."""
        if after < self.ring_floor:
            return None
        # The cursors of what `visible` lets through: the user's rooms' events and
        # those about them, each taken once.
        wanted: set[int] = set()
        for cursors in (
            *(self._by_room.get(room_id, ()) for room_id in self._rooms.get(address, ())),
            self._by_subject.get(address, ()),
        ):
            if cursors and cursors[-1] > after:
                wanted.update(cursors[bisect.bisect_right(cursors, after) :])
        chosen = sorted(wanted)
        found = [self._ring[bisect.bisect_left(self._cursors, c)] for c in chosen[:limit]]
        if len(chosen) > limit:
            # The next page starts after the last event of this one.
            return found, found[-1].cursor, True
        # Looked at everything published: the next page starts after it.
        return found, max(after, self.published), False

    async def wait(self, after: int, address: str | None = None) -> None:
        """Return once an event above *after* is published (that *address* may see).

        With *address*, events the user may not see do not wake the caller; it may
        still return for one, which costs the stream one empty look.
        """
        if address is None:
            while self.published <= after:
                await self._wake.wait()
            return
        if self.published > after:
            return
        waiting = self._waiting.get(address)
        if waiting is None:
            waiting = self._waiting[address] = trio.Event()
        await waiting.wait()

    async def park(self, subscription: Subscription, after: int, sink: Sink) -> int:
        """Wait, caught up at *after*, while `publish` writes new events to *sink*.

        Returns the cursor the stream has sent up to, once a sink refused or a batch
        changed membership (the caller reads on from there), or at once if events
        were published after *after*.
        """
        if self.published > after:
            return after
        subscription.cursor = after
        subscription.wakeup = trio.Event()
        subscription.sink = sink
        try:
            await subscription.wakeup.wait()
        finally:
            subscription.sink = None
        return subscription.cursor

    # --- ephemeral notices ---

    def stream_count(self) -> int:
        """Open subscriptions (each a WebSocket stream), for `/metrics`."""
        return sum(len(subscriptions) for subscriptions in self._subscriptions.values())

    def subscribe(self, address: str) -> Subscription:
        send, receive = trio.open_memory_channel[dict[str, Any]](EPHEMERAL_BUFFER)
        subscription = Subscription(address, send, receive)
        self._subscriptions[address].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscriptions.get(subscription.address)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[subscription.address]
        subscription.send.close()

    def live_streams(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    def notify(self, room_id: str, notice: dict[str, Any], *, skip: str | None = None) -> int:
        """Send an ephemeral *notice* to the live streams of the room's members."""
        sent = 0
        for address in self._members.get(room_id, ()):
            if address == skip:
                continue
            for subscription in self._subscriptions.get(address, ()):
                try:
                    subscription.send.send_nowait(notice)
                    sent += 1
                except (trio.WouldBlock, trio.ClosedResourceError):
                    # A stream not keeping up loses typing notices, never events.
                    subscription.dropped += 1
        return sent
