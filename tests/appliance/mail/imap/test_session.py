"""The IMAP session in-process: bytes in, responses out, against a real mail store.

The end-to-end tests drive the common paths with real clients; these pin the rules
real clients rarely exercise (RFC 7162 UNCHANGEDSINCE/CHANGEDSINCE, read-only EXAMINE,
LIST wildcards, SASL-IR, authorisation identities, SEARCH keys).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from appliance.mail.imap import protocol as imap
from appliance.mail.imap.session import ImapSession
from appliance.mail.mailboxes import Mailboxes, MailboxInfo

from ..conftest import MailBox

PASSWORD = "ทดสอบ-2567"  # the mail conftest's users


class Client:
    """Feeds lines to a core + session pair and returns what the server sent."""

    def __init__(self, box: MailBox) -> None:
        self.conn = imap.ServerConnection(imap.ImapConfig(), tls_active=True)

        async def flush() -> None:
            return None

        self.session = ImapSession(
            conn=self.conn,
            mailstore=box.mailstore,
            authenticate=box.directory.authenticate,
            act_as=box.directory.act_as,
            flush=flush,
            client_ip="127.0.0.1",
        )

    async def send(self, data: bytes | str) -> str:
        self.conn.receive_data(data.encode() if isinstance(data, str) else data)
        while True:
            event = self.conn.next_event()
            if event is imap.NEED_DATA or event is imap.CLOSED:
                break
            if not isinstance(event, imap.BadCommand):
                await self.session.handle(event)  # type: ignore[arg-type]
        return self.conn.data_to_send().decode("utf-8", "replace")


async def signed_in(box: MailBox, user: str | None = None) -> Client:
    client = Client(box)
    user = user or box.users[0]
    await box.mailstore.create_mailboxes(user)
    reply = await client.send(f'a LOGIN "{user}" "{PASSWORD}"\r\n')
    assert "a OK" in reply
    return client


async def fill(box: MailBox, user: str, count: int, mailbox: str = "INBOX") -> None:
    boxes = Mailboxes(box.mailstore)
    for n in range(count):
        content = (
            f"From: sender{n}@x.go.th\r\nSubject: เรื่องที่ {n}\r\n"
            f"Date: Mon, 0{n % 9 + 1} Jun 2026 10:00:00 +0700\r\n"
            f"\r\nbody number {n} {'x' * (n * 100)}\r\n"
        ).encode()
        await boxes.append(user, mailbox, content, quota_bytes=10**10)


async def test_sasl_ir_and_continuation(box: MailBox) -> None:
    user = box.users[1]
    await box.mailstore.create_mailboxes(user)
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    client = Client(box)
    assert "a OK" in await client.send(f"a AUTHENTICATE PLAIN {token}\r\n")
    client = Client(box)
    assert (await client.send("b AUTHENTICATE PLAIN\r\n")).startswith("+ ")
    assert "b OK" in await client.send(token + "\r\n")
    client = Client(box)
    await client.send("c AUTHENTICATE PLAIN\r\n")
    assert "c BAD" in await client.send("*\r\n")


async def test_authorization_identity_of_someone_else_is_refused(box: MailBox) -> None:
    client = Client(box)
    token = base64.b64encode(f"{box.users[2]}\0{box.users[1]}\0{PASSWORD}".encode()).decode()
    reply = await client.send(f"a AUTHENTICATE PLAIN {token}\r\n")
    assert "a NO [AUTHORIZATIONFAILED]" in reply
    assert client.session.user is None


async def test_list_wildcards_and_special_use(box: MailBox) -> None:
    client = await signed_in(box)
    await client.send('a CREATE "Projects/2569/Budget"\r\n')
    await client.send('b CREATE "Projects"\r\n')
    star = await client.send('c LIST "" "Projects*"\r\n')
    assert star.count("* LIST") == 2
    percent = await client.send('d LIST "" "%"\r\n')
    assert '"Projects"' in percent
    assert "Budget" not in percent
    assert '(\\HasChildren) "/" "Projects"' in percent
    assert 'LIST (\\HasNoChildren \\Sent) "/" "Sent"' in percent
    assert "* LIST" in await client.send('e LIST "" "inbox"\r\n')
    special = await client.send('f LIST (SPECIAL-USE) "" "*"\r\n')
    assert special.count("* LIST") == 5
    root = await client.send('g LIST "" ""\r\n')
    assert '* LIST (\\Noselect) "/" ""' in root


async def test_list_extended_selection_and_return_options(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 2)
    await client.send('a CREATE "Projects"\r\na2 CREATE "Projects/2569"\r\n')
    await client.send('b UNSUBSCRIBE "Projects"\r\nc SUBSCRIBE "Projects/2569"\r\n')
    # RFC 5258 §3.5: the unsubscribed parent comes back only with RECURSIVEMATCH.
    plain = await client.send('d LIST (SUBSCRIBED) "" "Projects"\r\n')
    assert "* LIST" not in plain
    recursive = await client.send('e LIST (SUBSCRIBED RECURSIVEMATCH) "" "Projects"\r\n')
    assert '* LIST (\\HasChildren) "/" "Projects" ("CHILDINFO" ("SUBSCRIBED"))' in recursive
    # RFC 5258 §6 RETURN (SUBSCRIBED) and RFC 5819 RETURN (STATUS (...)).
    reply = await client.send('f LIST "" "INBOX" RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))\r\n')
    assert '* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n' in reply
    assert '* STATUS "INBOX" (MESSAGES 2 UNSEEN 2)\r\n' in reply
    assert reply.index("* LIST") < reply.index("* STATUS")
    assert "\\Subscribed" not in await client.send('g LIST "" "INBOX"\r\n')


async def test_list_sums_no_message_unless_it_returns_status(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mbsync lists on every sync: names and special uses are read at once; only
    # RETURN (STATUS) pays for the per-message counts (Mailboxes.of).
    client = await signed_in(box)
    await fill(box, box.users[0], 2)
    summed: list[str] = []
    of = Mailboxes.of

    async def counting(self: Mailboxes, owner: str) -> list[MailboxInfo]:
        summed.append(owner)
        return await of(self, owner)

    monkeypatch.setattr(Mailboxes, "of", counting)
    listed = await client.send('a LIST "" "*"\r\nb LSUB "" "*"\r\n')
    assert '* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n' in listed
    assert '* LSUB () "/" "INBOX"\r\n' in listed
    assert "b OK" in listed
    assert summed == []
    reply = await client.send('c LIST "" "INBOX" RETURN (STATUS (MESSAGES))\r\n')
    assert '* STATUS "INBOX" (MESSAGES 2)\r\n' in reply
    assert summed == [box.users[0]]


async def test_store_unchangedsince_reports_modified(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 3)
    selected = await client.send("a SELECT INBOX (CONDSTORE)\r\n")
    modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", selected)[1])  # type: ignore[index]
    await client.send("b UID STORE 1 +FLAGS (\\Seen)\r\n")
    reply = await client.send(f"c UID STORE 1:3 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)\r\n")
    assert "c OK [MODIFIED 1]" in reply
    # \Recent: this session was the first to see the new messages (RFC 3501 §2.3.2).
    assert re.search(r"\* 2 FETCH \(UID 2 FLAGS \(\\Recent \\Flagged\) MODSEQ \(\d+\)\)", reply)


async def test_fetch_changedsince_vanished(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 4)
    assert "ENABLED QRESYNC" in await client.send("a ENABLE QRESYNC\r\n")
    selected = await client.send("b SELECT INBOX\r\n")
    modseq = int(re.search(r"HIGHESTMODSEQ (\d+)", selected)[1])  # type: ignore[index]
    await client.send(
        "c UID STORE 2 +FLAGS (\\Deleted)\r\nd EXPUNGE\r\ne UID STORE 3 +FLAGS (\\Answered)\r\n"
    )
    reply = await client.send(f"f UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)\r\n")
    assert "* VANISHED (EARLIER) 2" in reply
    assert re.search(r"\* 2 FETCH \((?=.*UID 3\b)(?=.*FLAGS \(\\Recent \\Answered\))", reply)
    assert "UID 1 " not in reply


async def test_examine_is_read_only(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 1)
    assert "[READ-ONLY]" in await client.send("a EXAMINE INBOX\r\n")
    assert "b NO [READ-ONLY]" in await client.send("b STORE 1 +FLAGS (\\Deleted)\r\n")
    fetched = await client.send("c FETCH 1 (BODY[TEXT])\r\n")
    assert "\\Seen" not in fetched, "EXAMINE never sets \\Seen"


async def test_close_expunges_and_unselect_does_not(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 3)
    await client.send("a SELECT INBOX\r\nb STORE 1 +FLAGS (\\Deleted)\r\nc UNSELECT\r\n")
    assert "* 3 EXISTS" in await client.send("d SELECT INBOX\r\n")
    reply = await client.send("e CLOSE\r\n")
    assert "EXPUNGE" not in reply, "CLOSE expunges silently"
    assert "* 2 EXISTS" in await client.send("f SELECT INBOX\r\n")


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("ALL", "1 2 3 4"),
        ("LARGER 250", "3 4"),
        ("SMALLER 150", "1"),
        ("NOT LARGER 250", "1 2"),
        ("OR SMALLER 150 LARGER 350", "1 4"),
        ("FROM sender2", "3"),
        ("SENTON 3-Jun-2026", "3"),
        ("SENTBEFORE 3-Jun-2026", "1 2"),
        ('BODY "number 1"', "2"),
        ("UNSEEN", "1 2 3 4"),
        ("KEYWORD $Urgent", "2"),
        ("UNKEYWORD $Urgent 1:2", "1"),
        ("UID 2:3", "2 3"),
        ("2,4", "2 4"),
        ("HEADER Subject 3", "4"),
        # RFC 3501 §2.3.2: the first session to select the mailbox holds them \Recent.
        ("NEW", "1 2 3 4"),
        ("OLD", ""),
    ],
)
async def test_search_keys(box: MailBox, criteria: str, expected: str) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 4)
    await client.send("a SELECT INBOX\r\nb STORE 2 +FLAGS ($Urgent)\r\n")
    reply = await client.send(f"c SEARCH {criteria}\r\n")
    assert f"* SEARCH{(' ' + expected) if expected else ''}\r\n" in reply


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # RFC 4731 §3.1: RETURN () means ALL; MIN, MAX and ALL vanish when nothing matched.
        ("SEARCH RETURN () ALL", '* ESEARCH (TAG "c") ALL 1:4'),
        ("SEARCH RETURN (MIN MAX COUNT) NOT SEEN", '* ESEARCH (TAG "c") MIN 1 MAX 4 COUNT 3'),
        ("UID SEARCH RETURN (COUNT ALL) 2:3", '* ESEARCH (TAG "c") UID ALL 2:3 COUNT 2'),
        ("SEARCH RETURN (MIN MAX ALL COUNT) DELETED", '* ESEARCH (TAG "c") COUNT 0'),
        ("SEARCH RETURN (MAX) MODSEQ 1", '* ESEARCH (TAG "c") MAX 4 MODSEQ '),
    ],
)
async def test_esearch(box: MailBox, command: str, expected: str) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 4)
    await client.send("a SELECT INBOX\r\nb STORE 2 +FLAGS (\\Seen)\r\n")
    reply = await client.send(f"c {command}\r\n")
    assert expected in reply
    assert "* SEARCH" not in reply
    assert "c OK" in reply


async def test_esearch_save_is_refused(box: MailBox) -> None:
    client = await signed_in(box)
    await client.send("a SELECT INBOX\r\n")
    reply = await client.send("c SEARCH RETURN (SAVE) ALL\r\n")
    assert "c BAD" in reply


@pytest.mark.parametrize(
    "criteria",
    [
        "OR SEEN NOT FLAGGED",
        "NOT (SEEN OR FLAGGED KEYWORD $Urgent)",
        "2:4 NOT 3 UNSEEN",
        "OR (LARGER 1 SUBJECT 2) NOT SUBJECT 3",
        'UID 1:2 OR DELETED TEXT "เรื่อง"',
        'NOT OR SUBJECT "ที่ 1" OR SUBJECT "ที่ 2" SINCE 1-Jan-2000',
    ],
)
async def test_set_wise_search_agrees_with_message_by_message(box: MailBox, criteria: str) -> None:
    from appliance.mail.imap import protocol as imap
    from appliance.mail.imap.session import _Matcher

    client = await signed_in(box)
    await fill(box, box.users[0], 5)
    await client.send("a SELECT INBOX\r\nb STORE 1,3 +FLAGS (\\Seen)\r\n")
    await client.send("c STORE 2,3 +FLAGS (\\Flagged $Urgent)\r\n")
    parsed = imap.ServerConnection(imap.ImapConfig(), tls_active=True)
    parsed.authenticated()
    parsed.selected()
    parsed.receive_data(f"t SEARCH CHARSET UTF-8 {criteria}\r\n".encode())
    command = parsed.next_event()
    assert isinstance(command, imap.Search), command
    selected = client.session.selected
    assert selected is not None
    uids = list(selected.messages)
    one_by_one = [u for u in uids if await _Matcher(client.session, selected, command.criteria)
                  .matches(u)]  # fmt: skip
    set_wise = await _Matcher(client.session, selected, command.criteria).matching(uids)
    assert set_wise == one_by_one


async def test_thai_search_with_literal(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 3)
    await client.send("a SELECT INBOX\r\n")
    word = "เรื่องที่ 2".encode()
    reply = await client.send(b"b SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s\r\n" % (len(word), word))
    assert "* SEARCH 3\r\n" in reply


async def test_quota_and_status(box: MailBox) -> None:
    client = await signed_in(box, box.small)
    await fill(box, box.small, 1)
    reply = await client.send("a GETQUOTAROOT INBOX\r\n")
    assert '* QUOTAROOT "INBOX" ""' in reply
    assert re.search(r'\* QUOTA "" \(STORAGE 0 1\)', reply)  # 2000-byte quota -> 1 KiB units
    status = await client.send("b STATUS INBOX (MESSAGES UNSEEN UIDNEXT SIZE)\r\n")
    assert re.search(r'\* STATUS "INBOX" \(MESSAGES 1 UNSEEN 1 UIDNEXT 2 SIZE \d+\)', status)
    big = b"x" * 3000
    reply = await client.send(b"c APPEND INBOX {%d+}\r\n%s\r\n" % (len(big), big))
    assert "c NO [OVERQUOTA]" in reply


async def test_service_account_acts_for_users_people_cannot(box: MailBox) -> None:
    service, person, target = box.users[4], box.users[3], box.users[1]
    await box.mailstore.create_mailboxes(target)
    await fill(box, target, 2)
    await box.directory.grant_delegation(service, box.domain)

    def plain(authzid: str, authcid: str) -> str:
        token = base64.b64encode(f"{authzid}\0{authcid}\0{PASSWORD}".encode()).decode()
        return f"a AUTHENTICATE PLAIN {token}\r\n"

    refused = Client(box)
    assert "[AUTHORIZATIONFAILED]" in await refused.send(plain(target, person))
    acting = Client(box)
    assert "a OK" in await acting.send(plain(target, service))
    assert acting.session.owner == target
    assert "* 2 EXISTS" in await acting.send("b SELECT INBOX\r\n")
    # A delegation for one agency does not reach users of another.
    await box.directory.add_agency("other.go.th")
    await box.directory.add_user("x@other.go.th", password=PASSWORD, name_th="x")
    elsewhere = Client(box)
    assert "[AUTHORIZATIONFAILED]" in await elsewhere.send(plain("x@other.go.th", service))


async def test_search_uses_the_index_and_reads_what_it_lacks(
    box: MailBox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.mail.search_index import open_search_index
    from appliance.security.keys import load_data_key

    user = box.users[0]
    async with open_search_index(
        tmp_path / "search.sqlite", load_data_key(box.root / "keys")
    ) as index:
        box.mailstore.search = index
        client = await signed_in(box, user)
        await fill(box, user, 3)  # indexed as they are appended
        inbox = await Mailboxes(box.mailstore).get(user, "INBOX")
        assert await index.indexed_uids(inbox.id) == {1, 2, 3}
        # Indexed messages are answered without reading a single message.
        real_content = box.mailstore.content

        async def no_reads(message):  # type: ignore[no-untyped-def]
            raise AssertionError("SEARCH read a message the index holds")

        monkeypatch.setattr(box.mailstore, "content", no_reads)
        await client.send("a SELECT INBOX\r\n")
        word = "เรื่องที่ 2".encode()
        reply = await client.send(
            b"b SEARCH CHARSET UTF-8 SUBJECT {%d+}\r\n%s\r\n" % (len(word), word)
        )
        assert "* SEARCH 3\r\n" in reply
        assert "* SEARCH 2\r\n" in await client.send('c SEARCH BODY "number 1"\r\n')
        # A message the index lost (as after a crash) is still found, by reading it.
        await index.remove(inbox.id, [2])
        monkeypatch.setattr(box.mailstore, "content", real_content)
        assert "* SEARCH 2\r\n" in await client.send('d SEARCH BODY "number 1"\r\n')
        # And start-up reconciliation puts it back.
        assert await box.mailstore.reconcile_search_index() == 1
        assert await index.indexed_uids(inbox.id) == {1, 2, 3}
        box.mailstore.search = None


async def test_append_at_the_disk_reserve_is_no_limit_and_stores_nothing(box: MailBox) -> None:
    client = await signed_in(box)
    room = {"ok": False}
    offered: list[int] = []

    def room_for(size: int) -> bool:
        offered.append(size)
        return room["ok"]

    client.session.room_for = room_for
    message = b"Subject: full\r\n\r\nhello\r\n"
    reply = await client.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(message), message))
    # RFC 5530 §3: LIMIT; the client may try again later.
    assert re.search(r"a NO \[LIMIT\] insufficient storage", reply), reply
    assert offered == [len(message)]
    assert await box.mailstore.messages(box.users[0], "INBOX") == []

    room["ok"] = True
    reply = await client.send(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(message), message))
    assert "b OK [APPENDUID" in reply


async def test_append_that_meets_a_full_disk_is_no_limit_not_a_dropped_session(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await signed_in(box)

    async def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(client.session.mailboxes, "append", full)
    reply = await client.send(b"a APPEND INBOX {2+}\r\nhi\r\n")
    assert "a NO [LIMIT]" in reply
    assert "b OK" in await client.send("b NOOP\r\n")
