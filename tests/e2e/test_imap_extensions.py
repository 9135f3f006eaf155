"""SORT, THREAD, ESORT, MULTIAPPEND and BINARY against a real `edgebox run`, and SORT
and THREAD answers compared with Dovecot's on the same messages.

Python's imaplib is the client for SORT and THREAD (its `sort()` and `thread()`), the
way a webmail front-end such as Roundcube drives them: sort the INBOX by date, newest
first, and thread it by References. MULTIAPPEND and BINARY go over a plain TLS socket,
as imaplib has no command for either.
"""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxStarter
from tests.harness import RunningBox

pytestmark = pytest.mark.slow

DOMAIN = "sort.go.th"
PASSWORD = "sort-pass-2026"
USER = f"kanya@{DOMAIN}"


@pytest.fixture(scope="module")
def box(start_running_box: BoxStarter) -> RunningBox:
    return start_running_box("sortbox", DOMAIN, {USER: PASSWORD})


def session(box: RunningBox) -> imaplib.IMAP4:
    context = ssl.create_default_context(cafile=str(box.ca))
    client = imaplib.IMAP4_SSL("127.0.0.1", box.port("imaps"), ssl_context=context, timeout=30)
    client.login(USER, PASSWORD)
    return client


def mail(subject: str, date: str, message_id: str, references: str = "") -> bytes:
    refs = f"References: {references}\r\n" if references else ""
    return (
        f"From: somsak@{DOMAIN}\r\nTo: {USER}\r\nSubject: {subject}\r\nDate: {date}\r\n"
        f"Message-ID: <{message_id}@{DOMAIN}>\r\n{refs}\r\nbody\r\n"
    ).encode()


def test_sort_and_thread_with_imaplib(box: RunningBox) -> None:
    client = session(box)
    assert {"SORT", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "ESORT"} <= set(
        client.capabilities
    )
    client.create("Circulars")
    messages = [
        mail("หนังสือเวียน 1/2570", "Tue, 02 Jun 2026 09:00:00 +0700", "c1"),
        mail("Re: หนังสือเวียน 1/2570", "Tue, 02 Jun 2026 13:00:00 +0700", "c2", f"<c1@{DOMAIN}>"),
        mail("Agenda", "Mon, 01 Jun 2026 09:00:00 +0700", "c3"),
        mail(
            "Re: หนังสือเวียน 1/2570",
            "Wed, 03 Jun 2026 08:00:00 +0700",
            "c4",
            f"<c1@{DOMAIN}> <c2@{DOMAIN}>",
        ),
        mail("Re: Agenda", "Mon, 01 Jun 2026 10:00:00 +0700", "c5", f"<c3@{DOMAIN}>"),
    ]
    for content in messages:
        assert client.append("Circulars", None, None, content)[0] == "OK"
    client.select("Circulars")
    status, data = client.sort("(REVERSE DATE)", "UTF-8", "ALL")
    assert status == "OK"
    assert data == [b"4 2 1 5 3"]
    status, data = client.uid("SORT", "(SUBJECT DATE)", "UTF-8", "ALL")
    assert data == [b"3 5 1 2 4"]
    status, data = client.thread("REFERENCES", "UTF-8", "ALL")
    assert status == "OK"
    assert data == [b"(3 5)(1 2 4)"]
    status, data = client.thread("ORDEREDSUBJECT", "UTF-8", "SINCE 1-Jan-2020")
    assert data == [b"(3 5)(1 (2)(4))"]
    # ESORT: a webmail page of the newest two and the count (RFC 5267, RFC 9394).
    status, data = client._simple_command(  # imaplib has no ESORT call
        "SORT", "RETURN (COUNT PARTIAL 1:2)", "(REVERSE DATE)", "UTF-8", "ALL"
    )
    assert status == "OK"
    _, esearch = client._untagged_response(status, data, "ESEARCH")
    assert esearch[0] is not None
    assert re.search(rb"COUNT 5 PARTIAL \(1:2 4,2\)", esearch[0])
    client.logout()


def raw(box: RunningBox) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(box.ca))
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", box.port("imaps")), timeout=30),
        server_hostname="127.0.0.1",
    )
    read_until(sock, b"* OK")
    sock.sendall(f'a LOGIN "{USER}" "{PASSWORD}"\r\n'.encode())
    assert b"a OK" in read_until(sock, b"a ")
    return sock


