"""The hub at national scale: a load generator that plays 600 boxes against the hub (issue 22).

The load model (written down before any figure; docs/hub.md "Capacity plan" builds on it).
REQUIREMENTS.md §2 gives the size: **348,582 accounts in 596 agencies** (we plan for
350,000 users and 600 boxes: an agency whose offices are far apart runs two). What it
does not give is how much people type; these are our assumptions, each a constant below:

- chat: `MESSAGES_PER_USER_HOUR` = 3 messages per user per working hour on average (a
  G-Chat-like service used for office coordination), and `RECEIPTS_PER_MESSAGE` = 1:
  read receipts name who read (REQUIREMENTS.md §3.4), and a reader's box sends one
  receipt event for what they read in a room at a time, about one per message read;
- mail: `MAILS_PER_USER_HOUR` = 2 mails sent per user per working hour. Mail does not
  cross the hub's chat sync API; where the hub is the central mail server it reaches
  its SMTP relay and IMAP (bench_relay.py and bench_catchup.py measure those). This
  bench plays chat only and says so;
- `PEAK_FACTOR` = 2: the busiest working hour (09:00-10:00, 13:00-14:00) carries twice
  the mean hour; `WORKING_HOURS` = 8 a day;
- rooms: each box's people are in `AGENCY_ROOMS` agency rooms (3-25 of its own people)
  and each box owns `INTER_AGENCY_ROOMS` inter-agency rooms (its people plus 2-3 people
  of each of 2 other agencies), so a box is in about 6 inter-agency rooms;
  `INTER_AGENCY_SHARE` = 15 % of messages go to them (REQUIREMENTS.md §3.3: rooms "along
  or across lines of work");
- a box pulls after every push and every `POLL_INTERVAL` = 5 s when idle (its chat
  replicator's, appliance/sync/chat.py), pushes in batches of up to 200.

So the national peak hour is 350,000 × 3 × 2 × (1 + 1) / 3600 ≈ **1,167 chat events/s**
into the hub, plus 600 / 5 = 120 idle pulls/s; a day is 350,000 × 3 × 8 × 2 ≈ **16.8 M
events** (the peak factor applies to the peak hour only: a day averages the mean hour).

What is played. Every box is enrolled **for real** through the hub's API
(`appliance.provisioning.enrol.enroll`: CA fetch, token, CSR, certificate from the hub's
CA), once, and the credentials are cached with the hub's data directory in the bench's
cache folder (``--cache``, reused by later runs with the same shape). The hub's directory
holds every box's users (350,000 at full size), written in-process before the hub starts
with `Directory.apply_entries` (what ``/sync/v1/directory/push`` does, without the
mailboxes chat does not read). Boxes are played by ``--processes`` generator processes,
each a trio loop holding one mutual-TLS connection per box through the real box client
(`appliance.sync.hub_client.HubClient`), each box from its own loopback address
(127.1.x.y, so the hub's per-source connection share sees 600 sources as it would on GIN).
Events are `ReplicatedEvent` values of the chat sync codec in the shapes a box's chat
store writes (`test_event_shapes_are_a_boxs` compares them with a real box's outbox),
sent with ``to_json``; answers are read with `parse_answers` / `parse_page`.

Phases, for each hub set-up (SQLite with 1 process; PostgreSQL with 1, 2 and 4 processes
answering the sync port: ``edgebox run --role hub`` plus ``edgebox hub worker``s):

1. warm-up (not timed): every box pushes its rooms, then pulls the others' (a barrier
   between processes, through files in the run folder);
2. **sustained** (``--duration`` s): every box makes events at ``--rate`` / boxes a
   second (Poisson), pushes them and pulls as its replicator does. Figures: accepted
   events/s, p50/p99 of the push request, of event-made-to-stored (the box's wait) and of
   the pull request; hub CPU per event (psutil: the hub's processes, and PostgreSQL's);
3. **reconnect storm**: every box holds a day's backlog (``--backlog`` events each: the
   national day is 28,000 per box, far beyond this machine, so it is scaled and the
   figures say by how much) and all start at once: time until every box has pushed all
   and pulled everything of its rooms, each box's wait for its first answer and its
   finish, requests per box, ``503``s; the throughput limit is the best 30 s of accepted
   events in the storm, and the storm's time is compared with backlog / limit (target
   1.25). A box not converged within ``--storm-timeout`` is counted as starved. The cut
   broke every connection, so each box's first request opens a new one (a TLS
   handshake), and each box starts after its own delay in ``[0, --spread)``, drawn as
   its `StaggeredWake` draws it (appliance.sync.reconnect; ``--spread 0``: all at once).

A ``503`` with ``Retry-After`` (the hub's fair admission, or its store away) is "wait and
retry" as the chat replicator does it: the Retry-After plus up to a quarter, counted per
box and by the hub's reason. Any other failure (no connection, a handshake the hub shed,
no answer within the client's 120 s: a *time-out*, counted apart) is retried after the
replicator's back-off. The ``102 Processing`` answers a request reads while it waits for
its turn are counted too, and at the end the hub's own admission report (every process:
requests served, 503s, TLS handshakes done and shed, the longest wait for a turn) is
read into the results.

Database size per day of national traffic: bytes the store grew (``pg_database_size``,
or the SQLite chat file and its WAL) divided by the events stored, times 16.8 M.

    .venv/bin/python tests/bench/bench_hub_load.py                     # 600 boxes, all set-ups
    .venv/bin/python tests/bench/bench_hub_load.py --boxes 60 --users-per-box 50 \\
        --setups pg1 --duration 20 --backlog 20                        # quick look
    .venv/bin/python -m pytest tests/bench/bench_hub_load.py -m bench  # small, checks only

Results go to tests/bench/results/hub_load.json. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest
import trio

from appliance.sync.codec.chat import ReplicatedEvent, parse_answers, parse_page
from appliance.sync.reconnect import RECONNECT_SPREAD, box_rng, jittered
from appliance.sync.transport import HubBusy, HubRefused, HubUnavailable
from tests.bench.common import (
    RESULTS_DIR,
    log,
    percentile,
    stamp,
    tree_cpu_seconds,
    write_results,
)

RESULTS = RESULTS_DIR / "hub_load.json"

# --- the load model (see the module docstring) ----------------------------------------

NATIONAL_USERS = 350_000
NATIONAL_BOXES = 600
NATIONAL_AGENCIES = 596
MESSAGES_PER_USER_HOUR = 3.0
RECEIPTS_PER_MESSAGE = 1.0
MAILS_PER_USER_HOUR = 2.0
PEAK_FACTOR = 2.0
WORKING_HOURS = 8
INTER_AGENCY_SHARE = 0.15
AGENCY_ROOMS = 12
INTER_AGENCY_ROOMS = 2
POLL_INTERVAL = 5.0
BATCH = 200
#: A box's back-off after a failed request, at most (appliance.sync.chat.MAX_BACKOFF).
MAX_BACKOFF = 300.0
#: The storm's target: converged within this many times backlog / throughput limit.
STORM_TARGET = 1.25
#: The target of the issue: p99 of a push under this many seconds at the peak hour.
P99_PUSH_TARGET = 0.200


def national_model() -> dict[str, float]:
    """The national figures the load model gives (events are chat events into the hub)."""
    mean_events_s = NATIONAL_USERS * MESSAGES_PER_USER_HOUR * (1 + RECEIPTS_PER_MESSAGE) / 3600
    day_events = (
        NATIONAL_USERS * MESSAGES_PER_USER_HOUR * WORKING_HOURS * (1 + RECEIPTS_PER_MESSAGE)
    )
    return {
        "users": NATIONAL_USERS,
        "boxes": NATIONAL_BOXES,
        "agencies": NATIONAL_AGENCIES,
        "users_per_box": round(NATIONAL_USERS / NATIONAL_BOXES, 1),
        "messages_per_user_hour": MESSAGES_PER_USER_HOUR,
        "receipts_per_message": RECEIPTS_PER_MESSAGE,
        "mails_per_user_hour": MAILS_PER_USER_HOUR,
        "peak_factor": PEAK_FACTOR,
        "working_hours": WORKING_HOURS,
        "mean_hour_events_per_s": round(mean_events_s, 1),
        "peak_hour_events_per_s": round(mean_events_s * PEAK_FACTOR, 1),
        "idle_pulls_per_s": round(NATIONAL_BOXES / POLL_INTERVAL, 1),
        "day_events": round(day_events),
        "day_events_per_box": round(day_events / NATIONAL_BOXES),
        "peak_hour_mails_per_s": round(NATIONAL_USERS * MAILS_PER_USER_HOUR * PEAK_FACTOR / 3600),
    }


# --- who is who: the plan, the same in every process for one seed ---------------------


@dataclass(frozen=True)
class Room:
    """A room of the plan: its creating box, its members (creator first)."""

    creator_box: int
    number: int
    members: tuple[str, ...]
    inter_agency: bool


@dataclass
class Plan:
    """Boxes, their agencies and people, and the rooms (deterministic from the seed)."""

    boxes: int
    users_per_box: int
    seed: int
    rooms: list[Room] = field(default_factory=list)

    @property
    def agencies(self) -> int:
        # 596 agencies for 600 boxes: a few agencies run two boxes.
        return max(1, round(self.boxes * NATIONAL_AGENCIES / NATIONAL_BOXES))

    def box_id(self, box: int) -> str:
        return f"box{box:04d}"

    def domain(self, box: int) -> str:
        return f"ag{box % self.agencies:04d}.go.th"

    def users(self, box: int) -> list[str]:
        """The box's own people (a second box of an agency has the next numbers)."""
        first = (box // self.agencies) * self.users_per_box
        return [f"u{first + n:05d}@{self.domain(box)}" for n in range(self.users_per_box)]

    def rank(self, address: str) -> int:
        """A person's rank in the directory (3-10, spread evenly over a box's people)."""
        return 3 + int(address[1:6]) % self.users_per_box % 8

    def _senior_first(self, members: list[str]) -> list[str]:
        # The senior member starts a group: a room whose other members all outrank its
        # creator is refused (`RoomPolicy.check_not_disguised_direct`).
        creator = max(members, key=lambda a: (self.rank(a), a))
        return [creator, *(m for m in members if m != creator)]

    def make_rooms(self) -> None:
        rng = random.Random(self.seed)
        domains = [self.domain(b) for b in range(self.boxes)]
        for box in range(self.boxes):
            own = self.users(box)
            for number in range(AGENCY_ROOMS):
                size = min(len(own), rng.randint(3, 25))
                members = self._senior_first(rng.sample(own, size))
                self.rooms.append(Room(box, number, tuple(members), False))
            for number in range(AGENCY_ROOMS, AGENCY_ROOMS + INTER_AGENCY_ROOMS):
                members = self._senior_first(rng.sample(own, min(len(own), rng.randint(2, 6))))
                others = [b for b in range(self.boxes) if domains[b] != domains[box]]
                for other in rng.sample(others, min(2, len(others))):
                    theirs = self.users(other)
                    members += rng.sample(theirs, min(len(theirs), rng.randint(2, 3)))
                self.rooms.append(Room(box, number, tuple(members), True))

    def box_of(self, address: str) -> int:
        """The box whose person *address* is (the inverse of `users`)."""
        local, _, domain = address.partition("@")
        return int(domain[2:6]) + int(local[1:]) // self.users_per_box * self.agencies

    def box_rooms(self, box: int) -> list[tuple[str, list[str], bool]]:
        """Rooms with people of *box*: (room id, its people in the room, inter-agency)."""
        if not hasattr(self, "_by_box"):
            # One pass over every membership: at 600 boxes, 8,400 rooms.
            self._by_box: dict[int, list[tuple[str, list[str], bool]]] = {}
            for room in self.rooms:
                people: dict[int, list[str]] = {}
                for member in room.members:
                    people.setdefault(self.box_of(member), []).append(member)
                for b, own in people.items():
                    self._by_box.setdefault(b, []).append(
                        (self.room_id(room), own, room.inter_agency)
                    )
        return self._by_box.get(box, [])

    def agency_rooms(self, domain: str) -> set[str]:
        """The rooms with a member of agency *domain* (what its boxes pull)."""
        boxes = [b for b in range(self.boxes) if self.domain(b) == domain]
        return {room_id for b in boxes for room_id, _, _ in self.box_rooms(b)}

    def room_id(self, room: Room) -> str:
        # A room's id is the id of the event that created it: the creator's seq = number + 1.
        return f"{self.box_id(room.creator_box)}:{room.number + 1}"


def plan_for(boxes: int, users_per_box: int, seed: int) -> Plan:
    plan = Plan(boxes, users_per_box, seed)
    plan.make_rooms()
    return plan


# --- events, in the shapes a box's chat store writes -----------------------------------

ROOM_OPTIONS: dict[str, Any] = {
    "no_private_chat": False,
    "auto_location": False,
    "working_hours": None,
    "posters": [],
    "secret_ttl": 86400,
    "audience": {"agency": None, "units": []},
}

WORDS = (
    "ประชุม",
    "เอกสาร",
    "ด่วน",
    "รายงาน",
    "ครับ",
    "ค่ะ",
    "ได้รับ",
    "แล้ว",
    "ขอบคุณ",
    "พรุ่งนี้",
    "โครงการ",
    "งบประมาณ",
    "อนุมัติ",
    "ส่ง",
    "ให้",
    "ที่",
    "ห้อง",
)


def chat_text(rng: random.Random) -> str:
    length = min(200, max(5, int(rng.expovariate(1 / 45))))
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:length]


