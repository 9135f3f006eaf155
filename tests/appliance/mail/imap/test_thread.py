"""THREAD's algorithms (RFC 5256 §3, §4) and the thread-list answer, on hand-made facts."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from appliance.mail.imap import thread
from appliance.mail.imap.sort import HeaderFacts, SortItem, base_subject


def msg(uid: int, subject: str = "", *, sent: float | None = None, message_id: str | None = None,
        refs: tuple[str, ...] = ()) -> SortItem:  # fmt: skip
    base, is_reply = base_subject(subject)
    facts = HeaderFacts(base, is_reply, float(uid) if sent is None else sent, "", "", "",
                        message_id, refs)  # fmt: skip
    return SortItem(uid, 0, 0, facts)


def references(*items: SortItem) -> str:
    return thread.render(thread.references(items), lambda uid: uid)


def ordered_subject(*items: SortItem) -> str:
    return thread.render(thread.ordered_subject(items), lambda uid: uid)


def test_references_builds_the_reply_tree() -> None:
    assert (
        references(
            msg(1, "Budget", message_id="a"),
            msg(2, "Re: Budget", message_id="b", refs=("a",)),
            msg(3, "Re: Budget", message_id="c", refs=("a", "b")),
            msg(4, "Re: Budget", message_id="d", refs=("a",)),
            msg(5, "Other", message_id="e"),
        )
        == "(1 (2 3)(4))(5)"
    )


def test_a_missing_parent_is_a_dummy_shown_only_by_its_children() -> None:
    assert references(msg(1, "x", refs=("gone",)), msg(2, "y", refs=("gone",))) == "((1)(2))"
    # A root dummy with one child gives way to the child (§4 step 4B).
    assert references(msg(1, "x", refs=("gone",))) == "(1)"
    # A dummy inside a thread gives its children to its parent.
    assert references(msg(1, "x", message_id="a"), msg(2, "x", refs=("a", "gone"))) == "(1 2)"


def test_references_gathers_roots_by_base_subject() -> None:
    # A reply whose parent is not in the mailbox joins the thread of its subject.
    assert references(msg(1, "Budget"), msg(2, "Re: Budget")) == "(1 2)"
    assert references(msg(1, "Re: Budget"), msg(2, "Budget", sent=9)) == "(2 1)"
    # Neither is a reply: a dummy holds both.
    assert references(msg(1, "Budget"), msg(2, "budget")) == "((1)(2))"
    # An empty base subject gathers nothing.
    assert references(msg(1, "Re:"), msg(2, "")) == "(1)(2)"


def test_siblings_and_threads_go_by_sent_date_then_mailbox_order() -> None:
    assert (
        references(
            msg(1, "a", message_id="p", sent=10),
            msg(2, "b", refs=("p",), sent=30),
            msg(3, "c", refs=("p",), sent=20),
            msg(4, "d", sent=5),
            msg(5, "e", sent=5),
        )
        == "(4)(5)(1 (3)(2))"
    )


def test_loops_and_duplicate_ids_do_not_break_threading() -> None:
    assert references(msg(1, "x", message_id="a", refs=("b",)),
                      msg(2, "y", message_id="b", refs=("a",))) in ("(1 2)", "(2 1)")  # fmt: skip
    assert references(msg(1, "x", message_id="a", refs=("a",))) == "(1)"
    # Two messages with one Message-ID are two messages.
    assert references(msg(1, "x", message_id="a"), msg(2, "y", message_id="a")) == "(1)(2)"


def test_a_deep_chain_does_not_recurse() -> None:
    chain = [msg(1, "x", message_id="m1")]
    chain += [msg(n, "Re: x", message_id=f"m{n}", refs=(f"m{n - 1}",)) for n in range(2, 5001)]
    assert references(*chain) == "(" + " ".join(str(n) for n in range(1, 5001)) + ")"


def test_ordered_subject() -> None:
    assert (
        ordered_subject(
            msg(1, "A", sent=3),
            msg(2, "Re: B", sent=1),
            msg(3, "B", sent=2),
            msg(4, "a", sent=4),
            msg(5, "Fwd: A", sent=5),
        )
        == "(2 3)(1 (4)(5))"
    )
    assert ordered_subject() == ""


forests = st.lists(
    st.tuples(
        st.sampled_from(["", "x", "Re: x", "y", "Fwd: y", "z"]),
        st.integers(0, 5),  # sent date: ties are common
        st.lists(st.integers(0, 30), max_size=4),  # references, by index
        st.integers(0, 30),  # Message-ID index: duplicates happen
    ),
    max_size=30,
)


@given(forests, st.booleans())
def test_every_message_appears_once_in_a_well_formed_answer(
    forest: list[tuple[str, int, list[int], int]], by_references: bool
) -> None:
    items = [
        msg(
            uid,
            subject,
            sent=float(sent),
            message_id=f"id{mid}",
            refs=tuple(f"id{r}" for r in refs),
        )
        for uid, (subject, sent, refs, mid) in enumerate(forest, 1)
    ]
    answer = references(*items) if by_references else ordered_subject(*items)
    assert sorted(int(n) for n in re.findall(r"\d+", answer)) == list(range(1, len(items) + 1))
    depth = 0
    for char in answer:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    # RFC 5256 §5: thread-nested needs two lists at least, so "((n))" never appears.
    assert not re.search(r"\(\(\d+\)\)", answer)
