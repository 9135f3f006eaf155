"""Anti-virus and anti-spam end to end: a real box running real clamd and rspamd.

The box starts both engines itself (``protection_engines=box``) with the test's own
signature database — freshclam cannot reach the internet here, so the test writes a
ClamAV ``.ndb`` signature for the EICAR test file — and one extra rspamd rule,
``EDGEBOX_TEST_JUNK`` (score 8, between the junk score 6 and the reject score 15),
that fires on a subject. GTUBE is rspamd's own test pattern. Mail goes in through
smtplib on the MX and submission ports (docs/protection.md).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.store.settings import Settings
from tests.appliance.protection.engines import CompiledRules, box_rspamd_database
from tests.harness import RunningBox, curl, edgebox, init_box, require_tool, start_box, stored

pytestmark = pytest.mark.slow

DOMAIN = "scan.go.th"
PASSWORD = "correct-horse-42"
USERS = {f"{name}@{DOMAIN}": PASSWORD for name in ("alice", "bob")}
#: The EICAR anti-virus test file, in two halves so this source file is not itself
#: flagged by a scanner with real signatures.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-" + b"ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-" + b"ANTI-UBE-TEST-EMAIL*C.34X"
JUNK_SUBJECT = "edgebox-test-junk"
#: rspamd compiles its rules (hyperscan) on first start: slow on a loaded machine.
ENGINES_TIMEOUT = 240.0

RSPAMD_RULE = """
regexp {
  EDGEBOX_TEST_JUNK {
    re = "Subject=/edgebox-test-junk/i{header}";
    score = 8.0;
    description = "edgebox test: a score between the junk and the reject thresholds";
  }
}
"""


def write_engine_files(root: Path) -> dict[str, object]:
    """The test's ClamAV database and rspamd rule; return the box's settings."""
    database = root / "clamav-db"
    database.mkdir()
    # ClamAV body signature (.ndb): name:target type (0 = any):offset (* = anywhere):hex.
    (database / "edgebox-test.ndb").write_text(f"Edgebox-Test-EICAR:0:*:{EICAR.hex()}\n")
    rule = root / "rspamd-test-rules.conf"
    rule.write_text(RSPAMD_RULE)
    return {
        "protection": True,
        "protection_clamd_database": str(database),
        "protection_rspamd_local": str(rule),
        "protection_junk_score": 6.0,
        "protection_reject_score": 15.0,
    }


def engines_state(box: RunningBox) -> dict[str, dict[str, object]]:
    try:
        return json.loads((box.data / "run" / "protection.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def wait_for_engines(
    box: RunningBox, compiled: CompiledRules, timeout: float = ENGINES_TIMEOUT
) -> None:
    """Wait until the box says both engines answer; keep what rspamd compiled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = engines_state(box)
        if all(isinstance(state.get(n), dict) and state[n].get("answering")
               for n in ("clamd", "rspamd")):  # fmt: skip
            compiled.keep(box_rspamd_database(box.data))
            return
        time.sleep(1)
    raise AssertionError(f"engines did not come up: {engines_state(box)}")


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, compiled_rules: CompiledRules
) -> Iterator[RunningBox]:
    require_tool("clamd")
    require_tool("rspamd")
    root = tmp_path_factory.mktemp("protection")
    data = root / "box"
    init_box(data, DOMAIN, USERS)
    # In config.json, as an admin sets them, so `edgebox status` sees them too.
    settings = Settings(data / "config.json")
    try:
        settings.update("config", write_engine_files(root))
    finally:
        settings.close()
    compiled_rules.seed(box_rspamd_database(data))
    running = start_box(data)
    try:
        wait_for_engines(running, compiled_rules)
        yield running
    finally:
        assert running.stop() == 0


def tls(box: RunningBox) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(box.ca))


def message(sender: str, to: str, marker: str, body: bytes = b"hello",
            subject: str = "test") -> bytes:  # fmt: skip
    return (
        (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject} {marker}\r\n"
            f"Message-ID: <{marker}@example.org>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0700\r\n\r\n"
        ).encode()
        + body
        + f"\r\n{marker}\r\n".encode()
    )


def with_attachment(sender: str, to: str, marker: str, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {sender}\r\nTo: {to}\r\nSubject: attachment {marker}\r\n"
            f"Message-ID: <{marker}@example.org>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0700\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BOUNDARY\r\n\r\n"
            f"--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nsee the file {marker}\r\n"
            "--BOUNDARY\r\nContent-Type: application/octet-stream; name=test.com\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=test.com\r\n\r\n"
        ).encode()
        + encoded
        + b"--BOUNDARY--\r\n"
    )


def send_mx(box: RunningBox, content: bytes, to: str = f"bob@{DOMAIN}",
            sender: str = "someone@example.org") -> tuple[int, bytes]:  # fmt: skip
    with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=60) as client:
        client.ehlo("mx.example.org")
        client.mail(sender)
        code, _ = client.rcpt(to)
        assert code == 250
        return client.data(content)


