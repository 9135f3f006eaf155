"""Crash safety of IMAP: SIGKILL `edgebox run` during bursts of APPEND, UID MOVE and
UID EXPUNGE, restart, and check the promise behind every tagged OK (issue 3).

Each client thread only moves and expunges messages it appended itself, so the ledger
knows where every message must be, except for the one operation each thread had in
flight when the box died; that one may have happened or not, but never half. After
several kill/restart rounds and one clean restart, the store opened in-process must show:

- every APPEND that got OK, and whose expunge was never confirmed, exactly once across
  the owner's mailboxes; a MOVE in flight left it in its source or its destination,
  never both, never neither; a confirmed MOVE left it in the destination under the UID
  COPYUID gave; every copy decrypts to the bytes sent, with its content hash;
- no UID reused: UIDs are unique per mailbox, below UIDNEXT, never handed to another
  message, and expunged UIDs are not live;
- UIDVALIDITY unchanged, UIDNEXT and HIGHESTMODSEQ not below anything a client saw
  before a kill, no message's MODSEQ above HIGHESTMODSEQ;
- blob reference counts equal the rows using them, no orphan or missing blob file,
  quota usage equal to what the rows hold, and SQLite's integrity check passes.
"""

from __future__ import annotations

import hashlib
import imaplib
import random
import re
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.harness import init_box, start_box

pytestmark = pytest.mark.slow

DOMAIN = "imapcrash.go.th"
PASSWORD = "crash-pass-3"
USERS = [f"user{i}@{DOMAIN}" for i in range(2)]
MAILBOXES = ("INBOX", "Archive", "Trash")
ROUNDS = 4
WORKERS = 6
#: Per worker and round: bounds the load even if the kill came late.
MAX_OPERATIONS = 400
#: Per worker and round, in seconds: the same bound by the clock.
MAX_SECONDS = 20.0

APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
COPYUID = re.compile(rb"\[COPYUID (\d+) (\d+) (\d+)\]")
STATUS = re.compile(rb"(UIDNEXT|UIDVALIDITY|HIGHESTMODSEQ) (\d+)")
#: What imaplib raises when the server dies under it.
DIED = (imaplib.IMAP4.abort, OSError, EOFError)


@dataclass
class Tracked:
    """What the clients know of one message (by the marker in its Subject)."""

    user: str
    content: bytes
    #: Mailboxes it may be in: one when known, two while a MOVE was cut off.
    places: set[str]
    #: Its UID where that is known (from APPENDUID or COPYUID).
    uid: dict[str, int] = field(default_factory=dict)
    #: The APPEND got its tagged OK.
    acked: bool = False
    #: UID EXPUNGE was sent but its OK never came.
    maybe_gone: bool = False
    #: UID EXPUNGE got its OK.
    gone: bool = False

    def settled(self) -> bool:
        return self.acked and len(self.places) == 1 and not (self.maybe_gone or self.gone)


@dataclass
class Ledger:
    """Everything the clients did and saw, shared by the worker threads."""

    messages: dict[str, Tracked] = field(default_factory=dict)
    #: (user, mailbox) → UIDVALIDITY values seen, and the highest UIDNEXT/HIGHESTMODSEQ.
    uidvalidity: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    uidnext: dict[tuple[str, str], int] = field(default_factory=dict)
    modseq: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (user, mailbox, uid) → marker: every UID the server handed out, for reuse checks.
    assigned: dict[tuple[str, str, int], str] = field(default_factory=dict)
    #: (user, mailbox, uid) that a confirmed MOVE or EXPUNGE took away.
    left: set[tuple[str, str, int]] = field(default_factory=set)
    #: Responses that were neither OK nor the server dying.
    unexpected: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, user: str, mailbox: str, what: str, value: int) -> None:
        key = (user, mailbox)
        with self.lock:
            if what == "UIDVALIDITY":
                self.uidvalidity.setdefault(key, set()).add(value)
            elif what == "UIDNEXT":
                self.uidnext[key] = max(self.uidnext.get(key, 0), value)
            else:
                self.modseq[key] = max(self.modseq.get(key, 0), value)

    def assign(self, user: str, mailbox: str, uidvalidity: int, uid: int, marker: str) -> None:
        self.saw(user, mailbox, "UIDVALIDITY", uidvalidity)
        self.saw(user, mailbox, "UIDNEXT", uid + 1)
        with self.lock:
            previous = self.assigned.setdefault((user, mailbox, uid), marker)
            if previous != marker:
                self.unexpected.append(f"{user} {mailbox} UID {uid} given to {previous} "
                                       f"and to {marker}")  # fmt: skip

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1


