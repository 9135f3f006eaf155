"""Byte scenarios for the conformance faults imaptest found (issue 15), in-process.

Each test replays what imaptest's scripted test sent and checks the answer Dovecot
gives and the RFC asks for, on a real mail store (the session, not only the core).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail import mime
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
    assert re.search(r"\* 2 FETCH \(UID 2 FLAGS \(\\Recent \\Seen\) MODSEQ \(\d+\)\)", stored)


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


async def test_recent_belongs_to_the_first_session_that_selects(box: MailBox) -> None:
    # RFC 3501 §2.3.2: \Recent in exactly one session; EXAMINE does not take it.
    user = box.users[0]
    first, second = await signed_in(box, user), await signed_in(box, user)
    await fill(box, user, 2)
    assert "RECENT 2)" in await first.send("a STATUS INBOX (MESSAGES RECENT)\r\n")
    examined = await first.send("b EXAMINE INBOX\r\n")
    assert "* 2 RECENT\r\n" in examined
    assert "* OK [UNSEEN 1]" in examined
    await first.send("c CLOSE\r\n")
    selected = await first.send("d SELECT INBOX\r\n")
    assert "* 2 RECENT\r\n" in selected
    assert "(\\Recent)" in await first.send("e FETCH 1 FLAGS\r\n")
    assert "* SEARCH 1 2\r\n" in await first.send("f SEARCH RECENT\r\n")
    assert "* SEARCH 1 2\r\n" in await first.send("g SEARCH NEW\r\n")
    assert "* SEARCH\r\n" in await first.send("h SEARCH OLD\r\n")
    # The other session sees them as old, and STATUS counts none left to take.
    assert "* 0 RECENT\r\n" in await second.send("a SELECT INBOX\r\n")
    assert "(\\Recent" not in await second.send("b FETCH 1:* FLAGS\r\n")
    assert "RECENT 0)" in await second.send("c STATUS INBOX (RECENT)\r\n")
    # A new message is recent in the selected session that hears of it first.
    await fill(box, user, 1)
    told = await first.send("i NOOP\r\n")
    assert "* 3 EXISTS\r\n* 3 RECENT\r\n" in told
    assert "* 3 EXISTS\r\n* 0 RECENT\r\n" in await second.send("d NOOP\r\n")
    # Seen messages are recent but no longer new.
    await first.send("j STORE 1 +FLAGS (\\Seen)\r\n")
    assert "* SEARCH 2 3\r\n" in await first.send("k SEARCH NEW\r\n")


async def test_recent_survives_only_in_its_session(box: MailBox) -> None:
    user = box.users[0]
    first = await signed_in(box, user)
    await fill(box, user, 1)
    assert "* 1 RECENT" in await first.send("a SELECT INBOX\r\n")
    again = await signed_in(box, user)
    # Taken and kept in the mail database: a later session never gets it back.
    assert "* 0 RECENT" in await again.send("a SELECT INBOX\r\n")
    assert "* 0 RECENT" in await first.send("b SELECT INBOX\r\n")


async def test_new_keywords_are_announced_before_use(box: MailBox) -> None:
    # RFC 3501 §7.2.6: FLAGS lists the mailbox's keywords; a new one is announced with
    # FLAGS and PERMANENTFLAGS before any FETCH shows it, and a later SELECT lists it.
    user = box.users[0]
    client, other = await signed_in(box, user), await signed_in(box, user)
    await fill(box, user, 2)
    selected = await client.send("s SELECT INBOX\r\n")
    assert "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n" in selected
    await other.send("s SELECT INBOX\r\n")
    stored = await client.send("a STORE 1 +FLAGS ($Work)\r\n")
    announced = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
    assert announced in stored
    assert "PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work \\*)" in stored
    assert stored.index(announced) < stored.index("* 1 FETCH")
    # Another session learns of it the same way, before the FETCH that shows it.
    noop = await other.send("a NOOP\r\n")
    assert noop.index(announced) < noop.index("* 1 FETCH")
    assert "$Work" not in (await client.send("b STORE 2 +FLAGS ($Work)\r\n")).split("* 2")[0]
    assert announced in await signed_in_select(box, user)


async def signed_in_select(box: MailBox, user: str) -> str:
    return await (await signed_in(box, user)).send("s SELECT INBOX\r\n")


async def test_subscriptions_are_kept_apart_from_mailboxes(box: MailBox) -> None:
    # RFC 3501 §6.3.3: CREATE does not subscribe; §6.3.9: a subscription outlives the
    # mailbox it names, so DELETE keeps it and UNSUBSCRIBE still works.
    client = await signed_in(box)
    await client.send("a CREATE Projects\r\n")
    assert "* LSUB" not in await client.send('b LSUB "" Projects\r\n')
    assert "c OK" in await client.send("c SUBSCRIBE Projects\r\n")
    await client.send("d DELETE Projects\r\n")
    assert "* LSUB (\\Noselect) " in await client.send('e LSUB "" Projects\r\n')
    listed = await client.send('f LIST (SUBSCRIBED) "" Projects\r\n')
    assert '* LIST (\\NonExistent \\Subscribed \\HasNoChildren) "/" "Projects"\r\n' in listed
    assert "g OK" in await client.send("g UNSUBSCRIBE Projects\r\n")
    assert (await client.send("h UNSUBSCRIBE Projects\r\n")).startswith("h NO ")
    assert "i NO [NONEXISTENT]" in await client.send("i SUBSCRIBE Nowhere\r\n")
    # The standard folders are subscribed from the start.
    assert '* LSUB () "/" "Sent"' in await client.send('j LSUB "" Sent\r\n')


async def test_subscriptions_follow_a_renamed_mailbox(box: MailBox) -> None:
    client = await signed_in(box)
    await client.send("a CREATE Old/Child\r\na2 CREATE Old\r\nb SUBSCRIBE Old/Child\r\n")
    assert "c OK" in await client.send("c RENAME Old New\r\n")
    lsub = await client.send('d LSUB "" *\r\n')
    assert '"New/Child"' in lsub
    assert "Old" not in lsub


async def test_list_shows_levels_without_a_mailbox(box: MailBox) -> None:
    # RFC 3501 §6.3.8: "%" returns the levels of hierarchy that match it; one with no
    # mailbox of its own is \Noselect, with \HasChildren.
    client = await signed_in(box)
    await client.send("a CREATE a/b/c\r\n")
    percent = await client.send('b LIST "" a/%\r\n')
    assert percent == '* LIST (\\Noselect \\HasChildren) "/" "a/b"\r\nb OK LIST completed\r\n'
    top = await client.send('c LIST "" %\r\n')
    assert '* LIST (\\Noselect \\HasChildren) "/" "a"\r\n' in top
    star = await client.send('d LIST "" a/*\r\n')
    assert star == '* LIST (\\HasNoChildren) "/" "a/b/c"\r\nd OK LIST completed\r\n'


async def test_lsub_percent_shows_unsubscribed_parents_as_noselect(box: MailBox) -> None:
    client = await signed_in(box)
    await client.send("a CREATE t/one\r\na2 CREATE t/two/deep\r\na3 CREATE t/two\r\n")
    await client.send("b SUBSCRIBE t/one\r\nb2 SUBSCRIBE t/two/deep\r\n")
    reply = await client.send('c LSUB "" t/%\r\n')
    assert reply == (
        '* LSUB () "/" "t/one"\r\n* LSUB (\\Noselect) "/" "t/two"\r\nc OK LSUB completed\r\n'
    )
    assert 't/two"' not in await client.send('d LSUB "" t/*\r\n')


async def test_recursivematch_childinfo_for_children_not_returned(box: MailBox) -> None:
    # RFC 5258 §3.5, as imaptest's listext test checks it.
    client = await signed_in(box)
    for name in ("m/t2/t1", "m/t2", "m/t8/t8", "m/t8/t9"):
        await client.send(f"c CREATE {name}\r\n")
    for name in ("m/t2/t1", "m/t8/t8", "m/t8/t9"):
        await client.send(f"s SUBSCRIBE {name}\r\n")
    parent = await client.send('a LIST (SUBSCRIBED RECURSIVEMATCH) "" m/t2% RETURN (CHILDREN)\r\n')
    assert parent == (
        '* LIST (\\HasChildren) "/" "m/t2" ("CHILDINFO" ("SUBSCRIBED"))\r\na OK LIST completed\r\n'
    )
    both = await client.send('b LIST (SUBSCRIBED RECURSIVEMATCH) "" (m/t2 m/t2/t1)\r\n')
    assert "CHILDINFO" not in both
    assert '"m/t2/t1"' in both
    hole = await client.send('c LIST (SUBSCRIBED RECURSIVEMATCH) "" m*t8\r\n')
    assert '"m/t8" ("CHILDINFO" ("SUBSCRIBED"))' in hole
    assert '* LIST (\\Subscribed \\HasNoChildren) "/" "m/t8/t8"\r\n' in hole


async def test_select_while_selected_says_closed(box: MailBox) -> None:
    # RFC 7162 §3.2.11: OK [CLOSED] before the new mailbox's responses.
    client = await signed_in(box)
    assert "[CLOSED]" not in await client.send("a SELECT INBOX\r\n")
    reply = await client.send("b EXAMINE Sent\r\n")
    assert reply.startswith("* OK [CLOSED] ")
    assert reply.index("[CLOSED]") < reply.index("EXISTS")


@given(st.text(max_size=200))
def test_address_search_text_takes_any_field_value(value: str) -> None:
    # Hostile headers reach it from SEARCH and the indexer: never raise, keep the text.
    assert mime.address_search_text(value).startswith(value)


@pytest.mark.parametrize(
    ("value", "forms"),
    [
        ("<user (c)@ (c) domain.org>", ["c <user@domain.org>"]),
        ("Real Name <a@b.org>, x@y.org (X)", ["Real Name <a@b.org>", "X <x@y.org>"]),
        ("team: a@b.org, c@d.org;", ["a@b.org", "c@d.org"]),
        ("undisclosed-recipients:;", []),
    ],
)
def test_address_search_text_adds_each_address_without_comments(
    value: str, forms: list[str]
) -> None:
    assert mime.address_search_text(value).split("\n") == [value, *forms]
