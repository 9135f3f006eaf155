"""MessageView: the packed per-session picture of the selected mailbox."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
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


def test_a_shared_twin_keeps_its_picture_when_the_other_changes() -> None:
    view = MessageView([(1, "", 1), (2, "\\Seen", 2), (3, "", 3)])
    twin = view.share()
    assert twin.uids is view.uids, "no copy until a change"
    view.update(MessageState(1, ("\\Flagged",), 4))
    view.append(MessageState(4, (), 5))
    view.remove([2])
    assert list(twin) == [1, 2, 3]
    assert twin.state(1) == MessageState(1, (), 1)
    assert list(view) == [1, 3, 4]
    twin.update(MessageState(3, ("$Label1",), 6))
    assert view.state(3) == MessageState(3, (), 3)
    assert twin.keywords() == {"$Label1"}
    assert view.keywords() == set()


def test_an_update_to_the_same_state_takes_no_copy() -> None:
    view = MessageView([(1, "\\Seen", 1)])
    twin = view.share()
    twin.update(MessageState(1, ("\\Seen",), 1))
    assert twin.uids is view.uids


@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(FLAG_SETS)), max_size=40))
def test_first_with_flags_and_keywords_agree_with_a_scan(
    rows: list[tuple[int, tuple[str, ...]]],
) -> None:
    uid = 0
    built = []
    for step, flags in rows:
        uid += step
        built.append((uid, " ".join(flags), uid))
    view = MessageView(built)
    # Sets no longer in use must not count: drop some messages after loading.
    view.remove([u for u, _, _ in built[::3]])
    kept = [(u, tuple(f.split())) for u, f, _ in built[1::3] + built[2::3]]
    kept.sort()
    unseen = [u for u, flags in kept if "\\Seen" not in flags]
    assert view.first_with_flags(lambda flags: "\\Seen" not in flags) == (
        unseen[0] if unseen else None
    )
    assert view.keywords() == {f for _, flags in kept for f in flags if not f.startswith("\\")}


@given(st.sets(st.integers(1, 300), max_size=120), st.data())
def test_seqs_of_agrees_with_seq_of(uids: set[int], data: st.DataObject) -> None:
    view = MessageView((uid, "", uid) for uid in sorted(uids))
    chosen = data.draw(st.sets(st.sampled_from(sorted(uids)))) if uids else set()
    assert view.seqs_of(chosen) == sorted(view.seq_of(u) for u in chosen)
    assert view.seqs_of(sorted(chosen)) == sorted(view.seq_of(u) for u in chosen)


# No deadline: on the shared two-core machine one example can take 0.3 s.
@settings(deadline=None)
@given(st.sets(st.integers(1, 300), min_size=1, max_size=120), st.data())
def test_entries_agree_with_state_and_seq_of(uids: set[int], data: st.DataObject) -> None:
    ordered = sorted(uids)
    view = MessageView((uid, " ".join(FLAG_SETS[uid % 5]), uid * 3) for uid in ordered)
    # A run of consecutive messages (read off the arrays) or any list of present UIDs.
    start = data.draw(st.integers(0, len(ordered) - 1))
    run = ordered[start : data.draw(st.integers(start, len(ordered)))]
    scattered = data.draw(st.lists(st.sampled_from(ordered), max_size=30))
    for chosen in (run, scattered):
        expected = [(view.seq_of(u), u, view.state(u).flags, view.state(u).modseq) for u in chosen]
        got = [(seq, uid, view.flag_set(n), modseq) for seq, uid, n, modseq in view.entries(chosen)]
        assert got == expected


def test_entries_refuse_a_uid_the_view_does_not_hold() -> None:
    view = MessageView([(2, "", 1), (4, "", 2)])
    with pytest.raises(KeyError):
        list(view.entries([2, 3]))
    with pytest.raises(KeyError):
        list(view.entries([5]))
    assert list(view.entries([])) == []