class EventMaker:
    """A box's event ids and events (sans-I/O: values in, `ReplicatedEvent`s out)."""

    def __init__(self, box_id: str, first_seq: int = 1) -> None:
        self.box_id = box_id
        self.seq = first_seq - 1

    def _next_id(self) -> str:
        self.seq += 1
        return f"{self.box_id}:{self.seq}"

    def room_created(
        self, room_id: str, name: str, members: list[str], at: float
    ) -> ReplicatedEvent:
        event_id = self._next_id()
        assert event_id == room_id, (event_id, room_id)
        listed = sorted(members)
        room = {
            "id": room_id,
            "kind": "group",
            "name": name,
            "owner": members[0],
            "created_by": members[0],
            "options": ROOM_OPTIONS,
            "created_at": at,
            "member_count": len(listed),
            "members": listed,
        }
        return ReplicatedEvent(
            event_id, "room.created", room_id, None, {"room": room, "addresses": listed}, at
        )

    def message(self, room_id: str, sender: str, text: str, at: float) -> ReplicatedEvent:
        event_id = self._next_id()
        message = {
            "id": event_id,
            "room_id": room_id,
            "sender": sender,
            "kind": "text",
            "content": {"text": text},
            "reply_to": None,
            "client_id": None,
            "created_at": at,
            "edited_at": None,
            "deleted": False,
            "secret": False,
            "expires_at": None,
        }
        # The payload's copy says whether the message is hidden from its author's view;
        # the snapshot (the row as the sender's box holds it) does not.
        shown = {**message, "hidden": False}
        return ReplicatedEvent(
            event_id,
            "message.posted",
            room_id,
            None,
            {"message_id": event_id, "message": shown},
            at,
            message=message,
        )

    def receipt(
        self, room_id: str, reader: str, message_ids: list[str], at: float
    ) -> ReplicatedEvent:
        payload = {"reader": reader, "read_at": at, "message_ids": message_ids}
        return ReplicatedEvent(self._next_id(), "receipt", room_id, None, payload, at)


