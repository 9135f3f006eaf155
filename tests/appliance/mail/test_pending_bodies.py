"""Messages listed from the centre whose body comes later ("body pending").

Mail store and IMAP session in-process against a real mail database: the pending row
answers everything that needs only the header block, its body is filled in one commit,
and a FETCH that needs an absent body is refused with ``NO [UNAVAILABLE]`` (RFC 5530)
before anything is sent. The running-box test drives the same with imaplib.
"""

from __future__ import annotations

import imaplib
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from appliance.box import add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail import headers, mime
from appliance.mail.imap.client import _Reader
from appliance.mail.mailboxes import MailboxError, Mailboxes
from appliance.mail.mailstore import BodyUnavailable, Mailstore
from appliance.mail.webmail import reading
from tests.harness import start_box

from .conftest import MailBox
from .imap.test_session import signed_in

BIG = 10 * 1024**3

ATTACHMENT = "QUJD" * 20_000  # 80 000 base64 characters


def large_mail(tag: str = "big") -> bytes:
    return (
        "From: =?utf-8?b?4Liq4Lih4LiK4Liy4Lii?= <somchai@x.go.th>\r\n"
        "To: user1@test.go.th\r\n"
        f"Subject: {tag}\r\n"
        f"Message-ID: <{tag}@x.go.th>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "สวัสดีครับ\r\n"
        "--b1\r\n"
        'Content-Type: application/pdf; name="report.pdf"\r\n'
        'Content-Disposition: attachment; filename="report.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{ATTACHMENT}\r\n"
        "--b1--\r\n"
    ).encode()


def header_of(content: bytes) -> bytes:
    return content[: content.index(b"\r\n\r\n") + 4]


def central_structure(content: bytes) -> str:
    """What a central server would send as BODYSTRUCTURE, parsed as the client does.

    Our own renderer stands in for the server here (Dovecot's own is tested in
    tests/appliance/sync/test_mailbox_bodies.py); lower-cased, as Dovecot writes it.
    """
    wire = mime.serialize(mime.bodystructure(mime.parse(content), extended=True))
    value = _Reader(wire.lower()).value()
    return mime.stored_structure(mime.structure_from_server(value))


async def add_pending(
    store: Mailstore, owner: str, content: bytes, flags: Sequence[str] = ()
) -> int:
    _, uid = await Mailboxes(store).append_pending(
        owner, "INBOX", header_of(content), len(content), central_structure(content),
        quota_bytes=BIG, flags=flags,
    )  # fmt: skip
    return uid


# -- mime: a server's structure in our shape ---------------------------------------------


def test_server_structure_takes_our_shape_and_pads_extensions() -> None:
    content = large_mail()
    ours = mime.bodystructure(mime.parse(content), extended=True)
    # A server that sends no extension data at all (BODY form) still gives our shape.
    body_only = mime.serialize(mime.bodystructure(mime.parse(content), extended=False))
    padded = mime.structure_from_server(_Reader(body_only).value())
    assert len(padded) == len(ours)
    assert mime.serialize(padded[:1]) == mime.serialize(ours[:1])[: len(mime.serialize(padded[:1]))]
    stored = mime.stored_structure(
        mime.structure_from_server(_Reader(mime.serialize(ours)).value())
    )
    assert mime.serialize(mime.pending_bodystructure(stored, True)) == mime.serialize(ours)
    assert mime.serialize(mime.pending_bodystructure(stored, False)) == body_only


@pytest.mark.parametrize(
    "wire",
    [b"NIL", b"()", b'("TEXT" "PLAIN")', b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" -1 1)',
     b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 1 1))', b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 5)',
     b'("TEXT" "PLAIN" ("CHARSET") NIL NIL "7BIT" 1 1)'],
)  # fmt: skip
def test_malformed_server_structure_is_refused(wire: bytes) -> None:
    with pytest.raises(mime.StructureError):
        mime.structure_from_server(_Reader(wire).value())


_VALUES = st.recursive(
    st.none() | st.integers(-2, 2**40) | st.binary(max_size=8) | st.sampled_from(
        ["TEXT", "PLAIN", "MESSAGE", "RFC822", "MIXED", "7BIT"]
    ) | st.sampled_from([b"TEXT", b"PLAIN", b"MESSAGE", b"RFC822", b"BASE64"]),
    lambda inner: st.lists(inner, max_size=12),
    max_leaves=60,
)  # fmt: skip


@given(_VALUES)
def test_any_server_value_gives_our_shape_or_a_clean_refusal(value: object) -> None:
    try:
        structure = mime.structure_from_server(value)
    except mime.StructureError:
        return
    stored = mime.stored_structure(structure)
    assert mime.pending_bodystructure(stored, True) == structure
    mime.serialize(mime.pending_bodystructure(stored, False))


# -- the mail store ----------------------------------------------------------------------


