"""From the engines' answers to the box's decision: accept, Junk, refuse or try later.

Pure: no I/O. The rules (docs/protection.md):

- clamd found a signature → **virus**: refused (SMTP 554 5.7.1 naming it).
- rspamd's score ≥ the agency's ``reject_score``, or rspamd refused before scoring
  (the GTUBE pattern) → **spam**: refused (550 5.7.1).
- score ≥ ``junk_score`` → **junk**: accepted into the recipients' Junk folder.
- otherwise **clean**: accepted into INBOX.
- an engine did not answer → **unavailable**: never accepted unscanned (451 4.7.1 on
  the MX port; submission follows ``protection_submission_unavailable``).

An agency's sender lists come after the virus rule and before the spam rules: a sender
on a recipient agency's block list is **blocked** (550 5.7.1); a sender on the allow
list of every recipient agency skips the spam verdict — never the virus verdict.

Every accepted message carries the headers `scan_headers` makes, so that it is
visible afterwards which engines passed it and with which score.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from appliance.protection.rspamd import SpamReport


class Outcome(enum.Enum):
    #: Scanned, nothing found: INBOX.
    CLEAN = "clean"
    #: Spam between the two thresholds: the Junk folder.
    JUNK = "junk"
    #: Spam at or above the reject score: refused.
    SPAM = "spam"
    #: A virus signature matched: refused.
    VIRUS = "virus"
    #: A scanner did not answer: not accepted.
    UNAVAILABLE = "unavailable"
    #: The sender is on a recipient agency's block list: refused.
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Thresholds:
    """One agency's spam scores (per-agency settings; docs/protection.md)."""

    junk_score: float = 6.0
    reject_score: float = 15.0

    def __post_init__(self) -> None:
        if not self.junk_score <= self.reject_score:
            raise ValueError("junk_score must not be above reject_score")

    @classmethod
    def strictest(cls, thresholds: list[Thresholds]) -> Thresholds:
        """The lowest of each score: a message to several agencies meets all their rules."""
        if not thresholds:
            return cls()
        return cls(min(t.junk_score for t in thresholds), min(t.reject_score for t in thresholds))


class Listing(enum.Enum):
    """Where the sender stands on the recipient agencies' lists."""

    #: On no list (or allowed by some recipient agencies only).
    NONE = "none"
    #: On the allow list of every recipient agency: no spam verdict.
    ALLOWED = "allowed"
    #: On the block list of some recipient agency: refused.
    BLOCKED = "blocked"


@dataclass(frozen=True)
class SenderLists:
    """One agency's allow and block lists: addresses or domains, lower case."""

    allow: frozenset[str] = frozenset()
    block: frozenset[str] = frozenset()

    def holds(self, entries: frozenset[str], sender: str) -> bool:
        """Whether *sender* (an address) is in *entries* by address or by its domain."""
        sender = sender.strip().lower()
        domain = sender.rpartition("@")[2]
        return bool(sender) and (sender in entries or domain in entries)

    @staticmethod
    def listing(lists: list[SenderLists], sender: str | None) -> Listing:
        """Where *sender* stands with the recipient agencies' *lists*."""
        if not sender or not lists:
            return Listing.NONE
        if any(one.holds(one.block, sender) for one in lists):
            return Listing.BLOCKED
        if all(one.holds(one.allow, sender) for one in lists):
            return Listing.ALLOWED
        return Listing.NONE


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    #: The virus signature, or which engine was unavailable and why.
    detail: str = ""
    spam: SpamReport | None = None
    thresholds: Thresholds = Thresholds()

    @property
    def accepted(self) -> bool:
        return self.outcome in (Outcome.CLEAN, Outcome.JUNK)

    def log_result(self) -> str:
        """The verdict as the traffic log's short text, e.g. ``virus Win.Test.EICAR``."""
        parts = [self.outcome.value]
        if self.detail:
            parts.append(self.detail[:120])
        if self.spam is not None:
            parts.append(f"score={self.spam.score:.2f}")
        return " ".join(parts)


def decide(
    virus: str | None, spam: SpamReport, thresholds: Thresholds, listing: Listing = Listing.NONE
) -> Verdict:
    """Return the verdict on a message both engines scanned."""
    if virus is not None:
        # Before the lists: an allowed sender's virus is refused all the same.
        return Verdict(Outcome.VIRUS, virus, spam, thresholds)
    if listing is Listing.BLOCKED:
        return Verdict(Outcome.BLOCKED, "sender on the block list", spam, thresholds)
    if listing is Listing.ALLOWED:
        return Verdict(Outcome.CLEAN, "sender on the allow list", spam, thresholds)
    if spam.pre_rejected or spam.score >= thresholds.reject_score:
        return Verdict(Outcome.SPAM, spam.smtp_message, spam, thresholds)
    if spam.score >= thresholds.junk_score:
        return Verdict(Outcome.JUNK, "", spam, thresholds)
    return Verdict(Outcome.CLEAN, "", spam, thresholds)


#: The header fields the box adds; a sender's own copies are removed first so that no
#: one can pre-mark a message as scanned (see `strip_scan_headers`).
SCAN_HEADERS = ("X-Spam-Flag", "X-Spam-Score", "X-Spam-Status", "X-Spam-Symbols", "X-Virus-Scanned")


def scan_headers(verdict: Verdict, hostname: str) -> bytes:
    """Return the header fields to put on top of an accepted message, CRLF-ended."""
    spam = verdict.spam
    lines = [f"X-Virus-Scanned: clamd on {hostname} (edgebox)"]
    if spam is not None:
        junk = verdict.outcome is Outcome.JUNK
        lines.append(f"X-Spam-Flag: {'YES' if junk else 'NO'}")
        lines.append(f"X-Spam-Score: {spam.score:.2f}")
        lines.append(
            f"X-Spam-Status: {'Yes' if junk else 'No'}, score={spam.score:.2f}"
            f" junk={verdict.thresholds.junk_score:.2f}"
            f" reject={verdict.thresholds.reject_score:.2f}"
        )
        top = sorted(
            ((name, score) for name, score in spam.symbols.items() if score),
            key=lambda item: -abs(item[1]),
        )[:20]
        if top:
            text = ", ".join(f"{name}({score:.2f})" for name, score in top)
            lines.append(_folded("X-Spam-Symbols", text))
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _folded(name: str, text: str) -> str:
    # RFC 5322 §2.2.3: fold at the commas so no line passes 78 characters.
    out, line = [], f"{name}:"
    for word in text.split(" "):
        if len(line) + 1 + len(word) > 76 and line != f"{name}:":
            out.append(line)
            line = "\t" + word
        else:
            line += " " + word
    out.append(line)
    return "\r\n".join(out)


def strip_scan_headers(content: bytes) -> bytes:
    """Remove the header fields of `SCAN_HEADERS` from *content*'s header block."""
    end = content.find(b"\r\n\r\n")
    head, body = (content, b"") if end < 0 else (content[: end + 2], content[end + 2 :])
    kept: list[bytes] = []
    dropping = False
    names = tuple(n.lower().encode() + b":" for n in SCAN_HEADERS)
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(names)
        if not dropping:
            kept.append(line)
    return b"".join(kept) + body
