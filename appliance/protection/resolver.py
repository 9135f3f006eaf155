"""The box's DNS resolver as SPF, DKIM and DMARC ask it: one look-up, three shapes.

`Resolver.lookup` is the one primitive: the answers of one name and type through the
resolver the box is configured with (dnspython's default resolver, read from
``/etc/resolv.conf`` on the box; the e2e tests point it at tests/peers/dns_stub.py),
each answer in a plain form. "No such name" and "no such record" are an empty list;
anything else that goes wrong (a timeout, SERVFAIL, no resolver) is
`DnsTemporaryError`, which every caller turns into a *temperror* — a cut of the link
must never look like a domain that publishes nothing. Tests give a subclass whose
``lookup`` reads a dict.

The shapes: ``dkim_key`` is dkimpy's ``dnsfunc``, ``spf_lookup`` is pyspf's
``DNSLookup``, ``txt`` is what DMARC's policy discovery reads.

What this is not: a cache (the box's resolver caches) or a resolver of its own.
"""

from __future__ import annotations

from typing import Any

import dkim
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf as pyspf

#: Seconds one look-up may take unless the caller says otherwise.
LOOKUP_TIMEOUT = 5.0


class DnsTemporaryError(Exception):
    """The resolver could not answer now (timeout, SERVFAIL, none reachable)."""


class Resolver:
    """DNS look-ups for mail authentication through one dnspython resolver."""

    def __init__(self, resolver: dns.resolver.Resolver | None = None) -> None:
        #: None: the default resolver at each look-up, so the box's configuration
        #: (and a test's override of it) is read when it is used.
        self._resolver = resolver

    def lookup(self, name: str, rdtype: str, timeout: float = LOOKUP_TIMEOUT) -> list[Any]:
        """Return the answers of *name*/*rdtype*: TXT as bytes (its strings joined,
        RFC 7208 §3.3, RFC 6376 §3.6.2.2), A/AAAA as address text, MX as
        ``(preference, exchange)``, PTR as the target's text."""
        try:
            qname = dns.name.from_text(name.rstrip(".") + ".")
        except (UnicodeError, dns.exception.DNSException):
            return []  # not a name that can hold a record (RFC 7208 §4.3)
        try:
            # No /etc/resolv.conf is NoResolverConfiguration: temporary, like a timeout.
            resolver = self._resolver or dns.resolver.get_default_resolver()
            answer = resolver.resolve(
                qname, rdtype, lifetime=timeout, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{name} {rdtype}: {exc}") from None
        wanted = dns.rdatatype.from_text(rdtype)
        found: list[Any] = []
        for rrset in answer.response.answer:
            if rrset.rdtype != wanted:
                continue  # the CNAMEs on the way
            for rdata in rrset:
                found.append(_plain(rdata, wanted))
        return found

    def txt(self, name: str, timeout: float = LOOKUP_TIMEOUT) -> list[bytes]:
        """Return the TXT records of *name*, each its strings joined."""
        return [value for value in self.lookup(name, "TXT", timeout) if isinstance(value, bytes)]

    def dkim_key(self, name: bytes, timeout: float = LOOKUP_TIMEOUT) -> bytes | None:
        """dkimpy's ``dnsfunc``: the first TXT record of *name*, None if there is none.

        A temporary failure is dkimpy's `dkim.DnsTimeoutError`: a TEMPFAIL (RFC 6376
        §6.1.2), never "no key".
        """
        try:
            records = self.txt(name.decode("ascii"), timeout)
        except UnicodeError:
            return None
        except DnsTemporaryError as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        return records[0] if records else None

    def spf_lookup(
        self, name: str, qtype: str, strict: object = True, timeout: float = LOOKUP_TIMEOUT
    ) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's ``DNSLookup``: ``[((name, type), value), ...]``; temporary: TempError."""
        try:
            answers = self.lookup(name, qtype, timeout)
        except DnsTemporaryError as exc:
            raise pyspf.TempError(f"DNS {exc}") from None
        if qtype in ("TXT", "SPF"):
            # pyspf joins a record's strings itself: one string each.
            return [((name, qtype), (value,)) for value in answers]
        return [((name, qtype), value) for value in answers]


def _plain(rdata: Any, rdtype: dns.rdatatype.RdataType) -> Any:
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings)
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)
    if rdtype == dns.rdatatype.MX:
        return (int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True))
    if rdtype == dns.rdatatype.PTR:
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.to_text()
