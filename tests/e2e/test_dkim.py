"""DKIM end to end: box A signs, Debian Postfix relays, box B verifies on its MX port.

Box A runs in-process (its submission listener and the `OutboundRelay`); Postfix is the
real Debian binary as the central relay (tests/peers/postfix.py); box B is a real
`edgebox run` process whose DNS resolver asks a DNS server on 127.0.0.1
(tests/peers/dns_stub.py, wired in through ``sitecustomize`` on B's PYTHONPATH) that
publishes A's DKIM key. B must store the message with its own Authentication-Results
saying ``dkim=pass`` and without the forged one that came with it, and dkimpy's
``dkimverify`` script must accept the bytes B stored.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.headers import parse_headers
from appliance.mail.smtp.policy import Port
from appliance.protection.dkim import DkimKeyring
from appliance.registry import smtp_service
from appliance.sync.central import CENTRAL_CA_FILE
from appliance.sync.clock import SystemClock
from appliance.sync.relay import OutboundRelay, RetryPolicy, Timeouts
from appliance.sync.status import SyncStatus
from tests import harness
from tests.harness import RunningBox, free_port_offset, require_tool, start_box, stored
from tests.peers.dns_stub import resolver_override, txt_server
from tests.peers.postfix import PostfixServer

pytestmark = pytest.mark.slow

SENDER = "somchai@a.go.th"
RECIPIENT = "khun.b@b.go.th"
PASSWORD = "correct-horse-42"
B_HOST = "mail.b.go.th"


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A loopback DNS server (records filled in by the test) and the override for it."""
    records: dict[str, str] = {}
    with txt_server(records) as port:
        yield records, resolver_override(tmp_path / "site", port)


@pytest.fixture
def box_b(tmp_path: Path, dns: tuple[dict[str, str], Path]) -> Iterator[RunningBox]:
    data = tmp_path / "box-b"
    harness.init_box(data, "b.go.th", {RECIPIENT: PASSWORD})
    running = start_box(data, env={"PYTHONPATH": str(dns[1])})
    yield running
    running.stop()


@pytest.fixture
def postfix(tmp_path: Path, box_b: RunningBox) -> Iterator[PostfixServer]:
    require_tool("postfix")
    mx = box_b.port("smtp-mx")
    with PostfixServer(tmp_path, transport_map={"b.go.th": f"smtp:[127.0.0.1]:{mx}"}) as pf:
        yield pf


def submit(port: int, ca: Path) -> None:
    content = (
        f"Authentication-Results: {B_HOST}; dkim=pass header.d=a.go.th\r\n"
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: signed-e2e\r\n"
        "Date: Mon, 07 Dec 2026 10:00:00 +0700\r\nMessage-ID: <signed-e2e@a.go.th>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "สวัสดีครับ signed body\r\n"
    )
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


async def test_signed_by_a_verified_by_b_through_postfix(
    tmp_path: Path,
    postfix: PostfixServer,
    box_b: RunningBox,
    dns: tuple[dict[str, str], Path],
) -> None:
    records, site = dns
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
        # The agency publishes its key first (`edgebox dkim show`), as docs/protection.md says.
        keyring = DkimKeyring(data / "keys")
        keyring.ensure("a.go.th", datetime.now(UTC).date())
        records.update({r.name: r.value for r in keyring.records("a.go.th")})
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
        async with trio.open_nursery() as nursery:
            await nursery.start(smtp_service(box, Port.SUBMISSION).serve)
            await nursery.start(relay.serve)
            await trio.to_thread.run_sync(submit, port, data / "keys" / "ca.pem")
            await wait_for(_queue_empty(box), "A's queue to drain")
            await trio.to_thread.run_sync(postfix.wait_queue_empty, 45)
            nursery.cancel_scope.cancel()

    box_b.stop()
    ((_row, content),) = await stored(box_b.data, RECIPIENT)
    fields = parse_headers(content)
    results = [v for n, v in fields if n.lower() == "authentication-results"]
    (selector,) = [r.name.split(".")[0] for r in keyring.records("a.go.th")]
    assert results == [f"{B_HOST}; dkim=pass header.d=a.go.th header.s={selector}"]
    assert [n for n, _ in fields].count("DKIM-Signature") == 1

    # An independent verifier agrees on the bytes B stored (same loopback DNS).
    done = await trio.to_thread.run_sync(dkimverify, content, site)
    assert done.returncode == 0, done.stdout + done.stderr


def dkimverify(content: bytes, site: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("dkimverify"))],
        input=content,
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(site)},
        check=False,
    )


def _queue_empty(box: Box) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await box.mailstore.outbound_length() == 0

    return check