def wire(event: ReplicatedEvent, hub_wire: int) -> dict[str, Any]:
    """The event as a box pushes it: wire format 2 leaves out a repeated snapshot."""
    if hub_wire >= 2 and event.type == "message.posted":
        return replace(event, message=None).to_json()
    return event.to_json()


# --- one simulated box -----------------------------------------------------------------

#: The loopback address the current box's connections come from (see `_open_tcp_from`).
SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("source", default=None)


def source_address(box: int) -> str:
    return f"127.1.{box // 250}.{box % 250 + 1}"


async def _open_tcp_from(watch: Any, host: str, port: int, *, deadline: float = 10.0) -> Any:
    """`appliance.sync.liveness.open_tcp`, from the box's own loopback address."""
    from appliance.sync.liveness import set_keepalive

    with trio.fail_after(deadline):
        stream = await trio.open_tcp_stream(host, port, local_address=SOURCE.get())
    set_keepalive(stream.socket)
    return stream


@dataclass
class BoxStats:
    pushed: int = 0
    accepted: int = 0
    refused: int = 0
    pulled: int = 0
    requests: int = 0
    shed_503: int = 0
    unavailable: int = 0
    #: Of `unavailable`: no answer within the client's time limit (sent again after).
    timeouts: int = 0
    #: Interim ``102 Processing`` answers read while requests waited for their turn.
    interim_102: int = 0
    first_answer: float | None = None
    push_done: float | None = None
    converged: float | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    #: 503s by the hub's reason (queue_full, waited_too_long, store...).
    busy_reasons: dict[str, int] = field(default_factory=dict)


class SimBox:
    """One box: its client, its rooms, its queue of events the hub has not answered."""

    def __init__(
        self, plan: Plan, index: int, keys_dir: Path, hub_url: str, rng: random.Random
    ) -> None:
        from appliance.sync.hub_client import HubClient

        self.plan = plan
        self.index = index
        self.domain = plan.domain(index)
        self.own = set(plan.users(index))
        self.client = HubClient(keys_dir, hub_url, timeout=120.0)
        self.maker = EventMaker(plan.box_id(index))
        self.rng = rng
        #: The box's own waits (back-off, Retry-After jitter, the return's spread): the
        #: source a real box draws them from (appliance.sync.reconnect), apart from
        #: `rng`, which draws the events and must stay as `storm_rooms` replays it.
        self.pacing = box_rng(plan.box_id(index))
        self.hub_wire = 1
        self.cursor = 0
        self.pending: deque[ReplicatedEvent] = deque()
        #: When each pending event was made (monotonic), for the box's wait.
        self.made: dict[str, float] = {}
        self.stats = BoxStats()
        self.seen: set[str] = set()
        #: Rooms whose members include one of this box's people: (room id, its own members).
        self.rooms = plan.box_rooms(index)
        #: The last message seen per room (what a receipt names).
        self.last_message: dict[str, tuple[str, str]] = {}
        self.wake = trio.Event()
        # Latencies, seconds: push requests, event made -> stored, pull requests.
        self.push_s: list[float] = []
        self.wait_s: list[float] = []
        self.pull_s: list[float] = []
        #: (monotonic time, events accepted) per push answer, for the throughput windows.
        self.acks: list[tuple[float, int]] = []

    def reset_figures(self) -> None:
        """Forget the figures so far (a phase's figures are its own)."""
        self.push_s, self.wait_s, self.pull_s, self.acks = [], [], [], []
        self.stats = BoxStats()

    def agency_settings(self) -> dict[str, Any]:
        return {"public_mode": False, "broadcast_creators": "admins", "admins": [min(self.own)]}

    def own_rooms_created(self, at: float) -> None:
        for room in self.plan.rooms:
            if room.creator_box == self.index:
                name = f"ห้อง {room.number}"
                self.queue(
                    self.maker.room_created(self.plan.room_id(room), name, list(room.members), at)
                )

    def queue(self, event: ReplicatedEvent) -> None:
        self.pending.append(event)
        self.made[event.id] = time.monotonic()
        self.wake.set()

    def make_event(self, at: float, *, foreign_receipts: bool = True) -> ReplicatedEvent:
        """One more event of this box's people: a message, or a receipt for one."""
        rng = self.rng
        inter = [r for r in self.rooms if r[2]]
        agency = [r for r in self.rooms if not r[2]] or inter
        room_id, members, _ = rng.choice(
            inter if inter and rng.random() < INTER_AGENCY_SHARE else agency
        )
        last = self.last_message.get(room_id)
        wants_receipt = rng.random() < RECEIPTS_PER_MESSAGE / (1 + RECEIPTS_PER_MESSAGE)
        if wants_receipt and last is not None and (foreign_receipts or last[1] in self.own):
            readers = [m for m in members if m != last[1]]
            if readers:
                return self.maker.receipt(room_id, rng.choice(readers), [last[0]], at)
        event = self.maker.message(room_id, rng.choice(members), chat_text(rng), at)
        self.last_message[room_id] = (event.id, event.message["sender"] if event.message else "")
        return event

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        """One request; a 503 (or no answer) is waited out and sent again, and counted.

        The waits are the chat replicator's (appliance.sync.chat): a busy hub's
        Retry-After plus up to a quarter, without growing the back-off; any other
        failure the back-off of 1, 2, 4 ... s stretched by up to a quarter.
        """
        failures = 0
        while True:
            interim = self.client.interim_answers
            try:
                answer = await self.client(path, body)
            except HubBusy as exc:
                self.stats.shed_503 += 1
                reason = exc.reason or "unsaid"
                self.stats.busy_reasons[reason] = self.stats.busy_reasons.get(reason, 0) + 1
                await trio.sleep(
                    max(self.client.watch.busy_for(), jittered(exc.retry_after, self.pacing))
                )
                continue
            except HubUnavailable as exc:
                failures += 1
                self.stats.unavailable += 1
                if "no answer in time" in str(exc):
                    self.stats.timeouts += 1
                backoff = min(MAX_BACKOFF, 2.0 ** min(failures - 1, 30))
                await trio.sleep(min(MAX_BACKOFF, jittered(backoff, self.pacing)))
                continue
            finally:
                self.stats.interim_102 += self.client.interim_answers - interim
            self.stats.requests += 1
            return answer

    async def push(self, started: float) -> None:
        """Push what waits, in batches, until the queue is empty."""
        while self.pending:
            batch = list(self.pending)[:BATCH]
            body = {
                "events": [wire(e, self.hub_wire) for e in batch],
                "agency": self.agency_settings(),
            }
            sent_at = time.monotonic()
            try:
                reply = await self.call("/sync/v1/chat/push", body)
            except HubRefused as exc:
                self.stats.refusals[exc.code] = self.stats.refusals.get(exc.code, 0) + len(batch)
                self.stats.refused += len(batch)
                for _ in batch:
                    self.made.pop(self.pending.popleft().id, None)
                continue
            now = time.monotonic()
            self.push_s.append(now - sent_at)
            if self.stats.first_answer is None:
                self.stats.first_answer = now - started
            wire_format = reply.get("wire", 1) if isinstance(reply, dict) else 1
            self.hub_wire = wire_format if isinstance(wire_format, int) else 1
            answers = {a.id: a for a in parse_answers(reply)}
            accepted = 0
            for event in batch:
                answer = answers.get(event.id)
                self.pending.popleft()
                made = self.made.pop(event.id, now)
                self.stats.pushed += 1
                if answer is not None and answer.accepted:
                    accepted += 1
                    self.wait_s.append(now - made)
                else:
                    code = answer.code if answer is not None else "no_answer"
                    self.stats.refusals[code] = self.stats.refusals.get(code, 0) + 1
                    self.stats.refused += 1
            self.stats.accepted += accepted
            self.acks.append((now, accepted))

    async def pull(self) -> None:
        """Pull until the hub says nothing more is waiting."""
        while True:
            sent_at = time.monotonic()
            page = parse_page(
                await self.call(
                    "/sync/v1/chat/pull", {"after": self.cursor, "limit": BATCH, "wire": 2}
                )
            )
            self.pull_s.append(time.monotonic() - sent_at)
            for event in page.events:
                if event.id in self.seen:
                    continue
                self.seen.add(event.id)
                self.stats.pulled += 1
                if event.type == "message.posted":
                    shown = event.message or event.payload.get("message") or {}
                    self.last_message[event.room_id] = (event.id, str(shown.get("sender", "")))
            self.cursor = page.cursor
            if not page.more:
                return


