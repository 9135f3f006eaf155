"""SEARCH by flags alone, answered from the view's flag-set numbers in one pass.

A key tree made only of stored-flag keys (UNSEEN, DELETED, KEYWORD, with AND, OR and
NOT) is evaluated once per distinct flag set (`_Matcher.flag_mask`); it must find, on
any mailbox, exactly what the general set-wise path (`_Matcher.matching`) finds, in
sequence numbers and in UIDs. Keys that need more than the flags take the general path.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.imap import protocol as imap
from appliance.mail.imap.session import ImapSession, Selected, _Matcher
from appliance.mail.imap.view import MessageView
from appliance.mail.mailboxes import MailboxMark

MARK = MailboxMark(1, 1, 1, 1, 1)
SYSTEM = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
KEYWORDS = ["$Work", "$Junk", "Later"]
FLAG_NAMES = ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN",
              "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"]  # fmt: skip

flag_keys = st.one_of(
    st.sampled_from(FLAG_NAMES).map(imap.SearchFlag),
    st.builds(
        imap.SearchKeyword,
        st.sampled_from(["KEYWORD", "UNKEYWORD"]),
        st.sampled_from([*KEYWORDS, "$work", "absent"]),
    ),
)
key_trees = st.recursive(
    flag_keys,
    lambda inner: st.one_of(
        st.builds(imap.SearchNot, inner),
        st.builds(imap.SearchOr, inner, inner),
        st.lists(inner, max_size=3).map(lambda keys: imap.SearchAnd(tuple(keys))),
    ),
    max_leaves=6,
)
flag_sets = st.lists(st.sampled_from(SYSTEM + KEYWORDS), unique=True, max_size=4).map(" ".join)


def _selected(rows: list[tuple[int, str]]) -> Selected:
    uid, built = 0, []
    for step, flags in rows:
        uid += step
        built.append((uid, flags, uid))
    return Selected(MARK, False, MessageView(built), 0, None)


def _general(selected: Selected, criteria: imap.SearchKey) -> list[int]:
    """The set-wise path's answer (flag keys never reach the session or the store)."""
    matcher = _Matcher(cast(ImapSession, None), selected, criteria)
    return trio.run(matcher.matching, list(selected.messages))


@settings(deadline=None, max_examples=300)
@given(
    st.lists(st.tuples(st.integers(1, 5), flag_sets), max_size=80),
    key_trees,
)
def test_flag_mask_finds_what_the_general_path_finds(
    rows: list[tuple[int, str]], criteria: imap.SearchKey
) -> None:
    selected = _selected(rows)
    view = selected.messages
    mask = _Matcher(cast(ImapSession, None), selected, criteria).flag_mask()
    assert mask is not None
    expected = _general(selected, criteria)
    assert view.uids_where(mask) == expected
    assert view.seqs_where(mask) == view.seqs_of(expected)


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=600), st.integers(0, 400))
def test_many_distinct_flag_sets(labels: list[int], wanted: int) -> None:
    """Past 256 distinct flag sets the mask is built without the byte translation."""
    view = MessageView((uid, f"\\Seen k{label}", uid) for uid, label in enumerate(labels, 1))
    keyword = f"k{wanted}"
    mask = view.flag_mask(lambda flags: keyword in flags)
    assert view.uids_where(mask) == [uid for uid, label in enumerate(labels, 1) if label == wanted]


def test_keys_beyond_stored_flags_take_the_general_path() -> None:
    selected = _selected([(1, "\\Seen"), (1, "")])
    others: list[imap.SearchKey] = [
        imap.SearchFlag("RECENT"),  # this session's, not the view's
        imap.SearchFlag("NEW"),
        imap.SearchText("SUBJECT", "x"),
        imap.SearchSize("LARGER", 10),
        imap.SearchDate("SINCE", dt.date(2026, 1, 1)),
        imap.SearchModseq(5),
        imap.SearchSequence(False, imap.SequenceSet(((1, 1),))),
        imap.SearchAnd((imap.SearchFlag("UNSEEN"), imap.SearchNot(imap.SearchFlag("OLD")))),
    ]
    for key in others:
        assert _Matcher(cast(ImapSession, None), selected, key).flag_mask() is None


def test_empty_mailbox_and_no_flag_sets() -> None:
    selected = _selected([])
    mask = _Matcher(cast(ImapSession, None), selected, imap.SearchFlag("UNSEEN")).flag_mask()
    assert mask == b""
    assert selected.messages.seqs_where(b"") == []
