"""IMAP end to end: a real `edgebox run` read by Python's imaplib, curl and mbsync.

Covers, from issue 3: STARTTLS with LOGINDISABLED before it, implicit TLS, an
SMTP-delivered message fetched byte-identical, Thai substring search, changes made in
one session seen by another (including during IDLE), CONDSTORE/QRESYNC resync with
VANISHED (EARLIER), UIDPLUS, MOVE, and a two-way mbsync that converges.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxStarter
from tests.harness import RunningBox, require_tool

pytestmark = pytest.mark.slow

DOMAIN = "imap.go.th"
PASSWORD = "imap-pass-2026"
USERS = {f"{n}@{DOMAIN}": PASSWORD for n in ("ann", "ben", "sync")}


@pytest.fixture(scope="module")
def box(start_running_box: BoxStarter) -> RunningBox:
    return start_running_box("imapbox", DOMAIN, USERS)


def deliver(box: RunningBox, to: str, subject: str, body: str = "hello") -> bytes:
    content = (
        f"From: someone@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n{body}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", box.port("smtp-mx"), timeout=30) as client:
        client.sendmail("someone@example.com", [to], content)
    return content


def session(box: RunningBox, user: str = f"ann@{DOMAIN}") -> imaplib.IMAP4:
    context = ssl.create_default_context(cafile=str(box.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=30)
    client.login(user, PASSWORD)
    return client


def test_login_needs_tls_first(box: RunningBox) -> None:
    client = imaplib.IMAP4("127.0.0.1", box.port("imap"), timeout=30)
    assert "LOGINDISABLED" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(f"ann@{DOMAIN}", PASSWORD)
    client.starttls(ssl_context=ssl.create_default_context(cafile=str(box.ca)))
    assert client.login(f"ann@{DOMAIN}", PASSWORD)[0] == "OK"
    client.logout()


def test_wrong_password(box: RunningBox) -> None:
    context = ssl.create_default_context(cafile=str(box.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(f"ben@{DOMAIN}", "wrong")
    client.logout()


def test_smtp_delivery_and_imap_fetch_are_byte_identical(box: RunningBox) -> None:
    marker = uuid.uuid4().hex
    sent = deliver(box, f"ann@{DOMAIN}", marker)
    client = session(box)
    client.select("INBOX")
    typ, found = client.uid("SEARCH", "SUBJECT", marker)
    assert typ == "OK"
    (uid,) = found[0].split()
    typ, data = client.uid("FETCH", uid, "(BODY.PEEK[] RFC822.SIZE)")
    stored = data[0][1]
    assert stored.endswith(sent)
    assert stored.startswith(b"Received: from ")
    # imaplib splits the response around the literal; the size is in the rest.
    assert f"RFC822.SIZE {len(stored)}".encode() in data[0][0] + data[1]
    client.logout()


def test_thai_substring_search(box: RunningBox) -> None:
    subject = (
        "=?utf-8?b?" + __import__("base64").b64encode("หนังสือราชการด่วน".encode()).decode() + "?="
    )
    deliver(box, f"ben@{DOMAIN}", subject, body="ขอเชิญประชุมคณะกรรมการ วันจันทร์")
    client = session(box, f"ben@{DOMAIN}")
    client.select("INBOX")
    for key, word in (("BODY", "ประชุม"), ("TEXT", "กรรมการ"), ("SUBJECT", "ราชการ")):
        client.literal = word.encode()
        typ, found = client.uid("SEARCH", "CHARSET", "UTF-8", key)
        assert typ == "OK"
        assert len(found[0].split()) == 1, (key, word, found)
    client.literal = "ไม่มีคำนี้".encode()
    assert client.uid("SEARCH", "CHARSET", "UTF-8", "BODY")[1] == [b""]
    client.logout()


def test_changes_in_one_session_reach_the_other(box: RunningBox) -> None:
    for n in range(3):
        deliver(box, f"ann@{DOMAIN}", f"two-sessions {n}")
    first, second = session(box), session(box)
    count = int(first.select("INBOX")[1][0])
    assert int(second.select("INBOX")[1][0]) == count
    first.store(str(count), "+FLAGS", "(\\Flagged)")
    first.store(str(count - 1), "+FLAGS", "(\\Deleted)")
    first.expunge()
    typ, _ = second.noop()
    assert typ == "OK"
    assert second.untagged_responses.get("EXPUNGE") == [str(count - 1).encode()]
    fetched = b" ".join(
        x for x in second.untagged_responses.get("FETCH", []) if isinstance(x, bytes)
    )
    assert b"\\Flagged" in fetched
    first.logout()
    second.logout()


def test_idle_sees_new_mail_within_a_second(box: RunningBox) -> None:
    watcher = session(box)
    count = int(watcher.select("INBOX")[1][0])
    tag = watcher._new_tag()
    watcher.send(tag + b" IDLE\r\n")
    assert watcher.readline().startswith(b"+ ")
    delivered_at: list[float] = []

    def send_later() -> None:
        time.sleep(0.3)
        deliver(box, f"ann@{DOMAIN}", "while idling")
        delivered_at.append(time.monotonic())

    thread = threading.Thread(target=send_later)
    thread.start()
    line = watcher.readline()
    seen_at = time.monotonic()
    thread.join()
    assert line == f"* {count + 1} EXISTS\r\n".encode()
    assert seen_at - delivered_at[0] < 1.0
    # RFC 3501 §7.3.2: the new message is \Recent in this session, so RECENT follows.
    assert re.fullmatch(rb"\* \d+ RECENT\r\n", watcher.readline())
    watcher.send(b"DONE\r\n")
    assert watcher.readline().startswith(tag + b" OK")
    watcher.logout()


def test_condstore_and_qresync(box: RunningBox) -> None:
    user = f"ben@{DOMAIN}"
    for n in range(4):
        deliver(box, user, f"qresync {n}")
    client = session(box, user)
    client._simple_command("ENABLE", "QRESYNC")
    client.select("INBOX")
    uidvalidity = int(client.untagged_responses["UIDVALIDITY"][0])
    modseq = int(client.untagged_responses["HIGHESTMODSEQ"][0])
    uids = client.uid("SEARCH", "ALL")[1][0].split()
    other = session(box, user)
    other.select("INBOX")
    other.uid("STORE", uids[-1], "+FLAGS", "(\\Answered)")
    other.uid("STORE", uids[-2], "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    client.logout()

    # A client coming back with what it knew gets only what changed.
    again = session(box, user)
    again._simple_command("ENABLE", "QRESYNC")
    typ, _ = again._simple_command("SELECT", "INBOX", f"(QRESYNC ({uidvalidity} {modseq}))")
    assert typ == "OK"
    vanished = again.untagged_responses.get("VANISHED", [])
    assert vanished == [f"(EARLIER) {int(uids[-2])}".encode()]
    fetches = [x for x in again.untagged_responses.get("FETCH", []) if isinstance(x, bytes)]
    assert len(fetches) == 1
    assert f"UID {int(uids[-1])} ".encode() in fetches[0]
    assert b"\\Answered" in fetches[0]
    again.logout()


def test_append_copy_move_uidplus(box: RunningBox) -> None:
    client = session(box)
    typ, data = client.append(
        "Drafts", "(\\Draft)", None, b"From: ann@imap.go.th\r\nSubject: draft\r\n\r\nx\r\n"
    )
    match = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    assert match
    client.select("Drafts")
    # imaplib's uid() hides the tagged response code; _simple_command returns it.
    typ, data = client._simple_command("UID", "COPY", match[2].decode(), "Archive")
    assert re.match(rb"\[COPYUID \d+ %s \d+\]" % match[2], data[0])
    typ, _ = client._simple_command("UID", "MOVE", match[2].decode(), "Trash")
    assert typ == "OK"
    assert client.untagged_responses.get("EXPUNGE")
    assert client.status("Trash", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 1)")
    assert client.status("Drafts", "(MESSAGES)")[1][0].endswith(b"(MESSAGES 0)")
    typ, data = client._simple_command("COPY", "1:*", "Nowhere")
    assert (typ, data[0][:11]) == ("NO", b"[TRYCREATE]")
    client.logout()


def test_curl_lists_and_fetches_over_tls(box: RunningBox) -> None:
    curl = require_tool("curl")
    marker = uuid.uuid4().hex
    deliver(box, f"sync@{DOMAIN}", marker)
    base = f"imaps://127.0.0.1:{box.port('imaps')}"
    common = [curl, "--silent", "--show-error", "--cacert", str(box.ca),
              "--user", f"sync@{DOMAIN}:{PASSWORD}"]  # fmt: skip
    listing = subprocess.run([*common, base + "/"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert '"INBOX"' in listing.stdout or " INBOX" in listing.stdout
    fetched = subprocess.run([*common, base + "/INBOX;UID=1"], capture_output=True, timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    assert marker.encode() in fetched.stdout


def test_mbsync_two_way_sync_converges(box: RunningBox, tmp_path: Path) -> None:
    mbsync = require_tool("mbsync")
    user = f"sync@{DOMAIN}"
    for n in range(5):
        deliver(box, user, f"mbsync {n}")
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    # "localhost": mbsync checks the certificate's DNS names, not its IP addresses.
    config.write_text(
        f"IMAPAccount edgebox\nHost localhost\nPort {box.port('imaps')}\nUser {user}\n"
        f"Pass {PASSWORD}\nSSLType IMAPS\nCertificateFile {box.ca}\nAuthMechs PLAIN\n\n"
        "IMAPStore remote\nAccount edgebox\n\n"
        f"MaildirStore local\nPath {maildir}/\nInbox {maildir}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\n"
        "SyncState *\nSync All\n"
    )

    def run() -> None:
        result = subprocess.run([mbsync, "-c", str(config), "-a"], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def local_files() -> list[Path]:
        return sorted(p for p in (maildir / "INBOX").glob("*/*") if p.is_file())

    run()
    server = session(box, user)
    total = int(server.select("INBOX")[1][0])
    assert len(local_files()) == total >= 6  # the curl test's message too
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (maildir / name).is_dir()

    # Changes on both sides: flag one locally, one on the server; delete one on each.
    files = local_files()
    seen_locally = files[0]
    seen_locally.rename(seen_locally.with_name(seen_locally.name.split(":2,")[0] + ":2,S"))
    files[1].unlink()
    uids = server.uid("SEARCH", "ALL")[1][0].split()
    server.uid("STORE", uids[2], "+FLAGS", "(\\Flagged)")
    server.uid("STORE", uids[3], "+FLAGS", "(\\Deleted)")
    server.expunge()
    run()
    run()  # a no-change second pass must change nothing

    server.select("INBOX")
    remaining = server.uid("SEARCH", "ALL")[1][0].split()
    assert len(remaining) == total - 2
    assert len(local_files()) == total - 2
    flags = {uid: server.uid("FETCH", uid, "(FLAGS)")[1][0] for uid in remaining}
    assert any(b"\\Seen" in f for f in flags.values()), "the local \\Seen went up"
    assert any(name.endswith(",F") or ":2,F" in name for name in (p.name for p in local_files())), (
        "the server's \\Flagged came down"
    )
    server.logout()
