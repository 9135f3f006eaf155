"""What an SMTP sender is told about a verdict (docs/protection.md, "What the sender sees").

RFC 3463 §3.8 5.7.1 "delivery not authorized, message refused" for a virus, for
spam and for a sender on the agency's block list; 4.7.1 for the temporary refusal
while a scanner is down, so the sending server keeps the message and retries
(RFC 5321 §4.2.5: a 4yz reply is transient).
"""

from __future__ import annotations

from appliance.mail.smtp.protocol import Reply
from appliance.protection.verdict import Outcome, Verdict

SCANNER_UNAVAILABLE = Reply(
    451, "4.7.1", "Virus and spam scanning is unavailable here, try again later"
)


def _printable(text: str) -> str:
    return "".join(c for c in text if " " <= c <= "~")[:120]


def refusal(verdict: Verdict, *, submission: bool, submission_unavailable: str) -> Reply | None:
    """Return the reply refusing the message, or None if it is to be accepted."""
    if verdict.outcome is Outcome.VIRUS:
        return Reply(554, "5.7.1", f"Message refused: virus found ({_printable(verdict.detail)})")
    if verdict.outcome is Outcome.SPAM:
        score = verdict.spam.score if verdict.spam is not None else 0.0
        return Reply(550, "5.7.1", f"Message refused as spam (score {score:.1f})")
    if verdict.outcome is Outcome.BLOCKED:
        return Reply(550, "5.7.1", "Message refused: the sender is blocked by the recipient agency")
    if verdict.outcome is Outcome.UNAVAILABLE:
        if submission and submission_unavailable == "accept":
            return None
        return SCANNER_UNAVAILABLE
    return None
