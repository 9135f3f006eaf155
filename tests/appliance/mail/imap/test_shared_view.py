"""The per-mailbox view that every session of a mailbox starts from (imap/view.py).

SELECT takes a copy-on-write twin of the mailbox's held view, brought up to date by
what changed since its MODSEQ; these check that every session still sees exactly what
the mail database holds, and that the shortcuts are taken (no full read, no query per
command) only when they are right.
"""

from __future__ import annotations

import re

import pytest

from appliance.mail.imap.session import INLINE_MESSAGES, READ_BATCH
from appliance.mail.imap.view import MailboxViews
from appliance.mail.mailboxes import Mailboxes, MessageState

from ..conftest import MailBox
from .test_session import Client, fill, signed_in
from .test_session_extensions import MULTIPART, put


async def truth(box: MailBox, owner: str, name: str = "INBOX") -> list[MessageState]:
    boxes = Mailboxes(box.mailstore)
    return await boxes.states((await boxes.get(owner, name)).id)


def seen_by(client: Client) -> list[MessageState]:
    selected = client.session.selected
    assert selected is not None
    return [selected.messages.state(uid) for uid in selected.messages]


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count calls of `Mailboxes.<name>`."""
    calls: list[int] = []
    original = getattr(Mailboxes, name)

    async def counted(self: Mailboxes, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Mailboxes, name, counted)
    return calls


async def test_sessions_start_from_one_view_and_read_every_row_once(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = box.users[0]
    reads = counting(monkeypatch, "snapshot")
    first = await signed_in(box)
    await fill(box, owner, 4)
    second = await signed_in(box)
    assert "* 4 EXISTS" in await first.send("a SELECT INBOX\r\n")
    assert "* 4 EXISTS" in await second.send("a EXAMINE INBOX\r\n")
    assert reads == [1]
    one, two = first.session.selected, second.session.selected
    assert one is not None
    assert two is not None
    assert one.messages.uids is two.messages.uids, "shared until one of them changes"
    # A change by one session reaches the other, and the shared arrays stay intact.
    await first.send("b STORE 2 +FLAGS (\\Flagged)\r\n")
    # (The first session took the messages as \Recent: RFC 3501 §2.3.2.)
    assert "* 2 FETCH (UID 2 FLAGS (\\Flagged))" in await second.send("b NOOP\r\n")
    assert seen_by(first) == seen_by(second) == await truth(box, owner)


async def test_select_catches_up_with_flags_expunges_and_deliveries(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = box.users[0]
    reads = counting(monkeypatch, "snapshot")
    first = await signed_in(box)
    await fill(box, owner, 5)
    await first.send("a SELECT INBOX\r\n")
    await first.send("b STORE 2,4 +FLAGS (\\Deleted)\r\nc EXPUNGE\r\nd STORE 1 +FLAGS (\\Seen)\r\n")
    await fill(box, owner, 2)
    later = await signed_in(box)
    reply = await later.send("a SELECT INBOX\r\n")
    assert "* 5 EXISTS" in reply
    assert "OK [UNSEEN 2]" in reply
    assert reads == [1], "caught up from the held view, not read afresh"
    assert seen_by(later) == await truth(box, owner)
    # The first session still shows its own picture until it is told.
    assert [s.uid for s in seen_by(first)] == [1, 3, 5]


async def test_a_mailbox_made_again_is_read_afresh(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await client.send('a CREATE "Projects"\r\n')
    await fill(box, owner, 3, "Projects")
    first = await client.send('b SELECT "Projects"\r\n')
    await client.send('c UNSELECT\r\nd DELETE "Projects"\r\ne CREATE "Projects"\r\n')
    await fill(box, owner, 1, "Projects")
    again = await client.send('f SELECT "Projects"\r\n')
    assert "* 1 EXISTS" in again
    validity = re.compile(r"UIDVALIDITY (\d+)")
    assert validity.search(first)[1] != validity.search(again)[1]  # type: ignore[index]
    assert seen_by(client) == await truth(box, owner, "Projects")


async def test_a_deleted_mailbox_is_not_served_from_its_held_view(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await client.send('a CREATE "Old"\r\n')
    await fill(box, owner, 2, "Old")
    await client.send('b SELECT "Old"\r\nc UNSELECT\r\nd DELETE "Old"\r\n')
    assert "e NO [NONEXISTENT]" in await client.send('e SELECT "Old"\r\n')


async def test_the_held_views_keep_to_their_budget(box: MailBox) -> None:
    owner = box.users[0]
    await box.mailstore.create_mailboxes(owner)
    await fill(box, owner, 3)
    await fill(box, owner, 2, "Archive")
    boxes = Mailboxes(box.mailstore)
    views = MailboxViews(boxes, budget=4)
    inbox = boxes.mark_now(owner, "INBOX")
    archive = boxes.mark_now(owner, "Archive")
    kept, _ = await views.current(inbox)
    await views.current(archive)
    # 3 + 2 > 4: INBOX, used least recently, went; its sessions keep their twins.
    assert list(views._held) == [(archive.id, archive.uidvalidity)]
    assert list(kept) == [1, 2, 3]


async def test_an_unchanged_mailbox_costs_no_query_per_command(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = box.users[0]
    reader = await signed_in(box)
    await fill(box, owner, 3)
    await reader.send("a SELECT INBOX\r\n")
    queries = counting(monkeypatch, "changes")
    for n in range(5):
        assert f"f{n} OK" in await reader.send(
            f"f{n} UID FETCH {n % 3 + 1} (FLAGS BODY.PEEK[])\r\n"
        )
    assert await reader.send("n NOOP\r\n") == "n OK NOOP completed\r\n"
    assert queries == []
    writer = await signed_in(box)
    await writer.send("a SELECT INBOX\r\nb STORE 3 +FLAGS (\\Answered)\r\n")
    queries.clear()  # the writer's own report of its STORE
    assert "* 3 FETCH (UID 3 FLAGS (\\Recent \\Answered))" in await reader.send("c NOOP\r\n")
    assert len(queries) == 1


async def test_a_small_fetch_still_reads_a_message_expunged_unseen(box: MailBox) -> None:
    owner = box.users[0]
    reader = await signed_in(box)
    await fill(box, owner, 3)
    await reader.send("a SELECT INBOX\r\n")
    other = await signed_in(box)
    await other.send("a SELECT INBOX\r\nb STORE 2 +FLAGS (\\Deleted)\r\nc EXPUNGE\r\n")
    # RFC 3501 §7.4.1: no EXPUNGE during FETCH, and the message is still there for it.
    fetched = await reader.send("b FETCH 2 (BODY.PEEK[])\r\n")
    assert "body number 1" in fetched
    assert "EXPUNGE" not in fetched
    assert "* 2 EXPUNGE" in await reader.send("c NOOP\r\n")


async def test_views_are_one_per_mail_store(box: MailBox) -> None:
    boxes = Mailboxes(box.mailstore)
    assert MailboxViews.of(boxes) is MailboxViews.of(Mailboxes(box.mailstore))


async def test_a_large_fetch_read_ahead_answers_as_message_by_message(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await fill(box, owner, INLINE_MESSAGES + 5)
    await client.send("a EXAMINE INBOX\r\n")
    whole = await client.send("b FETCH 1:* (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n")
    singly = "".join(
        [
            (
                await client.send(f"c{n} FETCH {n} (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n")
            ).rpartition(f"c{n} OK")[0]
            for n in range(1, INLINE_MESSAGES + 6)
        ]
    )
    assert whole == singly + "b OK FETCH completed\r\n"


async def test_an_error_in_a_read_ahead_fetch_is_the_commands_answer(box: MailBox) -> None:
    owner = box.users[0]
    client = await signed_in(box)
    await fill(box, owner, INLINE_MESSAGES)
    await put(box, owner, MULTIPART)  # its part 3 has an encoding no one knows
    await fill(box, owner, READ_BATCH)
    await client.send("a SELECT INBOX\r\n")
    # RFC 3516 §4.3: UNKNOWN-CTE, and the session goes on.
    reply = await client.send("b FETCH 1:* (BINARY.PEEK[3])\r\n")
    assert reply.endswith("b NO [UNKNOWN-CTE] cannot decode BINARY[3]\r\n")
    assert "c OK" in await client.send("c NOOP\r\n")
