"""Byte scenarios for the conformance faults imaptest found (issue 15), in-process.

Each test replays what imaptest's scripted test sent and checks the answer Dovecot
gives and the RFC asks for, on a real mail store (the session, not only the core).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from appliance.mail.mailboxes import Mailboxes
from appliance.mail.search_index import open_search_index
from appliance.security.keys import load_data_key

from ..conftest import MailBox
from .test_session import fill, signed_in


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return int(found[1])


async def test_partial_fetch_names_the_origin_after_the_section(box: MailBox) -> None:
    # RFC 3501 §7.4.2: BODY[<section>]<<origin>>, e.g. "BODY[TEXT]<3>".
    client = await signed_in(box)
    await Mailboxes(box.mailstore).append(
        box.users[0],
        "INBOX",
        b"From: a@x.go.th\r\nSubject: s\r\n\r\nbody22 text\r\n",
        quota_bytes=10**9,
    )
    await client.send("s SELECT INBOX\r\n")
    reply = await client.send(
        "a FETCH 1 (BODY.PEEK[]<0.4> BODY.PEEK[TEXT]<3.3> BODY.PEEK[1]<0.2>"
        " BODY.PEEK[HEADER.FIELDS (SUBJECT)]<1.3>)\r\n"
    )
    assert "* 1 FETCH (BODY[]<0> {4}\r\nFrom BODY[TEXT]<3> {3}\r\ny22 BODY[1]<0> {2}\r\nbo" in reply
    assert "BODY[HEADER.FIELDS (SUBJECT)]<1> {3}\r\nubj)" in reply
    assert "[<" not in reply


async def test_append_to_a_missing_mailbox_says_trycreate(box: MailBox) -> None:
    # RFC 3501 §6.3.11: the client may CREATE the mailbox and APPEND again.
    client = await signed_in(box)
    reply = await client.send("a APPEND Nowhere {3+}\r\nx\r\n\r\n")
    assert reply.startswith("a NO [TRYCREATE] ")


async def test_invalid_mutf7_names_are_refused_with_no(box: MailBox) -> None:
    client = await signed_in(box)
    assert (await client.send("a SELECT &AGE-\r\n")).startswith("a NO [CANNOT] ")
    assert (await client.send("b CREATE &U,BTFw\r\n")).startswith("b NO [CANNOT] ")
    # LIST with such a pattern: OK, and nothing matches it.
    assert await client.send('c LIST "" &U,BTFw*\r\n') == "c OK LIST completed\r\n"
    assert await client.send('d LSUB "" &\r\n') == "d OK LSUB completed\r\n"
    assert "e OK" in await client.send("e NOOP\r\n")  # the session carries on


async def test_copy_and_move_within_the_same_mailbox(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 2)
    selected = await client.send("s SELECT INBOX\r\n")
    uidvalidity = _number(r"UIDVALIDITY (\d+)", selected)
    copied = await client.send("a COPY 1 INBOX\r\n")
    assert f"a OK [COPYUID {uidvalidity} 1 3] COPY completed" in copied
    assert "* 3 EXISTS" in copied
    # RFC 6851 §4.3: COPYUID in an untagged OK, then the source's EXPUNGE, then EXISTS.
    moved = await client.send("b MOVE 1 INBOX\r\n")
    assert moved.index(f"* OK [COPYUID {uidvalidity} 1 4]") < moved.index("* 1 EXPUNGE")
    assert moved.index("* 1 EXPUNGE") < moved.index("* 3 EXISTS") < moved.index("b OK")
    listing = await client.send("c UID FETCH 1:* (UID)\r\n")
    assert re.findall(r"UID (\d+)", listing) == ["2", "3", "4"]


async def test_fetch_modseq_enables_condstore(box: MailBox) -> None:
    # RFC 7162 §3.1: FETCH ... MODSEQ is a CONDSTORE enabling command: the mailbox's
    # HIGHESTMODSEQ is announced, and later STORE answers carry MODSEQ.
    client = await signed_in(box)
    await fill(box, box.users[0], 2)
    await client.send("s SELECT INBOX\r\n")
    first = await client.send("a FETCH 1 MODSEQ\r\n")
    assert re.search(r"\* OK \[HIGHESTMODSEQ \d+\]", first)
    assert re.search(r"\* 1 FETCH \(MODSEQ \(\d+\)\)", first)
    again = await client.send("b FETCH 1 MODSEQ\r\n")
    assert "HIGHESTMODSEQ" not in again  # only the first enabling command says it
    stored = await client.send("c STORE 2 +FLAGS (\\Seen)\r\n")
    assert re.search(r"\* 2 FETCH \(UID 2 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", stored)


async def test_search_modseq_enables_condstore(box: MailBox) -> None:
    client = await signed_in(box)
    await fill(box, box.users[0], 1)
    await client.send("s SELECT INBOX\r\n")
    reply = await client.send("a SEARCH MODSEQ 1\r\n")
    assert re.search(r"\* OK \[HIGHESTMODSEQ \d+\].*\* SEARCH 1 \(MODSEQ \d+\)", reply, re.S)
    assert "MODSEQ (" in await client.send("b STORE 1 +FLAGS (\\Seen)\r\n")


async def test_esearch_min_max_modseq_is_that_of_the_returned_messages(box: MailBox) -> None:
    # imaptest esearch-condstore: flags set in the order 1, 3, 2, 4.
    client = await signed_in(box)
    await fill(box, box.users[0], 4)
    await client.send("s SELECT INBOX (CONDSTORE)\r\n")
    modseq = {}
    for n in (1, 3, 2, 4):
        reply = await client.send(f"t{n} STORE {n} +FLAGS (\\Seen)\r\n")
        modseq[n] = _number(rf"\* {n} FETCH \(.*MODSEQ \((\d+)\)\)", reply)
    search = 'SEARCH RETURN ({}) 1:3 MODSEQ "/flags/\\\\seen" all 1'
    reply = await client.send("a " + search.format("MIN") + "\r\n")
    assert f'* ESEARCH (TAG "a") MIN 1 MODSEQ {modseq[1]}\r\n' in reply
    reply = await client.send("b " + search.format("MAX") + "\r\n")
    assert f'* ESEARCH (TAG "b") MAX 3 MODSEQ {modseq[3]}\r\n' in reply
    reply = await client.send("c " + search.format("") + "\r\n")
    assert f'* ESEARCH (TAG "c") ALL 1:3 MODSEQ {modseq[2]}\r\n' in reply
    reply = await client.send("d " + search.format("MIN MAX").replace("1:3", "2:3") + "\r\n")
    assert f'* ESEARCH (TAG "d") MIN 2 MAX 3 MODSEQ {modseq[2]}\r\n' in reply


@pytest.mark.parametrize("indexed", [False, True], ids=["message-by-message", "search-index"])
async def test_search_from_finds_an_address_written_with_comments(
    box: MailBox, tmp_path: Path, indexed: bool
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if indexed:
            box.mailstore.search = await stack.enter_async_context(
                open_search_index(tmp_path / "search.sqlite", load_data_key(box.root / "keys"))
            )
        client = await signed_in(box)
        boxes = Mailboxes(box.mailstore)
        for sender in (
            "user-from@domain.org",
            "<user-from (comment)@ (comment) domain.org>",
            "RealFrom <user-from@domain.org>",
            "other@domain.org (user-from@domain.org as a comment)",
            "someone@else.org",
        ):
            content = f"From: {sender}\r\nSubject: s\r\n\r\nb\r\n".encode()
            await boxes.append(box.users[0], "INBOX", content, quota_bytes=10**9)
        await client.send("s SELECT INBOX\r\n")
        found = await client.send("a SEARCH FROM user-from@domain.org\r\n")
        assert "* SEARCH 1 2 3 4\r\n" in found
        assert "* SEARCH 2\r\n" in await client.send('b SEARCH FROM "(comment)"\r\n')
        assert "* SEARCH 5\r\n" in await client.send("c SEARCH FROM else.org\r\n")
