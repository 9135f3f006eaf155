"""FETCH of UID, FLAGS and MODSEQ over many messages: one pass over the view.

`_state_lines` answers a sync client's `UID FETCH 1:* (UID FLAGS)` without an object per
message; it must give, byte for byte, what the general path (`_plain_fetch_line`)
gives, \\Recent and keywords included.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mail.imap import protocol as imap
from appliance.mail.imap import session as session_module
from appliance.mail.imap.session import _NO_END, Selected, _plain_fetch_line, _state_lines
from appliance.mail.imap.view import MessageView
from appliance.mail.mailboxes import MailboxMark

from ..conftest import MailBox
from .test_session import fill, signed_in

FLAG_SETS = ["", "\\Seen", "\\Seen \\Flagged", "$Label1 \\Answered", "\\Deleted"]
ATTRS = ["UID", "FLAGS", "MODSEQ"]
MARK = MailboxMark(1, 1, 1, 1, 1)


def _general(selected: Selected, uids: list[int], items: list[imap.FetchItem]) -> bytes:
    conn = imap.ServerConnection()
    for uid in uids:
        line = _plain_fetch_line(selected, uid, items, None, None)
        assert line is not None
        conn.untagged(line)
    return conn.data_to_send()


# No deadline: on the shared two-core machine one example can take 0.3 s.
@settings(deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.sampled_from(FLAG_SETS)), min_size=1, max_size=60),
    st.lists(st.sampled_from(ATTRS), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=3),
    st.data(),
)
def test_state_lines_are_the_general_answer(
    rows: list[tuple[int, str]],
    names: list[str],
    recent: list[tuple[int, int]],
    data: st.DataObject,
) -> None:
    uid = 0
    built = []
    for step, flags in rows:
        uid += step
        built.append((uid, flags, uid * 7))
    view = MessageView(built)
    selected = Selected(MARK, False, view, 0, None)
    selected.recent = [(first, first + length) for first, length in recent]
    if data.draw(st.booleans()):
        selected.recent.append((built[-1][0], _NO_END))
    items: list[imap.FetchItem] = [imap.FetchAttr(name) for name in names]
    present = [u for u, _, _ in built]
    start = data.draw(st.integers(0, len(present) - 1))
    for uids in (
        present[start:],  # UID FETCH n:*, a run of the view
        data.draw(st.lists(st.sampled_from(present), max_size=20)),  # any set
    ):
        assert _state_lines(selected, uids, items) == _general(selected, uids, items)


def test_recent_and_keywords_as_the_client_is_told() -> None:
    view = MessageView([(1, "\\Seen", 5), (2, "$Work", 6), (3, "", 9)])
    selected = Selected(MARK, False, view, 0, None)
    selected.recent = [(3, _NO_END)]
    items: list[imap.FetchItem] = [imap.FetchAttr("UID"), imap.FetchAttr("FLAGS")]
    assert _state_lines(selected, [1, 2, 3], items) == (
        b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
        b"* 2 FETCH (UID 2 FLAGS ($Work))\r\n"
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n"
    )
    modseq: list[imap.FetchItem] = [imap.FetchAttr("MODSEQ"), imap.FetchAttr("UID")]
    assert _state_lines(selected, [2], modseq) == b"* 2 FETCH (MODSEQ (6) UID 2)\r\n"


async def test_first_batch_of_a_long_answer_goes_out_at_once(
    box: MailBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client parses the first lines while the rest are made; short answers wait."""
    monkeypatch.setattr(session_module, "FETCH_BATCH", 3)
    client = await signed_in(box)
    await fill(box, box.users[0], 7)
    await client.send("a EXAMINE INBOX\r\n")
    sent: list[bytes] = []

    async def flush() -> None:
        sent.append(client.conn.data_to_send())

    client.session.flush = flush
    rest = await client.send("b UID FETCH 1:* (FLAGS)\r\n")
    assert [len(re.findall(rb"\* \d+ FETCH", out)) for out in sent] == [3]
    assert rest.count(" FETCH (") == 4
    assert "b OK" in rest
    sent.clear()
    # Three messages (one batch): queued with the tagged reply, for pipelined commands.
    assert (await client.send("c FETCH 1:3 (FLAGS)\r\n")).count(" FETCH (") == 3
    assert sent == []
