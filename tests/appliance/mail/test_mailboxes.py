"""Mailbox operations for IMAP: UIDs, MODSEQ, VANISHED, blobs and quota stay consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.mailboxes import FlagMode, MailboxError, Mailboxes, canonical_flags
from appliance.mail.mailstore import MAIL_MIGRATIONS, QuotaExceeded
from appliance.store.database import connect
from appliance.store.schema import migrate

from .conftest import MailBox

BIG = 10 * 1024**3


def mail(n: int) -> bytes:
    return f"From: a@x.go.th\r\nSubject: m{n}\r\nMessage-ID: <m{n}@x>\r\n\r\nbody {n}\r\n".encode()


async def refs(box: MailBox) -> dict[str, int]:
    return dict(
        await box.mailstore.db.read(lambda c: c.execute("SELECT id, refs FROM blobs").fetchall())
    )


async def usage(box: MailBox, owner: str) -> int:
    return await box.mailstore.usage(owner)


async def test_append_assigns_increasing_uids_and_modseqs(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    results = [await boxes.append(owner, "Sent", mail(n), quota_bytes=BIG, flags=["\\seen"])
               for n in range(3)]  # fmt: skip
    uidvalidity = (await boxes.get(owner, "Sent")).uidvalidity
    assert results == [(uidvalidity, 1), (uidvalidity, 2), (uidvalidity, 3)]
    states = await boxes.states((await boxes.get(owner, "Sent")).id)
    assert [s.uid for s in states] == [1, 2, 3]
    assert [s.flags for s in states] == [("\\Seen",)] * 3
    assert states[0].modseq < states[1].modseq < states[2].modseq
    info = await boxes.get(owner, "sent".capitalize())
    assert (info.messages, info.unseen, info.uidnext) == (3, 0, 4)
    assert info.highestmodseq == states[2].modseq
    # Appended mail is encrypted and single-instance like delivered mail.
    assert len(box.blob_files()) == 3
    await boxes.append(owner, "Drafts", mail(0), quota_bytes=BIG)
    assert len(box.blob_files()) == 3
    assert sorted((await refs(box)).values()) == [1, 1, 2]


async def test_append_reads_classification_and_urgency_like_delivery(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    marked = "X-Classification: ลับ\r\nX-Urgency: ด่วนที่สุด\r\n".encode() + mail(1)
    await boxes.append(owner, "Sent", marked, quota_bytes=BIG)
    await boxes.append(owner, "Sent", mail(2), quota_bytes=BIG)
    rows = await box.mailstore.db.read(
        lambda c: c.execute("SELECT classification, urgency FROM messages ORDER BY uid").fetchall()
    )
    assert rows == [(1, 3), (0, 0)]


async def test_store_flags_bumps_modseq_once_and_honours_unchangedsince(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    for n in range(3):
        await boxes.append(owner, "INBOX", mail(n), quota_bytes=BIG)
    inbox = await boxes.get(owner, "inbox")
    before = inbox.highestmodseq
    result = await boxes.store_flags(inbox.id, [1, 2], FlagMode.ADD, ["\\Flagged", "$Work"])
    assert [s.uid for s in result.changed] == [1, 2]
    assert {s.modseq for s in result.changed} == {before + 1}
    assert result.changed[0].flags == ("\\Flagged", "$Work")
    # No change, no new MODSEQ.
    again = await boxes.store_flags(inbox.id, [1], FlagMode.ADD, ["\\flagged"])
    assert again.changed == ()
    assert (await boxes.get(owner, "INBOX")).highestmodseq == before + 1
    # UNCHANGEDSINCE: message 1 changed after `before`, so it is refused as MODIFIED.
    guarded = await boxes.store_flags(inbox.id, [1, 3], FlagMode.REMOVE, ["\\Flagged"],
                                      unchanged_since=before)  # fmt: skip
    assert guarded.modified == (1,)
    changed, vanished = await boxes.changes_since(inbox.id, before)
    assert [s.uid for s in changed] == [1, 2]
    assert vanished == []


async def test_expunge_records_vanished_and_frees_blobs_and_quota(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[1]
    await box.mailstore.create_mailboxes(owner)
    for n in range(4):
        await boxes.append(owner, "INBOX", mail(n), quota_bytes=BIG)
    inbox = await boxes.get(owner, "INBOX")
    full = await usage(box, owner)
    await boxes.store_flags(inbox.id, [2, 3], FlagMode.ADD, ["\\Deleted"])
    mark = (await boxes.get(owner, "INBOX")).highestmodseq
    assert await boxes.expunge(inbox.id, owner, uids=[3, 4]) == [3]  # UID EXPUNGE
    assert await boxes.expunge(inbox.id, owner) == [2]
    _, vanished = await boxes.changes_since(inbox.id, mark)
    assert vanished == [2, 3]
    assert [s.uid for s in await boxes.states(inbox.id)] == [1, 4]
    assert await usage(box, owner) == full - len(mail(2)) - len(mail(3))
    assert len(box.blob_files()) == 2, "the expunged messages' blobs are deleted"
    # UIDs are never reused.
    assert await boxes.append(owner, "INBOX", mail(9), quota_bytes=BIG) == (inbox.uidvalidity, 5)


async def test_move_is_atomic_and_keeps_quota_and_blobs(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[2]
    await box.mailstore.create_mailboxes(owner)
    for n in range(3):
        await boxes.append(owner, "INBOX", mail(n), quota_bytes=BIG)
    inbox, archive = await boxes.get(owner, "INBOX"), await boxes.get(owner, "Archive")
    used, blob_refs = await usage(box, owner), await refs(box)
    watch = box.mailstore.changes.watch(inbox.id)
    moved = await boxes.copy(inbox.id, [1, 3, 99], owner, "Archive", quota_bytes=BIG, move=True)
    assert watch.is_set(), "sessions showing the source are woken"
    assert (moved.source_uids, moved.destination_uids, moved.expunged) == ((1, 3), (1, 2), (1, 3))
    assert moved.uidvalidity == archive.uidvalidity
    assert [s.uid for s in await boxes.states(inbox.id)] == [2]
    assert [s.uid for s in await boxes.states(archive.id)] == [1, 2]
    assert await usage(box, owner) == used
    assert await refs(box) == blob_refs
    copied = await boxes.copy(inbox.id, [2], owner, "Archive", quota_bytes=BIG)
    assert copied.destination_uids == (3,)
    assert await usage(box, owner) == used + len(mail(1))


async def test_copy_over_quota_changes_nothing(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.small
    await box.mailstore.create_mailboxes(owner)
    await boxes.append(owner, "INBOX", b"x" * 1200, quota_bytes=box.small_quota)
    inbox = await boxes.get(owner, "INBOX")
    with pytest.raises(QuotaExceeded):
        await boxes.copy(inbox.id, [1], owner, "Archive", quota_bytes=box.small_quota)
    assert await boxes.states((await boxes.get(owner, "Archive")).id) == []
    assert await usage(box, owner) == 1200
    with pytest.raises(QuotaExceeded):
        await boxes.append(owner, "INBOX", b"y" * 1000, quota_bytes=box.small_quota)


async def test_create_delete_rename_and_uidvalidity(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[3]
    await box.mailstore.create_mailboxes(owner)
    await boxes.create(owner, "Projects/ภาษีปี 2569")
    with pytest.raises(MailboxError) as exists:
        await boxes.create(owner, "Projects/ภาษีปี 2569")
    assert exists.value.code == "ALREADYEXISTS"
    first = await boxes.get(owner, "Projects/ภาษีปี 2569")
    await boxes.append(owner, first.name, mail(1), quota_bytes=BIG)
    await boxes.create(owner, "Projects")
    with pytest.raises(MailboxError) as children:
        await boxes.delete(owner, "Projects")
    assert children.value.code == "HASCHILDREN"
    await boxes.rename(owner, "Projects", "Old")
    assert (await boxes.get(owner, "Old/ภาษีปี 2569")).id == first.id
    await boxes.delete(owner, "Old/ภาษีปี 2569")
    assert box.blob_files() == [], "deleting a mailbox releases its blobs"
    await boxes.create(owner, "Old/ภาษีปี 2569")
    assert (await boxes.get(owner, "Old/ภาษีปี 2569")).uidvalidity > first.uidvalidity
    with pytest.raises(MailboxError) as inbox:
        await boxes.delete(owner, "inbox")
    assert inbox.value.code == "CANNOT"
    with pytest.raises(MailboxError) as missing:
        await boxes.get(owner, "Nowhere")
    assert missing.value.code == "NONEXISTENT"


async def test_rename_inbox_moves_its_messages(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    owner = box.users[4]
    await box.mailstore.create_mailboxes(owner)
    for n in range(2):
        await boxes.append(owner, "INBOX", mail(n), quota_bytes=BIG)
    used = await usage(box, owner)
    await boxes.rename(owner, "INBOX", "Old mail")
    assert (await boxes.get(owner, "INBOX")).messages == 0
    assert (await boxes.get(owner, "Old mail")).messages == 2
    assert await usage(box, owner) == used


async def test_delivery_wakes_watchers(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    inbox = await Mailboxes(box.mailstore).get(owner, "INBOX")
    watch = box.mailstore.changes.watch(inbox.id)
    envelope = Envelope(
        "a@x.go.th", (Recipient(owner, local=True),), Trace("x", "127.0.0.1", "ESMTP")
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.delivery.deliver, envelope, mail(1))
            await watch.wait()


def test_canonical_flags() -> None:
    assert canonical_flags(["\\SEEN", "\\seen", "$Label", "\\Recent", "\\deleted"]) == (
        "\\Seen", "$Label", "\\Deleted"
    )  # fmt: skip


async def test_blob_freed_by_expunge_while_an_identical_message_arrives(box: MailBox) -> None:
    """The race: an APPEND of the same bytes finds the blob file present (so skips
    writing it) just before an expunge frees and deletes it."""
    from appliance.mail.mailstore import BlobVanished

    boxes = Mailboxes(box.mailstore)
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    content = mail(42)
    await boxes.append(owner, "INBOX", content, quota_bytes=BIG)
    blob_id = box.blobs.put(content)  # the racing writer's first step: file already there
    inbox = await boxes.get(owner, "INBOX")
    await boxes.store_flags(inbox.id, [1], FlagMode.ADD, ["\\Deleted"])
    await boxes.expunge(inbox.id, owner)
    assert not box.blobs.exists(blob_id), "the freed blob's file is gone"

    def job(conn):  # type: ignore[no-untyped-def]
        box.mailstore.reference_blob(conn, blob_id, len(content), 1)

    # A fresh row for a missing file is refused, and the retrying path rewrites it.
    with pytest.raises(BlobVanished):
        await box.mailstore.db.write(job)
    await box.mailstore.write_with_blob(job, blob_id, content)
    assert box.blobs.get(blob_id) == content
    # With a row back, releasing the blob must not delete its file.
    await box.mailstore.release_blobs([blob_id])
    assert box.blobs.exists(blob_id)


def test_upgrade_keeps_subscriptions_and_makes_no_mail_recent(tmp_path: Path) -> None:
    # Migration 6: subscriptions move to their own table as they were; mail already in
    # a mailbox is not \Recent after the upgrade (RFC 3501 §2.3.2 has no "before").
    conn = connect(tmp_path / "mail.sqlite")
    try:
        migrate(conn, MAIL_MIGRATIONS[:5])
        conn.executemany(
            "INSERT INTO mailboxes (owner, name, uidvalidity, uidnext, subscribed)"
            " VALUES ('a@x.go.th', ?, 1, ?, ?)",
            [("INBOX", 8, 1), ("Old", 3, 0)],
        )
        migrate(conn, MAIL_MIGRATIONS)
        rows = conn.execute("SELECT owner, name FROM subscriptions").fetchall()
        assert rows == [("a@x.go.th", "INBOX")]
        marks = conn.execute("SELECT name, first_recent_uid FROM mailboxes ORDER BY name")
        assert marks.fetchall() == [("INBOX", 8), ("Old", 3)]
    finally:
        conn.close()
