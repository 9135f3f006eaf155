"""DMARC (RFC 7489): does the From domain's owner vouch for this message, and if not,
what does it ask the receiver to do?

Three parts, each small and, but for the DNS function it is handed, pure:

- `parse_record`: one ``_dmarc`` TXT record into a `DmarcPolicy` (RFC 7489 §6.3, §6.4).
- `discover`: the policy of a From domain: its own record, else its organizational
  domain's (§6.6.3), the organizational domain found with the Public Suffix List
  (§3.2) as the ``publicsuffixlist`` package ships it — never fetched at run time.
- `evaluate`: identifier alignment of the SPF and DKIM passes with the From domain
  (§3.1), then the policy's disposition (§6.6.4): ``sp`` for a subdomain that used its
  organizational domain's record, ``pct`` sampling (a message left out of the sample
  gets the next milder policy).

Why not a library: the Python DMARC packages on PyPI were read for this (see
docs/protection.md): one treats a failed DNS look-up as "no policy" (a cut of the link
would switch every policy off) and weighs only the first DKIM signature; another
aligns a parent domain under relaxed mode without consulting the Public Suffix List.
The record syntax and alignment are a page of RFC, tested here with hypothesis.

What this is not: SPF or DKIM themselves (appliance.protection.spf, .dkim), or what the
MX does with the verdict (appliance.protection.authentication).
"""

from __future__ import annotations

import encodings.idna
import functools
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from appliance.protection.resolver import DnsTemporaryError

#: RFC 7489 §6.3: the requested handling of failing mail, mildest first.
POLICIES = ("none", "quarantine", "reject")

#: A TXT look-up: the records of a name (each its strings joined); temporary trouble
#: raises `DnsTemporaryError`.
TxtLookup = Callable[[str], Sequence[bytes]]


class DmarcRecordError(ValueError):
    """A ``_dmarc`` TXT record that cannot be a DMARC policy."""


@dataclass(frozen=True)
class DmarcPolicy:
    """One published DMARC record (RFC 7489 §6.3), its tags with their defaults."""

    #: Requested handling of failing mail from the domain itself.
    p: str
    #: ... from its subdomains (defaults to ``p``).
    sp: str
    #: Alignment modes: "r" relaxed or "s" strict (§3.1.1, §3.1.2).
    adkim: str = "r"
    aspf: str = "r"
    #: Percentage of failing mail the policy applies to (§6.6.4).
    pct: int = 100


@dataclass(frozen=True)
class Discovered:
    """The outcome of policy discovery for one From domain (§6.6.3)."""

    #: "found", "none" (no record at either name), "temperror" or "permerror".
    status: str
    policy: DmarcPolicy | None = None
    #: Whether the record came from the organizational domain, not the From domain.
    from_organization: bool = False
    reason: str = ""


@dataclass(frozen=True)
class DmarcResult:
    """The DMARC verdict on one From domain (RFC 8601 ``dmarc=``, RFC 7489 §11.2)."""

    #: pass, fail, none, temperror or permerror.
    result: str
    #: The From domain, lower case, A-labels.
    domain: str
    #: Whether an SPF or DKIM pass aligns with the domain (§3.1), record or not.
    aligned: bool
    #: The published policy that applies (p or sp), "" without one.
    policy: str = ""
    #: What to do: "none", "quarantine" or "reject" (after pct sampling).
    disposition: str = "none"
    reason: str = ""


@dataclass(frozen=True)
class AuthenticatedId:
    """A domain authenticated by SPF or DKIM, as DMARC weighs it (§4.2)."""

    method: str  # "spf" or "dkim"
    result: str  # that method's result; only "pass" counts
    domain: str


# --- the record ---------------------------------------------------------------------------


def parse_record(text: str) -> DmarcPolicy:
    """Parse a DMARC TXT record (RFC 7489 §6.4); raise `DmarcRecordError` if unusable.

    ``v=DMARC1`` must come first (§6.4: "MUST appear first"); unknown tags are ignored
    (§6.3). A missing or invalid ``p`` is "p=none" when the record names an aggregate
    report address (§6.6.3 step 6), else the record is unusable. Invalid values of the
    other tags fall back to their defaults.
    """
    tags: dict[str, str] = {}
    for index, spec in enumerate(text.split(";")):
        name, equals, value = spec.partition("=")
        name, value = name.strip().lower(), value.strip()
        if index == 0:
            # §6.4: "v" is case-sensitive in its value; the tag list starts with it.
            if name != "v" or not equals or value != "DMARC1":
                raise DmarcRecordError("not a DMARC1 record")
            continue
        if not name and not value:
            continue  # an empty spec: "p=reject;" ends with one
        if not equals or not name or not all(c.isalnum() or c == "_" for c in name):
            raise DmarcRecordError(f"malformed tag {spec.strip()[:40]!r}")
        tags.setdefault(name, value)
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if not tags.get("rua", "").lower().startswith("mailto:"):
            raise DmarcRecordError("no valid p= policy")
        p = "none"
    sp = tags.get("sp", "").lower()
    if sp not in POLICIES:
        sp = p
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isdigit() and len(pct_text) <= 3 else 100
    return DmarcPolicy(
        p=p,
        sp=sp,
        adkim="s" if tags.get("adkim", "").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "").lower() == "s" else "r",
        pct=min(pct, 100),
    )


