"""The outage scenario, end to end (issue 5): real processes, a real cut, convergence.

A hub (the central chat peer and, here, the central mail server), box A of a.go.th and
box B of b.go.th, each enrolled with a one-time token. Every connection from A to the
centre goes through fault-injecting proxies (tests/faults). With A's uplink cut, A's
people go on mailing each other and chatting, mail from A to B waits in A's queue, and B
chats on. When the link comes back everything converges: the mail reaches B once, the
most urgent first, and the inter-agency room shows the same messages in the same order
on A, B and the hub.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import imaplib
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest

from tests.faults.proxy import ProxyProcess
from tests.harness import RunningBox, curl, edgebox, init_box, start_box

pytestmark = pytest.mark.slow

PASSWORDS = {
    "somchai@a.go.th": "somchai-pass-2026",
    "malee@a.go.th": "malee-pass-2026",
    "dara@b.go.th": "dara-pass-2026",
}
#: Seconds any one convergence may take; every wait below is bounded by it.
SETTLE = 90.0
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = SETTLE) -> T:
    """Poll *probe* until it returns something truthy; fail with *what* after *timeout*."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def sign_in(box: RunningBox, address: str) -> str:
    body = {"address": address, "password": PASSWORDS[address], "client": "app"}
    status, answer = curl(box, "POST", "/api/v1/session", body)
    assert status == 201, answer
    return str(answer["token"])


def room_texts(box: RunningBox, token: str, room_id: str) -> list[str]:
    status, page = curl(box, "GET", f"/api/v1/rooms/{room_id}/messages?limit=200", token=token)
    if status == 404:  # not replicated to this box yet
        return []
    assert status == 200, page
    messages = page["messages"] if isinstance(page, dict) else page
    return [m["content"].get("text", "") for m in messages if m.get("content")]


def submit(box: RunningBox, sender: str, to: str, subject: str, urgency: str | None = None) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    if urgency:
        message["X-Urgency"] = urgency
    message.set_content(f"{subject}\n")
    context = ssl.create_default_context(cafile=str(box.ca))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(sender, PASSWORDS[sender])
        smtp.send_message(message)


def inbox_subjects(box: RunningBox, address: str) -> list[str]:
    """Subjects in *address*'s INBOX on *box*, in UID order (arrival order)."""
    context = ssl.create_default_context(cafile=str(box.ca))
    context.check_hostname = False
    with imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context) as imap:
        imap.login(address, PASSWORDS[address])
        imap.select("INBOX", readonly=True)
        _, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = []
    for item in data:
        if isinstance(item, tuple):
            fields = email.message_from_bytes(item[1], policy=email.policy.default)
            subjects.append(str(fields["Subject"]))
    return subjects


def enrol(hub: RunningBox, hub_data: Path, data: Path, domain: str) -> None:
    issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", domain)
    token = issued.stdout.strip().splitlines()[-1]
    url = f"https://127.0.0.1:{hub.port('hub-sync')}"
    edgebox("enroll", "--data", str(data), "--hub", url, "--token", token)


@contextlib.contextmanager
def uplink_of(hub: RunningBox) -> Iterator[tuple[list[ProxyProcess], dict[str, str]]]:
    """Proxies for one box's three roads to the centre, and the settings that use them."""
    with (
        ProxyProcess(("127.0.0.1", hub.port("hub-sync"))) as sync,
        ProxyProcess(("127.0.0.1", hub.port("smtp-submission"))) as smtp,
        ProxyProcess(("127.0.0.1", hub.port("imaps"))) as imap,
    ):
        settings = {
            "EDGEBOX_HUB_URL": f"https://127.0.0.1:{sync.port}",
            "EDGEBOX_CENTRAL_SMTP": f"smtp://127.0.0.1:{smtp.port}",
            "EDGEBOX_CENTRAL_IMAP": f"imaps://127.0.0.1:{imap.port}",
        }
        yield [sync, smtp, imap], settings


FAST = {"EDGEBOX_LINK_PROBE_INTERVAL": "1", "EDGEBOX_SYNC_INTERVAL": "2"}


