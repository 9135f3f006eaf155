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
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from appliance.mail.headers import parse_headers
from appliance.protection.dkim import DkimKeyring
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
)
from tests.harness import RunningBox, start_box, stored
from tests.peers.dns_stub import resolver_override, txt_server
from tests.peers.postfix import PostfixServer

pytestmark = pytest.mark.slow

B_HOST = "mail.b.go.th"
SIGNED = (
    f"Authentication-Results: {B_HOST}; dkim=pass header.d=a.go.th\r\n"
    f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: signed-e2e\r\n"
    "Date: Mon, 07 Dec 2026 10:00:00 +0700\r\nMessage-ID: <signed-e2e@a.go.th>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "สวัสดีครับ signed body\r\n"
)


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
    with postfix_relaying_to(tmp_path, box_b) as pf:
        yield pf


async def test_signed_by_a_verified_by_b_through_postfix(
    tmp_path: Path,
    postfix: PostfixServer,
    box_b: RunningBox,
    dns: tuple[dict[str, str], Path],
) -> None:
    records, site = dns
    async with box_a_through(tmp_path, postfix) as a:
        # The agency publishes its key first (`edgebox dkim show`), as docs/protection.md says.
        keyring = DkimKeyring(a.data / "keys")
        keyring.ensure("a.go.th", datetime.now(UTC).date())
        records.update({r.name: r.value for r in keyring.records("a.go.th")})
        async with serving(a):
            await trio.to_thread.run_sync(submit, a.submission, a.ca, SIGNED)
            await drained(a, postfix)

    box_b.stop()
    ((_row, content),) = await stored(box_b.data, RECIPIENT)
    fields = parse_headers(content)
    results = [v for n, v in fields if n.lower() == "authentication-results"]
    (selector,) = [r.name.split(".")[0] for r in keyring.records("a.go.th")]
    # One field, B's own: SPF and DMARC find no records for a.go.th here (issue 23).
    assert results == [
        f"{B_HOST}; spf=none smtp.mailfrom=a.go.th; dkim=pass header.d=a.go.th"
        f" header.s={selector}; dmarc=none header.from=a.go.th"
    ]
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