def read_until(sock: ssl.SSLSocket, tag: bytes) -> bytes:
    """Read until a line starting with *tag* has ended (bounded by the socket timeout)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
        lines = data.split(b"\r\n")
        if any(line.startswith(tag) for line in lines[:-1]):
            return data


def test_multiappend_and_binary_over_tls(box: RunningBox) -> None:
    sock = raw(box)
    first = b"Subject: one\r\n\r\nfirst\r\n"
    second = (
        b"Subject: two\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
    )
    sock.sendall(
        b"m APPEND INBOX (\\Seen) {%d+}\r\n%s ~{%d+}\r\n%s\r\n"
        % (len(first), first, len(second), second)
    )
    answer = read_until(sock, b"m ")
    assert re.search(rb"m OK \[APPENDUID \d+ 1:2\]", answer), answer
    sock.sendall(b"s SELECT INBOX\r\nf FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[1])\r\n")
    answer = read_until(sock, b"f ")
    assert b"* 2 FETCH (BINARY[1] ~{4}\r\n\x00\x01\x02\x03 BINARY.SIZE[1] 4)" in answer
    sock.sendall(b"z LOGOUT\r\n")
    read_until(sock, b"z ")
    sock.close()


# ---------------------------------------------------------------------------------------
# The same answers as Dovecot


def corpus() -> list[tuple[str, bytes]]:
    """(INTERNALDATE, message) pairs that exercise RFC 5256's corners."""
    rows = [
        ("Budget 2570", "Mon, 01 Jun 2026 09:00:00 +0700", "<b1@x>", ""),
        ("Re: Budget 2570", "Mon, 01 Jun 2026 11:00:00 +0700", "<b2@x>", "<b1@x>"),
        ("RE: [moe] Re: Budget 2570", "Mon, 01 Jun 2026 10:00:00 +0700", "<b3@x>", "<b1@x> <b2@x>"),
        ("Fwd: Budget 2570 (fwd)", "Tue, 02 Jun 2026 08:00:00 +0000", "<b4@x>", ""),
        ("[Fwd: Minutes]", "Sun, 31 May 2026 23:00:00 -0500", "<m1@x>", ""),
        ("Minutes", "Mon, 01 Jun 2026 03:00:00 +0000", "<m2@x>", ""),
        ("minutes", "garbage date", "<m3@x>", ""),
        ("Re: lost parent", "Wed, 03 Jun 2026 09:00:00 +0700", "<l1@x>", "<gone@x>"),
        ("Re: lost parent", "Wed, 03 Jun 2026 08:00:00 +0700", "<l2@x>", "<gone@x>"),
        ("ประชุม", "Thu, 04 Jun 2026 09:00:00 +0700", "<t1@x>", ""),
        ("Re: ประชุม", "Thu, 04 Jun 2026 10:00:00 +0700", "<t2@x>", "<t1@x>"),
        ("", "Fri, 05 Jun 2026 09:00:00 +0700", "", ""),
        ("Duplicate", "Fri, 05 Jun 2026 10:00:00 +0700", "<d@x>", ""),
        ("Duplicate", "Fri, 05 Jun 2026 10:00:00 +0700", "<d@x>", ""),
    ]
    out = []
    for n, (subject, date, message_id, refs) in enumerate(rows):
        sender = ["ann@x.go.th", "Bob <bob@x.go.th>", "carl@x.go.th",
                  "=?utf-8?b?4Liq4Lih4LiK4Liy4Lii?= <somchai@x.go.th>"][n % 4]  # fmt: skip
        head = f"From: {sender}\r\nTo: user{n % 3}@x.go.th\r\n"
        if n % 2:
            head += f"Cc: cc{(n * 7) % 5}@x.go.th\r\n"
        head += f"Subject: {subject}\r\nDate: {date}\r\n"
        if message_id:
            head += f"Message-ID: {message_id}\r\n"
        if refs:
            head += f"References: {refs}\r\n"
        body = "x" * ((n * 37) % 200)
        out.append((f'"{10 + n:02d}-Jun-2026 10:00:00 +0000"', f"{head}\r\n{body}\r\n".encode()))
    return out