def send_submission(box: RunningBox, content: bytes, to: str) -> tuple[int, bytes]:
    user = f"alice@{DOMAIN}"
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=60) as client:
        client.starttls(context=tls(box))
        client.login(user, PASSWORD)
        client.mail(user)
        code, _ = client.rcpt(to)
        assert code == 250
        return client.data(content)


async def copies(box: RunningBox, address: str, marker: str, mailbox: str = "INBOX") -> list[bytes]:
    return [content for _, content in await stored(box.data, address, mailbox)
            if marker.encode() in content]  # fmt: skip


def traffic_results(box: RunningBox) -> list[str]:
    """Every traffic-log line's result (JSON Lines, appliance.compliance.traffic_log)."""
    return [json.loads(line).get("result", "")
            for path in sorted((box.data / "log" / "traffic").glob("traffic-*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]  # fmt: skip


async def test_clean_mail_passes_with_the_scan_headers(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    code, _ = send_mx(box, message("someone@example.org", f"bob@{DOMAIN}", marker))
    assert code == 250
    [content] = await copies(box, f"bob@{DOMAIN}", marker)
    assert b"\r\nX-Virus-Scanned: clamd on " in content
    assert b"\r\nX-Spam-Flag: NO\r\n" in content
    assert any(r.startswith("250 2.0.0 clean score=") for r in traffic_results(box))


async def test_eicar_on_the_mx_port_is_refused_naming_it(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    content = with_attachment("someone@example.org", f"bob@{DOMAIN}", marker, EICAR)
    code, text = send_mx(box, content)
    assert code == 554
    assert b"5.7.1" in text
    assert b"Edgebox-Test-EICAR" in text
    assert await copies(box, f"bob@{DOMAIN}", marker) == []
    assert any(r.startswith("554 5.7.1 virus Edgebox-Test-EICAR") for r in traffic_results(box))


async def test_eicar_on_submission_is_refused(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    content = message(f"alice@{DOMAIN}", f"bob@{DOMAIN}", marker, body=EICAR)
    code, text = send_submission(box, content, f"bob@{DOMAIN}")
    assert (code, b"5.7.1" in text, b"Edgebox-Test-EICAR" in text) == (554, True, True)
    assert await copies(box, f"bob@{DOMAIN}", marker) == []


async def test_a_message_refused_before_its_verdict_leaves_the_session_working(
    box: RunningBox,
) -> None:
    # The scan starts at DATA's end beside the policy check. A forged local sender on
    # the MX is the policy's refusal, whatever the scan would say (EICAR inside): the
    # scan is cancelled, and the next message on the same session is scanned and taken.
    forged, clean = uuid.uuid4().hex, uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=60) as client:
        client.ehlo("mx.example.org")
        client.mail("someone@example.org")
        assert client.rcpt(f"bob@{DOMAIN}")[0] == 250
        code, text = client.data(message(f"alice@{DOMAIN}", f"bob@{DOMAIN}", forged, EICAR))
        assert (code, b"port 25" in text) == (550, True)
        client.mail("someone@example.org")
        assert client.rcpt(f"bob@{DOMAIN}")[0] == 250
        code, _ = client.data(message("someone@example.org", f"bob@{DOMAIN}", clean))
        assert code == 250
    assert await copies(box, f"bob@{DOMAIN}", forged) == []
    [content] = await copies(box, f"bob@{DOMAIN}", clean)
    assert b"\r\nX-Virus-Scanned: clamd on " in content


def test_gtube_is_refused_as_spam(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    code, text = send_mx(box, message("someone@example.org", f"bob@{DOMAIN}", marker, GTUBE))
    assert code == 550
    assert b"5.7.1" in text
    assert b"spam" in text


async def test_between_the_thresholds_lands_in_junk_with_its_scores(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    content = message("someone@example.org", f"bob@{DOMAIN}", marker, subject=JUNK_SUBJECT)
    code, _ = send_mx(box, content)
    assert code == 250
    assert await copies(box, f"bob@{DOMAIN}", marker) == []
    [junk] = await copies(box, f"bob@{DOMAIN}", marker, "Junk")
    assert b"\r\nX-Spam-Flag: YES\r\n" in junk
    assert b"junk=6.00 reject=15.00" in junk
    assert b"EDGEBOX_TEST_JUNK(8.00)" in junk
    assert any(r.startswith("250 2.0.0 junk score=") for r in traffic_results(box))


async def test_a_senders_own_scan_headers_are_replaced(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    forged = b"X-Spam-Flag: NO\r\nX-Virus-Scanned: trust me\r\n" + message(
        "someone@example.org", f"bob@{DOMAIN}", marker, subject=JUNK_SUBJECT
    )
    assert send_mx(box, forged)[0] == 250
    [junk] = await copies(box, f"bob@{DOMAIN}", marker, "Junk")
    assert b"trust me" not in junk
    assert junk.count(b"X-Spam-Flag:") == 1


async def test_the_agencys_sender_lists_apply_on_the_mx_port(box: RunningBox) -> None:
    """Set as the admin console stores them, read by the running box per message."""
    settings = Settings(box.data / "config.json")
    try:
        settings.update("protection", {DOMAIN: {"allow": ["partner.example"],
                                                "block": ["bad@spam.example"]}})  # fmt: skip
        marker = uuid.uuid4().hex
        code, text = send_mx(box, message("bad@spam.example", f"bob@{DOMAIN}", marker),
                             sender="bad@spam.example")  # fmt: skip
        assert (code, text[:5]) == (550, b"5.7.1")
        assert b"blocked" in text
        # Allowed: GTUBE is not refused as spam ...
        code, _ = send_mx(box, message("a@partner.example", f"bob@{DOMAIN}", marker, GTUBE),
                          sender="a@partner.example")  # fmt: skip
        assert code == 250
        assert len(await copies(box, f"bob@{DOMAIN}", marker)) == 1
        # ... but a virus from the same sender still is.
        content = with_attachment("a@partner.example", f"bob@{DOMAIN}", uuid.uuid4().hex, EICAR)
        code, _ = send_mx(box, content, sender="a@partner.example")
        assert code == 554
    finally:
        settings.update("protection", {DOMAIN: {}})
        settings.close()
    results = traffic_results(box)
    assert any(r.startswith("550 5.7.1 blocked") for r in results)
    assert any(r.startswith("250 2.0.0 clean sender on the allow list") for r in results)


def test_status_reports_the_engines(box: RunningBox) -> None:
    result = edgebox("status", "--data", str(box.data), "--lang", "en", check=False)
    assert "protection: clamd and rspamd answer" in result.stdout, result.stdout


async def test_clamd_killed_in_a_burst_gives_451s_and_comes_back(box: RunningBox) -> None:
    """Every 250 is a scanned, stored message; every other answer is a 451 4.7.1."""
    pid = engines_state(box)["clamd"]["pid"]
    assert isinstance(pid, int)
    replies: dict[str, int] = {}
    for number in range(40):
        if number == 10:
            os.kill(pid, signal.SIGKILL)
        marker = f"burst{number}-{uuid.uuid4().hex}"
        code, text = send_mx(box, message("someone@example.org", f"bob@{DOMAIN}", marker))
        assert code in (250, 451), (code, text)
        if code == 451:
            assert b"4.7.1" in text
        replies[marker] = code
    assert 451 in replies.values(), "clamd's death was not noticed"
    for marker, code in replies.items():
        found = await copies(box, f"bob@{DOMAIN}", marker)
        assert len(found) == (1 if code == 250 else 0), marker
        assert all(b"X-Virus-Scanned: clamd" in content for content in found)
    # The box restarts clamd; mail flows again, bounded in time.
    deadline = time.monotonic() + 120
    while True:
        marker = uuid.uuid4().hex
        code, _ = send_mx(box, message("someone@example.org", f"bob@{DOMAIN}", marker))
        if code == 250:
            break
        assert time.monotonic() < deadline, "clamd did not come back"
        await trio.sleep(1)
    assert engines_state(box)["clamd"]["restarts"] >= 1


def upload(box: RunningBox, token: str, data: bytes, name: str) -> tuple[int, dict[str, object]]:
    """POST /api/v1/uploads with Debian's curl; return (status, JSON body)."""
    args = [require_tool("curl"), "-sS", "--cacert", str(box.ca), "-X", "POST",
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/octet-stream",
            "-H", "Accept-Language: en", "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}",
            f"https://127.0.0.1:{box.port('https')}/api/v1/uploads?name={name}"]  # fmt: skip
    done = subprocess.run(args, input=data, capture_output=True, timeout=60, check=True)
    text, _, status = done.stdout.decode().rpartition("\n")
    return int(status), json.loads(text)


def test_a_chat_upload_with_eicar_is_refused_and_a_clean_one_taken(box: RunningBox) -> None:
    credentials = {"address": f"alice@{DOMAIN}", "password": PASSWORD, "client": "app"}
    _, session = curl(box, "POST", "/api/v1/session", credentials)
    token = session["token"]
    status, body = upload(box, token, EICAR, "eicar.com")
    assert status == 422, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "virus_found"
    assert "Edgebox-Test-EICAR" in str(error["message_en"])
    assert "พบไวรัส" in str(error["message_th"])
    status, body = upload(box, token, b"minutes of the meeting\n", "minutes.txt")
    assert status == 201, body
    assert "201 clean" in traffic_results(box)
