"""What an SMTP sender is told for each verdict, and the submission setting."""

from __future__ import annotations

from appliance.protection.rspamd import SpamReport
from appliance.protection.smtp import SCANNER_UNAVAILABLE, refusal
from appliance.protection.verdict import Outcome, Verdict

SPAM = SpamReport(21.5, 15.0, "reject")


def test_virus_is_554_naming_it_and_only_printable() -> None:
    reply = refusal(Verdict(Outcome.VIRUS, "Win.Test.EICAR\r\n550 x"), submission=False,
                    submission_unavailable="tempfail")  # fmt: skip
    assert reply is not None
    assert (reply.code, reply.enhanced) == (554, "5.7.1")
    assert "Win.Test.EICAR550 x" in str(reply.text)


def test_spam_is_550_with_its_score() -> None:
    reply = refusal(Verdict(Outcome.SPAM, spam=SPAM), submission=True,
                    submission_unavailable="accept")  # fmt: skip
    assert reply is not None
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert "21.5" in str(reply.text)


def test_unavailable_is_451_on_mx_always_and_on_submission_by_default() -> None:
    down = Verdict(Outcome.UNAVAILABLE, "clamd: ConnectionRefusedError")
    assert refusal(down, submission=False, submission_unavailable="accept") == SCANNER_UNAVAILABLE
    assert refusal(down, submission=True, submission_unavailable="tempfail") == SCANNER_UNAVAILABLE
    assert refusal(down, submission=True, submission_unavailable="accept") is None


def test_clean_and_junk_are_accepted() -> None:
    for outcome in (Outcome.CLEAN, Outcome.JUNK):
        assert refusal(Verdict(outcome, spam=SPAM), submission=False,
                       submission_unavailable="tempfail") is None  # fmt: skip


def test_a_blocked_sender_is_550_571_on_every_port() -> None:
    for submission in (False, True):
        reply = refusal(Verdict(Outcome.BLOCKED, "sender on the block list"),
                        submission=submission, submission_unavailable="accept")  # fmt: skip
        assert reply is not None
        assert (reply.code, reply.enhanced) == (550, "5.7.1")
        assert "blocked" in str(reply.text)