COMPARED = [
    "SORT (ARRIVAL) UTF-8 ALL",
    "SORT (REVERSE ARRIVAL) UTF-8 ALL",
    "SORT (DATE) UTF-8 ALL",
    "SORT (REVERSE DATE) UTF-8 ALL",
    "SORT (SUBJECT) UTF-8 ALL",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL",
    "SORT (FROM) UTF-8 ALL",
    "SORT (TO DATE) UTF-8 ALL",
    "SORT (CC SIZE) UTF-8 ALL",
    "SORT (SIZE) UTF-8 ALL",
    "UID SORT (REVERSE SUBJECT) UTF-8 UNDELETED",
    "THREAD ORDEREDSUBJECT UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL",
]


def test_sort_and_thread_answer_like_dovecot(box: RunningBox, tmp_path: Path) -> None:
    """Byte for byte the answers of Dovecot 2.3 (the reference the issue names) on the
    same mailbox: replies, forwards, list blobs, unreadable dates, lost parents,
    duplicate Message-IDs, Thai subjects."""
    from tests.peers.dovecot import DovecotServer

    user = f"ref@{DOMAIN}"
    with DovecotServer(tmp_path, users={user: PASSWORD}, tls=False) as dovecot:
        theirs = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)
        theirs.login(user, PASSWORD)
        ours = session(box)
        for client in (ours, theirs):
            client.create("Corpus")
            for when, content in corpus():
                assert client.append("Corpus", None, when, content)[0] == "OK"
            client.select("Corpus")
        differences = []
        for command in COMPARED:
            answers = []
            for client in (ours, theirs):
                tag = client._new_tag().decode()
                client.send(f"{tag} {command}\r\n".encode())
                lines = []
                while not (line := client.readline()).startswith(tag.encode()):
                    lines.append(line.rstrip(b"\r\n").decode())
                answers.append(lines)
            if answers[0] != answers[1]:
                differences.append((command, answers[0], answers[1]))
        ours.logout()
        theirs.logout()
    assert differences == []


def command(client: imaplib.IMAP4, line: str) -> list[str]:
    """Send one raw command; return its untagged lines (imaplib has no call for these)."""
    tag = client._new_tag().decode()
    client.send(f"{tag} {line}\r\n".encode())
    lines = []
    while not (answer := client.readline()).startswith(tag.encode()):
        lines.append(answer.rstrip(b"\r\n").decode())
    assert answer.split()[1] == b"OK", answer
    return lines


def test_live_search_updates_like_dovecot(box: RunningBox, tmp_path: Path) -> None:
    """CONTEXT=SEARCH: the ESEARCH updates Dovecot 2.3 sends for the same changes."""
    from tests.peers.dovecot import DovecotServer

    user = f"live@{DOMAIN}"
    with DovecotServer(tmp_path, users={user: PASSWORD}, tls=False) as dovecot:
        transcripts = []

        def dovecot_client() -> imaplib.IMAP4:
            return imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=30)

        for connect in (lambda: session(box), dovecot_client):
            watcher, other = connect(), connect()
            for client in (watcher, other):
                if client.state == "NONAUTH":
                    client.login(user, PASSWORD)
            other.create("Live")
            for n in range(4):
                flags = "(\\Seen)" if n % 2 else None
                other.append("Live", flags, None, f"Subject: s{n}\r\n\r\nx\r\n".encode())
            watcher.select("Live")
            other.select("Live")
            seen = []
            seen += command(watcher, "SEARCH RETURN (UPDATE ALL) UNSEEN")
            seen += command(watcher, "UID SEARCH RETURN (UPDATE COUNT) UNSEEN")
            other.append("Live", None, None, b"Subject: s9\r\n\r\nx\r\n")
            other.store("1", "+FLAGS", "\\Seen")
            other.store("2", "-FLAGS", "\\Seen")
            seen += command(watcher, "NOOP")
            other.store("3", "+FLAGS", "\\Deleted")
            other.expunge()
            seen += command(watcher, "NOOP")
            # Tags differ between the two runs; RECENT and FETCH lines are not compared.
            wanted = [line for line in seen if re.search(r"ESEARCH|EXPUNGE|EXISTS", line)]
            transcripts.append([re.sub(r'TAG "[^"]+"', "TAG", line) for line in wanted])
            watcher.logout()
            other.logout()
    assert transcripts[0] == transcripts[1]
    assert transcripts[0][-3:] == [
        "* ESEARCH (TAG) REMOVEFROM (0 3)",
        "* ESEARCH (TAG) UID REMOVEFROM (0 3)",
        "* 3 EXPUNGE",
    ]
