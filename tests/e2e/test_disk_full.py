"""The data volume fills under SMTP and IMAP load: temporary refusals only, every
accepted message intact, nothing refused half-stored, and service back once freed.

The data directory lives on a tmpfs of 64 MiB the test mounts (root only); a ballast
file brings free space down to just above the reserve (``disk_hard_free``, 8 MiB here),
then mail fills the rest. A real `edgebox run`, real smtplib/imaplib clients, and the
box's own store read back at the end.
"""

from __future__ import annotations

import imaplib
import os
import random
import smtplib
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.harness import (
    RunningBox,
    curl,
    init_box,
    missing_prerequisite,
    require_tool,
    start_box,
    stored,
)

pytestmark = pytest.mark.slow

DOMAIN = "full.go.th"
PASSWORD = "full-disk-pass-2026"
USERS = {f"ann@{DOMAIN}": PASSWORD, f"bob@{DOMAIN}": PASSWORD}
MiB = 1024**2
HARD = 8 * MiB
#: Free space left above the reserve when the load starts: about 30 messages.
HEADROOM = 10 * MiB
MESSAGE_BODY = 200 * 1024
#: Bounds on the load: per client, and for the whole fill.
MAX_MESSAGES = 80
FILL_DEADLINE = 120.0


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        missing_prerequisite("mounting a tmpfs needs root")
    mount = require_tool("mount")
    point = tmp_path / "vol"
    point.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(point)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield point
    finally:
        subprocess.run([require_tool("umount"), "-l", str(point)], check=False, timeout=30)


#: Words of an ordinary memo: the search index grows with text as it does in an office,
#: not with the trigrams of random bytes.
WORDS = ("meeting", "budget", "report", "province", "office", "approve", "ประชุม",
         "งบประมาณ", "รายงาน", "จังหวัด", "อนุมัติ", "หนังสือ")  # fmt: skip


