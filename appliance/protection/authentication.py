"""Sender authentication on the MX port: SPF, DKIM and DMARC as one verdict.

`InboundAuthenticator` is the MX's `InboundAuthentication` (appliance.mail.smtp
.authentication), handed in by the registry:

- ``check_sender`` at MAIL FROM: SPF for the envelope sender, or for the HELO name
  when the reverse-path is null (appliance.protection.spf);
- ``check_message`` at the end of DATA: every DKIM signature (appliance.protection
  .dkim), then DMARC for each From domain (appliance.protection.dmarc) from SPF's and
  DKIM's passes, and one ``Authentication-Results`` field (RFC 8601) on top with all
  three — ``spf=…; dkim=…; dmarc=…`` — after removing any that claims our authserv-id.

What happens to the message (`Disposition`): DMARC ``p=reject`` failed: refused;
``p=quarantine`` failed: Junk; SPF ``fail`` with no aligned pass to outweigh it: Junk
too (RFC 7208 §8.4 lets a receiver mark such mail; refusing it outright at MAIL FROM
would pre-empt DMARC, RFC 7489 §10.1). Anything else is delivered with the field.
From a trusted relay (the hub, the central relay) SPF and DMARC are not evaluated:
the relay is not the border where the sender's address can be judged (RFC 7208 §2.2),
so only DKIM, which survives relaying, is reported.

All DNS goes through the box's resolver (`Resolver`), in a worker thread, and every
check has a time limit: past it, *temperror*, which never refuses mail for good.

What this is not: the box's own domains' rule (appliance.mail.smtp.policy decides with
``MessageCheck.authenticated``), or the SMTP replies (appliance.mail.smtp.authentication).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from appliance.mail import headers
from appliance.mail.smtp.authentication import Disposition, MessageCheck, SpfCheck
from appliance.protection import dkim, dmarc, spf
from appliance.protection.resolver import Resolver

log = logging.getLogger("edgebox.authentication")

#: Seconds DKIM and DMARC together may take on one message (each DKIM key look-up is
#: bounded by dkim.DNS_TIMEOUT, at most dkim.MAX_SIGNATURES of them).
MESSAGE_TIME_LIMIT = 40.0

T = TypeVar("T")


@dataclass
class InboundAuthenticator:
    """SPF, DKIM and DMARC for the MX port, through the box's resolver."""

    #: The authserv-id of our Authentication-Results (RFC 8601 §2.5): the host name.
    hostname: str
    dns: Resolver = field(default_factory=Resolver)
    spf_time_limit: float = spf.TIME_LIMIT
    message_time_limit: float = MESSAGE_TIME_LIMIT
    #: Draws from [0, 1) for DMARC's pct= sampling (tests fix it).
    sample: Callable[[], float] = random.random

    async def check_sender(
        self, client_ip: str | None, helo: str | None, mail_from: str
    ) -> SpfCheck:
        """SPF for *mail_from* (or *helo* for a null sender) from *client_ip*."""
        timed_out = SpfCheck(
            "temperror",
            (mail_from.rpartition("@")[2] if mail_from else helo) or None,
            "mailfrom" if mail_from else "helo",
            "time limit reached",
        )
        return await _in_thread(
            lambda: spf.check_host(client_ip, mail_from, helo, self.dns, self.spf_time_limit),
            # pyspf keeps its own limit; this one is for a look-up that ignores it.
            self.spf_time_limit + 5,
            lambda: timed_out,
        )

    async def check_message(self, content: bytes, spf_check: SpfCheck | None) -> MessageCheck:
        """DKIM and DMARC on *content*; *spf_check* None for a trusted relay."""
        return await _in_thread(
            lambda: self.authenticate(content, spf_check),
            self.message_time_limit,
            lambda: self._timed_out(content, spf_check),
        )

    def authenticate(self, content: bytes, spf_check: SpfCheck | None) -> MessageCheck:
        """Check *content* now, in this thread (`check_message` runs it off the loop)."""
        dkim_results = dkim.verify(content, self.dns.dkim_key)
        if spf_check is None:
            return self._checked(content, None, dkim_results, [])
        identifiers = [
            dmarc.AuthenticatedId("spf", spf_check.result, spf_check.domain or ""),
            *(
                dmarc.AuthenticatedId("dkim", r.result, dmarc.ascii_domain(r.domain or "") or "")
                for r in dkim_results
            ),
        ]
        verdicts = [
            dmarc.evaluate(domain, dmarc.discover(domain, self._txt), identifiers, self.sample)
            for domain in from_domains(content)
        ]
        return self._checked(content, spf_check, dkim_results, verdicts)

    def _txt(self, name: str) -> Sequence[bytes]:
        return self.dns.txt(name, dkim.DNS_TIMEOUT)

    def _checked(
        self,
        content: bytes,
        spf_check: SpfCheck | None,
        dkim_results: Sequence[dkim.DkimResult],
        verdicts: Sequence[dmarc.DmarcResult],
    ) -> MessageCheck:
        parts = [] if spf_check is None else [_spf_text(spf_check)]
        parts += [dkim.result_text(r) for r in dkim_results]
        if spf_check is not None:
            parts += [_dmarc_text(v) for v in verdicts] or ["dmarc=none"]
        field_text = f"Authentication-Results: {self.hostname};\r\n\t" + ";\r\n\t".join(parts)
        return MessageCheck(
            # Kept apart: the MX builds the stored form once, with every field on top
            # in one join (appliance.mail.delivery), not one copy per field.
            body=dkim.without_our_results(content, self.hostname),
            field=(field_text + "\r\n").encode("utf-8"),
            disposition=_disposition(spf_check, verdicts),
            authenticated=frozenset(v.domain for v in verdicts if v.aligned),
            temporary=(spf_check is not None and spf_check.result == "temperror")
            or any(r.result == "temperror" for r in dkim_results),
            summary=_summary(spf_check, dkim_results, verdicts),
        )

    def _timed_out(self, content: bytes, spf_check: SpfCheck | None) -> MessageCheck:
        # The DNS did not answer in time: every verdict is a temporary error.
        late = dkim.DkimResult("temperror", reason="time limit reached")
        verdicts = [
            dmarc.DmarcResult("temperror", domain, False, reason="time limit reached")
            for domain in from_domains(content)
        ]
        checked = self._checked(content, spf_check, [late], verdicts if spf_check else [])
        return MessageCheck(
            checked.body, Disposition.DELIVER, frozenset(), True, checked.summary,
            field=checked.field,
        )  # fmt: skip


