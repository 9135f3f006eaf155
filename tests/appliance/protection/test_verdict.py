"""The verdict rules and the headers an accepted message carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.mail import headers
from appliance.protection.rspamd import SpamReport
from appliance.protection.verdict import (
    Listing,
    Outcome,
    SenderLists,
    Thresholds,
    decide,
    scan_headers,
    strip_scan_headers,
)

T = Thresholds(junk_score=6.0, reject_score=15.0)


def report(score: float, action: str = "no action", skipped: bool = False) -> SpamReport:
    return SpamReport(score, 15.0, action, {"SYM_A": score, "ZERO": 0.0}, skipped)


@pytest.mark.parametrize(
    ("virus", "spam", "outcome"),
    [
        ("Eicar", report(0.0), Outcome.VIRUS),
        ("Eicar", report(99.0), Outcome.VIRUS),
        (None, report(15.0), Outcome.SPAM),
        (None, report(0.0, "reject", skipped=True), Outcome.SPAM),
        (None, report(14.99), Outcome.JUNK),
        (None, report(6.0), Outcome.JUNK),
        (None, report(5.99), Outcome.CLEAN),
        (None, report(-3.0), Outcome.CLEAN),
        # rspamd's own action counts only as a pre-result: our thresholds decide.
        (None, report(2.0, "reject"), Outcome.CLEAN),
    ],
)
def test_decide(virus: str | None, spam: SpamReport, outcome: Outcome) -> None:
    assert decide(virus, spam, T).outcome is outcome


def test_strictest_thresholds_and_bad_ones() -> None:
    assert Thresholds.strictest([Thresholds(5, 20), Thresholds(8, 10)]) == Thresholds(5, 10)
    assert Thresholds.strictest([]) == Thresholds()
    with pytest.raises(ValueError, match="junk_score"):
        Thresholds(10, 5)


def test_junk_headers_name_the_scores() -> None:
    verdict = decide(None, report(8.5), T)
    fields = headers.parse_headers(scan_headers(verdict, "mail.moe.go.th") + b"\r\nbody")
    values = {name.lower(): value for name, value in fields}
    assert values["x-spam-flag"] == "YES"
    assert values["x-spam-score"] == "8.50"
    assert "score=8.50 junk=6.00 reject=15.00" in values["x-spam-status"]
    assert "SYM_A(8.50)" in values["x-spam-symbols"]
    assert "ZERO" not in values["x-spam-symbols"]


def test_strip_removes_a_senders_own_scan_fields_folded_or_not() -> None:
    message = (b"X-Spam-Flag: NO\r\nSubject: hi\r\nX-Spam-Symbols: A(1),\r\n\tB(2)\r\n"
               b"X-Virus-Scanned: fake\r\n\r\nX-Spam-Flag: body stays\r\n")  # fmt: skip
    assert strip_scan_headers(message) == b"Subject: hi\r\n\r\nX-Spam-Flag: body stays\r\n"


@given(st.floats(-50, 200), st.dictionaries(st.from_regex(r"[A-Z_]{1,30}", fullmatch=True),
                                            st.floats(-20, 20), max_size=40))  # fmt: skip
def test_headers_are_well_formed(score: float, symbols: dict[str, float]) -> None:
    verdict = decide(None, SpamReport(score, 15.0, "no action", symbols), T)
    block = scan_headers(verdict, "mail.moe.go.th")
    assert block.endswith(b"\r\n")
    for line in block.split(b"\r\n")[:-1]:
        assert len(line) <= 998
        assert b"\n" not in line
        assert b"\r" not in line
    # Stripping them again leaves nothing: the box's own fields are what it strips.
    assert strip_scan_headers(block + b"\r\n") == b"\r\n"


ALLOW_ORG = SenderLists(allow=frozenset({"example.org"}))
BLOCK_BOB = SenderLists(block=frozenset({"bob@spam.example"}))


@pytest.mark.parametrize(
    ("lists", "sender", "listing"),
    [
        ([ALLOW_ORG], "Alice@Example.ORG", Listing.ALLOWED),
        ([ALLOW_ORG], "alice@sub.example.org", Listing.NONE),  # a domain is exact
        ([ALLOW_ORG, SenderLists()], "alice@example.org", Listing.NONE),  # every agency
        ([BLOCK_BOB], "bob@spam.example", Listing.BLOCKED),
        ([BLOCK_BOB], "carol@spam.example", Listing.NONE),
        ([ALLOW_ORG, BLOCK_BOB], "bob@spam.example", Listing.BLOCKED),
        (
            [SenderLists(allow=frozenset({"x.org"}), block=frozenset({"x.org"}))],
            "a@x.org",
            Listing.BLOCKED,
        ),  # the same entry on both lists: blocked
        ([ALLOW_ORG], None, Listing.NONE),  # the null sender (bounces) is on no list
        ([ALLOW_ORG], "", Listing.NONE),
    ],
)
def test_sender_listing(lists: list[SenderLists], sender: str | None, listing: Listing) -> None:
    assert SenderLists.listing(lists, sender) is listing


def test_allowed_skips_the_spam_verdict_but_never_the_virus_verdict() -> None:
    assert decide(None, report(99.0), T, Listing.ALLOWED).outcome is Outcome.CLEAN
    assert decide(None, report(0, "reject", True), T, Listing.ALLOWED).outcome is Outcome.CLEAN
    assert decide("Eicar", report(0.0), T, Listing.ALLOWED).outcome is Outcome.VIRUS


def test_blocked_is_refused_even_when_clean_and_a_virus_is_still_named() -> None:
    blocked = decide(None, report(0.0), T, Listing.BLOCKED)
    assert blocked.outcome is Outcome.BLOCKED
    assert not blocked.accepted
    assert blocked.log_result().startswith("blocked")
    assert decide("Eicar", report(0.0), T, Listing.BLOCKED).outcome is Outcome.VIRUS