async def test_pending_row_then_body_filled_in_one_commit(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    content = large_mail()
    uid = await add_pending(box.mailstore, owner, content, ["\\Flagged"])
    (row,) = await box.mailstore.messages(owner)
    assert row.body_pending
    assert row.uid == uid
    assert row.size == len(content)  # the central RFC822.SIZE, charged to the quota now
    assert row.content_hash == ""
    message_id = headers.message_id(headers.parse_headers(content))
    assert message_id is not None
    assert row.message_id_digest == box.blobs.digest(message_id.encode())
    assert await box.mailstore.content(row) == header_of(content)
    assert await box.mailstore.usage(owner) == len(content)
    assert await box.mailstore.pending_count(owner) == 1
    # A body that is not this message's is refused.
    mailbox_id = await _mailbox_id(box, owner)
    assert not await box.mailstore.fill_body(mailbox_id, uid, large_mail("other"))
    assert await box.mailstore.fill_body(mailbox_id, uid, content)
    assert not await box.mailstore.fill_body(mailbox_id, uid, content)  # twice: no-op
    (row,) = await box.mailstore.messages(owner)
    assert not row.body_pending
    assert await box.mailstore.content(row) == content
    assert row.flags == ("\\Flagged",)
    assert await box.mailstore.usage(owner) == len(content)
    # The header-only blob is gone with its last reference.
    assert set(box.blob_files()) == {row.blob_id}
    assert await box.mailstore.pending_count(owner) == 0


async def _mailbox_id(box: MailBox, owner: str) -> int:
    return (await Mailboxes(box.mailstore).get(owner, "INBOX")).id


async def test_ensure_bodies_without_a_fetcher_is_unavailable_at_once(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    await add_pending(box.mailstore, owner, large_mail())
    rows = await box.mailstore.messages(owner)
    with pytest.raises(BodyUnavailable):
        await box.mailstore.ensure_bodies(rows)
    content, pending = await box.mailstore.read_for_display(rows[0])
    assert pending
    assert content == header_of(large_mail())
    view = reading.read_message(content, body_pending=True)
    assert view.body.kind == "pending"
    assert view.subject == "big"
    assert not view.attachments


async def test_ensure_bodies_asks_the_fetcher_and_bounds_the_wait(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    content = large_mail()
    uid = await add_pending(box.mailstore, owner, content)
    mailbox_id = await _mailbox_id(box, owner)
    asked: list[list[int]] = []

    async def fetcher(ids: Sequence[int]) -> None:
        asked.append(list(ids))
        await box.mailstore.fill_body(mailbox_id, uid, content)

    box.mailstore.body_fetcher = fetcher
    (row,) = await box.mailstore.messages(owner)
    (filled,) = await box.mailstore.ensure_bodies([row])
    assert asked == [[row.id]]
    assert not filled.body_pending
    assert await box.mailstore.content(filled) == content

    # A fetcher that never answers: the reader gets "unavailable" after body_wait.
    await add_pending(box.mailstore, owner, large_mail("slow"))

    async def silent(ids: Sequence[int]) -> None:
        await trio.sleep_forever()

    box.mailstore.body_fetcher = silent
    box.mailstore.body_wait = 0.2
    rows = [r for r in await box.mailstore.messages(owner) if r.body_pending]
    with pytest.raises(BodyUnavailable):
        await box.mailstore.ensure_bodies(rows)


async def test_pending_is_indexed_only_when_the_body_arrives(tmp_path: Path) -> None:
    data = tmp_path / "box"
    await init_box(data, "test.go.th")
    async with open_box(load_config(data)) as running:
        owner = "user1@test.go.th"
        await add_user(running, owner, "pw-123456", name_th="ผู้ใช้")
        store = running.mailstore
        assert store.search is not None
        content = large_mail()
        uid = await add_pending(store, owner, content)
        mailbox_id = await _mailbox_id_of(store, owner)
        assert await store.search.indexed_uids(mailbox_id) == set()
        assert await store.reconcile_search_index() == 0  # nothing to index yet
        await store.fill_body(mailbox_id, uid, content)
        assert uid in await store.search.indexed_uids(mailbox_id)
        assert uid in await store.search.search(mailbox_id, "body", "สวัสดี")


async def _mailbox_id_of(store: Mailstore, owner: str) -> int:
    return (await Mailboxes(store).get(owner, "INBOX")).id


async def test_copy_of_a_pending_message_needs_its_body(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    uid = await add_pending(box.mailstore, owner, large_mail())
    with pytest.raises(MailboxError) as caught:
        await Mailboxes(box.mailstore).copy(
            await _mailbox_id(box, owner), [uid], owner, "Archive", quota_bytes=BIG
        )
    assert caught.value.code == "UNAVAILABLE"


# -- IMAP, in-process --------------------------------------------------------------------


async def test_imap_serves_pending_headers_and_structure_refuses_body(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box, owner)
    content = large_mail()
    # Message 1: the same mail stored whole; message 2: listed, body pending.
    await Mailboxes(box.mailstore).append(owner, "INBOX", content, quota_bytes=BIG)
    await add_pending(box.mailstore, owner, content)
    await client.send("s SELECT INBOX\r\n")

    reply = await client.send("f1 FETCH 1:2 (RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)\r\n")
    assert "f1 OK" in reply
    lines = [line for line in reply.split("\r\n") if " FETCH (" in line]
    assert len(lines) == 2
    # Identical answers for the whole and the pending copy (RFC 3501 §7.4.2 shapes).
    assert lines[0].split(" FETCH ", 1)[1] == lines[1].split(" FETCH ", 1)[1]

    reply = await client.send("f2 FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] RFC822.HEADER)\r\n")
    assert "f2 OK" in reply
    assert "Subject: big" in reply

    # The body: refused whole, before anything was sent or \Seen was set.
    reply = await client.send("f3 FETCH 1:2 (FLAGS BODY[])\r\n")
    assert re.search(r"f3 NO \[UNAVAILABLE\]", reply), reply
    assert "FETCH (" not in reply
    reply = await client.send("f4 FETCH 1:2 (FLAGS)\r\n")
    assert "\\Seen" not in reply
    for item in ("BODY.PEEK[1]", "BODY.PEEK[TEXT]", "RFC822", "RFC822.TEXT", "BODY.PEEK[]<0.10>"):
        reply = await client.send(f"f5 FETCH 2 ({item})\r\n")
        assert "f5 NO [UNAVAILABLE]" in reply, item
    reply = await client.send("c COPY 2 Archive\r\n")
    assert "c NO [UNAVAILABLE]" in reply
    # SEARCH on headers and flags still works on the pending message.
    reply = await client.send("q SEARCH SUBJECT big\r\n")
    assert "* SEARCH 1 2" in reply

    # Once the body is here, the same FETCH answers, and structure is unchanged.
    mailbox_id = await _mailbox_id(box, owner)
    await box.mailstore.fill_body(mailbox_id, 2, content)
    reply = await client.send("f6 FETCH 1:2 (BODYSTRUCTURE BODY[])\r\n")
    assert "f6 OK" in reply
    first, second = (line for line in reply.split("\r\n") if " FETCH (" in line)
    assert first.split(" FETCH ", 1)[1] == second.split(" FETCH ", 1)[1]
    assert lines[1].split("BODYSTRUCTURE ", 1)[1].split(" BODY (")[0] in second


# -- IMAP against a running box, with imaplib --------------------------------------------


@pytest.mark.slow
async def test_running_box_answers_unavailable_never_hangs(tmp_path: Path) -> None:
    data = tmp_path / "box"
    owner = "user1@test.go.th"
    await init_box(data, "test.go.th")
    content = large_mail()
    async with open_box(load_config(data)) as offline:
        await add_user(offline, owner, "pw-123456", name_th="ผู้ใช้")
        await Mailboxes(offline.mailstore).append(owner, "INBOX", b"Subject: small\r\n\r\nhi\r\n",
                                                  quota_bytes=BIG)  # fmt: skip
        await add_pending(offline.mailstore, owner, content)
    running = await trio.to_thread.run_sync(start_box, data)
    try:

        def session() -> dict[str, Any]:
            tls = ssl.create_default_context(cafile=str(running.ca))
            imap = imaplib.IMAP4_SSL(
                "127.0.0.1", running.port("imaps"), ssl_context=tls, timeout=30
            )
            try:
                imap.login(owner, "pw-123456")
                imap.select("INBOX")
                typ, ok = imap.fetch("2", "(ENVELOPE BODYSTRUCTURE RFC822.SIZE)")
                _, header = imap.fetch("2", "(BODY.PEEK[HEADER])")
                refused, answer = imap.fetch("1:2", "(BODY[])")
                _, flags = imap.fetch("1:2", "(FLAGS)")
                return {
                    "ok": typ, "listing": _flat(ok), "header": _flat(header),
                    "refused": refused, "why": _flat(answer), "flags": _flat(flags),
                }  # fmt: skip
            finally:
                imap.logout()

        got = await trio.to_thread.run_sync(session)
        assert got["ok"] == "OK"
        assert f"RFC822.SIZE {len(content)}".encode() in got["listing"]
        assert b'"APPLICATION" "PDF"' in got["listing"]
        assert header_of(content) in got["header"]
        assert got["refused"] == "NO"
        assert b"[UNAVAILABLE]" in got["why"]
        assert b"\\Seen" not in got["flags"]
    finally:
        await trio.to_thread.run_sync(running.stop)


def _flat(items: Any) -> bytes:
    """imaplib's answer data (bytes and (bytes, bytes) tuples) as one byte string."""
    out = b""
    for item in items or ():
        if isinstance(item, tuple):
            out += b"".join(part for part in item if isinstance(part, bytes))
        elif isinstance(item, bytes):
            out += item
    return out
