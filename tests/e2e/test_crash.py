"""Crash safety: SIGKILL `edgebox run` in the middle of a burst of deliveries, restart,
and check the promise behind every 250 (DESIGN.md principle 3).

After several kill/restart rounds:
- every message that got a 250 is in each recipient's INBOX exactly once, byte-exact
  after our Received field, decryptable, with the content hash it was stored with;
- a message that got no 250 is either in *all* of its recipients' mailboxes or in none
  (one transaction), never half-stored;
- the databases pass SQLite's integrity check, blob reference counts equal the rows
  that use them, and no blob file is left that no row names.
"""

from __future__ import annotations

import random
import smtplib
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.harness import assert_stored_once, init_box, start_box

pytestmark = pytest.mark.slow

DOMAIN = "crash.go.th"
USERS = [f"user{i}@{DOMAIN}" for i in range(4)]
ROUNDS = 4
WORKERS = 8
#: Per worker and round: bounds the load even if the kill came late.
MAX_MESSAGES = 400


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


def _burst(port: int, round_no: int, attempted: dict[str, tuple[list[str], bytes]],
           acked: set[str], stop: threading.Event) -> None:  # fmt: skip
    def worker(worker_no: int) -> None:
        rng = random.Random(f"{round_no}-{worker_no}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for n in range(MAX_MESSAGES):
                    if stop.is_set():
                        return
                    marker = f"r{round_no}w{worker_no}n{n}x{rng.randrange(10**9)}"
                    recipients = rng.sample(USERS, rng.randint(1, 3))
                    content = _message(marker, rng.choice([800, 4_000, 60_000]))
                    attempted[marker] = (recipients, content)
                    client.sendmail("load@example.com", recipients, content)
                    acked.add(marker)
        except (OSError, smtplib.SMTPException):
            return  # the server died under us: expected

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def test_sigkill_mid_burst_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, {user: "crash-pass-1" for user in USERS})
    attempted: dict[str, tuple[list[str], bytes]] = {}
    acked: set[str] = set()
    rng = random.Random(7)
    for round_no in range(ROUNDS):
        box = start_box(data)
        stop = threading.Event()
        load = threading.Thread(target=_burst, args=(box.port("smtp-mx"), round_no, attempted,
                                                     acked, stop))  # fmt: skip
        load.start()
        # Killed after a random amount of *work*, not of time: on a slow or busy machine
        # a fixed sleep would kill before much was acknowledged.
        target = len(acked) + rng.randint(15, 30)
        for _ in range(1200):  # 120 s at most: a bound, not a measurement
            if len(acked) >= target or not load.is_alive():
                break
            time.sleep(0.1)
        box.kill()
        stop.set()
        load.join(timeout=180)
    assert len(acked) > 50, "the burst should have delivered plenty before the kills"
    assert len(attempted) > len(acked), "some messages should have been cut off mid-flight"

    # A clean start after the last kill: it must open the store and sweep orphans.
    final = start_box(data)
    assert final.stop() == 0
    trio.run(_verify, data, attempted, acked)


async def _verify(data: Path, attempted: dict[str, tuple[list[str], bytes]],
                  acked: set[str]) -> None:  # fmt: skip
    from appliance.box import configured, open_box

    async with open_box(configured(data, {}, {})) as box:
        await assert_stored_once(box, USERS, attempted, acked)

        def check(conn: sqlite3.Connection) -> tuple[str, list[tuple[str, int, int]], set[str]]:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            refs = conn.execute(
                "SELECT b.id, b.refs, (SELECT count(*) FROM messages m WHERE m.blob_id = b.id)"
                " + (SELECT count(*) FROM outbound o WHERE o.blob_id = b.id) FROM blobs b"
            ).fetchall()
            return integrity, refs, {row[0] for row in refs}

        integrity, refs, known = await box.mail_db.read(check)
        assert integrity == "ok"
        assert all(count == used for _, count, used in refs), "blob reference counts drifted"
        assert set(box.mailstore.blobs.iter_ids()) == known, "orphan or missing blob files"