def _message(marker: str, size: int) -> bytes:
    body = (marker.encode() + b" ") * (size // (len(marker) + 1))
    lines = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    return (
        (
            f"From: load@example.com\r\nSubject: {marker}\r\nMessage-ID: <{marker}@load>\r\n\r\n"
        ).encode()
        + lines
        + b"\r\n"
    )


def _subject(content: bytes) -> str:
    line = next(x for x in content.split(b"\r\n") if x.startswith(b"Subject: "))
    return line.removeprefix(b"Subject: ").decode()


class Worker:
    """One imaplib client appending, moving and expunging its own messages."""

    def __init__(self, ledger: Ledger, user: str, name: str, owned: list[str],
                 rng: random.Random) -> None:  # fmt: skip
        self.ledger, self.user, self.name, self.owned, self.rng = ledger, user, name, owned, rng

    def run(self, port: int, ca: Path, round_no: int, stop: threading.Event) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + MAX_SECONDS
        try:
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=30)
            try:
                client.login(self.user, PASSWORD)
                for n in range(MAX_OPERATIONS):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    settled = [m for m in self.owned if self.ledger.messages[m].settled()]
                    roll = self.rng.random()
                    if roll < 0.45 or len(settled) < 3:
                        self.append(
                            client, f"r{round_no}{self.name}n{n}x{self.rng.randrange(10**9)}"
                        )
                    elif roll < 0.8:
                        self.move(client, self.rng.choice(settled))
                    elif roll < 0.9:
                        self.expunge(client, self.rng.choice(settled))
                    else:
                        self.status(client, self.rng.choice(MAILBOXES))
            finally:
                client.shutdown()
        except DIED:
            return  # the server died under us: expected
        except Exception as exc:  # a thread must report, not raise
            self.ledger.unexpected.append(f"{self.name}: {exc!r}")

    def append(self, client: imaplib.IMAP4, marker: str) -> None:
        mailbox = self.rng.choice(MAILBOXES)
        content = _message(marker, self.rng.choice([300, 1_500, 6_000]))
        tracked = Tracked(self.user, content, {mailbox})
        self.ledger.messages[marker] = tracked
        self.owned.append(marker)
        typ, data = client.append(mailbox, None, None, content)
        found = APPENDUID.search(data[0] or b"") if typ == "OK" else None
        if found is None:
            self.ledger.unexpected.append(f"APPEND {marker}: {typ} {data!r}")
            return
        tracked.uid[mailbox] = int(found[2])
        tracked.acked = True
        self.ledger.assign(self.user, mailbox, int(found[1]), int(found[2]), marker)
        self.ledger.count("append")

    def select(self, client: imaplib.IMAP4, mailbox: str) -> None:
        typ, data = client.select(mailbox)
        if typ != "OK":
            raise AssertionError(f"SELECT {mailbox}: {typ} {data!r}")
        for what in ("UIDVALIDITY", "UIDNEXT", "HIGHESTMODSEQ"):
            for value in client.untagged_responses.get(what, []):
                self.ledger.saw(self.user, mailbox, what, int(value))

    def status(self, client: imaplib.IMAP4, mailbox: str) -> None:
        typ, data = client.status(mailbox, "(UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
        if typ != "OK":
            raise AssertionError(f"STATUS {mailbox}: {typ} {data!r}")
        for what, value in STATUS.findall(data[0]):
            self.ledger.saw(self.user, mailbox, what.decode(), int(value))

    def move(self, client: imaplib.IMAP4, marker: str) -> None:
        tracked = self.ledger.messages[marker]
        (source,) = tracked.places
        target = self.rng.choice([m for m in MAILBOXES if m != source])
        uid = tracked.uid[source]
        self.select(client, source)
        client.untagged_responses.pop("OK", None)
        # From here until the OK the message may be in either mailbox.
        tracked.places = {source, target}
        typ, data = client._simple_command("UID", "MOVE", str(uid), target)
        codes = b" ".join(x for x in client.untagged_responses.pop("OK", []) if x)
        found = COPYUID.search(codes) if typ == "OK" else None
        if found is None or int(found[2]) != uid:
            self.ledger.unexpected.append(f"UID MOVE {marker}: {typ} {data!r} {codes!r}")
            return
        tracked.places = {target}
        tracked.uid = {target: int(found[3])}
        self.ledger.assign(self.user, target, int(found[1]), int(found[3]), marker)
        with self.ledger.lock:
            self.ledger.left.add((self.user, source, uid))
        self.ledger.count("move")

    def expunge(self, client: imaplib.IMAP4, marker: str) -> None:
        tracked = self.ledger.messages[marker]
        (mailbox,) = tracked.places
        uid = str(tracked.uid[mailbox])
        self.select(client, mailbox)
        typ, data = client.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")
        if typ != "OK":
            self.ledger.unexpected.append(f"UID STORE {marker}: {typ} {data!r}")
            return
        tracked.maybe_gone = True
        typ, data = client._simple_command("UID", "EXPUNGE", uid)
        if typ != "OK":
            self.ledger.unexpected.append(f"UID EXPUNGE {marker}: {typ} {data!r}")
            return
        tracked.gone = True
        with self.ledger.lock:
            self.ledger.left.add((self.user, mailbox, int(uid)))
        self.ledger.count("expunge")


def _burst(port: int, ca: Path, round_no: int, ledger: Ledger,
           owned: dict[int, list[str]], stop: threading.Event) -> None:  # fmt: skip
    threads = []
    for worker_no in range(WORKERS):
        worker = Worker(ledger, USERS[worker_no % len(USERS)], f"w{worker_no}",
                        owned.setdefault(worker_no, []),
                        random.Random(f"{round_no}-{worker_no}"))  # fmt: skip
        threads.append(threading.Thread(target=worker.run, args=(port, ca, round_no, stop)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def _wait_for_appends(ledger: Ledger, more: int, load: threading.Thread) -> None:
    """Return once *more* APPENDs were confirmed (or the load ended, or 120 s passed)."""
    with ledger.lock:
        target = ledger.counts.get("append", 0) + more
    for _ in range(1200):  # 120 s at most: a bound, not a measurement
        with ledger.lock:
            if ledger.counts.get("append", 0) >= target:
                return
        if not load.is_alive():
            return
        time.sleep(0.1)


def test_sigkill_mid_imap_burst_keeps_every_ok(tmp_path: Path) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, {user: PASSWORD for user in USERS})
    ledger = Ledger()
    owned: dict[int, list[str]] = {}
    rng = random.Random(11)
    for round_no in range(ROUNDS):
        box = start_box(data)
        stop = threading.Event()
        load = threading.Thread(target=_burst, args=(box.port("imaps"), box.ca, round_no,
                                                     ledger, owned, stop))  # fmt: skip
        load.start()
        # The kill comes after a random amount of *work*, not of time: on a slow or busy
        # machine a fixed sleep would kill before much was done.
        _wait_for_appends(ledger, rng.randint(15, 30), load)
        box.kill()
        stop.set()
        load.join(timeout=180)
        assert not load.is_alive(), "the clients should have noticed the kill"
    assert not ledger.unexpected, ledger.unexpected[:5]
    counts = ledger.counts
    assert counts.get("append", 0) > 50, f"the burst should have done plenty: {counts}"
    assert counts.get("move", 0) > 10, counts
    assert counts.get("expunge", 0) > 5, counts

    # A clean start after the last kill: it must open the store and sweep orphans.
    final = start_box(data)
    assert final.stop() == 0
    trio.run(_verify, data, ledger)
    cut_off = sum(
        not t.acked or len(t.places) > 1 or (t.maybe_gone and not t.gone)
        for t in ledger.messages.values()
    )
    print(f"{ROUNDS} kills; confirmed {counts}; {cut_off} operations cut off mid-flight")


async def _verify(data: Path, ledger: Ledger) -> None:
    from appliance.box import configured, open_box
    from appliance.mail.mailstore import DEFAULT_MAILBOXES

    found: dict[str, list[tuple[str, str, int]]] = {}
    async with open_box(configured(data, {}, {})) as box:
        for user in USERS:
            for name, _ in DEFAULT_MAILBOXES:
                for row in await box.mailstore.messages(user, name):
                    content = await box.mailstore.content(row)  # raises if not decryptable
                    assert hashlib.sha256(content).hexdigest() == row.content_hash
                    marker = _subject(content)
                    tracked = ledger.messages[marker]
                    assert content == tracked.content, f"{marker} is not byte-exact"
                    assert tracked.user == user, f"{marker} reached {user}"
                    found.setdefault(marker, []).append((user, name, row.uid))
                    assigned = ledger.assigned.get((user, name, row.uid), marker)
                    assert assigned == marker, (
                        f"UID {row.uid} of {user} {name} was {assigned}'s, now holds {marker}"
                    )

        for marker, tracked in ledger.messages.items():
            places = found.get(marker, [])
            where = (
                f"{marker} (acked={tracked.acked}, may be in {sorted(tracked.places)} with UIDs"
                f" {tracked.uid}, gone={tracked.gone}, maybe_gone={tracked.maybe_gone})"
                f" found at {places}"
            )
            assert len(places) <= 1, f"in two places: {where}"
            if tracked.gone:
                assert not places, f"confirmed expunged but still there: {where}"
            elif tracked.acked and not tracked.maybe_gone:
                assert places, f"acknowledged and lost: {where}"
            if places:
                ((_, name, uid),) = places
                assert name in tracked.places, f"in a mailbox it was never put in: {where}"
                assert tracked.uid.get(name, uid) == uid, f"UID changed: {where}"

        def check(conn: sqlite3.Connection) -> dict[str, Any]:
            return {
                "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
                "mailboxes": conn.execute(
                    "SELECT id, owner, name, uidvalidity, uidnext, highestmodseq FROM mailboxes"
                ).fetchall(),
                "messages": conn.execute("SELECT mailbox_id, uid, modseq FROM messages").fetchall(),
                "expunged": conn.execute("SELECT mailbox_id, uid, modseq FROM expunged").fetchall(),
                "refs": conn.execute(
                    "SELECT b.id, b.refs,"
                    " (SELECT count(*) FROM messages m WHERE m.blob_id = b.id)"
                    " + (SELECT count(*) FROM outbound o WHERE o.blob_id = b.id) FROM blobs b"
                ).fetchall(),
                "usage": conn.execute(
                    "SELECT q.owner, q.bytes, q.messages,"
                    " (SELECT coalesce(sum(m.size), 0) FROM messages m JOIN mailboxes b"
                    "  ON b.id = m.mailbox_id WHERE b.owner = q.owner),"
                    " (SELECT count(*) FROM messages m JOIN mailboxes b"
                    "  ON b.id = m.mailbox_id WHERE b.owner = q.owner)"
                    " FROM quota_usage q"
                ).fetchall(),
            }

        state = await box.mail_db.read(check)
        assert state["integrity"] == "ok"
        boxes = {row[0]: row[1:] for row in state["mailboxes"]}
        live: dict[int, list[int]] = {}
        for mailbox_id, uid, modseq in state["messages"]:
            owner, name, _, uidnext, highestmodseq = boxes[mailbox_id]
            assert uid < uidnext, f"{owner} {name}: UID {uid} not below UIDNEXT {uidnext}"
            assert modseq <= highestmodseq, f"{owner} {name}: MODSEQ {modseq} > {highestmodseq}"
            live.setdefault(mailbox_id, []).append(uid)
        for mailbox_id, uids in live.items():
            assert len(uids) == len(set(uids)), f"duplicate UIDs in {boxes[mailbox_id][:2]}"
        expunged = set()
        for mailbox_id, uid, modseq in state["expunged"]:
            owner, name, _, uidnext, highestmodseq = boxes[mailbox_id]
            assert uid not in live.get(mailbox_id, []), f"{owner} {name}: UID {uid} expunged & live"
            assert uid < uidnext, f"{owner} {name}: expunged UID {uid} not below UIDNEXT"
            assert modseq <= highestmodseq, f"{owner} {name}: expunged MODSEQ {modseq} too high"
            expunged.add((owner, name, uid))
        missing = sorted(ledger.left - expunged)
        assert not missing, f"confirmed MOVE/EXPUNGE not recorded for VANISHED: {missing[:5]}"

        by_name = {(owner, name): row for owner, name, *row in boxes.values()}
        for key, seen in ledger.uidvalidity.items():
            assert seen == {by_name[key][0]}, f"{key}: UIDVALIDITY {seen} → {by_name[key][0]}"
        for key, seen in ledger.uidnext.items():
            assert by_name[key][1] >= seen, f"{key}: UIDNEXT went back from {seen}"
        for key, seen in ledger.modseq.items():
            assert by_name[key][2] >= seen, f"{key}: HIGHESTMODSEQ went back from {seen}"
        for (owner, name, uid), marker in ledger.assigned.items():
            assert uid < by_name[(owner, name)][1], f"UID {uid} of {marker} may be reused"

        refs = state["refs"]
        assert all(count == used for _, count, used in refs), "blob reference counts drifted"
        known = {row[0] for row in refs}
        assert set(box.mailstore.blobs.iter_ids()) == known, "orphan or missing blob files"
        for owner, used, count, real_bytes, real_count in state["usage"]:
            assert (used, count) == (real_bytes, real_count), f"quota usage of {owner} drifted"
