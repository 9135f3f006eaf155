"""SMTP end to end: a real `edgebox run`, driven by Python's smtplib and Debian's swaks.

Covers the issue's list: STARTTLS + AUTH PLAIN and LOGIN, implicit TLS, AUTH refused
before TLS, never an open relay, no spoofed senders, the reply codes a client sees for
unknown users, disabled users, full mailboxes and oversize mail, SMTPUTF8 with Thai
addresses, a 25 MB attachment, and a message to five users stored once.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxStarter
from tests.harness import RunningBox, edgebox, require_tool, stored

pytestmark = pytest.mark.slow

DOMAIN = "e2e.go.th"
PASSWORD = "correct-horse-42"
USERS = {f"{name}@{DOMAIN}": PASSWORD for name in ("alice", "bob", "carol", "dave", "erin")}


def _special_users(data: Path) -> None:
    """A 1 MB quota, a disabled account and a Thai local part, as an operator makes them."""
    edgebox("user", "add", "--data", str(data), f"tiny@{DOMAIN}", "--name", "Tiny",
            "--quota-mb", "1", "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
    edgebox("user", "add", "--data", str(data), f"gone@{DOMAIN}", "--name", "Gone",
            "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
    edgebox("user", "disable", "--data", str(data), f"gone@{DOMAIN}")
    edgebox("user", "add", "--data", str(data), f"สมชาย@{DOMAIN}", "--name", "สมชาย",
            "--password-stdin", input=PASSWORD + "\n")  # fmt: skip


@pytest.fixture(scope="module")
def box(start_running_box: BoxStarter) -> RunningBox:
    return start_running_box("box", DOMAIN, USERS, prepare=_special_users)


def tls(box: RunningBox) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(box.ca))


def message(sender: str, to: str, marker: str, body: str = "hello") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: test {marker}\r\n"
        f"Message-ID: <{marker}@test>\r\n\r\n{body} {marker}\r\n"
    ).encode()


def submission(box: RunningBox, user: str = f"alice@{DOMAIN}") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30)
    client.starttls(context=tls(box))
    client.login(user, PASSWORD)
    return client


def mx(box: RunningBox) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30)


async def assert_delivered(box: RunningBox, address: str, marker: str, sent: bytes) -> None:
    found = [(row, content) for row, content in await stored(box.data, address)
             if marker.encode() in content]  # fmt: skip
    assert len(found) == 1, f"{marker} should be in {address}'s INBOX exactly once"
    content = found[0][1]
    # What was stored is the Received field we added, then the client's bytes, exactly.
    assert content.startswith(b"Received: from ")
    assert content.endswith(sent)
    assert content[: -len(sent)].count(b"\r\n\t") >= 1


async def test_starttls_auth_plain(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = message(f"alice@{DOMAIN}", f"bob@{DOMAIN}", marker)
    with submission(box) as client:
        assert "PLAIN" in client.esmtp_features["auth"]
        assert client.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], sent) == {}
    await assert_delivered(box, f"bob@{DOMAIN}", marker, sent)


async def test_starttls_auth_login(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = message(f"bob@{DOMAIN}", f"carol@{DOMAIN}", marker)
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.starttls(context=tls(box))
        client.ehlo()
        client.user, client.password = f"bob@{DOMAIN}", PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail(f"bob@{DOMAIN}", [f"carol@{DOMAIN}"], sent)
    await assert_delivered(box, f"carol@{DOMAIN}", marker, sent)


async def test_implicit_tls(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = message(f"carol@{DOMAIN}", f"dave@{DOMAIN}", marker)
    with smtplib.SMTP_SSL("127.0.0.1", box.port("smtp-submissions"), context=tls(box)) as client:
        client.login(f"carol@{DOMAIN}", PASSWORD)
        client.sendmail(f"carol@{DOMAIN}", [f"dave@{DOMAIN}"], sent)
    await assert_delivered(box, f"dave@{DOMAIN}", marker, sent)


def test_no_auth_before_tls(box: RunningBox) -> None:
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        credentials = base64.b64encode(f"\0alice@{DOMAIN}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {credentials}")[0] == 538
        code, reply = client.docmd("MAIL", f"FROM:<alice@{DOMAIN}>")
        assert (code, reply[:5]) == (530, b"5.7.0")


def test_wrong_password_refused(box: RunningBox) -> None:
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.starttls(context=tls(box))
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(f"alice@{DOMAIN}", "wrong")
        assert refused.value.smtp_code == 535


@pytest.mark.parametrize(
    "recipient",
    [
        "victim@example.com",
        f"x%victim.com@{DOMAIN}",
        "victim@e2e.go.th.evil.com",
        "@evil.com:victim@evil.com",
    ],
)
def test_mx_is_not_an_open_relay(box: RunningBox, recipient: str) -> None:
    with mx(box) as client:
        client.ehlo()
        client.mail("anyone@example.com")
        # Sent raw: smtplib would rewrite the source-routed form.
        code, _ = client.docmd("RCPT", f"TO:<{recipient}>")
        assert code == 550


def test_submission_relays_only_after_auth(box: RunningBox) -> None:
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.starttls(context=tls(box))
        client.ehlo()
        assert client.mail("anyone@example.com")[0] == 530


def test_spoofed_envelope_sender_refused(box: RunningBox) -> None:
    with submission(box) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(f"bob@{DOMAIN}", [f"carol@{DOMAIN}"], b"From: x\r\n\r\nx")
        assert refused.value.smtp_code == 553


def test_spoofed_from_header_refused(box: RunningBox) -> None:
    with submission(box) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(f"alice@{DOMAIN}", [f"carol@{DOMAIN}"],
                            message(f"director@{DOMAIN}", f"carol@{DOMAIN}", "spoof"))  # fmt: skip
        assert refused.value.smtp_code == 550


def test_unknown_and_disabled_users(box: RunningBox) -> None:
    with mx(box) as client:
        client.ehlo()
        client.mail("someone@example.com")
        assert client.rcpt(f"nobody@{DOMAIN}") == (550, b"5.1.1 No such user here")
        assert client.rcpt(f"gone@{DOMAIN}")[0] == 550


def test_quota(box: RunningBox) -> None:
    tiny = f"tiny@{DOMAIN}"
    filler = b"Subject: filler\r\n\r\n" + b"x" * 700_000 + b"\r\n"
    with mx(box) as client:
        client.ehlo()
        # A declared size that cannot fit: 552 5.2.2 at RCPT (smtplib declares SIZE).
        client.mail("someone@example.com", ["SIZE=2000000"])
        assert client.rcpt(tiny) == (552, b"5.2.2 Mailbox quota exceeded")
        client.rset()
        assert client.sendmail("someone@example.com", [tiny], filler) == {}
        # Undeclared size that does not fit: refused after DATA, nothing stored.
        assert client.docmd("MAIL", "FROM:<someone@example.com>")[0] == 250
        assert client.docmd("RCPT", f"TO:<{tiny}>")[0] == 250
        assert client.data(filler) == (552, b"5.2.2 Mailbox quota exceeded")
    # The admin lowers the quota under what is stored: the mailbox is full, and senders
    # are told to try again later rather than bounced.
    edgebox("user", "quota", "--data", str(box.data), tiny, "--mb", "0")
    with mx(box) as client:
        client.ehlo()
        client.mail("someone@example.com")
        assert client.rcpt(tiny) == (452, b"4.2.2 Mailbox full, try again later")


def test_oversize_refused(box: RunningBox) -> None:
    with mx(box) as client:
        client.ehlo()
        code, reply = client.mail("someone@example.com", ["SIZE=999999999"])
        assert (code, reply[:5]) == (552, b"5.3.4")


async def test_25mb_attachment_fits(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    attachment = base64.encodebytes(bytes(range(256)) * (25 * 1024 * 1024 // 256))
    sent = (
        message(f"alice@{DOMAIN}", f"erin@{DOMAIN}", marker).rstrip(b"\r\n")
        + b"\r\n\r\n"
        + attachment.replace(b"\n", b"\r\n")
    )
    with submission(box) as client:
        client.sendmail(f"alice@{DOMAIN}", [f"erin@{DOMAIN}"], sent)
    await assert_delivered(box, f"erin@{DOMAIN}", marker, sent)


async def test_thai_address_with_smtputf8(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = message("ผู้ส่ง@example.com", f"สมชาย@{DOMAIN}", marker, body="สวัสดีครับ")
    with mx(box) as client:
        client.ehlo()
        # Without the SMTPUTF8 parameter a non-ASCII address is refused (RFC 6531 §3.4).
        client.send("MAIL FROM:<ผู้ส่ง@example.com>\r\n".encode())
        assert client.getreply() == (
            553,
            b"5.6.7 Non-ASCII address requires the SMTPUTF8 parameter",
        )
        client.sendmail("ผู้ส่ง@example.com", [f"สมชาย@{DOMAIN}"], sent, mail_options=["SMTPUTF8"])
    await assert_delivered(box, f"สมชาย@{DOMAIN}", marker, sent)


async def test_five_local_recipients_stored_once(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = message("someone@example.com", "team", marker)
    with mx(box) as client:
        client.sendmail("someone@example.com", list(USERS), sent)
    blob_ids = set()
    for address in USERS:
        copies = [(row, c) for row, c in await stored(box.data, address) if marker.encode() in c]
        assert len(copies) == 1
        blob_ids.add(copies[0][0].blob_id)
    assert len(blob_ids) == 1, "one encrypted blob for all five copies"
    blob_file = next((box.data / "blobs").rglob(next(iter(blob_ids))))
    assert marker.encode() not in blob_file.read_bytes()


def swaks(box: RunningBox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--from", f"dave@{DOMAIN}",
         "--to", f"erin@{DOMAIN}", "--auth-user", f"dave@{DOMAIN}", "--auth-password", PASSWORD,
         "--header", f"From: dave@{DOMAIN}", "--tls-verify", "--tls-ca-path", str(box.ca),
         "--tls-sni", "localhost", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_starttls(box: RunningBox, mechanism: str) -> None:
    marker = uuid.uuid4().hex
    result = swaks(box, "--port", str(box.port("smtp-submission")), "--tls",
                   "--auth", mechanism, "--header", f"Subject: {marker}")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"AUTH {mechanism}" in result.stdout
    assert (
        len([1 for _, c in await stored(box.data, f"erin@{DOMAIN}") if marker.encode() in c]) == 1
    )


async def test_swaks_implicit_tls(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    result = swaks(box, "--port", str(box.port("smtp-submissions")), "--tlsc",
                   "--auth", "PLAIN", "--header", f"Subject: {marker}")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        len([1 for _, c in await stored(box.data, f"erin@{DOMAIN}") if marker.encode() in c]) == 1
    )


def test_swaks_relay_refused(box: RunningBox) -> None:
    result = subprocess.run(
        [require_tool("swaks"), "--server", "127.0.0.1", "--port", str(box.port("smtp-mx")),
         "--from", "spammer@example.com", "--to", "victim@example.org"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "550 5.7.1" in result.stdout


def test_data_dir_has_no_plaintext(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    with submission(box) as client:
        client.sendmail(
            f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], message(f"alice@{DOMAIN}", "b", marker)
        )
    for path in Path(box.data).rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


def test_traffic_log_records_who_sent_what_to_whom(box: RunningBox) -> None:
    from appliance.compliance.traffic_log import iter_records

    with submission(box) as client:
        client.mail(f"alice@{DOMAIN}")
        client.rcpt(f"bob@{DOMAIN}")
        code, reply = client.data(message(f"alice@{DOMAIN}", "bob", uuid.uuid4().hex))
    assert code == 250
    queue_id = reply.decode().rsplit(" ", 1)[1]
    with smtplib.SMTP("127.0.0.1", box.port("smtp-submission"), timeout=30) as client:
        client.starttls(context=tls(box))
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login(f"carol@{DOMAIN}", "not-her-password-XYZ")

    records = list(iter_records(box.data / "log" / "traffic"))
    accepted = [r for r in records if r.message_id == queue_id]
    assert len(accepted) == 1
    record = accepted[0]
    assert (record.event, record.sender, record.recipients) == (
        "accepted", f"alice@{DOMAIN}", (f"bob@{DOMAIN}",)
    )  # fmt: skip
    assert (record.client_ip, record.user, record.result) == (
        "127.0.0.1", f"alice@{DOMAIN}", "250 2.0.0"
    )  # fmt: skip
    assert any(r.event == "auth-failed" and r.user == f"carol@{DOMAIN}" for r in records)
    assert any(r.event == "rcpt-rejected" and r.recipients == ("victim@example.com",)
               for r in records)  # fmt: skip
    for path in (box.data / "log").rglob("*"):
        if path.is_file():
            assert b"not-her-password-XYZ" not in path.read_bytes()
            assert PASSWORD.encode() not in path.read_bytes()

    assert "traffic log intact" in edgebox("log", "verify", "--data", str(box.data)).stdout


def test_log_verify_detects_tampering(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from appliance.compliance.traffic_log import TrafficLog, TrafficRecord

    log_dir = tmp_path / "log" / "traffic"
    log = TrafficLog(log_dir)
    for n in range(3):
        record = TrafficRecord(datetime.now(UTC), "smtp-mx", "accepted", "127.0.0.1",
                               sender=f"s{n}@x.go.th", recipients=("r@y.go.th",))  # fmt: skip
        log.append_sync(record)
    assert edgebox("log", "verify", "--data", str(tmp_path), check=False).returncode == 0
    day_file = next(log_dir.glob("traffic-*.jsonl"))
    day_file.write_bytes(day_file.read_bytes().replace(b"s1@x.go.th", b"s9@x.go.th"))
    result = edgebox("log", "verify", "--data", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "ALTERED" in result.stdout
    assert day_file.name in result.stdout
