"""Outbound mail end to end: box A → Debian Postfix as the central relay → box B.

Box A runs in-process (its submission listener and the `OutboundRelay`, on the real
clock); Postfix is the real Debian binary (tests/peers/postfix.py) relaying ``b.go.th``
to box B, a real `edgebox run` process, on its MX port. A message submitted on A with
smtplib must arrive in B's INBOX exactly once; during a relay outage, urgent mail queued
after normal mail must still reach the relay first.

Postfix here has no SASL (that would need Dovecot or Cyrus wired in as its auth
backend); it lets 127.0.0.1 relay, so box A has no central credentials and sends
without AUTH. AUTH PLAIN is covered against the scripted relay in
tests/appliance/sync/test_relay.py. STARTTLS is real: A trusts only Postfix's
certificate and refuses to send if TLS does not come up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from appliance.sync.relay import OutboundRelay
from tests import harness
from tests.e2e.central_relay import (
    PASSWORD,
    RECIPIENT,
    SENDER,
    box_a_through,
    drained,
    postfix_relaying_to,
    serving,
    submit,
    wait_for,
)
from tests.harness import RunningBox, start_box, stored
from tests.peers.postfix import PostfixServer

pytestmark = pytest.mark.slow


@pytest.fixture
def box_b(tmp_path: Path) -> Iterator[RunningBox]:
    data = tmp_path / "box-b"
    harness.init_box(data, "b.go.th", {RECIPIENT: PASSWORD})
    running = start_box(data)
    yield running
    running.stop()


@pytest.fixture
def postfix(tmp_path: Path, box_b: RunningBox) -> Iterator[PostfixServer]:
    with postfix_relaying_to(tmp_path, box_b) as pf:
        yield pf


def message(subject: str, urgency: str | None = None) -> str:
    head = f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n"
    if urgency:
        head += f"X-Urgency: {urgency}\r\n"
    return head + f"Message-ID: <{subject}@a.go.th>\r\n\r\nbody of {subject}\r\n"


async def test_mail_reaches_box_b_once_and_urgent_leaves_first_after_an_outage(
    tmp_path: Path, postfix: PostfixServer, box_b: RunningBox
) -> None:
    async with box_a_through(tmp_path, postfix) as a, serving(a):

        async def send(subject: str, urgency: str | None = None) -> None:
            await trio.to_thread.run_sync(submit, a.submission, a.ca, message(subject, urgency))

        # 1. The link is up: a message goes through at once.
        await send("hello-b")
        await drained(a, postfix)

        # 2. The relay goes away; normal mail, then urgent mail, queue on A.
        await trio.to_thread.run_sync(postfix.stop)
        await send("normal-during-cut")
        await send("urgent-during-cut", "ด่วนที่สุด")
        await wait_for(_link_down(a.relay), "the relay to notice the cut")
        assert await a.box.mailstore.outbound_length() == 2

        # 3. The relay comes back; the link monitor's wake() sends at once.
        await trio.to_thread.run_sync(postfix.start)
        a.relay.wake()
        await drained(a, postfix, "A's queue to drain after the cut")

    log = postfix.log_text()
    urgent = log.index("message-id=<urgent-during-cut@a.go.th>")
    normal = log.index("message-id=<normal-during-cut@a.go.th>")
    assert urgent < normal, "urgent mail must reach the relay first"

    box_b.stop()
    subjects = []
    for _row, content in await stored(box_b.data, RECIPIENT):
        for line in content.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                subjects.append(line.removeprefix(b"Subject: ").decode())
    assert sorted(subjects) == ["hello-b", "normal-during-cut", "urgent-during-cut"]


def _link_down(relay: OutboundRelay) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await relay.status()).link == "down"

    return check
