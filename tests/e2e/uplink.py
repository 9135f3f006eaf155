"""What the uplink end-to-end tests share: people, enrolment, and polite polling.

`test_outage.py` (the hub as central mail server), `test_outage_central.py` (Dovecot and
Postfix as the centre) and `test_hub_crash.py` drive real ``edgebox run`` processes the
way people and technicians do: a token and ``edgebox enroll``, sign-in over the API,
mail through the submission port, IMAP to read.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import imaplib
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

from tests.harness import RunningBox, curl, edgebox

PASSWORDS = {
    "somchai@a.go.th": "somchai-pass-2026",
    "malee@a.go.th": "malee-pass-2026",
    "dara@b.go.th": "dara-pass-2026",
}
#: Seconds any one convergence may take; every wait is bounded by it.
SETTLE = 90.0
#: Probe the link every second and sync every 2 s, so a test sees a round in seconds.
FAST = {"EDGEBOX_LINK_PROBE_INTERVAL": "1", "EDGEBOX_SYNC_INTERVAL": "2"}
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


def enrol(hub: RunningBox, hub_data: Path, data: Path, domain: str) -> None:
    """Enrol the box in *data* with *hub*, as a technician does: a token, then enroll."""
    issued = edgebox("hub", "token", "--data", str(hub_data), "--agency", domain)
    token = issued.stdout.strip().splitlines()[-1]
    url = f"https://127.0.0.1:{hub.port('hub-sync')}"
    edgebox("enroll", "--data", str(data), "--hub", url, "--token", token)


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


def post(box: RunningBox, token: str, room_id: str, text: str) -> None:
    status, answer = curl(box, "POST", f"/api/v1/rooms/{room_id}/messages",
                          {"kind": "text", "text": text}, token=token)  # fmt: skip
    assert status == 201, answer


def submit(box: RunningBox, sender: str, to: str, subject: str, urgency: str | None = None) -> None:
    """Send one message through *box*'s submission port, as a mail client does."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = f"<{hashlib.sha256(subject.encode()).hexdigest()[:16]}@test>"
    if urgency:
        message["X-Urgency"] = urgency  # what the relay orders by (compliance.classification)
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
