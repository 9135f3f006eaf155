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

import shutil
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.smtp.policy import Port
from appliance.registry import smtp_service
from appliance.sync.central import CENTRAL_CA_FILE
from appliance.sync.clock import SystemClock
from appliance.sync.relay import OutboundRelay, RetryPolicy, Timeouts
from appliance.sync.status import SyncStatus
from tests import harness
from tests.harness import RunningBox, free_port_offset, require_tool, start_box, stored
from tests.peers.postfix import PostfixServer

pytestmark = pytest.mark.slow

SENDER = "somchai@a.go.th"
RECIPIENT = "khun.b@b.go.th"
PASSWORD = "correct-horse-42"


@pytest.fixture
def box_b(tmp_path: Path) -> Iterator[RunningBox]:
    data = tmp_path / "box-b"
    harness.init_box(data, "b.go.th", {RECIPIENT: PASSWORD})
    running = start_box(data)
    yield running
    running.stop()


@pytest.fixture
def postfix(tmp_path: Path, box_b: RunningBox) -> Iterator[PostfixServer]:
    require_tool("postfix")
    mx = box_b.port("smtp-mx")
    with PostfixServer(tmp_path, transport_map={"b.go.th": f"smtp:[127.0.0.1]:{mx}"}) as pf:
        yield pf


def submit(port: int, ca: Path, subject: str, urgency: str | None = None) -> None:
    """Send one message to box A's submission port, as a mail client would."""
    head = f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n"
    if urgency:
        head += f"X-Urgency: {urgency}\r\n"
    content = head + f"Message-ID: <{subject}@a.go.th>\r\n\r\nbody of {subject}\r\n"
    context = ssl.create_default_context(cafile=str(ca))
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        client.login(SENDER, PASSWORD)
        client.sendmail(SENDER, [RECIPIENT], content.encode())


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll *predicate* for up to 45 s (bounded: 450 looks)."""
    for _ in range(450):
        if await predicate():
            return
        await trio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_mail_reaches_box_b_once_and_urgent_leaves_first_after_an_outage(
    tmp_path: Path, postfix: PostfixServer, box_b: RunningBox
) -> None:
    data = tmp_path / "box-a"
    await init_box(data, "a.go.th")
    config = load_config(
        data,
        flags={
            "port_offset": free_port_offset(),
            "central_smtp": f"smtp://127.0.0.1:{postfix.smtp_port}",
        },
    )
    assert postfix.cert_path is not None
    async with open_box(config) as box:
        await add_user(box, SENDER, PASSWORD, name_th="สมชาย")
        shutil.copy(postfix.cert_path, data / "keys" / CENTRAL_CA_FILE)
        relay = OutboundRelay(
            SyncStatus(data),
            SystemClock(),
            config=box.config,
            hostname=box.hostname,
            directory=box.directory,
            mailstore=box.mailstore,
            retry=RetryPolicy(poll=0.2, link_first=0.5, link_cap=2.0),
            timeouts=Timeouts(connect=5, greeting=10, command=10, data_start=10,
                              data_block=10, data_end=30),
        )  # fmt: skip
        port = config.port("smtp-submission")
        ca = data / "keys" / "ca.pem"
        async with trio.open_nursery() as nursery:
            await nursery.start(smtp_service(box, Port.SUBMISSION).serve)
            await nursery.start(relay.serve)

            # 1. The link is up: a message goes through at once.
            await trio.to_thread.run_sync(submit, port, ca, "hello-b")
            await wait_for(_queue_empty(box), "A's queue to drain")
            await trio.to_thread.run_sync(postfix.wait_queue_empty, 45)

            # 2. The relay goes away; normal mail, then urgent mail, queue on A.
            await trio.to_thread.run_sync(postfix.stop)
            await trio.to_thread.run_sync(submit, port, ca, "normal-during-cut")
            await trio.to_thread.run_sync(submit, port, ca, "urgent-during-cut", "ด่วนที่สุด")
            await wait_for(_link_down(relay), "the relay to notice the cut")
            assert await box.mailstore.outbound_length() == 2

            # 3. The relay comes back; the link monitor's wake() sends at once.
            await trio.to_thread.run_sync(postfix.start)
            relay.wake()
            await wait_for(_queue_empty(box), "A's queue to drain after the cut")
            await trio.to_thread.run_sync(postfix.wait_queue_empty, 45)
            nursery.cancel_scope.cancel()

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


def _queue_empty(box: Box) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await box.mailstore.outbound_length() == 0

    return check


def _link_down(relay: OutboundRelay) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await relay.status()).link == "down"

    return check
