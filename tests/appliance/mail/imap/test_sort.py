"""SORT's pure parts: base subjects (RFC 5256 §2.1), header facts, the sort order, and
the ESORT/PARTIAL answers (RFC 5267, RFC 9394). No store and no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail.imap import sort
from appliance.mail.imap.protocol import SortCriterion
from appliance.mail.imap.sort import HeaderFacts, SortItem, base_subject, facts_of


@pytest.mark.parametrize(
    ("subject", "base", "is_reply"),
    [
        ("Hello", "HELLO", False),
        ("Re: Hello", "HELLO", True),
        ("RE:Hello", "HELLO", True),
        ("Fwd: Re: FW: hello", "HELLO", True),
        ("re [ministry]: hello", "HELLO", True),
        ("[ministry] Re: hello", "HELLO", True),  # a blob, then a leader: all removed
        ("[ministry] hello", "HELLO", False),  # a blob alone goes if text remains
        ("[ministry]", "[MINISTRY]", False),  # ...and stays if nothing would
        ("hello (fwd)", "HELLO", True),
        ("hello (FWD) (fwd)  ", "HELLO", True),
        ("[Fwd: Re: hello]", "HELLO", True),
        ("[fwd: [fwd: hello] ]", "HELLO", True),
        ("  hello   world\t again ", "HELLO WORLD AGAIN", False),
        ("Re: ", "", True),
        ("", "", False),
        ("Rescue: hello", "RESCUE: HELLO", False),  # "re" must be followed by ":" or a blob
        ("Re[5]: hello", "HELLO", True),  # subj-refwd may carry a blob: "Re[5]:"
        ("ตอบ: ประชุม", "ตอบ: ประชุม", False),  # Thai "reply" is not an RFC 5256 leader
        ("Re: ประชุมคณะกรรมการ", "ประชุมคณะกรรมการ", True),
        ("re: MiXeD ไทย", "MIXED ไทย", True),  # i;ascii-casemap: ASCII letters only
    ],
)
def test_base_subject(subject: str, base: str, is_reply: bool) -> None:
    assert base_subject(subject) == (base, is_reply)


@given(st.text(alphabet=st.sampled_from(list("Re:Fwd[]() \tabcไทย")), max_size=40))
def test_base_subject_is_stable(subject: str) -> None:
    # Extraction takes off everything it can: doing it again changes nothing.
    base, _ = base_subject(subject)
    assert base_subject(base)[0] == base
    assert base == base.strip(" ")


@given(st.text(max_size=200))
def test_base_subject_never_raises(subject: str) -> None:
    base_subject(subject)


def test_facts_of_a_message() -> None:
    content = (
        b"From: =?utf-8?b?4Liq4Lih4LiK4Liy4Lii?= <somchai@moe.go.th>\r\n"
        b"To: undisclosed:;, Malee <malee@moe.go.th>\r\n"
        b"Subject: Re: =?utf-8?b?4Lib4Lij4Liw4LiK4Li44Lih?=\r\n"
        b"Date: Mon, 01 Jun 2026 10:00:00 +0700\r\n"
        b"Message-ID: <a@moe.go.th>\r\n"
        b"In-Reply-To: <z@moe.go.th> <y@moe.go.th>\r\n"
        b"\r\nbody\r\n"
    )
    facts = facts_of(content)
    assert facts.subject == "ประชุม"
    assert facts.is_reply
    assert facts.from_ == "SOMCHAI"
    # RFC 3501 §7.4.2: a group's start marker is the first address, its addr-mailbox
    # the group's name (Dovecot sorts so, and imaptest's sort-addresses checks it).
    assert facts.to == "UNDISCLOSED"
    assert facts.cc == ""
    assert facts.sent == 1780282800.0  # 03:00 UTC
    assert facts.message_id == "a@moe.go.th"
    assert facts.references == ("z@moe.go.th",)  # In-Reply-To's first id without References


def test_facts_prefer_references_and_survive_garbage() -> None:
    facts = facts_of(b"References: <1@x> junk <2@x>\r\nIn-Reply-To: <3@x>\r\nDate: never\r\n\r\n")
    assert facts.references == ("1@x", "2@x")
    assert facts.sent is None
    assert facts_of(b"\x00\xff garbage") is not None


def item(uid: int, *, arrival: int = 0, size: int = 0, sent: float | None = None,
         subject: str = "", from_: str = "") -> SortItem:  # fmt: skip
    facts = HeaderFacts(subject, False, sent, from_, "", "", None, ())
    return SortItem(uid, arrival, size, facts)


def criteria(*keys: str) -> list[SortCriterion]:
    return [SortCriterion(k.removeprefix("-"), k.startswith("-")) for k in keys]


def test_sort_keys_and_reverse_apply_one_key_each() -> None:
    items = [
        item(1, size=30, subject="B", arrival=5),
        item(2, size=10, subject="A", arrival=5),
        item(3, size=20, subject="B", arrival=1),
        item(4, size=20, subject="A", arrival=9),
    ]
    assert sort.sort_uids(items, criteria("SIZE")) == [2, 3, 4, 1]
    assert sort.sort_uids(items, criteria("-SIZE")) == [1, 3, 4, 2]  # a tie keeps UID order
    assert sort.sort_uids(items, criteria("SUBJECT", "-SIZE")) == [4, 2, 1, 3]
    assert sort.sort_uids(items, criteria("-SUBJECT", "ARRIVAL")) == [3, 1, 2, 4]
    assert sort.sort_uids(items, criteria("ARRIVAL")) == [3, 1, 2, 4]


def test_date_falls_back_to_internal_date() -> None:
    # RFC 5256 §2.2: without a Date header the INTERNALDATE is the sent date.
    items = [item(1, sent=100.0), item(2, arrival=50), item(3, sent=75.0)]
    assert sort.sort_uids(items, criteria("DATE")) == [2, 3, 1]
    assert sort.sort_uids(items, criteria("-DATE")) == [1, 3, 2]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=30),
    st.lists(st.sampled_from(["SIZE", "-SIZE", "ARRIVAL", "-ARRIVAL"]), min_size=1, max_size=3),
)
def test_sort_agrees_with_a_tuple_sort(values: list[tuple[int, int]], keys: list[str]) -> None:
    items = [item(uid, size=s, arrival=a) for uid, (s, a) in enumerate(values, 1)]

    def key(i: SortItem) -> tuple[int, ...]:
        parts = []
        for k in keys:
            value = i.size if k.endswith("SIZE") else i.internal_date
            parts.append(-value if k.startswith("-") else value)
        return (*parts, i.uid)

    assert sort.sort_uids(items, criteria(*keys)) == [i.uid for i in sorted(items, key=key)]


def test_ordered_set_keeps_the_order() -> None:
    assert sort.ordered_set([5, 3, 1, 2, 3, 9, 8, 7]) == "5,3,1:3,9,8,7"
    assert sort.ordered_set([]) == ""


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ((1, 3), [10, 20, 30]),
        ((4, 100), [40, 50]),
        ((6, 9), []),
        ((-1, -2), [40, 50]),
        ((-1, -99), [10, 20, 30, 40, 50]),
        ((-5, -5), [10]),
        ((-6, -9), []),
    ],
)
def test_partial_window(window: tuple[int, int], expected: list[int]) -> None:
    assert list(sort.partial_window([10, 20, 30, 40, 50], window)) == expected


def test_esort_answers() -> None:
    numbers = [7, 3, 4, 5, 1]
    assert sort.esort("A1", True, (), numbers, None) == 'ESEARCH (TAG "A1") UID ALL 7,3:5,1'
    assert (
        sort.esort("A2", False, ("MIN", "MAX", "COUNT"), numbers, None)
        == 'ESEARCH (TAG "A2") MIN 7 MAX 1 COUNT 5'
    )
    assert sort.esort("A3", False, ("MIN", "COUNT"), [], None) == 'ESEARCH (TAG "A3") COUNT 0'
    assert (
        sort.esort("A4", True, ("PARTIAL",), numbers, (-1, -2))
        == 'ESEARCH (TAG "A4") UID PARTIAL (-1:-2 5,1)'
    )
    assert (
        sort.esort("A5", True, ("PARTIAL",), numbers, (9, 10))
        == 'ESEARCH (TAG "A5") UID PARTIAL (9:10 NIL)'
    )


def test_facts_cache_drops_the_least_recent() -> None:
    facts = facts_of(b"Subject: x\r\n\r\n")
    cache = sort.FactsCache(budget=2 * sort._cost("a", facts))
    cache.put("a", facts)
    cache.put("b", facts)
    assert cache.get("a") is facts  # "a" is now the most recent
    cache.put("c", facts)
    assert cache.get("b") is None
    assert cache.get("a") is facts
    assert cache.get("c") is facts
    assert cache.used == 2 * sort._cost("a", facts)


def test_hostile_ids_are_bounded() -> None:
    many = " ".join(f"<{n}@x>" for n in range(500))
    facts = facts_of(f"References: {many}\r\nMessage-ID: <{'y' * 300}@x>\r\n\r\n".encode())
    assert len(facts.references) == sort.MAX_REFERENCES
    assert facts.references[-1] == "499@x"  # the nearest ancestors are kept
    assert facts.message_id is None
