"""Tests of `appliance.mail.mailstore`: one blob per message, UIDs, MODSEQ, quota, queue."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from typing import TYPE_CHECKING, Any

import pytest
import trio

from appliance.mail.mailstore import (
    DEFAULT_MAILBOXES,
    LocalCopy,
    NewMessage,
    OutboundCopy,
    QuotaExceeded,
)

if TYPE_CHECKING:
    from conftest import MailBox  # tests/appliance/mail/conftest.py

BIG_QUOTA = 10 * 1024**3


async def new_message(box: MailBox, content: bytes, **overrides: Any) -> NewMessage:
    """Write *content* as a blob (as Delivery does) and describe it for commit."""
    blob_id = await trio.to_thread.run_sync(box.blobs.put, content)
    fields: dict[str, Any] = {
        "queue_id": "0123456789ABCDEF",
        "blob_id": blob_id,
        "size": len(content),
        "content_hash": hashlib.sha256(content).hexdigest(),
        "message_id_digest": box.blobs.digest(b"m1@test.go.th"),
        "sender": "sender@test.go.th",
        "classification": 0,
        "urgency": 0,
    }
    fields.update(overrides)
    return NewMessage(**fields)


def local(owner: str, quota: int = BIG_QUOTA, mailbox: str = "INBOX") -> LocalCopy:
    return LocalCopy(owner=owner, quota_bytes=quota, mailbox=mailbox)


async def rows(box: MailBox, sql: str, *params: object) -> list[tuple[Any, ...]]:
    def query(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
        return conn.execute(sql, params).fetchall()

    return await box.mailstore.db.read(query)


async def mailbox_row(box: MailBox, owner: str, name: str = "INBOX") -> tuple[int, int]:
    [(uidnext, highestmodseq)] = await rows(
        box,
        "SELECT uidnext, highestmodseq FROM mailboxes WHERE owner = ? AND name = ?",
        owner,
        name,
    )
    return uidnext, highestmodseq


# --- one blob, many copies -------------------------------------------------------------


async def test_five_local_recipients_share_one_blob(box: MailBox) -> None:
    content = b"Subject: to five\r\n\r\nhello five\r\n"
    message = await new_message(box, content)

    await box.mailstore.commit(message, [local(u) for u in box.users], [])

    assert box.blob_files() == [message.blob_id]
    assert await rows(box, "SELECT id, size, refs FROM blobs") == [
        (message.blob_id, len(content), 5)
    ]
    assert await rows(box, "SELECT count(*), count(DISTINCT blob_id) FROM messages") == [(5, 1)]
    for user in box.users:
        [stored] = await box.mailstore.messages(user)
        assert stored.owner == user
        assert stored.blob_id == message.blob_id
        assert await box.mailstore.content(stored) == content


async def test_refs_count_local_and_outbound_copies(box: MailBox) -> None:
    message = await new_message(box, b"Subject: mixed\r\n\r\nx\r\n")

    await box.mailstore.commit(
        message,
        [local(box.users[0]), local(box.users[1])],
        [OutboundCopy("a@other.go.th"), OutboundCopy("b@other.go.th"), OutboundCopy("c@x.th")],
    )

    assert await rows(box, "SELECT refs FROM blobs") == [(5,)]
    assert await box.mailstore.outbound_length() == 3


async def test_same_content_twice_adds_references_to_one_blob(box: MailBox) -> None:
    content = b"Subject: again\r\n\r\nsame bytes\r\n"
    first = await new_message(box, content)
    second = await new_message(box, content, queue_id="FEDCBA9876543210")
    assert first.blob_id == second.blob_id

    await box.mailstore.commit(first, [local(box.users[0])], [])
    await box.mailstore.commit(second, [local(box.users[0]), local(box.users[1])], [])

    assert box.blob_files() == [first.blob_id]
    assert await rows(box, "SELECT refs FROM blobs") == [(3,)]


# --- UIDs and MODSEQ ---------------------------------------------------------------------


async def test_uids_start_at_1_and_increase_per_mailbox(box: MailBox) -> None:
    alice, bob = box.users[0], box.users[1]
    for n in range(3):
        message = await new_message(box, f"Subject: {n}\r\n\r\n{n}\r\n".encode())
        await box.mailstore.commit(message, [local(alice)], [])
    message = await new_message(box, b"Subject: bob\r\n\r\nbob\r\n")
    await box.mailstore.commit(message, [local(bob), local(alice, mailbox="Archive")], [])

    inbox = await box.mailstore.messages(alice)
    assert [m.uid for m in inbox] == [1, 2, 3]
    assert [m.uid for m in await box.mailstore.messages(bob)] == [1]
    assert [m.uid for m in await box.mailstore.messages(alice, "Archive")] == [1]
    assert await box.mailstore.messages(alice, "Sent") == []

    modseqs = [m.modseq for m in inbox]
    assert modseqs == sorted(set(modseqs))  # strictly increasing
    assert modseqs[0] > 1  # the empty mailbox's HIGHESTMODSEQ is 1 (RFC 7162 §3.1.1)
    assert await mailbox_row(box, alice) == (4, modseqs[-1])
    assert await mailbox_row(box, bob) == (2, (await box.mailstore.messages(bob))[0].modseq)


async def test_concurrent_deliveries_get_distinct_increasing_uids(box: MailBox) -> None:
    user = box.users[0]

    async def deliver(n: int) -> None:
        message = await new_message(box, f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())
        await box.mailstore.commit(message, [local(user)], [])

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(deliver, n)

    inbox = await box.mailstore.messages(user)
    assert [m.uid for m in inbox] == list(range(1, 31))
    modseqs = [m.modseq for m in inbox]
    assert all(a < b for a, b in itertools.pairwise(modseqs))
    assert await mailbox_row(box, user) == (31, modseqs[-1])


async def test_stored_message_fields(box: MailBox) -> None:
    content = b"Subject: fields\r\n\r\nx\r\n"
    message = await new_message(
        box, content, message_id_digest="d" * 64, classification=2, urgency=3,
        internal_date=1_700_000_000,
    )  # fmt: skip

    await box.mailstore.commit(message, [local(box.users[0])], [])

    [stored] = await box.mailstore.messages(box.users[0])
    assert stored.mailbox == "INBOX"
    assert stored.uidvalidity > 0
    assert stored.flags == ()
    assert stored.internal_date == 1_700_000_000
    assert stored.size == len(content)
    assert stored.message_id_digest == "d" * 64
    assert stored.content_hash == hashlib.sha256(content).hexdigest()
    assert (stored.classification, stored.urgency) == (2, 3)


async def test_create_mailboxes_is_idempotent(box: MailBox) -> None:
    user = box.users[0]
    await box.mailstore.create_mailboxes(user)
    query = "SELECT name, special_use, uidvalidity FROM mailboxes WHERE owner = ?"
    first = await rows(box, query, user)
    await box.mailstore.create_mailboxes(user)

    assert await rows(box, query, user) == first
    assert sorted((name, use) for name, use, _ in first) == sorted(DEFAULT_MAILBOXES)
    assert await box.mailstore.usage(user) == 0


# --- quota -----------------------------------------------------------------------------------


async def test_usage_adds_up_the_sizes(box: MailBox) -> None:
    user = box.users[0]
    sizes = []
    for n in range(3):
        content = f"Subject: {n}\r\n\r\n".encode() + b"x" * (100 * n)
        sizes.append(len(content))
        await box.mailstore.commit(await new_message(box, content), [local(user)], [])

    assert await box.mailstore.usage(user) == sum(sizes)
    assert await rows(box, "SELECT messages FROM quota_usage WHERE owner = ?", user) == [(3,)]
    assert await box.mailstore.usage(box.users[1]) == 0


async def test_quota_may_be_filled_exactly_but_not_exceeded(box: MailBox) -> None:
    content = b"Subject: fits\r\n\r\n" + b"x" * 100
    fits = await new_message(box, content)
    await box.mailstore.commit(fits, [local(box.small, quota=len(content))], [])
    assert await box.mailstore.usage(box.small) == len(content)

    one_more = await new_message(box, b"!")
    with pytest.raises(QuotaExceeded) as caught:
        await box.mailstore.commit(one_more, [local(box.small, quota=len(content))], [])

    assert caught.value.owner == box.small
    assert await box.mailstore.usage(box.small) == len(content)


async def test_quota_exceeded_writes_nothing(box: MailBox) -> None:
    # An earlier message, so there is state that must stay exactly as it was.
    earlier = await new_message(box, b"Subject: earlier\r\n\r\nearlier\r\n")
    await box.mailstore.commit(earlier, [local(box.users[0])], [])
    before = {
        table: await rows(box, f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608
        for table in ("mailboxes", "blobs", "messages", "quota_usage", "outbound")
    }

    too_big = await new_message(box, b"Subject: big\r\n\r\n" + b"x" * box.small_quota)
    with pytest.raises(QuotaExceeded):
        await box.mailstore.commit(
            too_big,
            # The copies before and after the full mailbox must not be written either.
            [local(box.users[1]), local(box.small, quota=box.small_quota), local(box.users[2])],
            [OutboundCopy("far@other.go.th")],
        )

    after = {
        table: await rows(box, f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608
        for table in before
    }
    assert after == before
    assert await box.mailstore.usage(box.users[1]) == 0
    assert await box.mailstore.outbound_length() == 0
    # The blob was written before the commit; start-up clean-up removes it.
    assert too_big.blob_id in box.blob_files()
    assert await box.mailstore.db.read(box.mailstore.remove_orphan_blobs) == 1
    assert box.blob_files() == [earlier.blob_id]


# --- outbound queue --------------------------------------------------------------------------


async def test_outbound_rows_carry_classes_and_dsn_parameters(box: MailBox) -> None:
    message = await new_message(
        box,
        b"Subject: out\r\n\r\nout\r\n",
        classification=3,
        urgency=2,
        ret="HDRS",
        envid="ENV-1",
        sender="boss@test.go.th",
    )

    await box.mailstore.commit(
        message,
        [local(box.users[0])],
        [
            OutboundCopy("a@other.go.th", notify="SUCCESS,FAILURE", orcpt="rfc822;a@other.go.th"),
            OutboundCopy("b@other.go.th"),
        ],
    )

    assert await rows(
        box,
        "SELECT queue_id, blob_id, sender, recipient, notify, orcpt, ret, envid,"
        " classification, urgency, attempts, last_error FROM outbound ORDER BY recipient",
    ) == [
        (
            message.queue_id, message.blob_id, "boss@test.go.th", "a@other.go.th",
            "SUCCESS,FAILURE", "rfc822;a@other.go.th", "HDRS", "ENV-1", 3, 2, 0, None,
        ),
        (
            message.queue_id, message.blob_id, "boss@test.go.th", "b@other.go.th",
            None, None, "HDRS", "ENV-1", 3, 2, 0, None,
        ),
    ]  # fmt: skip
    [(created, next_attempt)] = await rows(
        box, "SELECT DISTINCT created_at, next_attempt_at FROM outbound"
    )
    assert created == next_attempt > 0


async def test_outbound_queue_orders_most_urgent_first(box: MailBox) -> None:
    for n, urgency in enumerate([0, 3, 1, 3, 2]):
        message = await new_message(box, f"Subject: {n}\r\n\r\n{n}\r\n".encode(), urgency=urgency)
        await box.mailstore.commit(message, [], [OutboundCopy(f"r{n}@other.go.th")])

    order = await rows(box, "SELECT recipient FROM outbound ORDER BY urgency DESC, created_at, id")
    assert [r for (r,) in order] == [
        "r1@other.go.th", "r3@other.go.th", "r4@other.go.th", "r2@other.go.th", "r0@other.go.th",
    ]  # fmt: skip
    plan = await rows(
        box, "EXPLAIN QUERY PLAN SELECT id FROM outbound ORDER BY urgency DESC, created_at, id"
    )
    assert any("outbound_order" in str(step) for step in plan)


# --- orphans ---------------------------------------------------------------------------------


async def test_remove_orphan_blobs_keeps_referenced_ones(box: MailBox) -> None:
    kept = await new_message(box, b"Subject: kept\r\n\r\nkept\r\n")
    await box.mailstore.commit(kept, [local(box.users[0])], [])
    queued = await new_message(box, b"Subject: queued\r\n\r\nqueued\r\n")
    await box.mailstore.commit(queued, [], [OutboundCopy("far@other.go.th")])
    orphan = box.blobs.put(b"Subject: crash\r\n\r\nwritten, never committed\r\n")
    (box.blobs.root / "tmp" / "half-written").write_bytes(b"partial")

    removed = await box.mailstore.db.read(box.mailstore.remove_orphan_blobs)

    assert removed == 2  # the orphan blob and the temp file
    assert sorted(box.blob_files()) == sorted([kept.blob_id, queued.blob_id])
    assert not box.blobs.exists(orphan)
    assert list((box.blobs.root / "tmp").iterdir()) == []
    [stored] = await box.mailstore.messages(box.users[0])
    assert await box.mailstore.content(stored) == b"Subject: kept\r\n\r\nkept\r\n"


async def test_remove_orphan_blobs_with_nothing_to_do(box: MailBox) -> None:
    assert await box.mailstore.db.read(box.mailstore.remove_orphan_blobs) == 0
