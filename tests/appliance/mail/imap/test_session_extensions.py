"""The client and webmail extensions end to end in-process: core + session + real store.

SORT, THREAD, ESORT and PARTIAL answers, MULTIAPPEND's all-or-nothing with APPENDUID
sets, and FETCH BINARY's decoding, each as bytes a client sends and reads.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest

from appliance.mail.imap import sort
from appliance.mail.mailboxes import Mailboxes

from ..conftest import MailBox
from .test_session import Client, signed_in


async def put(box: MailBox, user: str, *messages: bytes, mailbox: str = "INBOX") -> None:
    boxes = Mailboxes(box.mailstore)
    for n, content in enumerate(messages):
        await boxes.append(user, mailbox, content, quota_bytes=10**10, internal_date=1000 - n)


def message(subject: str, sender: str, date: str, *, extra: str = "", body: str = "x") -> bytes:
    return (
        f"From: {sender}\r\nTo: someone@test.go.th\r\nSubject: {subject}\r\n"
        f"Date: {date}\r\n{extra}\r\n{body}\r\n"
    ).encode()


THREADED = (
    # uid 1..5; arrival (INTERNALDATE) runs backwards: 1000, 999, ...
    message("งบประมาณ 2570", "somchai@moe.go.th", "Mon, 01 Jun 2026 09:00:00 +0700",
            extra="Message-ID: <a@moe>\r\n"),
    message("Re: งบประมาณ 2570", "malee@moe.go.th", "Mon, 01 Jun 2026 11:00:00 +0700",
            extra="Message-ID: <b@moe>\r\nReferences: <a@moe>\r\n", body="y" * 500),
    message("Meeting", "Director <boss@moe.go.th>", "Sun, 31 May 2026 08:00:00 +0000",
            extra="Message-ID: <c@moe>\r\n"),
    message("Re: Re: งบประมาณ 2570", "anan@moe.go.th", "Mon, 01 Jun 2026 10:00:00 +0700",
            extra="Message-ID: <d@moe>\r\nReferences: <a@moe> <b@moe>\r\n"),
    message("[moe] Fwd: meeting", "Aree <aree@moe.go.th>", "not a date",
            extra="Message-ID: <e@moe>\r\n"),
)  # fmt: skip


@pytest.fixture
async def threaded(box: MailBox) -> Client:
    sort.CACHE = sort.FactsCache()  # each test reads the messages afresh
    client = await signed_in(box)
    await put(box, box.users[0], *THREADED)
    assert "a OK" in await client.send("a SELECT INBOX\r\n")
    return client


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("SORT (ARRIVAL) UTF-8 ALL", "* SORT 5 4 3 2 1"),
        ("SORT (REVERSE ARRIVAL) UTF-8 ALL", "* SORT 1 2 3 4 5"),
        # Message 5 has no usable Date: its INTERNALDATE (1970) is its sent date.
        ("SORT (DATE) UTF-8 ALL", "* SORT 5 3 1 4 2"),
        ("SORT (SUBJECT) UTF-8 ALL", "* SORT 3 5 1 2 4"),
        ("SORT (SUBJECT REVERSE DATE) UTF-8 ALL", "* SORT 3 5 2 4 1"),
        ("SORT (FROM) UTF-8 ALL", "* SORT 4 5 3 2 1"),
        ("SORT (SIZE) UTF-8 ALL", "* SORT 5 3 1 4 2"),
        ("SORT (TO CC) US-ASCII ALL", "* SORT 1 2 3 4 5"),
        ("SORT (DATE) UTF-8 SUBJECT meeting", "* SORT 5 3"),
        ('SORT (DATE) UTF-8 SUBJECT "งบประมาณ" NOT FROM malee', "* SORT 1 4"),
        ("UID SORT (REVERSE SIZE) UTF-8 2:4", "* SORT 2 4 3"),
        ("SORT (DATE) UTF-8 DELETED", "* SORT"),
    ],
)
async def test_sort(threaded: Client, command: str, answer: str) -> None:
    reply = await threaded.send(f"s {command}\r\n")
    assert reply == f"{answer}\r\ns OK SORT completed\r\n"


async def test_sort_by_address_compares_the_first_mailbox_only(box: MailBox) -> None:
    # RFC 5256 §3: the addr-mailbox of the first address, case-insensitively; the host
    # is no key (ties keep UID order), and a group counts by its name (RFC 3501 §7.4.2).
    sort.CACHE = sort.FactsCache()
    client = await signed_in(box)
    await put(
        box, box.users[0],
        b"From: User2@domain2.org\r\nCc: user2@domain2.org (foo bar)\r\n\r\n1\r\n",
        b"From: user2@domain1.org\r\nCc: user2: blah@domain1.org;\r\n\r\n2\r\n",
        b"From: USER1@domain3.org\r\nCc: user1@domain1.org\r\n\r\n3\r\n",
    )  # fmt: skip
    await client.send("a SELECT INBOX\r\n")
    for command, answer in (
        ("SORT (FROM) US-ASCII ALL", "* SORT 3 1 2"),
        ("SORT (CC) US-ASCII ALL", "* SORT 3 1 2"),
        ("SORT (REVERSE CC) US-ASCII ALL", "* SORT 1 2 3"),
        ("SORT (CC ARRIVAL) US-ASCII ALL", "* SORT 3 2 1"),  # arrival runs backwards
    ):
        assert await client.send(f"s {command}\r\n") == f"{answer}\r\ns OK SORT completed\r\n"


async def test_sort_refuses_an_unknown_charset_with_no(threaded: Client) -> None:
    reply = await threaded.send("s SORT (DATE) ISO-8859-1 ALL\r\n")
    assert reply == "s NO [BADCHARSET (UTF-8 US-ASCII)] unsupported charset\r\n"
    reply = await threaded.send("t THREAD REFERENCES KOI8-R ALL\r\n")
    assert reply.startswith("t NO [BADCHARSET (UTF-8 US-ASCII)]")


async def test_sort_uses_sequence_numbers_after_an_expunge(threaded: Client) -> None:
    await threaded.send("a STORE 1 +FLAGS (\\Deleted)\r\nb EXPUNGE\r\n")
    reply = await threaded.send("s SORT (DATE) UTF-8 ALL\r\n")
    assert reply == "* SORT 4 2 3 1\r\ns OK SORT completed\r\n"
    reply = await threaded.send("u UID SORT (DATE) UTF-8 ALL\r\n")
    assert reply == "* SORT 5 3 4 2\r\nu OK SORT completed\r\n"


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        ("SORT RETURN () (DATE) UTF-8 ALL", 'ESEARCH (TAG "s") ALL 5,3,1,4,2'),
        ("UID SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
         'ESEARCH (TAG "s") UID MIN 5 MAX 2 COUNT 5'),
        ("SORT RETURN (ALL) (SIZE) UTF-8 1:2,4", 'ESEARCH (TAG "s") ALL 1,4,2'),
        ("SORT RETURN (COUNT MIN) (DATE) UTF-8 DELETED", 'ESEARCH (TAG "s") COUNT 0'),
        ("SORT RETURN (PARTIAL 1:2) (DATE) UTF-8 ALL", 'ESEARCH (TAG "s") PARTIAL (1:2 5,3)'),
        ("SORT RETURN (PARTIAL -1:-2 COUNT) (DATE) UTF-8 ALL",
         'ESEARCH (TAG "s") COUNT 5 PARTIAL (-1:-2 4,2)'),
        ("UID SEARCH RETURN (PARTIAL 2:3) ALL", 'ESEARCH (TAG "s") UID PARTIAL (2:3 2:3)'),
        ("SEARCH RETURN (PARTIAL -1:-1 COUNT) ALL", 'ESEARCH (TAG "s") COUNT 5 PARTIAL (-1:-1 5)'),
        ("SEARCH RETURN (PARTIAL 9:10) ALL", 'ESEARCH (TAG "s") PARTIAL (9:10 NIL)'),
    ],
)  # fmt: skip
async def test_esort_and_partial(threaded: Client, command: str, answer: str) -> None:
    reply = await threaded.send(f"s {command}\r\n")
    assert reply.startswith(f"* {answer}\r\ns OK")


async def test_sort_reports_modseq_under_condstore(threaded: Client) -> None:
    await threaded.send("c STORE 3 +FLAGS (\\Flagged)\r\n")
    reply = await threaded.send("s SORT (DATE) UTF-8 MODSEQ 1\r\n")
    match = re.match(r"\* SORT 5 3 1 4 2 \(MODSEQ (\d+)\)\r\n", reply)
    assert match is not None, reply
    reply = await threaded.send("s SORT RETURN (COUNT) (DATE) UTF-8 MODSEQ 1\r\n")
    assert f'* ESEARCH (TAG "s") COUNT 5 MODSEQ {match[1]}\r\n' in reply


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        # 4 answers 2, which answers 1. 3 and 5 share the base subject MEETING with
        # no References between them; 5's subject is a forward, so it is 3's child.
        ("THREAD REFERENCES UTF-8 ALL", "* THREAD (3 5)(1 2 4)"),
        # Without 1, the dummy standing for it has one child and gives way to it.
        ("UID THREAD REFERENCES UTF-8 NOT 1", "* THREAD (3 5)(2 4)"),
        ("THREAD ORDEREDSUBJECT UTF-8 ALL", "* THREAD (5 3)(1 (4)(2))"),
        ("THREAD ORDEREDSUBJECT UTF-8 DELETED", "* THREAD"),
    ],
)
async def test_thread(threaded: Client, command: str, answer: str) -> None:
    reply = await threaded.send(f"t {command}\r\n")
    assert reply == f"{answer}\r\nt OK THREAD completed\r\n"


async def test_thread_with_sequence_numbers_after_an_expunge(threaded: Client) -> None:
    await threaded.send("a STORE 3 +FLAGS (\\Deleted)\r\nb EXPUNGE\r\n")
    # UID 5 (now 4) is alone; its 1970 sent date puts it first.
    reply = await threaded.send("t THREAD REFERENCES UTF-8 ALL\r\n")
    assert reply == "* THREAD (4)(1 2 3)\r\nt OK THREAD completed\r\n"


async def test_sorting_again_reads_no_message(threaded: Client, box: MailBox) -> None:
    await threaded.send("s SORT (SUBJECT) UTF-8 ALL\r\n")
    blobs = box.mailstore.blobs

    def refuse(blob_id: str) -> bytes:
        raise AssertionError("a cached message was read again")

    original = blobs.get, blobs.iter_plaintext
    blobs.get = blobs.iter_plaintext = refuse  # type: ignore[method-assign, assignment]
    try:
        reply = await threaded.send("s2 SORT (FROM) UTF-8 ALL\r\nt THREAD REFERENCES UTF-8 ALL\r\n")
    finally:
        blobs.get, blobs.iter_plaintext = original  # type: ignore[method-assign]
    assert "s2 OK" in reply
    assert "t OK" in reply


async def test_sort_decrypts_only_the_header_of_a_large_message(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sort.CACHE = sort.FactsCache()
    client = await signed_in(box)
    video = b"Subject: video\r\n\r\n" + b"v" * (3 * 1024 * 1024)  # four 1 MiB chunks
    await put(box, box.users[0], video, message("a", "b@c.th", "Mon, 01 Jun 2026 09:00:00 +0000"))
    await client.send("a SELECT INBOX\r\n")
    blobs = box.mailstore.blobs
    pieces = 0
    iter_plaintext = blobs.iter_plaintext

    def counting(blob_id: str, chunk_size: int | None = None) -> Iterator[bytes]:
        nonlocal pieces
        for piece in iter_plaintext(blob_id, chunk_size):
            pieces += 1
            yield piece

    monkeypatch.setattr(blobs, "iter_plaintext", counting)
    reply = await client.send("s SORT (SUBJECT) UTF-8 ALL\r\n")
    assert reply == "* SORT 2 1\r\ns OK SORT completed\r\n"
    assert pieces == 2  # one chunk of each message


# ---------------------------------------------------------------------------------------
# MULTIAPPEND


async def test_multiappend_stores_all_with_a_uid_set(box: MailBox) -> None:
    client = await signed_in(box)
    assert "+ Ready" in await client.send("a APPEND Drafts (\\Draft) {12}\r\n")
    assert "+ Ready" in await client.send("Subject: one {12}\r\n")
    reply = await client.send('Subject: two "01-Jun-2026 10:00:00 +0700" ~{14}\r\n')
    assert "+ Ready" in reply
    reply = await client.send("Subject: th\x00ee\r\n")
    match = re.search(r"a OK \[APPENDUID (\d+) 1:3\] APPEND completed", reply)
    assert match is not None, reply
    await client.send("b SELECT Drafts\r\n")
    reply = await client.send("c FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[])\r\n")
    # Recent to this session, the first to select Drafts since they came.
    assert '* 1 FETCH (FLAGS (\\Recent \\Draft) INTERNALDATE "' in reply
    assert '* 3 FETCH (FLAGS (\\Recent) INTERNALDATE "01-Jun-2026 03:00:00 +0000"' in reply
    assert "Subject: th\x00ee" in reply


async def test_multiappend_is_all_or_nothing(box: MailBox) -> None:
    user = box.small  # a 2000-byte quota
    client = await signed_in(box, user)
    big = "x" * 1200
    reply = await client.send(
        f"a APPEND INBOX {{{len(big)}+}}\r\n{big} {{{len(big)}+}}\r\n{big}\r\n"
    )
    assert "a NO [OVERQUOTA]" in reply
    status = await client.send("b STATUS INBOX (MESSAGES)\r\n")
    assert "(MESSAGES 0)" in status
    assert await box.mailstore.usage(user) == 0
    # Each alone fits.
    reply = await client.send(f"c APPEND INBOX {{{len(big)}+}}\r\n{big}\r\n")
    assert "c OK [APPENDUID" in reply


async def test_multiappend_with_an_empty_message_appends_nothing(box: MailBox) -> None:
    # RFC 3502 §6.3.11: a zero-length literal cancels the whole command.
    client = await signed_in(box)
    reply = await client.send("a APPEND INBOX {5+}\r\nhello {0+}\r\n\r\n")
    assert "a NO empty message: nothing was appended" in reply
    assert "(MESSAGES 0)" in await client.send("b STATUS INBOX (MESSAGES)\r\n")


async def test_multiappend_to_a_missing_mailbox_says_trycreate(box: MailBox) -> None:
    client = await signed_in(box)
    reply = await client.send("a APPEND Nowhere {1+}\r\nx {1+}\r\ny\r\n")
    assert "a NO [TRYCREATE]" in reply


async def test_multiappend_reports_exists_to_the_selected_mailbox(box: MailBox) -> None:
    client = await signed_in(box)
    await client.send("s SELECT INBOX\r\n")
    reply = await client.send("a APPEND INBOX {1+}\r\nx {1+}\r\ny\r\n")
    assert "* 2 EXISTS\r\n" in reply
    assert "a OK [APPENDUID" in reply


# ---------------------------------------------------------------------------------------
# BINARY


PHOTO = bytes(range(256)) * 4
MULTIPART = (
    b"From: a@test.go.th\r\nSubject: photo\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"=E0=B8=AA=E0=B8=A7=E0=B8=B1=E0=B8=AA=E0=B8=94=E0=B8=B5 caf=C3=A9\r\n"
    b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PHOTO).replace(b"\n", b"\r\n")
    + b"--b\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 x\r\n`\r\nend\r\n"
    b"--b--\r\n"
)


async def binary_client(box: MailBox) -> Client:
    client = await signed_in(box)
    await put(box, box.users[0], MULTIPART)
    await client.send("s SELECT INBOX\r\n")
    return client


async def test_fetch_binary_decodes_the_transfer_encoding(box: MailBox) -> None:
    client = await binary_client(box)
    conn = client.conn
    conn.receive_data(b"f FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1])\r\n")
    event = conn.next_event()
    await client.session.handle(event)  # type: ignore[arg-type]
    raw = conn.data_to_send()
    text = "สวัสดี café".encode()
    assert raw == (
        b"* 1 FETCH (BINARY[2] ~{1024}\r\n" + PHOTO + b" BINARY.SIZE[2] 1024"
        b" BINARY[1] {%d}\r\n" % len(text) + text + b")\r\nf OK FETCH completed\r\n"
    )


async def test_fetch_binary_partial_and_seen(box: MailBox) -> None:
    client = await binary_client(box)
    reply = await client.send("f FETCH 1 (BINARY[1]<6.6>)\r\n")
    # The message is \Recent to this session, the first to select its mailbox.
    assert reply.startswith("* 1 FETCH (BINARY[1]<6> {6}\r\n\u0e31\u0e2a FLAGS (\\Recent \\Seen))")
    # BINARY without PEEK sets \Seen like BODY.
    whole = await client.send("g FETCH 1 (BINARY.PEEK[] BINARY.SIZE[])\r\n")
    assert f"BINARY[] {{{len(MULTIPART)}}}\r\n" in whole
    assert f"BINARY.SIZE[] {len(MULTIPART)})" in whole
    missing = await client.send("h FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[9])\r\n")
    assert '* 1 FETCH (BINARY[9] "" BINARY.SIZE[9] 0)' in missing.replace("{0}\r\n", '""')


async def test_fetch_binary_of_an_unknown_encoding_is_unknown_cte(box: MailBox) -> None:
    client = await binary_client(box)
    reply = await client.send("f FETCH 1 (BINARY.PEEK[3])\r\n")
    assert reply == "f NO [UNKNOWN-CTE] cannot decode BINARY[3]\r\n"
    assert "g OK" in await client.send("g FETCH 1 (BINARY.SIZE[1])\r\n")


async def test_fetch_binary_undoes_quoted_printable_padding_and_soft_breaks(
    box: MailBox,
) -> None:
    # RFC 2045 §6.7 rule 3: spaces and tabs ending an encoded line are padding, gone on
    # decoding, so "=" followed by them is still a soft line break (rule 5).
    client = await signed_in(box)
    encoded = b"hello  \r\nbar=\r\n\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\nfoo_bar\r\n"
    await put(
        box, box.users[0],
        b"From: a@test.go.th\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
        b' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded + b"\r\n--b--\r\n",
    )  # fmt: skip
    await client.send("s SELECT INBOX\r\n")
    reply = await client.send("f FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.PEEK[1]<3.6>)\r\n")
    decoded = "hello\r\nbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo_bar\r\n"
    assert reply == (
        f"* 1 FETCH (BINARY.SIZE[1] {len(decoded)} BINARY[1] {{{len(decoded)}}}\r\n{decoded}"
        " BINARY[1]<3> {6}\r\nlo\r\nba)\r\nf OK FETCH completed\r\n"
    )


async def test_append_of_binary_content_keeps_body_fetches_free_of_nul(box: MailBox) -> None:
    # RFC 3516 §4.4: literal8 may carry NUL, which no BODY[] literal can (RFC 3501 §4.3):
    # the part is stored base64-encoded, and BINARY[] gives back the bytes sent.
    client = await signed_in(box)
    content = b"\x00-\xe4\n\r\n\n"
    appended = (
        b"From: user@domain.org\r\nMime-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + content
    )
    reply = await client.send(b"a APPEND INBOX ~{%d+}\r\n" % len(appended) + appended + b"\r\n")
    assert "a OK [APPENDUID" in reply
    await client.send("s SELECT INBOX\r\n")
    client.conn.receive_data(
        b"f FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.MIME] BINARY.SIZE[1] BINARY.PEEK[1])\r\n"
    )
    await client.session.handle(client.conn.next_event())  # type: ignore[arg-type]
    raw = client.conn.data_to_send()
    header = (
        b"From: user@domain.org\r\nMime-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    assert raw == (
        b"* 1 FETCH (BODY[1] {14}\r\nAC3kCg0KCg==\r\n"
        b" BODY[1.MIME] {%d}\r\n"
        % len(header)
        + header
        + b" BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n"
        + content
        + b")\r\n"
        b"f OK FETCH completed\r\n"
    )


# ---------------------------------------------------------------------------------------
# Cost


@pytest.mark.parametrize("command", ["SORT (SUBJECT) UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL"])
async def test_worker_calls_do_not_grow_with_the_mailbox(
    box: MailBox, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """SORT and THREAD read every message in one worker call, not one hop each."""
    import trio

    hops = 0
    run_sync = trio.to_thread.run_sync

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal hops
        hops += 1
        return await run_sync(*args, **kwargs)  # type: ignore[arg-type]

    counts = []
    for user, size in ((box.users[1], 20), (box.users[2], 200)):
        client = await signed_in(box, user)
        batch = [(message(f"s{n}", "a@b.th", "Mon, 01 Jun 2026 09:00:00 +0700"), (), None)
                 for n in range(size)]  # fmt: skip
        await Mailboxes(box.mailstore).append_many(user, "INBOX", batch, quota_bytes=10**10)
        await client.send("a SELECT INBOX\r\n")
        sort.CACHE = sort.FactsCache()
        hops = 0
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        reply = await client.send(f"s {command}\r\n")
        monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
        assert "s OK" in reply
        counts.append(hops)
    assert counts[0] == counts[1]
    assert 1 <= counts[1] <= 6, counts


# ---------------------------------------------------------------------------------------
# CONTEXT=SEARCH: live results (RFC 5267 §4)


async def test_live_search_follows_changes_by_another_session(box: MailBox) -> None:
    user = box.users[0]
    watcher, other = await signed_in(box), await signed_in(box)
    await put(box, user, *(f"Subject: s{n}\r\n\r\nx\r\n".encode() for n in range(4)))
    await other.send("a SELECT INBOX\r\nb STORE 2,4 +FLAGS (\\Seen)\r\n")
    await watcher.send("a SELECT INBOX\r\n")
    reply = await watcher.send("s1 SEARCH RETURN (UPDATE ALL) UNSEEN\r\n")
    assert reply == '* ESEARCH (TAG "s1") ALL 1,3\r\ns1 OK SEARCH completed\r\n'
    reply = await watcher.send("s2 UID SEARCH RETURN (UPDATE COUNT) UNSEEN\r\n")
    assert reply == '* ESEARCH (TAG "s2") UID COUNT 2\r\ns2 OK SEARCH completed\r\n'
    assert "s3 OK" in await watcher.send("s3 SEARCH RETURN (UPDATE) FLAGGED\r\n")
    # A new unseen message, 1 read, 2 unread again: the same as Dovecot 2.3 answers.
    await put(box, user, b"Subject: new\r\n\r\nx\r\n")
    await other.send("c STORE 1 +FLAGS (\\Seen)\r\nd STORE 2 -FLAGS (\\Seen)\r\n")
    reply = await watcher.send("n NOOP\r\n")
    assert "* 5 EXISTS\r\n" in reply
    assert '* ESEARCH (TAG "s1") REMOVEFROM (0 1) ADDTO (0 2,5)\r\n' in reply
    assert '* ESEARCH (TAG "s2") UID REMOVEFROM (0 1) ADDTO (0 2,5)\r\n' in reply
    assert 'TAG "s3"' not in reply
    assert reply.index("EXISTS") < reply.index("ESEARCH")
    # An expunge: REMOVEFROM comes before the EXPUNGE, in the numbers the client knows.
    await other.send("e STORE 3 +FLAGS (\\Deleted)\r\nf EXPUNGE\r\n")
    reply = await watcher.send("n2 NOOP\r\n")
    assert reply.index('* ESEARCH (TAG "s1") REMOVEFROM (0 3)\r\n') < reply.index("* 3 EXPUNGE")
    assert '* ESEARCH (TAG "s2") UID REMOVEFROM (0 3)\r\n' in reply
    # CANCELUPDATE ends one; an unknown tag is refused; the other goes on.
    assert "c1 OK" in await watcher.send('c1 CANCELUPDATE "s1"\r\n')
    assert "c2 NO" in await watcher.send('c2 CANCELUPDATE "s1"\r\n')
    await other.send("g STORE 1 -FLAGS (\\Seen)\r\n")
    reply = await watcher.send("n3 NOOP\r\n")
    assert 'TAG "s1"' not in reply
    assert '* ESEARCH (TAG "s2") UID ADDTO (0 1)\r\n' in reply


async def test_live_searches_end_with_the_selection_and_are_bounded(box: MailBox) -> None:
    from appliance.mail.imap.session import MAX_LIVE_SEARCHES

    user = box.users[0]
    client = await signed_in(box)
    await put(box, user, b"Subject: a\r\n\r\nx\r\n")
    await client.send("a SELECT INBOX\r\n")
    for n in range(MAX_LIVE_SEARCHES):
        assert "NOUPDATE" not in await client.send(f"s{n} SEARCH RETURN (UPDATE) ALL\r\n")
    reply = await client.send("x SEARCH RETURN (UPDATE COUNT) ALL\r\n")
    assert '* NO [NOUPDATE "x"]' in reply
    assert "x OK" in reply
    await client.send("b SELECT INBOX\r\n")
    assert "NOUPDATE" not in await client.send("y SEARCH RETURN (UPDATE) ALL\r\n")
    assert "z NO" in await client.send('z CANCELUPDATE "s0"\r\n')
    await put(box, user, b"Subject: b\r\n\r\nx\r\n")
    reply = await client.send("n NOOP\r\n")
    assert reply == (
        '* 2 EXISTS\r\n* 1 RECENT\r\n* ESEARCH (TAG "y") ADDTO (0 2)\r\nn OK NOOP completed\r\n'
    )