# --- organizational domains and alignment -------------------------------------------------


def ascii_domain(domain: str) -> str | None:
    """Return *domain* lower-cased in A-labels without a final dot; None if it is none."""
    try:
        labels = [
            encodings.idna.ToASCII(label).decode("ascii").lower()
            for label in domain.strip().rstrip(".").split(".")
        ]
    except UnicodeError:
        return None
    if not labels or not all(labels) or any(len(label) > 63 for label in labels):
        return None
    return ".".join(labels)


_suffixes_lock = threading.Lock()


def _suffixes() -> PublicSuffixList:
    # One at a time: the MX's first burst asks from every worker thread at once, and
    # without the lock each built its own list (measured under issue 21: ~20 threads,
    # ~1 s of the GIL at the start of a benchmark run).
    with _suffixes_lock:
        return _load_suffixes()


@functools.cache
def _load_suffixes() -> PublicSuffixList:
    # Loads the list the package ships (a few MB of work, once per process).
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """Return *domain*'s organizational domain (RFC 7489 §3.2): one label below its
    public suffix; a domain that is itself a public suffix is its own."""
    return _suffixes().privatesuffix(domain) or domain


def aligned(from_domain: str, other: str, mode: str) -> bool:
    """Tell whether *other* aligns with *from_domain* (§3.1): equal in strict mode,
    the same organizational domain in relaxed mode."""
    if from_domain == other:
        return True
    return mode == "r" and organizational_domain(from_domain) == organizational_domain(other)


# --- discovery and evaluation -------------------------------------------------------------


def discover(from_domain: str, txt: TxtLookup) -> Discovered:
    """Find the DMARC policy for *from_domain* (RFC 7489 §6.6.3)."""
    found = _record_at(from_domain, txt)
    organization = organizational_domain(from_domain)
    if found.status == "none" and organization != from_domain:
        found = _record_at(organization, txt)
        if found.status == "found":
            return Discovered("found", found.policy, from_organization=True)
    return found


def _record_at(domain: str, txt: TxtLookup) -> Discovered:
    try:
        records = txt(f"_dmarc.{domain}")
    except DnsTemporaryError as exc:
        return Discovered("temperror", reason=str(exc)[:80])
    # §6.6.3 step 3: records that do not start with v=DMARC1 are discarded, and more
    # than one that does is as good as none.
    candidates = [r for r in records if r.lstrip().startswith(b"v=DMARC1")]
    if len(candidates) != 1:
        return Discovered("none", reason="several DMARC records" if candidates else "")
    try:
        return Discovered("found", parse_record(candidates[0].decode("ascii")))
    except (UnicodeError, DmarcRecordError) as exc:
        return Discovered("permerror", reason=f"{domain}: {exc}"[:80])


def evaluate(
    from_domain: str,
    discovered: Discovered,
    identifiers: Sequence[AuthenticatedId],
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """Return the DMARC verdict on a message from *from_domain* (RFC 7489 §6.6.2–§6.6.4).

    *identifiers* are the SPF result (its domain: the MAIL FROM's, or HELO's for a
    null sender) and every DKIM signature's. *sample* draws from [0, 1) for ``pct``.
    """
    policy = discovered.policy
    spf_mode = policy.aspf if policy else "r"
    dkim_mode = policy.adkim if policy else "r"
    is_aligned = any(
        ident.result == "pass"
        and aligned(from_domain, ident.domain, spf_mode if ident.method == "spf" else dkim_mode)
        for ident in identifiers
        if ident.domain
    )
    if discovered.status != "found" or policy is None:
        result = discovered.status if discovered.status != "found" else "none"
        if is_aligned and result == "temperror":
            # An aligned pass is a pass whatever the record says (in its default
            # relaxed mode): the failed look-up of it changes nothing.
            result = "pass"
        return DmarcResult(result, from_domain, is_aligned, reason=discovered.reason)
    requested = policy.sp if discovered.from_organization else policy.p
    if is_aligned:
        return DmarcResult("pass", from_domain, True, requested)
    disposition = requested
    if sample() * 100 >= policy.pct:
        # §6.6.4: left out of the sample, the next milder policy applies.
        disposition = POLICIES[max(POLICIES.index(requested) - 1, 0)]
    return DmarcResult("fail", from_domain, False, requested, disposition)
