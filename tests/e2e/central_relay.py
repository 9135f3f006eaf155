"""What the Postfix-as-central-relay tests share: box A in-process, Postfix, box B's MX.

`test_relay_postfix.py` (delivery once, urgent first after a cut) and `test_dkim.py`
(A signs, B verifies) both run box A in-process (its submission listener and the
`OutboundRelay`, on the real clock) relaying through the real Debian Postfix
(tests/peers/postfix.py) to box B, a real ``edgebox run`` process, on its MX port.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.smtp.policy import Port
from appliance.registry import smtp_service
from appliance.sync.central import CENTRAL_CA_FILE
from appliance.sync.clock import SystemClock
from appliance.sync.relay import OutboundRelay, RetryPolicy, Timeouts
from appliance.sync.status import SyncStatus
from tests.harness import RunningBox, free_port_offset, require_tool
from tests.peers.postfix import PostfixServer

SENDER = "somchai@a.go.th"
RECIPIENT = "khun.b@b.go.th"
PASSWORD = "correct-horse-42"


@contextmanager
def postfix_relaying_to(tmp_path: Path, box_b: RunningBox) -> Iterator[PostfixServer]:
    """Run Postfix as the centre, relaying ``b.go.th`` to box B's MX port."""
    require_tool("postfix")
    mx = box_b.port("smtp-mx")
    with PostfixServer(tmp_path, transport_map={"b.go.th": f"smtp:[127.0.0.1]:{mx}"}) as pf:
        yield pf


@dataclass
class BoxA:
    box: Box
    data: Path
    relay: OutboundRelay
    submission: int

    @property
    def ca(self) -> Path:
        return self.data / "keys" / "ca.pem"


@asynccontextmanager
async def box_a_through(tmp_path: Path, postfix: PostfixServer) -> AsyncIterator[BoxA]:
    """Open box A (a.go.th, SENDER) whose relay is *postfix*; serve nothing yet.

    The caller starts ``smtp_service(box, Port.SUBMISSION)`` and ``relay.serve`` with
    `serving`, after any set-up of its own (e.g. publishing a DKIM key).
    """
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
        yield BoxA(box, data, relay, config.port("smtp-submission"))


@asynccontextmanager
async def serving(a: BoxA) -> AsyncIterator[None]:
    """Serve A's submission port and relay for the block; stop both after it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(smtp_service(a.box, Port.SUBMISSION).serve)
        await nursery.start(a.relay.serve)
        yield
        nursery.cancel_scope.cancel()


def submit(port: int, ca: Path, content: str) -> None:
    """Send *content* from SENDER to RECIPIENT on A's submission port, as a client would."""
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


def queue_empty(box: Box) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await box.mailstore.outbound_length() == 0

    return check


async def drained(a: BoxA, postfix: PostfixServer, what: str = "A's queue to drain") -> None:
    """Wait until A's outbound queue is empty and Postfix has passed everything on."""
    await wait_for(queue_empty(a.box), what)
    await trio.to_thread.run_sync(postfix.wait_queue_empty, 45)