def test_a_cut_box_keeps_serving_and_everything_converges(tmp_path: Path) -> None:
    hub_data, a_data, b_data = tmp_path / "hub", tmp_path / "a", tmp_path / "b"
    init_box(hub_data, "hub.go.th", {})
    init_box(a_data, "a.go.th", {k: v for k, v in PASSWORDS.items() if k.endswith("a.go.th")})
    init_box(b_data, "b.go.th", {"dara@b.go.th": PASSWORDS["dara@b.go.th"]})
    hub = start_box(hub_data, extra=["--role", "hub"], env=FAST)
    boxes: list[RunningBox] = [hub]
    try:
        enrol(hub, hub_data, a_data, "a.go.th")
        enrol(hub, hub_data, b_data, "b.go.th")
        with uplink_of(hub) as (proxies, settings):
            a = start_box(a_data, env={**FAST, **settings})
            boxes.append(a)
            b = start_box(b_data, env=FAST)
            boxes.append(b)
            run_scenario(a, b, proxies)
    finally:
        for box in reversed(boxes):
            box.stop()
            # Shown by pytest only when the test fails: what each process said.
            print(f"--- {box.data.name} ---", *box.output[-60:], sep="\n")


def run_scenario(a: RunningBox, b: RunningBox, proxies: list[ProxyProcess]) -> None:
    somchai, dara = sign_in(a, "somchai@a.go.th"), sign_in(b, "dara@b.go.th")

    # The directory travelled: A can open a room with B's people.
    def room_made() -> str | None:
        status, room = curl(a, "POST", "/api/v1/rooms",
                            {"kind": "group", "name": "ประสานงาน ก-ข",
                             "members": ["dara@b.go.th"]}, token=somchai)  # fmt: skip
        return str(room["id"]) if status == 201 else None

    room_id = wait_for("dara@b.go.th in A's directory", room_made)
    status, _ = curl(a, "POST", f"/api/v1/rooms/{room_id}/messages",
                     {"kind": "text", "text": "ก่อนตัด"}, token=somchai)  # fmt: skip
    assert status == 201
    wait_for("the room on B", lambda: "ก่อนตัด" in room_texts(b, dara, room_id))

    # --- cut A's uplink ---------------------------------------------------------------
    for proxy in proxies:
        proxy.control.cut()
    wait_for("A to see GIN down", lambda: "gin: down" in edgebox("status", "--data", str(a.data),
                                                               check=False).stdout)  # fmt: skip

    submit(a, "somchai@a.go.th", "dara@b.go.th", "ปกติ ระหว่างตัด")
    submit(a, "somchai@a.go.th", "dara@b.go.th", "ด่วนที่สุด ระหว่างตัด", urgency="ด่วนที่สุด")
    submit(a, "somchai@a.go.th", "malee@a.go.th", "ในสำนักงาน")
    # Local mail and chat go on as before.
    assert wait_for("local mail on A", lambda: inbox_subjects(a, "malee@a.go.th")) == ["ในสำนักงาน"]
    for n in range(3):
        status, _ = curl(a, "POST", f"/api/v1/rooms/{room_id}/messages",
                         {"kind": "text", "text": f"ก ระหว่างตัด {n}"}, token=somchai)  # fmt: skip
        assert status == 201
        status, _ = curl(b, "POST", f"/api/v1/rooms/{room_id}/messages",
                         {"kind": "text", "text": f"ข ระหว่างตัด {n}"}, token=dara)  # fmt: skip
        assert status == 201
    status_text = edgebox("status", "--data", str(a.data), check=False).stdout
    assert "(total 2)" in status_text, status_text
    assert "ก ระหว่างตัด 0" not in room_texts(b, dara, room_id)

    # --- restore ----------------------------------------------------------------------
    for proxy in proxies:
        proxy.control.restore()

    def both_mails() -> list[str] | None:
        subjects = inbox_subjects(b, "dara@b.go.th")
        return subjects if len(subjects) >= 2 else None

    arrived = wait_for("A's mail in dara's INBOX on B", both_mails)
    assert arrived == ["ด่วนที่สุด ระหว่างตัด", "ปกติ ระหว่างตัด"]  # most urgent first, once

    def same_everywhere() -> list[str] | None:
        on_a = room_texts(a, somchai, room_id)
        on_b = room_texts(b, dara, room_id)
        return on_a if on_a == on_b and len(on_a) == 7 else None

    history = wait_for("one room history on A and B", same_everywhere)
    assert sorted(history) == sorted(
        ["ก่อนตัด"] + [f"ก ระหว่างตัด {n}" for n in range(3)] + [f"ข ระหว่างตัด {n}" for n in range(3)]
    )
    assert len(set(history)) == len(history)  # nothing twice
    # Nothing more arrives later: the queue is empty and no copy follows.
    time.sleep(5)
    assert inbox_subjects(b, "dara@b.go.th") == arrived
    assert "(total 0)" in edgebox("status", "--data", str(a.data), check=False).stdout