# --- a generator process: its boxes, its phases ----------------------------------------


def _barrier(run_dir: Path, name: str, me: int, processes: int, timeout: float) -> None:
    (run_dir / f"{name}-{me}").write_text("")
    deadline = time.monotonic() + timeout
    while sum((run_dir / f"{name}-{k}").exists() for k in range(processes)) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: the other generator processes did not arrive")
        time.sleep(0.05)


def _start_time(run_dir: Path, name: str, me: int, lead: float = 1.0) -> float:
    """Process 0 names the wall-clock start of a phase; every process reads it."""
    path = run_dir / name
    if me == 0:
        path.with_suffix(".tmp").write_text(str(time.time() + lead))
        path.with_suffix(".tmp").rename(path)
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start time {name}")
        time.sleep(0.02)
    return float(path.read_text())


def expected_pulls(plan: Plan, backlogs: dict[int, list[str]], box: int) -> int:
    """How many storm events of other boxes *box* must pull: those of its agency's rooms."""
    mine = plan.agency_rooms(plan.domain(box))
    return sum(1 for other, rooms in backlogs.items() if other != box for r in rooms if r in mine)


def storm_rooms(plan: Plan, backlog: int, seed: int) -> dict[int, list[str]]:
    """The room of every storm event of every box (to count what each box must pull)."""
    out: dict[int, list[str]] = {}
    for box in range(plan.boxes):
        sim = _Shadow(plan, box, random.Random(seed * 7919 + box))
        out[box] = [sim.make_event(0.0, foreign_receipts=False).room_id for _ in range(backlog)]
    return out


class _Shadow(SimBox):
    """A `SimBox` without a connection: draws the same events (for `storm_rooms`)."""

    def __init__(self, plan: Plan, index: int, rng: random.Random) -> None:
        self.plan = plan
        self.index = index
        self.own = set(plan.users(index))
        self.maker = EventMaker(plan.box_id(index), INTER_AGENCY_ROOMS + AGENCY_ROOMS + 1)
        self.rng = rng
        self.rooms = plan.box_rooms(index)
        self.last_message = {}


