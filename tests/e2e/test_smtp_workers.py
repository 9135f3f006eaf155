"""The MX in worker processes (``smtp_workers = 2``), driven from outside with real clients.

- smtplib to the MX, imaplib to read: each message is in the INBOX once, and the
  traffic log and `/metrics` of the main process counted it;
- SIGKILL one worker in the middle of a burst from eight clients: every message that
  got a 250 is stored exactly once, byte-exact; the port keeps serving (the other
  worker takes the connections) and the pool starts the killed worker again.
"""

from __future__ import annotations

import imaplib
import json
import os
import random
import signal
import smtplib
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import trio

from tests.harness import RunningBox, assert_stored_once, init_box, start_box

pytestmark = pytest.mark.slow

DOMAIN = "workers.go.th"
USERS = {f"user{i}@{DOMAIN}": f"workers-pass-{i}" for i in range(3)}
WORKERS_ENV = {"EDGEBOX_SMTP_WORKERS": "2"}
CLIENTS = 8
#: Per client: bounds the load however late the kill comes.
MAX_MESSAGES = 300


def _workers(box: RunningBox) -> dict[int, int]:
    """The box's MX worker processes: worker number → pid."""
    found = {}
    for child in psutil.Process(box.process.pid).children():
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "appliance.smtp_worker" in argv:
            found[int(argv[argv.index("--worker") + 1])] = child.pid
    return found


def _wait_for(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _message(marker: str, size: int = 2000) -> bytes:
    body = (marker.encode() + b" ") * (size // (len(marker) + 1))
    lines = b"\r\n".join(body[i : i + 76] for i in range(0, len(body), 76))
    head = f"From: load@example.com\r\nSubject: {marker}\r\nMessage-ID: <{marker}@load>\r\n\r\n"
    return head.encode() + lines + b"\r\n"


def test_two_workers_deliver_each_message_into_imap_once(tmp_path: Path) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, USERS)
    box = start_box(data, env=WORKERS_ENV)
    try:
        assert sorted(_workers(box)) == [1, 2]
        user, password = next(iter(USERS.items()))
        markers = [f"m{n}x{random.randrange(10**9)}" for n in range(12)]
        for marker in markers:
            # A connection each, so the kernel hands them to both workers in turn.
            with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30) as client:
                refused = client.sendmail("load@example.com", [user], _message(marker))
                assert refused == {}
        context = ssl.create_default_context(cafile=str(box.ca))
        imap = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=30)
        try:
            imap.login(user, password)
            imap.select("INBOX", readonly=True)
            for marker in markers:
                status, found = imap.search(None, "HEADER", "Subject", marker)
                assert status == "OK"
                assert len(found[0].split()) == 1, f"{marker} is not in the INBOX once"
            status, everything = imap.search(None, "ALL")
            assert len(everything[0].split()) == len(markers)
        finally:
            imap.logout()
        # The main process counted and logged what its workers accepted.
        with urllib.request.urlopen(f"http://127.0.0.1:{box.port('metrics')}/metrics") as page:
            metrics = page.read().decode()
        assert 'edgebox_smtp_messages_total{port="mx",result="accepted"} 12.0' in metrics
        accepted = [
            json.loads(line)
            for path in sorted((data / "log" / "traffic").glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if '"event": "accepted"' in line
        ]
        assert len(accepted) == len(markers)
        assert all(r["service"] == "smtp-mx" for r in accepted)
    finally:
        assert box.stop() == 0
    # A clean stop ends the workers with the main process.
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data) in " ".join(p.info["cmdline"] or ())
        and "appliance.smtp_worker" in (p.info["cmdline"] or ())
    ]


def _client(port: int, number: int, attempted: dict[str, tuple[list[str], bytes]],
            acked: set[str], stop: threading.Event) -> None:  # fmt: skip
    rng = random.Random(number)
    n = 0
    while n < MAX_MESSAGES and not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                # A few messages per connection, then a new one: the kernel hands new
                # connections to whichever worker is alive.
                for _ in range(5):
                    if stop.is_set() or n >= MAX_MESSAGES:
                        return
                    marker = f"c{number}n{n}x{rng.randrange(10**9)}"
                    n += 1
                    recipients = rng.sample(sorted(USERS), rng.randint(1, 2))
                    content = _message(marker, rng.choice([800, 4_000, 60_000]))
                    attempted[marker] = (recipients, content)
                    client.sendmail("load@example.com", recipients, content)
                    acked.add(marker)
        except (OSError, smtplib.SMTPException):
            continue  # our worker was killed under us: connect again


def test_sigkill_of_a_worker_mid_burst_loses_nothing_and_the_port_keeps_serving(
    tmp_path: Path,
) -> None:
    data = tmp_path / "box"
    init_box(data, DOMAIN, USERS)
    box = start_box(data, env=WORKERS_ENV)
    attempted: dict[str, tuple[list[str], bytes]] = {}
    acked: set[str] = set()
    stop = threading.Event()
    try:
        workers = _workers(box)
        assert sorted(workers) == [1, 2]
        clients = [
            threading.Thread(target=_client, args=(box.port("smtp-mx"), i, attempted, acked, stop))
            for i in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()
        # Killed after an amount of work, not of time (a busy machine is slow).
        _wait_for(lambda: len(acked) >= 40, "40 messages before the kill", timeout=120)
        os.kill(workers[1], signal.SIGKILL)
        before = len(acked)
        # The port keeps serving through the other worker, and the pool restarts the dead one.
        _wait_for(lambda: len(acked) >= before + 40, "40 more messages after the kill", 120)
        _wait_for(lambda: _workers(box).get(1) not in (None, workers[1]), "worker 1 again")
        assert _workers(box)[2] == workers[2], "the other worker was not touched"
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
        assert "smtp worker 1 ended" in "\n".join(box.output)
    finally:
        stop.set()
        code = box.stop()
    assert code == 0
    assert len(acked) >= 80
    trio.run(_verify, data, attempted, acked)


async def _verify(data: Path, attempted: dict[str, tuple[list[str], bytes]],
                  acked: set[str]) -> None:  # fmt: skip
    from appliance.box import configured, open_box

    async with open_box(configured(data, {}, {})) as box:
        await assert_stored_once(box, USERS, attempted, acked)
