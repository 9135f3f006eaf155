"""Byte scenarios for the client and webmail extensions in the IMAP core.

MULTIAPPEND (RFC 3502) and literal8 (RFC 3516), SORT and THREAD (RFC 5256), ESORT
(RFC 5267), PARTIAL (RFC 9394) and FETCH BINARY (RFC 3516): bytes in, events and the
core's own answers out, no sockets. Hypothesis checks that any SORT the grammar allows
parses back to what was written.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail.imap.protocol import (
    Append,
    AppendMessage,
    BadCommand,
    BodySection,
    CancelUpdate,
    Fetch,
    FetchAttr,
    FetchBinary,
    Noop,
    Search,
    SearchAnd,
    SearchFlag,
    SearchText,
    Sort,
    SortCriterion,
    State,
    Thread,
)

from .test_protocol import Client, bad, parse, seq

# ---------------------------------------------------------------------------------------
# MULTIAPPEND and literal8


def test_multiappend_carries_every_message_with_its_options() -> None:
    client = Client(State.AUTHENTICATED)
    assert client.send(b'a APPEND Sent (\\Seen) "01-Jun-2026 10:00:00 +0700" {3}\r\n') == []
    assert client.out() == b"+ Ready for literal\r\n"
    assert client.send(b"one {3}\r\n") == []
    assert client.out() == b"+ Ready for literal\r\n"
    event = client.one(b"two (\\Draft) ~{3+}\r\nt\x00o\r\n")
    assert isinstance(event, Append)
    when = dt.datetime(2026, 6, 1, 10, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    assert event.messages() == (
        AppendMessage(("\\Seen",), when, b"one"),
        AppendMessage((), None, b"two"),
        AppendMessage(("\\Draft",), None, b"t\x00o"),
    )
    assert event == Append("a", "Sent", ("\\Seen",), when, b"one", event.more)


def test_single_append_has_no_more_messages() -> None:
    event = parse(b"a APPEND INBOX {2+}\r\nhi\r\n", State.AUTHENTICATED)
    assert isinstance(event, Append)
    assert event.more == ()
    assert event.messages() == (AppendMessage((), None, b"hi"),)


def test_append_with_literal8_takes_binary_content() -> None:
    # RFC 3516 §4.4: APPEND's message data may be literal8 and hold NUL.
    event = parse(b"a APPEND INBOX ~{3}\r\n\x00\x01\x02\r\n", State.AUTHENTICATED)
    assert isinstance(event, Append)
    assert event.message == b"\x00\x01\x02"


def test_multiappend_literals_share_the_append_limit() -> None:
    from appliance.mail.imap.protocol import ImapConfig

    client = Client(State.AUTHENTICATED, config=ImapConfig(max_literal=10, max_line=100))
    client.send(b"a APPEND INBOX {6}\r\n")
    client.out()
    events = client.send(b"123456 {6}\r\n")
    assert events == [BadCommand("a", "Literal too big", "TOOBIG")]
    assert client.out() == b"a BAD [TOOBIG] Literal too big\r\n"
    assert client.send(b"b NOOP\r\n") == [Noop("b")]


appended = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["\\Seen", "\\Draft", "$Work", "$Label1"]),
                 unique=True, max_size=3),
        st.none() | st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2100, 1, 1)),
        st.binary(max_size=40),
        st.booleans(),  # literal8
    ),
    min_size=1,
    max_size=5,
)  # fmt: skip


@given(appended)
def test_any_multiappend_parses_back(
    messages: list[tuple[list[str], dt.datetime | None, bytes, bool]],
) -> None:
    line = b"a APPEND Drafts"
    expected = []
    for flags, when, content, binary in messages:
        if flags:
            line += b" (" + " ".join(flags).encode() + b")"
        zone = dt.timezone(dt.timedelta(hours=7))
        stamp = None if when is None else when.replace(microsecond=0, tzinfo=zone)
        if stamp is not None:
            line += b' "' + stamp.strftime("%d-%b-%Y %H:%M:%S +0700").encode() + b'"'
        line += b" " + (b"~" if binary else b"") + b"{%d+}\r\n" % len(content) + content
        expected.append(AppendMessage(tuple(flags), stamp, content))
    event = parse(line + b"\r\n", State.AUTHENTICATED)
    assert isinstance(event, Append)
    assert event.messages() == tuple(expected)


@pytest.mark.parametrize(
    "line",
    [
        b"a APPEND INBOX {1+}\r\nx x",  # a second message that is not a literal
        b"a APPEND INBOX {1+}\r\nx  {1+}\r\ny",  # two spaces
        b"a APPEND INBOX {1+}\r\nx (\\Seen)",  # options and no message
    ],
)
def test_malformed_multiappend_is_bad(line: bytes) -> None:
    event, _ = bad(line + b"\r\n", State.AUTHENTICATED)
    assert event.tag == "a"


# ---------------------------------------------------------------------------------------
# SORT and THREAD


def test_sort_with_reverse_and_charset() -> None:
    event = parse(b"s UID SORT (REVERSE DATE subject) UTF-8 UNSEEN FROM x\r\n")
    assert event == Sort(
        "s",
        True,
        (SortCriterion("DATE", True), SortCriterion("SUBJECT")),
        "UTF-8",
        SearchAnd((SearchFlag("UNSEEN"), SearchText("FROM", "x"))),
    )


def test_esort_return_options_and_partial() -> None:
    event = parse(b"s SORT RETURN (MIN COUNT PARTIAL -1:-50) (ARRIVAL) us-ascii ALL\r\n")
    assert event == Sort(
        "s",
        False,
        (SortCriterion("ARRIVAL"),),
        "US-ASCII",
        SearchFlag("ALL"),
        ("MIN", "COUNT", "PARTIAL"),
        (-1, -50),
    )


def test_sort_charset_is_left_to_the_session() -> None:
    # RFC 5256 §3: an unsupported charset is answered NO [BADCHARSET], not BAD.
    event = parse(b"s SORT (SIZE) KOI8-R ALL\r\n")
    assert isinstance(event, Sort)
    assert event.charset == "KOI8-R"


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"s SORT () UTF-8 ALL", "Empty list"),
        (b"s SORT (NAME) UTF-8 ALL", "Unknown sort key NAME"),
        (b"s SORT (REVERSE) UTF-8 ALL", "Expected space"),
        (b"s SORT (DATE) UTF-8", "Expected space"),
        (b"s SORT DATE UTF-8 ALL", "Expected ("),
        (b"s SORT RETURN (SAVE) (DATE) UTF-8 ALL", "Unknown SORT return option SAVE"),
        (b"s SORT RETURN (PARTIAL 0:5) (DATE) UTF-8 ALL", "Zero is not allowed here"),
        (b"s SORT RETURN (PARTIAL -1:5) (DATE) UTF-8 ALL", "Expected -"),
        (b"t THREAD THREADS UTF-8 ALL", "Unknown threading algorithm THREADS"),
        (b"t THREAD REFERENCES UTF-8", "Expected space"),
    ],
)
def test_malformed_sort_and_thread_are_bad(line: bytes, text: str) -> None:
    event, out = bad(line + b"\r\n")
    assert event.text == text
    assert out == f"{line.split()[0].decode()} BAD {text}\r\n".encode()


def test_sort_and_thread_need_a_selected_mailbox() -> None:
    event, _ = bad(b"s SORT (DATE) UTF-8 ALL\r\n", State.AUTHENTICATED)
    assert event.text == "SORT not allowed in state authenticated"
    event, _ = bad(b"t UID THREAD REFERENCES UTF-8 ALL\r\n", State.AUTHENTICATED)
    assert event.text == "UID not allowed in state authenticated"


@pytest.mark.parametrize("algorithm", ["ORDEREDSUBJECT", "REFERENCES"])
def test_thread(algorithm: str) -> None:
    event = parse(f't UID THREAD {algorithm.lower()} UTF-8 SUBJECT "ไทย"\r\n'.encode())
    assert event == Thread("t", True, algorithm, "UTF-8", SearchText("SUBJECT", "ไทย"))


def test_search_return_partial() -> None:
    event = parse(b"s UID SEARCH RETURN (PARTIAL 100:1 COUNT) UNSEEN\r\n")
    assert event == Search(
        "s", True, None, SearchFlag("UNSEEN"), ("PARTIAL", "COUNT"), partial=(1, 100)
    )
    event, _ = bad(b"s SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL\r\n")
    assert event.text == "PARTIAL given twice"


def test_search_return_update_and_cancelupdate() -> None:
    # RFC 5267 §4: UPDATE keeps the result live, CONTEXT is only a hint.
    event = parse(b"s SEARCH RETURN (UPDATE CONTEXT COUNT) UNSEEN\r\n")
    assert event == Search("s", False, None, SearchFlag("UNSEEN"), ("UPDATE", "CONTEXT", "COUNT"))
    assert parse(b'c CANCELUPDATE "s" {1}\r\nt\r\n') == CancelUpdate("c", ("s", "t"))
    event, _ = bad(b"c CANCELUPDATE\r\n")
    assert event.text == "Expected a tag"
    event, _ = bad(b"c CANCELUPDATE s\r\n")  # tag-string is a string, not an atom
    assert event.text == "Expected string"
    event, _ = bad(b"s SORT RETURN (UPDATE) (DATE) UTF-8 ALL\r\n")  # no CONTEXT=SORT
    assert event.text == "Unknown SORT return option UPDATE"


sort_keys = st.sampled_from(["ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO"])
criteria = st.lists(st.builds(SortCriterion, sort_keys, st.booleans()), min_size=1, max_size=7)


@given(
    criteria=criteria,
    uid=st.booleans(),
    options=st.none() | st.lists(st.sampled_from(["MIN", "MAX", "ALL", "COUNT"]), unique=True),
    window=st.none() | st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)),
    negative=st.booleans(),
)
def test_any_sort_parses_back(
    criteria: list[SortCriterion],
    uid: bool,
    options: list[str] | None,
    window: tuple[int, int] | None,
    negative: bool,
) -> None:
    text = " ".join(("REVERSE " if c.reverse else "") + c.key for c in criteria)
    returns = list(options) if options is not None else None
    partial: tuple[int, int] | None = None
    line = b"z " + (b"UID " if uid else b"") + b"SORT "
    if window is not None:
        returns = [*(returns or []), "PARTIAL"]
        a, b = window
        partial = (min(a, b), max(a, b))
        if negative:
            partial = (-partial[0], -partial[1])
            a, b = -a, -b
        option_text = " ".join(o if o != "PARTIAL" else f"PARTIAL {a}:{b}" for o in returns)
        line += f"RETURN ({option_text}) ".encode()
    elif returns is not None:
        line += f"RETURN ({' '.join(returns)}) ".encode()
    line += f"({text}) UTF-8 ALL\r\n".encode()
    event = parse(line)
    assert event == Sort(
        "z",
        uid,
        tuple(criteria),
        "UTF-8",
        SearchFlag("ALL"),
        None if returns is None else tuple(returns),
        partial,
    )


# ---------------------------------------------------------------------------------------
# FETCH BINARY


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (b"BINARY[]", FetchBinary(BodySection())),
        (b"BINARY.PEEK[1.2]", FetchBinary(BodySection((1, 2)), peek=True)),
        (b"BINARY[3]<10.200>", FetchBinary(BodySection((3,)), partial=(10, 200))),
        (b"binary.size[1]", FetchBinary(BodySection((1,)), size=True)),
    ],
)
def test_fetch_binary(items: bytes, expected: FetchBinary) -> None:
    event = parse(b"f FETCH 1:* (FLAGS " + items + b")\r\n")
    assert event == Fetch("f", False, seq((1, None)), (FetchAttr("FLAGS"), expected))


@pytest.mark.parametrize(
    "items",
    [
        b"BINARY",  # no section
        b"BINARY[TEXT]",  # section-binary is part numbers only
        b"BINARY[1.]",
        b"BINARY[0]",
        b"BINARY.SIZE[1]<0.5>",  # no partial for a size
        b"BINARY[1]<5>",
    ],
)
def test_malformed_fetch_binary_is_bad(items: bytes) -> None:
    bad(b"f FETCH 1 " + items + b"\r\n")
