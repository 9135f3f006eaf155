"""SPF and DMARC end to end: Debian's swaks sends to a real box's MX port.

The box is a real `edgebox run` whose resolver asks a DNS server on 127.0.0.1 that the
test fills in (tests/peers/dns_stub.py, wired in through ``sitecustomize`` on the box's
PYTHONPATH, as in test_dkim.py). swaks connects from 127.0.0.1, so an SPF record naming
``ip4:127.0.0.1`` passes and one naming 192.0.2.1 (TEST-NET-1) fails. Each case reads
back the message the box stored — its folder and its one Authentication-Results field —
or sees swaks get the refusal; every verdict is in the traffic log.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from appliance.mail.headers import parse_headers
from appliance.protection.dkim import DkimKeyring, sign_outbound
from appliance.security.keys import create_box_keys
from tests.harness import RunningBox, init_box, require_tool, start_box, stored
from tests.peers.dns_stub import resolver_override, txt_server

pytestmark = pytest.mark.slow

DOMAIN = "auth.go.th"
USER = f"alice@{DOMAIN}"
PASSWORD = "correct-horse-42"
HOST = f"mail.{DOMAIN}"
ALLOW_LOOPBACK = "v=spf1 ip4:127.0.0.1 -all"
ALLOW_OTHER = "v=spf1 ip4:192.0.2.1 -all"

#: The senders' published records, as their DNS administrators would publish them.
RECORDS: dict[str, str] = {
    "pass.go.th": ALLOW_LOOPBACK,
    "fail.go.th": ALLOW_OTHER,
    "soft.go.th": "v=spf1 ip4:192.0.2.1 ~all",
    "reject.go.th": ALLOW_OTHER,
    "_dmarc.reject.go.th": "v=DMARC1; p=reject",
    "junk.go.th": ALLOW_OTHER,
    "_dmarc.junk.go.th": "v=DMARC1; p=quarantine",
    "watch.go.th": ALLOW_OTHER,
    "_dmarc.watch.go.th": "v=DMARC1; p=none; rua=mailto:dmarc@watch.go.th",
    "signed.go.th": ALLOW_OTHER,
    "_dmarc.signed.go.th": "v=DMARC1; p=reject",
    # The box's own domain, published as `edgebox dkim show` advises (p=reject).
    f"_dmarc.{DOMAIN}": "v=DMARC1; p=reject",
}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    served = dict(RECORDS)
    with txt_server(served) as port:
        yield served, resolver_override(tmp_path_factory.mktemp("site"), port)


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, records: tuple[dict[str, str], Path]
) -> Iterator[RunningBox]:
    data = tmp_path_factory.mktemp("auth") / "box"
    init_box(data, DOMAIN, {USER: PASSWORD})
    running = start_box(data, env={"PYTHONPATH": str(records[1])})
    try:
        yield running
    finally:
        assert running.stop() == 0


def swaks(
    box: RunningBox, sender: str, marker: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """Send with swaks to the MX; *marker* in the Subject (None: *args* bring the data)."""
    subject = ["--header", f"Subject: sender-auth {marker}"] if marker else []
    return subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--port", str(box.port("smtp-mx")),
         "--helo", "client.example.org", "--from", sender, "--to", USER, *subject, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def found(box: RunningBox, marker: str) -> dict[str, list[bytes]]:
    """The stored copies carrying *marker*, by folder."""
    return {
        folder: [c for _, c in await stored(box.data, USER, folder) if marker.encode() in c]
        for folder in ("INBOX", "Junk")
    }


def results_field(content: bytes) -> str:
    (value,) = [v for n, v in parse_headers(content) if n.lower() == "authentication-results"]
    return " ".join(value.split())


def traffic(box: RunningBox) -> list[dict[str, object]]:
    return [json.loads(line)
            for path in sorted((box.data / "log" / "traffic").glob("traffic-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]  # fmt: skip


@pytest.mark.parametrize(
    ("domain", "spf", "folder"),
    [("pass.go.th", "pass", "INBOX"), ("fail.go.th", "fail", "Junk"),
     ("soft.go.th", "softfail", "INBOX")],
)  # fmt: skip
async def test_spf_pass_fail_softfail(box: RunningBox, domain: str, spf: str, folder: str) -> None:
    marker = uuid.uuid4().hex
    sent = swaks(box, f"news@{domain}", marker, "--header", f"From: news@{domain}")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    copies = await found(box, marker)
    assert len(copies[folder]) == 1, copies
    field = results_field(copies[folder][0])
    assert field.startswith(f"{HOST}; spf={spf} ")
    assert f"smtp.mailfrom={domain};" in field
    assert field.endswith(f"dmarc=none header.from={domain}")


async def test_dmarc_reject_is_refused_with_550(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = swaks(box, "boss@reject.go.th", marker, "--header", "From: boss@reject.go.th")
    assert sent.returncode != 0
    assert "<** 550 5.7.1" in sent.stdout
    assert "DMARC" in sent.stdout
    assert await found(box, marker) == {"INBOX": [], "Junk": []}
    results = [str(r.get("result")) for r in traffic(box) if r.get("sender") == "boss@reject.go.th"]
    assert results == ["550 5.7.1 spf=fail dkim=none dmarc=fail(p=reject)"]


async def test_dmarc_quarantine_goes_to_junk(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = swaks(box, "x@junk.go.th", marker, "--header", "From: x@junk.go.th")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    copies = await found(box, marker)
    assert (len(copies["INBOX"]), len(copies["Junk"])) == (0, 1)
    assert results_field(copies["Junk"][0]).endswith(
        "dmarc=fail (p=quarantine dis=quarantine) header.from=junk.go.th"
    )


async def test_dmarc_none_is_delivered_with_the_header(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    # SPF passes for the envelope (pass.go.th) but not for the From domain: unaligned.
    sent = swaks(box, "x@pass.go.th", marker, "--header", "From: x@watch.go.th")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (copy,) = (await found(box, marker))["INBOX"]
    assert results_field(copy) == (
        f"{HOST}; spf=pass smtp.mailfrom=pass.go.th; dkim=none;"
        " dmarc=fail (p=none dis=none) header.from=watch.go.th"
    )


async def test_an_aligned_dkim_pass_rescues_an_spf_fail(
    box: RunningBox, records: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    create_box_keys(keys)
    ring = DkimKeyring(keys)
    ring.ensure("signed.go.th", date(2026, 12, 7))
    records[0].update({r.name: r.value for r in ring.records("signed.go.th")})
    marker = uuid.uuid4().hex
    message = (
        f"From: Director <director@signed.go.th>\r\nTo: {USER}\r\n"
        f"Subject: sender-auth {marker}\r\nDate: Mon, 07 Dec 2026 10:00:00 +0700\r\n"
        f"Message-ID: <{marker}@signed.go.th>\r\n\r\nsigned body\r\n"
    ).encode()
    signed = tmp_path / "signed.eml"
    signed.write_bytes(sign_outbound(ring, message))
    sent = swaks(box, "bounce@signed.go.th", None, "--data", str(signed))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    (copy,) = (await found(box, marker))["INBOX"]
    field = results_field(copy)
    assert field.startswith(f"{HOST}; spf=fail ")
    assert "dkim=pass header.d=signed.go.th" in field
    assert field.endswith("dmarc=pass (p=reject dis=none) header.from=signed.go.th")


async def test_own_domain_spoofed_on_the_mx_is_refused(box: RunningBox) -> None:
    # The agency publishes p=reject: DMARC refuses the forged From. The envelope of
    # the box's own domain is refused already at MAIL FROM (no SPF pass).
    marker = uuid.uuid4().hex
    forged = swaks(box, "x@pass.go.th", marker, "--header", f"From: director@{DOMAIN}")
    assert "<** 550 5.7.1" in forged.stdout
    envelope = swaks(box, f"director@{DOMAIN}", marker)
    assert "<** 550 5.7.1" in envelope.stdout
    assert await found(box, marker) == {"INBOX": [], "Junk": []}