def from_domains(content: bytes) -> list[str]:
    """Return the distinct domains of the message's From addresses (RFC 7489 §6.6.1),
    lower case, A-labels, in order; unusable ones are left out."""
    found: list[str] = []
    for address in headers.from_addresses(headers.parse_headers(content)):
        domain = dmarc.ascii_domain(address.rpartition("@")[2])
        if domain and domain not in found:
            found.append(domain)
    return found


def _disposition(spf_check: SpfCheck | None, verdicts: Sequence[dmarc.DmarcResult]) -> Disposition:
    if spf_check is None:
        return Disposition.DELIVER
    # RFC 7489 §6.6.1: with several From domains, the strictest of their policies.
    dispositions = {v.disposition for v in verdicts if v.result == "fail"}
    if "reject" in dispositions:
        return Disposition.REFUSE
    if "quarantine" in dispositions:
        return Disposition.JUNK
    if spf_check.result == "fail" and not any(v.result == "pass" for v in verdicts):
        return Disposition.JUNK
    return Disposition.DELIVER


def _spf_text(check: SpfCheck) -> str:
    text = f"spf={check.result}"
    if check.reason and check.result not in ("pass", "none"):
        text += f" ({dkim.reason_comment(check.reason)})"
    if check.domain:
        # RFC 8601 §2.7.2: smtp.mailfrom, or smtp.helo when HELO was the identity.
        prop = "smtp.mailfrom" if check.scope == "mailfrom" else "smtp.helo"
        text += f" {prop}={dkim.pvalue(check.domain)}"
    return text


def _dmarc_text(verdict: dmarc.DmarcResult) -> str:
    # RFC 7489 §11.2: the dmarc method reports header.from; the comment carries the
    # policy and what was done, as other receivers write it.
    text = f"dmarc={verdict.result}"
    if verdict.policy:
        text += f" (p={verdict.policy} dis={verdict.disposition})"
    elif verdict.reason:
        text += f" ({dkim.reason_comment(verdict.reason)})"
    return text + f" header.from={dkim.pvalue(verdict.domain)}"


def _summary(
    spf_check: SpfCheck | None,
    dkim_results: Sequence[dkim.DkimResult],
    verdicts: Sequence[dmarc.DmarcResult],
) -> str:
    parts = [] if spf_check is None else [f"spf={spf_check.result}"]
    parts.append("dkim=" + ",".join(r.result for r in dkim_results))
    if spf_check is not None:
        dmarc_parts = [
            f"{v.result}" + (f"(p={v.policy})" if v.result == "fail" else "") for v in verdicts
        ]
        parts.append("dmarc=" + (",".join(dmarc_parts) or "none"))
    return " ".join(parts)


async def _in_thread(work: Callable[[], T], limit: float, timed_out: Callable[[], T]) -> T:
    # The checks block on DNS: a worker thread keeps the event loop serving. A thread
    # cannot be stopped; past the limit it is abandoned (its DNS waits are bounded) and
    # the verdict is a temporary error.
    with trio.move_on_after(limit):
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    log.warning("sender authentication took longer than %.0f s: temperror", limit)
    return timed_out()
