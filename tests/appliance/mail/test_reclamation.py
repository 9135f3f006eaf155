"""Deferred reclamation (mail/reclamation.py): an expunged message stays readable to a
session not yet told of the EXPUNGE, its blob goes once no session can reach it, and a
stop with blobs still held leaves nothing the start-up sweep does not collect.

Sessions are the real IMAP session over the protocol core, in-process (as in
imap/test_session.py); the other party's expunge goes through the same `Mailboxes`
operations that IMAP, the webmail and mailbox replication use.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import pytest
import trio

from appliance.mail.imap.session import INLINE_MESSAGES
from appliance.mail.mailboxes import FlagMode, Mailboxes
from appliance.mail.mailstore import Mailstore, StoredMessage
from appliance.mail.reclamation import Reclamation

from .conftest import MailBox
from .imap.test_session import fill, signed_in


async def _expunge_elsewhere(box: MailBox, owner: str, uids: list[int]) -> None:
    boxes = Mailboxes(box.mailstore)
    inbox = await boxes.get(owner, "INBOX")
    await boxes.store_flags(inbox.id, uids, FlagMode.ADD, ["\\Deleted"])
    assert await boxes.expunge(inbox.id, owner) == uids


async def test_an_expunged_message_stays_readable_until_the_session_is_told(
    box: MailBox,
) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await fill(box, owner, 3)
    await client.send("a SELECT INBOX\r\n")
    doomed = (await box.mailstore.messages(owner))[1]
    await _expunge_elsewhere(box, owner, [2])
    reclamation = box.mailstore.reclamation
    assert doomed.blob_id in reclamation.pending
    assert box.blobs.exists(doomed.blob_id)

    # RFC 3501 §7.4.1: still message 2 for this client, with its body, size and date.
    reply = await client.send("b FETCH 2 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n")
    assert f"* 2 FETCH (UID 2 RFC822.SIZE {doomed.size} INTERNALDATE " in reply
    assert "body number 1" in reply
    assert "EXPUNGE" not in reply  # not during FETCH
    assert reply.endswith("b OK FETCH completed\r\n")
    assert "* SEARCH 2\r\n" in await client.send('c SEARCH BODY "number 1"\r\n')

    # Told now: the blob is no longer anyone's.
    assert "* 2 EXPUNGE" in await client.send("d NOOP\r\n")
    assert not box.blobs.exists(doomed.blob_id)
    assert reclamation.pending == frozenset()
    assert sorted(box.blob_files()) == sorted(
        m.blob_id for m in await box.mailstore.messages(owner)
    )


async def test_an_expunge_between_a_fetchs_rows_and_its_bodies_is_answered(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving that stopped IMAPS (issue 15), made deterministic: another
    session's EXPUNGE commits, and frees the blobs, after this FETCH read its rows and
    before it read their bodies.

    A FETCH of more than `INLINE_MESSAGES` reads its rows and then their bodies in one
    worker call, where the writer can commit in between; a smaller one reads both on
    the event loop with no await between them, so nothing can come between there.
    """
    owner = box.users[0]
    count = INLINE_MESSAGES + 1
    client = await signed_in(box)
    await fill(box, owner, count)
    await client.send("a SELECT INBOX\r\n")
    original = Mailboxes.messages_then

    async def expunge_first(
        self: Mailboxes, mailbox_id: int, uids: Collection[int], then: Callable[..., Any]
    ) -> Any:
        monkeypatch.setattr(Mailboxes, "messages_then", original)

        def expunged_then(rows: list[StoredMessage]) -> Any:
            trio.from_thread.run(expunge_in_another_task)
            return then(rows)

        return await original(self, mailbox_id, uids, expunged_then)

    async def expunge_in_another_task() -> None:
        # Another task, as another session is: the FETCH's task holds a worker token.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_expunge_elsewhere, box, owner, list(range(1, count + 1)))

    monkeypatch.setattr(Mailboxes, "messages_then", expunge_first)
    reply = await client.send("b UID FETCH 1:* (BODY.PEEK[])\r\n")
    assert all(f"body number {n}" in reply for n in range(count))
    assert reply.count(" FETCH (") == count
    # A UID command may carry the expunges (after the FETCH data); then nothing is held.
    told = "".join(f"* {n} EXPUNGE\r\n" for n in range(count, 0, -1))
    assert reply.endswith(told + "b OK FETCH completed\r\n")
    assert box.blob_files() == []
    assert box.mailstore.reclamation.pending == frozenset()