def _message(marker: str) -> bytes:
    rng = random.Random(marker)
    words = " ".join(rng.choice(WORDS) for _ in range(MESSAGE_BODY // 8))
    filler = words.encode()[:MESSAGE_BODY].decode("utf-8", "ignore").encode()
    lines = b"\r\n".join(filler[i : i + 76] for i in range(0, len(filler), 76))
    return (
        (
            f"From: sender@far.go.th\r\nTo: ann@{DOMAIN}\r\nSubject: {marker}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            f"Message-ID: <{marker}@far.go.th>\r\n\r\n{marker}\r\n"
        ).encode()
        + lines
        + b"\r\n"
    )


class Tally:
    """What the clients saw, shared by the load threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: dict[str, bytes] = {}
        self.refused: set[str] = set()
        self.unexpected: list[str] = []

    def note(self, marker: str, body: bytes, ok: bool) -> None:
        with self.lock:
            if ok:
                self.accepted[marker] = body
            else:
                self.refused.add(marker)


def _smtp_load(box: RunningBox, tally: Tally) -> None:
    """Send until this client is refused for want of space (or its bound)."""
    for n in range(MAX_MESSAGES):
        marker = f"smtp-{threading.get_ident()}-{n}"
        body = _message(marker)
        try:
            with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=60) as client:
                client.sendmail("sender@far.go.th", [f"ann@{DOMAIN}"], body)
            tally.note(marker, body, True)
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            code, text = exc.smtp_code, exc.smtp_error
            if code == 452 and b"4.3.1" in text:
                tally.note(marker, body, False)
                return
            else:
                tally.unexpected.append(f"SMTP {code} {text!r}")
                return
        except Exception as exc:  # anything else is a finding of the test
            tally.unexpected.append(f"SMTP {exc!r}")
            return


def _imap(box: RunningBox) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(box.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=60)
    client.login(f"ann@{DOMAIN}", PASSWORD)
    return client


def _imap_load(client: imaplib.IMAP4_SSL, tally: Tally) -> None:
    """APPEND until this client is refused for want of space (or its bound)."""
    try:
        for n in range(MAX_MESSAGES):
            marker = f"imap-{threading.get_ident()}-{n}"
            body = _message(marker)
            status, data = client.append("INBOX", None, None, body)
            if status == "OK":
                tally.note(marker, body, True)
            elif status == "NO" and data and b"[LIMIT]" in data[0]:
                tally.note(marker, body, False)
                return
            else:
                tally.unexpected.append(f"IMAP {status} {data!r}")
                return
    finally:
        client.logout()


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_full_disk_refuses_for_now_keeps_what_it_took_and_recovers(volume: Path) -> None:
    data = volume / "box"
    init_box(data, DOMAIN, USERS)
    env = {"EDGEBOX_DISK_HARD_FREE": str(HARD), "EDGEBOX_DISK_WARN_FREE": str(2 * HARD)}
    box = start_box(data, env=env)
    try:
        ballast = volume / "ballast"
        with ballast.open("wb") as out:
            out.truncate(0)
            os.posix_fallocate(out.fileno(), 0, _free_bytes(volume) - HARD - HEADROOM)
        time.sleep(2.5)  # the guard's cached reading goes stale

        tally = Tally()
        threads = [threading.Thread(target=_smtp_load, args=(box, tally)) for _ in range(3)]
        # Signed in before the load: a password check takes longer than a delivery.
        imap_clients = [_imap(box) for _ in range(2)]
        threads += [threading.Thread(target=_imap_load, args=(c, tally)) for c in imap_clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(FILL_DEADLINE)
        assert not any(t.is_alive() for t in threads), "the load did not finish in time"
        assert tally.unexpected == [], "only temporary refusals for want of space"
        assert len(tally.refused) == len(threads), "every client met the reserve"
        assert any(m.startswith("smtp") for m in tally.accepted)
        assert any(m.startswith("imap") for m in tally.accepted)
        assert _free_bytes(volume) > HARD // 2, "the reserve was kept"

        # The load stopped just above the reserve, where small writes still fit. Now
        # something else (a log, a backup) takes the disk below it: everything new is
        # refused, and every service still answers.
        top_up = volume / "ballast-2"
        with top_up.open("wb") as out:
            os.posix_fallocate(out.fileno(), 0, _free_bytes(volume) - HARD + MiB)
        time.sleep(2.5)
        with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=60) as client:
            client.ehlo()
            code, text = client.mail("sender@far.go.th")
            assert (code, text[:5]) == (452, b"4.3.1")
        client_imap = _imap(box)
        status, reply = client_imap.append("INBOX", None, None, _message("imap-while-full"))
        assert status == "NO"
        assert b"[LIMIT]" in reply[0]
        client_imap.logout()
        token = _sign_in(box)
        room = _room(box, token)
        status, body = curl(box, "POST", f"/api/v1/rooms/{room}/messages",
                            {"kind": "text", "text": "ประชุม"}, token=token)  # fmt: skip
        assert status == 507, body
        assert body["error"]["code"] == "insufficient_storage"
        assert "เต็ม" in body["error"]["message_th"]
        status_line = subprocess.run(
            [*_edgebox(), "status", "--data", str(data)], capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert "new mail and uploads are refused" in status_line.stdout

        # Space comes back: so does service, without a restart.
        ballast.unlink()
        top_up.unlink()
        time.sleep(2.5)
        after = _message("smtp-after-freeing")
        with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=60) as client:
            client.sendmail("sender@far.go.th", [f"ann@{DOMAIN}"], after)
        tally.note("smtp-after-freeing", after, True)
        client_imap = _imap(box)
        appended = _message("imap-after-freeing")
        status, _ = client_imap.append("INBOX", None, None, appended)
        assert status == "OK"
        tally.note("imap-after-freeing", appended, True)
        client_imap.logout()
        status, body = curl(box, "POST", f"/api/v1/rooms/{room}/messages",
                            {"kind": "text", "text": "ประชุม"}, token=token)  # fmt: skip
        assert status == 201, body
    finally:
        assert box.stop() == 0

    # Every accepted message is stored whole; nothing refused was stored at all.
    messages = trio.run(stored, data, f"ann@{DOMAIN}")
    by_marker: dict[str, bytes] = {}
    for _row, content in messages:
        subject = next(line for line in content.split(b"\r\n") if line.startswith(b"Subject: "))
        by_marker[subject.removeprefix(b"Subject: ").decode()] = content
    assert set(by_marker) == set(tally.accepted), "accepted == stored, no more, no less"
    for marker, sent in tally.accepted.items():
        _head, _, body = sent.partition(b"\r\n\r\n")
        assert by_marker[marker].endswith(body), f"{marker} is not intact"


def _edgebox() -> list[str]:
    from tests.harness import EDGEBOX

    return list(EDGEBOX)


def _sign_in(box: RunningBox) -> str:
    credentials = {"address": f"bob@{DOMAIN}", "password": PASSWORD, "client": "app"}
    status, body = curl(box, "POST", "/api/v1/session", credentials)
    assert status == 201, body
    return str(body["token"])


def _room(box: RunningBox, token: str) -> str:
    status, room = curl(box, "POST", "/api/v1/rooms",
                        {"kind": "group", "name": "งาน", "members": [f"ann@{DOMAIN}"]},
                        token=token)  # fmt: skip
    assert status == 201, room
    return str(room["id"])
