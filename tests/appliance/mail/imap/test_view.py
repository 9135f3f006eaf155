"""MessageView: the packed per-session picture of the selected mailbox."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail.imap.view import MessageView
from appliance.mail.mailboxes import MessageState

FLAG_SETS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("$Label1",), ("\\Deleted",)]


def test_loads_rows_and_answers_by_uid_and_sequence() -> None:
    view = MessageView([(3, "\\Seen", 7), (5, "", 8), (9, "\\Seen \\Flagged", 12)])
    assert len(view) == 3
    assert list(view) == [3, 5, 9]
    assert view.top == 9
    assert view.seq_of(5) == 2
    assert view.state(9) == MessageState(9, ("\\Seen", "\\Flagged"), 12)
    assert view.flags(5) == ()
    assert 5 in view
    assert 4 not in view
    assert "5" not in view
    assert list(view.uid_range(4, 9)) == [5, 9]
    assert view.highest_modseq([3, 5]) == 8
    with pytest.raises(KeyError):
        view.state(4)


def test_append_refuses_a_uid_that_is_not_new() -> None:
    view = MessageView([(3, "", 1)])
    with pytest.raises(ValueError, match="not above"):
        view.append(MessageState(3, (), 2))
    view.append(MessageState(4, ("\\Seen",), 2))
    assert view.state(4).flags == ("\\Seen",)


def test_a_large_mailbox_costs_about_eighteen_bytes_a_message() -> None:
    count = 100_000
    view = MessageView((uid, "\\Seen" if uid % 3 else "", uid) for uid in range(1, count + 1))
    size = sum(sys.getsizeof(a) for a in (view.uids, view._modseqs, view._flag_ids))
    assert size < 20 * count
    assert len(view._flag_sets) == 2


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "update", "remove"]),
            st.integers(0, 60),
            st.sampled_from(FLAG_SETS),
        ),
        max_size=120,
    )
)
def test_behaves_like_a_sorted_dict(operations: list[tuple[str, int, tuple[str, ...]]]) -> None:
    view = MessageView()
    model: dict[int, MessageState] = {}
    for modseq, (op, n, flags) in enumerate(operations, 1):
        if op == "append":
            uid = max(model, default=0) + 1 + n % 3
            view.append(MessageState(uid, flags, modseq))
            model[uid] = MessageState(uid, flags, modseq)
        elif op == "update" and model:
            uid = sorted(model)[n % len(model)]
            view.update(MessageState(uid, flags, modseq))
            model[uid] = MessageState(uid, flags, modseq)
        elif op == "remove" and model:
            # Sometimes one UID, sometimes enough to take the rebuild path.
            keys = sorted(model)
            gone = keys[n % len(keys) :: 1 + n % 2] if n > 30 else [keys[n % len(keys)]]
            view.remove([*gone, 10_000])
            for uid in gone:
                del model[uid]
        assert list(view) == sorted(model)
        for seq, uid in enumerate(sorted(model), 1):
            assert view.state(uid) == model[uid]
            assert view.seq_of(uid) == seq