async def test_an_expunge_nobody_can_see_frees_the_blob_at_once(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    await fill(box, owner, 2)
    other = await signed_in(box, box.users[1])  # selected elsewhere: not a reader here
    await other.send("a SELECT INBOX\r\n")
    doomed = (await box.mailstore.messages(owner))[0]
    await _expunge_elsewhere(box, owner, [1])
    assert not box.blobs.exists(doomed.blob_id)
    assert box.mailstore.reclamation.pending == frozenset()


async def test_unselect_and_the_end_of_the_connection_let_go(box: MailBox) -> None:
    owner = box.users[0]
    first, second = await signed_in(box), await signed_in(box)
    await fill(box, owner, 3)
    await first.send("a SELECT INBOX\r\n")
    await second.send("a SELECT INBOX\r\n")
    doomed = (await box.mailstore.messages(owner))[0]
    await _expunge_elsewhere(box, owner, [1])
    assert (
        box.mailstore.reclamation.readers((await Mailboxes(box.mailstore).get(owner, "INBOX")).id)
        == 2
    )
    await first.send("b UNSELECT\r\n")
    assert box.blobs.exists(doomed.blob_id), "the second session still sees message 1"
    await second.session.close()  # the connection ended without a word
    assert not box.blobs.exists(doomed.blob_id)
    assert box.mailstore.reclamation.pending == frozenset()


async def test_a_blob_stored_again_while_held_is_kept_for_its_new_row(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await fill(box, owner, 2)
    await client.send("a SELECT INBOX\r\n")
    doomed = (await box.mailstore.messages(owner))[0]
    content = await box.mailstore.content(doomed)
    await _expunge_elsewhere(box, owner, [1])
    # The same bytes arrive again while the old copy is held: the file is shared.
    await Mailboxes(box.mailstore).append(owner, "Archive", content, quota_bytes=10**10)
    assert "* 1 EXPUNGE" in await client.send("b NOOP\r\n")
    assert box.blobs.exists(doomed.blob_id)
    (again,) = await box.mailstore.messages(owner, "Archive")
    assert again.blob_id == doomed.blob_id
    assert await box.mailstore.content(again) == content


async def test_a_stop_with_held_blobs_leaves_them_to_the_start_up_sweep(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await fill(box, owner, 3)
    await client.send("a SELECT INBOX\r\n")
    doomed = (await box.mailstore.messages(owner))[2]
    await _expunge_elsewhere(box, owner, [3])
    assert box.blobs.exists(doomed.blob_id)
    # The box dies here, the session with it. The next start's sweep, on a fresh store
    # over the same files, finds the blob no row names and deletes it, nothing else.
    restarted = Mailstore(box.mailstore.db, box.blobs)
    assert await box.mailstore.db.write(restarted.remove_orphan_blobs) == 1
    assert not box.blobs.exists(doomed.blob_id)
    kept = await restarted.messages(owner)
    assert sorted(box.blob_files()) == sorted(m.blob_id for m in kept)
    for message in kept:
        assert b"body number" in await restarted.content(message)


def _row(uid: int, blob_id: str) -> StoredMessage:
    return StoredMessage(
        uid, "u@test.go.th", "INBOX", uid, 1, 1, (), 0, 10, blob_id, None, "", 0, 0
    )


def test_holds_are_counted_over_readers_and_ghosts() -> None:
    reclamation = Reclamation()
    first, second = reclamation.open(7), reclamation.open(7)
    elsewhere = reclamation.open(8)
    shared = "a" * 64
    reclamation.retire(7, [_row(1, shared), _row(2, shared)])
    late = reclamation.open(7)  # opened after the removal: it never saw those rows
    assert late.ghost(1) is None
    assert elsewhere.ghost(1) is None
    assert first.ghost(2) == _row(2, shared)
    assert reclamation.keep(shared)
    assert reclamation.pending == {shared}
    # The first reader was told of UID 1 only: UID 2 still holds the blob.
    assert first.release(lambda uid: uid == 2) == []
    assert first.close() == []
    assert first.close() == [], "closing twice changes nothing"
    # The last hold goes: the pending blob is handed back to be deleted, once.
    assert second.release(lambda uid: False) == [shared]
    assert reclamation.pending == frozenset()
    assert not reclamation.keep(shared)
    assert reclamation.readers(7) == 2
    assert second.close() == []
    assert late.close() == []
    assert reclamation.readers(7) == 0