async def play(spec: dict[str, Any]) -> dict[str, Any]:
    """Play the boxes of *spec* through every phase; return their figures."""
    import appliance.sync.hub_client as hub_client

    hub_client.open_tcp = _open_tcp_from  # type: ignore[assignment]
    plan = plan_for(spec["boxes"], spec["users_per_box"], spec["seed"])
    run_dir, me, processes = Path(spec["run_dir"]), spec["process"], spec["processes"]
    cache = Path(spec["cache"])
    mine = spec["mine"]
    sims = {
        i: SimBox(
            plan,
            i,
            cache / "boxes" / plan.box_id(i) / "keys",
            spec["hub_url"],
            random.Random(spec["seed"] * 7919 + i),
        )
        for i in mine
    }
    result: dict[str, Any] = {"process": me, "boxes": len(mine)}
    cpu0 = time.process_time()

    async def each(job: Any) -> None:
        async with trio.open_nursery() as nursery:
            for sim in sims.values():
                nursery.start_soon(job, sim)

    # 1. Warm-up: rooms pushed, barrier, everyone pulls, barrier.
    async def rooms(sim: SimBox) -> None:
        SOURCE.set(source_address(sim.index))
        sim.own_rooms_created(time.time())
        await sim.push(time.monotonic())

    await each(rooms)
    await trio.to_thread.run_sync(_barrier, run_dir, "rooms", me, processes, 900.0)

    async def first_pull(sim: SimBox) -> None:
        SOURCE.set(source_address(sim.index))
        await sim.pull()

    await each(first_pull)
    await trio.to_thread.run_sync(_barrier, run_dir, "pulled", me, processes, 900.0)
    result["warmup_refused"] = sum(s.stats.refused for s in sims.values())
    for sim in sims.values():  # the warm-up's own figures are not the phases'
        sim.reset_figures()

    # 2. Sustained load.
    if spec["duration"] > 0:
        start = await trio.to_thread.run_sync(_start_time, run_dir, "live-start", me)
        await trio.sleep(max(0.0, start - time.time()))
        end = time.monotonic() + spec["duration"]
        per_box = spec["rate"] / plan.boxes

        async def live(sim: SimBox) -> None:
            SOURCE.set(source_address(sim.index))

            async def make() -> None:
                while True:
                    await trio.sleep(sim.rng.expovariate(per_box))
                    if time.monotonic() >= end:
                        return
                    sim.queue(sim.make_event(time.time()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(make)
                started = time.monotonic()
                while time.monotonic() < end:
                    sim.wake = trio.Event()
                    await sim.push(started)
                    await sim.pull()
                    with trio.move_on_after(min(POLL_INTERVAL, max(0.0, end - time.monotonic()))):
                        await sim.wake.wait()
                await sim.push(started)  # what was made before the end
                nursery.cancel_scope.cancel()

        await each(live)
        result["live"] = _figures(sims.values(), start_wall=start)
    # Everything of the sustained phase is pushed; pull it all, so that what the storm
    # pulls is the storm's own.
    await trio.to_thread.run_sync(_barrier, run_dir, "live-done", me, processes, 900.0)
    await each(first_pull)
    await trio.to_thread.run_sync(_barrier, run_dir, "drained", me, processes, 900.0)
    for sim in sims.values():
        sim.reset_figures()

    # 3. The reconnect storm: a day's backlog each, everyone at once.
    if spec["backlog"] > 0:
        layout = storm_rooms(plan, spec["backlog"], spec["seed"])
        for sim in sims.values():
            # The backlog is drawn as `storm_rooms` drew it: same seed, same rooms.
            sim.rng = random.Random(spec["seed"] * 7919 + sim.index)
            sim.last_message = {}
            day_start = time.time() - 86400
            for n in range(spec["backlog"]):
                at = day_start + n * 86400 / spec["backlog"]
                sim.queue(sim.make_event(at, foreign_receipts=False))
            assert [e.room_id for e in sim.pending] == layout[sim.index]
        expected = {i: expected_pulls(plan, layout, i) for i in mine}
        result["storm_expected_pulls"] = sum(expected.values())
        start = await trio.to_thread.run_sync(_start_time, run_dir, "storm-start", me, 2.0)
        await trio.sleep(max(0.0, start - time.time()))
        started = time.monotonic()
        limit = spec["storm_timeout"]
        for sim in sims.values():
            sim.made = {e.id: started for e in sim.pending}  # waited since the cut
            sim.seen.clear()
            # The cut broke every connection: each box's first request of the storm
            # opens a new one, with a TLS handshake (what the hub's handshake gate bounds).
            await sim.client.aclose()

        async def storm(sim: SimBox) -> None:
            SOURCE.set(source_address(sim.index))
            with trio.move_on_after(limit):
                if spec["spread"] > 0:
                    # The link monitor's return reaches the box's chat after its own
                    # delay (appliance.sync.reconnect.StaggeredWake).
                    await trio.sleep(sim.pacing.uniform(0.0, spec["spread"]))
                await sim.push(started)
                sim.stats.push_done = time.monotonic() - started
                while sim.stats.pulled < expected[sim.index]:
                    await sim.pull()
                    if sim.stats.pulled < expected[sim.index]:
                        # The others are still pushing: ask again at the replicator's
                        # poll interval, as a real box does (a pull a second from 600
                        # boxes was load of the bench's own making).
                        await trio.sleep(POLL_INTERVAL)
                sim.stats.converged = time.monotonic() - started

        async def progress() -> None:
            while True:
                await trio.sleep(15)
                done = sum(s.stats.converged is not None for s in sims.values())
                pulled = sum(s.stats.pulled for s in sims.values())
                waiting = sum(len(s.pending) for s in sims.values())
                refused = _merge(s.stats.refusals for s in sims.values())
                log(
                    f"generator {me}: storm {time.monotonic() - started:.0f} s: {done}/{len(sims)}"
                    f" boxes converged, {waiting} events to push, pulled {pulled}"
                    f"/{sum(expected.values())}, refused {refused}",
                    file=sys.stderr,
                )

        async with trio.open_nursery() as watcher:
            watcher.start_soon(progress)
            await each(storm)
            watcher.cancel_scope.cancel()
        result["storm"] = _figures(sims.values(), start_wall=start, started=started)
        result["storm"]["boxes_detail"] = {
            str(i): [
                s.stats.first_answer,
                s.stats.push_done,
                s.stats.converged,
                s.stats.requests,
                s.stats.shed_503,
                s.stats.pulled,
                expected[i],
            ]
            for i, s in sims.items()
        }
    for sim in sims.values():
        await sim.client.aclose()
    result["generator_cpu_s"] = round(time.process_time() - cpu0, 2)
    return result


#: What each box counts, added up over the boxes of a phase.
COUNTERS = (
    "pushed",
    "accepted",
    "refused",
    "pulled",
    "requests",
    "shed_503",
    "unavailable",
    "timeouts",
    "interim_102",
)


def _figures(sims: Any, *, start_wall: float, started: float | None = None) -> dict[str, Any]:
    sims = list(sims)
    total = BoxStats()
    refusals: dict[str, int] = {}
    busy: dict[str, int] = {}
    for s in sims:
        for name in COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(s.stats, name))
        for code, n in s.stats.refusals.items():
            refusals[code] = refusals.get(code, 0) + n
        for reason, n in s.stats.busy_reasons.items():
            busy[reason] = busy.get(reason, 0) + n
    base = started if started is not None else min((t for s in sims for t, _ in s.acks), default=0)
    return {
        "start_wall": start_wall,
        **{k: v for k, v in vars(total).items() if isinstance(v, int)},
        "refusals": refusals,
        "busy_reasons": busy,
        "push_s": [round(x, 5) for s in sims for x in s.push_s],
        "wait_s": [round(x, 5) for s in sims for x in s.wait_s],
        "pull_s": [round(x, 5) for s in sims for x in s.pull_s],
        "acks": [(round(t - base, 3), n) for s in sims for t, n in s.acks],
        "started_mono": base,
    }


# --- the hub for a run: its data, its store, its processes -----------------------------


def _edgebox(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    from tests.harness import EDGEBOX

    done = subprocess.run(
        [*EDGEBOX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"edgebox {' '.join(args[:3])} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


async def _fill_hub(hub: Path, plan: Plan) -> list[str]:
    """Every box's people in the hub's directory; one token per box. Return the tokens."""
    from appliance.box import configured, open_box
    from appliance.sync.clock import SystemClock
    from appliance.sync.codec.directory import DirectoryEntry
    from appliance.sync.hub.ca import fingerprint
    from appliance.sync.hub.enrolment import Enrolment, open_hub_database

    async with open_box(configured(hub, {}, {})) as box:
        seq = 0
        for b in range(plan.boxes):
            entries = []
            for n, address in enumerate(plan.users(b)):
                seq += 1
                entries.append(
                    DirectoryEntry(
                        seq,
                        address,
                        plan.domain(b),
                        f"หน่วยงาน {b % plan.agencies}",
                        None,
                        f"ผู้ใช้ {n}",
                        None,
                        None,
                        plan.rank(address),
                        None,
                        None,
                        False,
                    )
                )
            for chunk in range(0, len(entries), 5000):
                await box.directory.apply_entries(entries[chunk : chunk + 5000], remote=False)
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((hub / "keys" / "ca.pem").read_bytes())
    async with open_hub_database(hub) as db:
        enrolment = Enrolment(db, SystemClock())
        return [
            str(await enrolment.issue_token(plan.domain(b), fingerprint(ca), 86400))
            for b in range(plan.boxes)
        ]


async def _enrol_all(cache: Path, plan: Plan, url: str, tokens: list[str]) -> None:
    from appliance.identity import Identity
    from appliance.provisioning.enrol import enroll
    from appliance.store.settings import Settings

    limiter = trio.CapacityLimiter(8)

    async def one(b: int) -> None:
        data = cache / "boxes" / plan.box_id(b)
        (data / "keys").mkdir(parents=True, exist_ok=True)
        settings = Settings(data / "config.json")
        try:
            identity = Identity(plan.box_id(b), plan.domain(b), plan.domain(b), int(time.time()))
            settings.update("box", vars(identity))
        finally:
            settings.close()
        async with limiter:
            await enroll(data, url, tokens[b])

    async with trio.open_nursery() as nursery:
        for b in range(plan.boxes):
            nursery.start_soon(one, b)


def prepare(cache: Path, plan: Plan) -> dict[str, Any]:
    """The hub's base data and every box enrolled, made once per shape and reused."""
    manifest = cache / "manifest.json"
    shape = {"boxes": plan.boxes, "users_per_box": plan.users_per_box}
    if manifest.exists() and json.loads(manifest.read_text()) == shape:
        log(f"reusing the enrolled boxes in {cache}")
        return shape
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    from tests.harness import start_box

    hub = cache / "hub"
    _edgebox("init", "--data", str(hub), "--domain", "hub.go.th")
    started = time.monotonic()
    tokens = trio.run(_fill_hub, hub, plan)
    log(
        f"hub directory: {plan.boxes * plan.users_per_box} users, {plan.boxes} tokens "
        f"in {time.monotonic() - started:.0f} s"
    )
    running = start_box(hub, extra=["--role", "hub", "--bind", "127.0.0.1"])
    try:
        started = time.monotonic()
        trio.run(_enrol_all, cache, plan, f"https://127.0.0.1:{running.port('hub-sync')}", tokens)
        took = time.monotonic() - started
        log(f"{plan.boxes} boxes enrolled through the hub's API in {took:.0f} s")
    finally:
        running.stop(timeout=60)
    manifest.write_text(json.dumps(shape))
    return shape


class Hub:
    """A hub for one run: a copy of the base data, its store, its processes."""

    def __init__(self, cache: Path, work: Path, store: str, workers: int, pg: Any) -> None:
        from tests.harness import EDGEBOX, free_port_offset, start_box

        self.data = work / "hub"
        shutil.copytree(cache / "hub", self.data)
        self.store, self.pg = store, pg
        self.url = ""
        env: dict[str, str] = {}
        if store == "postgresql":
            self.url = pg.new_database()
            _edgebox(
                "hub",
                "migrate-to-postgresql",
                "--from",
                str(self.data),
                "--to",
                self.url,
                env={"EDGEBOX_ROLE": "hub"},
            )
            env["EDGEBOX_HUB_DATABASE"] = self.url
        self.offset = free_port_offset()
        self.main = start_box(
            self.data, offset=self.offset, env=env, extra=["--role", "hub", "--bind", "127.0.0.1"]
        )
        self.workers: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        for number in range(2, workers + 1):
            proc = subprocess.Popen(
                [
                    *EDGEBOX,
                    "hub",
                    "worker",
                    "--data",
                    str(self.data),
                    "--port-offset",
                    str(self.offset),
                    "--worker",
                    str(number),
                    "--bind",
                    "127.0.0.1",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **env, "EDGEBOX_ROLE": "hub"},
            )
            self.workers.append(proc)
            self.readers.append(_wait_ready(proc))
        self.port = self.main.port("hub-sync")

    def pids(self) -> list[int]:
        return [self.main.process.pid, *(w.pid for w in self.workers)]

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pids())

    def store_bytes(self) -> int:
        if self.store == "postgresql":
            import psycopg

            with psycopg.connect(self.url) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                return int(row[0]) if row else 0
        return sum(p.stat().st_size for p in (self.data / "db").glob("chat.sqlite*"))

    def stop(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for reader in self.readers:  # each ends at its worker's end of output
            reader.join(10)
        for proc in self.workers:
            if proc.stdout is not None:
                proc.stdout.close()
        self.main.stop(timeout=60)


def _wait_ready(proc: subprocess.Popen[str]) -> threading.Thread:
    """Wait until a hub worker says ``ready``; return the thread reading its output."""
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "ready":
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not ready.wait(180) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("hub worker did not start:\n" + "".join(lines))
    return reader


def _postgres_pid(pg: Any) -> list[int]:
    if pg is None:
        return []
    try:
        return [int((pg.data / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


# --- one set-up, measured --------------------------------------------------------------


def _wait_for(path: Path, timeout: float, procs: list[subprocess.Popen[bytes]]) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(f"the generators never reached {path.name}")
        time.sleep(0.05)
    return float(path.read_text())


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def run_setup(
    args: argparse.Namespace, plan: Plan, store: str, workers: int, pg: Any
) -> dict[str, Any]:
    """Start the hub, play every phase against it from the generator processes; figures."""
    work = Path(tempfile.mkdtemp(prefix="bench-hubload-"))
    hub = Hub(args.cache, work, store, workers, pg)
    try:
        processes = max(1, min(args.processes, plan.boxes))
        outs = [work / f"gen-{k}.json" for k in range(processes)]
        procs = []
        for k in range(processes):
            spec = {
                "boxes": plan.boxes,
                "users_per_box": plan.users_per_box,
                "seed": args.seed,
                "run_dir": str(work),
                "process": k,
                "processes": processes,
                "cache": str(args.cache),
                "mine": list(range(k, plan.boxes, processes)),
                "hub_url": f"https://127.0.0.1:{hub.port}",
                "rate": args.rate,
                "duration": args.duration,
                "backlog": args.backlog,
                "storm_timeout": args.storm_timeout,
                "spread": args.spread,
            }
            spec_path = work / f"spec-{k}.json"
            spec_path.write_text(json.dumps(spec))
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "play", str(spec_path), str(outs[k])],
                    stdin=subprocess.DEVNULL,
                )
            )
        pg_pids = _postgres_pid(pg) if store == "postgresql" else []
        figures: dict[str, Any] = {"store": store, "workers": workers, "processes": processes}
        if args.duration > 0:
            start = _wait_for(work / "live-start", 1800, procs)
            _sleep_until(start)
            size0, cpu0, pg0, load0 = (
                hub.store_bytes(),
                hub.cpu(),
                tree_cpu_seconds(pg_pids),
                os.getloadavg(),
            )
            _sleep_until(start + args.duration)
            cpu1, pg1, load1 = hub.cpu(), tree_cpu_seconds(pg_pids), os.getloadavg()
            figures["live_cpu"] = {
                "hub_s": cpu1 - cpu0,
                "postgres_s": pg1 - pg0,
                "load_before": load0,
                "load_after": load1,
            }
        else:
            size0 = hub.store_bytes()
        if args.backlog > 0:
            start = _wait_for(work / "storm-start", 3600, procs)
            _sleep_until(start)
            cpu0, pg0, load0 = hub.cpu(), tree_cpu_seconds(pg_pids), os.getloadavg()
        deadline = time.monotonic() + args.storm_timeout + 600
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
        if args.backlog > 0:
            cpu1, pg1, load1 = hub.cpu(), tree_cpu_seconds(pg_pids), os.getloadavg()
            figures["storm_cpu"] = {
                "hub_s": cpu1 - cpu0,
                "postgres_s": pg1 - pg0,
                "load_before": load0,
                "load_after": load1,
            }
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a generator failed: {[p.returncode for p in procs]}")
        figures["hub_admission"] = _hub_admission(hub)
        size1 = hub.store_bytes()
        parts = [json.loads(out.read_text()) for out in outs]
        figures.update(_combine(parts, args, figures))
        stored = sum(p.get(ph, {}).get("accepted", 0) for p in parts for ph in ("live", "storm"))
        figures["store_bytes_growth"] = size1 - size0
        figures["store_bytes_per_event"] = round((size1 - size0) / stored, 1) if stored else None
        figures["generator_cpu_s"] = sum(p["generator_cpu_s"] for p in parts)
        return figures
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)


def _hub_admission(hub: Hub) -> dict[str, Any] | None:
    """What the hub's processes say of their admission since they started (every phase).

    Their report files (appliance.sync.hub.admission_report) are rewritten every 5 s:
    read after the next rewrite, so the storm's end is in them.
    """
    from appliance.sync.hub.admission_report import REPORT_EVERY, read_admission

    time.sleep(REPORT_EVERY + 1.0)
    summary = read_admission(hub.data / "run", time.time())
    if summary is None:
        return None
    return {
        "processes": summary.processes,
        "requests_limit_all_processes": summary.capacity,
        "served": summary.served,
        "busy": summary.busy,
        "longest_turn_wait_s": summary.slowest[0][1] if summary.slowest else 0.0,
        "handshakes": summary.handshakes,
    }


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _best_window(acks: list[tuple[float, int]], seconds: float) -> float:
    """The most events accepted in any *seconds* window, per second."""
    acks = sorted(acks)
    best = total = 0
    first = 0
    for t, n in acks:
        total += n
        while acks[first][0] < t - seconds:
            total -= acks[first][1]
            first += 1
        best = max(best, total)
    return best / seconds


def _combine(
    parts: list[dict[str, Any]], args: argparse.Namespace, figures: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"warmup_refused": sum(p["warmup_refused"] for p in parts)}
    counters = COUNTERS
    if args.duration > 0:
        live = [p["live"] for p in parts]
        accepted = sum(x["accepted"] for x in live)
        cpu = figures["live_cpu"]
        out["live"] = {
            "offered_events_per_s": args.rate,
            "duration_s": args.duration,
            **{k: sum(x[k] for x in live) for k in counters},
            "refusals": _merge(x["refusals"] for x in live),
            "busy_reasons": _merge(x.get("busy_reasons", {}) for x in live),
            "events_per_s": round(accepted / args.duration, 1),
            "push_request": _summary([v for x in live for v in x["push_s"]]),
            "event_wait": _summary([v for x in live for v in x["wait_s"]]),
            "pull_request": _summary([v for x in live for v in x["pull_s"]]),
            "hub_cpu_ms_per_event": round(cpu["hub_s"] / accepted * 1000, 3) if accepted else None,
            "postgres_cpu_ms_per_event": (
                round(cpu["postgres_s"] / accepted * 1000, 3) if accepted else None
            ),
            "hub_cpu_cores": round(cpu["hub_s"] / args.duration, 2),
            "postgres_cpu_cores": round(cpu["postgres_s"] / args.duration, 2),
            "load_average": [round(x, 1) for x in cpu["load_after"]],
        }
    if args.backlog > 0:
        storm = [p["storm"] for p in parts]
        detail = {k: v for x in storm for k, v in x["boxes_detail"].items()}
        # Each process's ack times are from its own monotonic start; the starts are one
        # wall-clock instant (the storm's start file), so they line up.
        acks = [(t, n) for x in storm for t, n in x["acks"]]
        accepted = sum(x["accepted"] for x in storm)
        converged = [d[2] for d in detail.values() if d[2] is not None]
        first = [d[0] for d in detail.values() if d[0] is not None]
        # 30 s, not less: a group commit answers many boxes at one instant, and a short
        # window would take that instant for a rate.
        limit = _best_window(acks, 30.0)
        took = max(converged) if len(converged) == len(detail) else None
        cpu = figures["storm_cpu"]
        requests = [d[3] for d in detail.values()]
        out["storm"] = {
            "backlog_per_box": args.backlog,
            "backlog_scale_of_a_day": round(
                args.backlog / national_model()["day_events_per_box"], 5
            ),
            **{k: sum(x[k] for x in storm) for k in counters},
            "refusals": _merge(x["refusals"] for x in storm),
            "busy_reasons": _merge(x.get("busy_reasons", {}) for x in storm),
            "reconnect_spread_s": args.spread,
            "expected_pulls": sum(p["storm_expected_pulls"] for p in parts),
            "boxes": len(detail),
            "boxes_converged": len(converged),
            "starved_boxes": len(detail) - len(converged),
            "converge_s": round(took, 1) if took is not None else None,
            "first_answer_s": {"p50": round(percentile(first, 50), 2), "max": round(max(first), 2)}
            if first
            else None,
            "box_converged_s": {
                "p50": round(percentile(converged, 50), 2),
                "max": round(max(converged), 2),
            }
            if converged
            else None,
            "requests_per_box": {"min": min(requests), "max": max(requests)},
            "box_503": {
                "min": min(d[4] for d in detail.values()),
                "max": max(d[4] for d in detail.values()),
            },
            "throughput_limit_events_per_s": round(limit, 1),
            "storm_events_per_s": round(accepted / took, 1) if took else None,
            "ideal_s": round(accepted / limit, 1) if limit else None,
            "converge_per_ideal": round(took / (accepted / limit), 2) if took and limit else None,
            "push_request": _summary([v for x in storm for v in x["push_s"]]),
            "pull_request": _summary([v for x in storm for v in x["pull_s"]]),
            "hub_cpu_ms_per_event": round(cpu["hub_s"] / accepted * 1000, 3) if accepted else None,
            "postgres_cpu_ms_per_event": (
                round(cpu["postgres_s"] / accepted * 1000, 3) if accepted else None
            ),
            "load_average": [round(x, 1) for x in cpu["load_after"]],
        }
    return out


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


SETUPS = {
    "sqlite1": ("sqlite", 1),
    "pg1": ("postgresql", 1),
    "pg2": ("postgresql", 2),
    "pg4": ("postgresql", 4),
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = plan_for(args.boxes, args.users_per_box, args.seed)
    args.cache.mkdir(parents=True, exist_ok=True)
    prepare(args.cache, plan)
    params = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("func",)
    }
    result = stamp("hub_load", params)
    result["model"] = national_model()
    result["played"] = {
        "boxes": plan.boxes,
        "agencies": plan.agencies,
        "users": plan.boxes * plan.users_per_box,
        "rooms": len(plan.rooms),
        "generator_processes": args.processes,
    }
    result["load_average_at_start"] = [round(x, 1) for x in os.getloadavg()]
    result["setups"] = {}
    pg = None
    try:
        if any(SETUPS[s][0] == "postgresql" for s in args.setups):
            from tests.postgres import PrivatePostgres

            pg = PrivatePostgres(durable=True)
        for name in args.setups:
            store, workers = SETUPS[name]
            log(f"{name}: {store}, {workers} process(es) answering, {plan.boxes} boxes")
            figures = run_setup(args, plan, store, workers, pg)
            result["setups"][name] = figures
            log(f"{name}: " + json.dumps(_headline(figures)))
            if not args.no_write:  # a long run keeps what it has measured so far
                write_results(RESULTS, result)
    finally:
        if pg is not None:
            pg.stop()
    return result


def _headline(figures: dict[str, Any]) -> dict[str, Any]:
    live, storm = figures.get("live", {}), figures.get("storm", {})
    return {
        "events_per_s": live.get("events_per_s"),
        "push_p99_ms": live.get("push_request", {}).get("p99_ms"),
        "wait_p99_ms": live.get("event_wait", {}).get("p99_ms"),
        "pull_p99_ms": live.get("pull_request", {}).get("p99_ms"),
        "hub_ms_per_event": live.get("hub_cpu_ms_per_event"),
        "pg_ms_per_event": live.get("postgres_cpu_ms_per_event"),
        "storm_s": storm.get("converge_s"),
        "storm_limit": storm.get("throughput_limit_events_per_s"),
        "storm_per_ideal": storm.get("converge_per_ideal"),
        "starved": storm.get("starved_boxes"),
        "storm_503": storm.get("shed_503"),
        "storm_timeouts": storm.get("timeouts"),
        "storm_102": storm.get("interim_102"),
        "bytes_per_event": figures.get("store_bytes_per_event"),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=NATIONAL_BOXES)
    parser.add_argument("--users-per-box", type=int, default=round(NATIONAL_USERS / NATIONAL_BOXES))
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="events/s all boxes make together in the sustained phase",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sustained load")
    parser.add_argument("--backlog", type=int, default=50, help="storm events per box")
    parser.add_argument("--storm-timeout", type=float, default=1200.0)
    parser.add_argument(
        "--spread",
        type=float,
        default=RECONNECT_SPREAD,
        help="seconds over which the boxes' storm starts are spread, as a box's"
        " StaggeredWake spreads them (0: all in one instant)",
    )
    parser.add_argument("--processes", type=int, default=3, help="generator processes")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgebox-bench-hubload"
    )
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "play":  # a generator process (see `run_setup`)
        spec = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(trio.run(play, spec)))
        return {}
    args = parse(argv)
    result = run(args)
    for name, figures in result["setups"].items():
        print(name, json.dumps(_headline(figures)))
    if not args.no_write:
        write_results(RESULTS, result)
    return result


# --- pytest ----------------------------------------------------------------------------


async def test_event_shapes_are_a_boxs(tmp_path: Path) -> None:
    """The generator's events have the shape a box's chat store pushes (same keys)."""
    from appliance.box import configured, init_box, open_box

    await init_box(tmp_path / "a", "a.go.th")
    async with open_box(configured(tmp_path / "a", {}, {})) as box:
        for n in range(2):
            await box.directory.add_user(f"u{n}@a.go.th", password="x" * 16, name_th="ผู้ใช้")
        u0, u1 = await box.directory.user("u0@a.go.th"), await box.directory.user("u1@a.go.th")
        assert u0 is not None
        assert u1 is not None
        room = await box.chat.create_room(u0, "group", name="ห้อง", members=["u1@a.go.th"])
        message, _ = await box.chat.post(u0, room.id, {"kind": "text", "text": "สวัสดี"})
        await box.chat.mark_read(u1, room.id, [message.id])
        real = {e.type: e for e in await box.chat.outbox(10, compact=False)}
        compact = {e.type: e for e in await box.chat.outbox(10, compact=True)}
    maker = EventMaker("box0001")
    ours = {
        "room.created": maker.room_created("box0001:1", "ห้อง", ["u0@a.go.th", "u1@a.go.th"], 1.0),
        "message.posted": maker.message("box0001:1", "u0@a.go.th", "สวัสดี", 2.0),
        "receipt": maker.receipt("box0001:1", "u1@a.go.th", ["box0001:2"], 3.0),
    }

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        return type(value).__name__ if value is not None else None

    for kind, event in ours.items():
        mine, theirs = keys(event.to_json()), keys(real[kind].to_json())
        assert mine == theirs, kind
        assert keys(wire(event, 2)) == keys(compact[kind].to_json()), kind


@pytest.mark.bench
def test_hub_load(tmp_path: Path) -> None:
    """A small run of every set-up: nothing refused, nobody starved, figures present."""
    result = main(
        [
            "--boxes",
            "12",
            "--users-per-box",
            "20",
            "--rate",
            "20",
            "--duration",
            "10",
            "--backlog",
            "15",
            "--processes",
            "2",
            "--cache",
            str(tmp_path / "cache"),
            "--storm-timeout",
            "300",
            "--no-write",
        ]
    )
    for name, figures in result["setups"].items():
        assert figures["warmup_refused"] == 0, name
        assert figures["live"]["refused"] == 0, (name, figures["live"]["refusals"])
        assert figures["live"]["accepted"] > 0, name
        storm = figures["storm"]
        assert storm["refused"] == 0, (name, storm["refusals"])
        assert storm["starved_boxes"] == 0, name
        assert storm["accepted"] == 12 * 15, name
        assert storm["pulled"] == storm["expected_pulls"], name


if __name__ == "__main__":
    main()
