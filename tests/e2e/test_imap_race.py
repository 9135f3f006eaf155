"""FETCH bodies against APPEND, STORE \\Deleted and EXPUNGE in another session (issue 15).

The race that took IMAPS down for every user: session A loops ``UID FETCH 1:*
(BODY.PEEK[])`` while session B of the same user loops a few 150 KB APPENDs, ``STORE
1:* +FLAGS.SILENT (\\Deleted)`` and ``EXPUNGE``. A read the rows of a batch, B's
EXPUNGE freed their blobs, and A's read of the body raised BlobMissing out of the
connection handler, which stopped the listener. Now a message B expunged stays
readable to A until A is told (RFC 3501 §7.4.1, mail/reclamation.py).

Against a real box with imaplib, bounded in rounds and in time: every FETCH must be
answered OK with whole messages, no service may restart, no session may fault, and
once both clients have logged out no blob file may be left that no message names.
"""

from __future__ import annotations

import imaplib
import re
import ssl
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.harness import init_box, start_box

pytestmark = pytest.mark.slow

DOMAIN = "imaprace.go.th"
USER = f"racer@{DOMAIN}"
PASSWORD = "race-pass-15"
#: FETCH sessions beside the one session that appends and expunges (imaptest's stress
#: run, which found the crash, had ten clients).
READERS = 4
#: Each loop's bound by count, and every loop's bound by the clock.
MAX_ROUNDS = 400
MAX_SECONDS = 20.0
MESSAGE_SIZE = 150 * 1024
APPENDS_PER_ROUND = 3
LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}$")
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")
#: Messages appended first and never expunged.
KEPT = 20


def _message(n: int) -> bytes:
    marker = f"race-{n:06d}"
    body = (marker + " ").encode() * (MESSAGE_SIZE // (len(marker) + 1))
    lines = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    return f"From: <{USER}>\r\nSubject: {marker}\r\n\r\n".encode() + lines + b"\r\n"


def test_fetch_bodies_race_expunge_in_another_session(tmp_path: Path) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, {USER: PASSWORD})
    box = start_box(data)
    try:
        context = ssl.create_default_context(cafile=str(box.ca))
        port = box.port("imaps")
        sent: dict[bytes, bytes] = {}
        errors: list[str] = []
        fetches: list[int] = []  # bodies per FETCH
        stop = threading.Event()
        deadline = time.monotonic() + MAX_SECONDS

        def connect() -> imaplib.IMAP4_SSL:
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=60)
            client.login(USER, PASSWORD)
            client.select("INBOX")
            return client

        def reader() -> None:
            client = connect()
            try:
                for _ in range(MAX_ROUNDS):
                    if stop.is_set() or time.monotonic() > deadline:
                        break
                    typ, answer = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
                    if typ != "OK":
                        errors.append(f"FETCH answered {typ} {answer!r}")
                        break
                    bodies = 0
                    for part in answer:
                        if not isinstance(part, tuple):
                            continue
                        size = LITERAL.search(part[0])
                        subject = re.search(rb"Subject: (race-\d+)", part[1])
                        if size is None or subject is None:
                            errors.append(f"FETCH item without a body: {part[0]!r}")
                            continue
                        if part[1] != sent.get(subject[1]) or len(part[1]) != int(size[1]):
                            errors.append(f"FETCH of {subject[1]!r} is not what was appended")
                        bodies += 1
                    fetches.append(bodies)
                client.logout()
            except Exception as exc:  # recorded and asserted below
                errors.append(f"reader: {type(exc).__name__}: {exc}")
            finally:
                stop.set()

        def append(client: imaplib.IMAP4_SSL, n: int) -> bytes:
            content = _message(n)
            sent[f"race-{n:06d}".encode()] = content
            typ, answer = client.append("INBOX", None, None, content)
            if typ != "OK":
                errors.append(f"APPEND answered {typ} {answer!r}")
            uid = APPENDUID.search(answer[-1] or b"")
            return uid[1] if uid else b""

        def writer() -> None:
            client = connect()
            n = 0
            try:
                for _ in range(MAX_ROUNDS):
                    if stop.is_set() or time.monotonic() > deadline:
                        break
                    uids = []
                    for _ in range(APPENDS_PER_ROUND):
                        n += 1
                        uids.append(append(client, n))
                    for typ, answer in (
                        client.uid("STORE", b",".join(uids), "+FLAGS.SILENT", "(\\Deleted)"),
                        client.expunge(),
                    ):
                        if typ != "OK":
                            errors.append(f"STORE/EXPUNGE answered {typ} {answer!r}")
                client.logout()
            except Exception as exc:  # recorded and asserted below
                errors.append(f"writer: {type(exc).__name__}: {exc}")
            finally:
                stop.set()

        # Messages that stay: each FETCH decrypts them before it reaches the new ones,
        # which widens the window in which the writer's EXPUNGE can free those.
        filler = connect()
        for n in range(1, KEPT + 1):
            append(filler, 900_000 + n)
        filler.logout()

        threads = [threading.Thread(target=reader) for _ in range(READERS)]
        threads.append(threading.Thread(target=writer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(MAX_SECONDS + 120)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        print(
            f"race: {len(fetches)} FETCH 1:* answered, {sum(fetches)} bodies, {len(sent)} appended"
        )
        assert errors == []
        assert len(fetches) >= 5, "the readers must have raced a few rounds"
        assert sum(fetches) > 0, "some FETCH must have returned bodies"
        log = "\n".join(box.output)
        assert "crashed" not in log
        assert "session from" not in log, "no session may have faulted"

        # Both clients have gone, so nothing is held: after a clean stop every blob
        # file is a message's (the start-up sweep is not needed to get there).
        assert box.stop() == 0
        assert trio.run(_blob_files_named_by_no_message, data) == set()
    finally:
        box.stop()


async def _blob_files_named_by_no_message(data: Path) -> set[str]:
    from appliance.box import configured, open_box

    async with open_box(configured(data, {}, {})) as opened:
        named = await opened.mail_db.read(
            lambda conn: {row[0] for row in conn.execute("SELECT blob_id FROM messages")}
        )
        return set(opened.mailstore.blobs.iter_ids()) - named
