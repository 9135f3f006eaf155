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

Every answer, "no such name" and "no such record" included, is kept in a per-process
`DnsCache` for its TTL (for a negative answer the SOA's, RFC 2308 §5), so a burst of
mail from one sender domain asks the network once per name, not once per message: SPF
and DMARC ask the same two or three names for every message from a domain, and each
look-up through dnspython costs the GIL more than the rest of the check.

What this is not: a resolver of its own (recursion is the configured resolver's).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import dkim
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import spf as pyspf

#: Seconds one look-up may take unless the caller says otherwise.
LOOKUP_TIMEOUT = 5.0

#: The longest an answer is kept whatever its TTL: a sender's changed SPF or DMARC
#: record is honoured within this. RFC 2308 §5 suggests 1-3 hours for negative answers.
MAX_TTL = 3600.0

#: Names kept per process: a few hundred bytes each, so about 1 MB at the bound.
CACHE_ENTRIES = 4096


class DnsCache:
    """Answers by key until their TTL runs out; bounded, the least recently used go first.

    Thread-safe (look-ups run in trio's worker threads). *clock* is monotonic seconds;
    tests pass their own.
    """

    def __init__(
        self,
        max_entries: int = CACHE_ENTRIES,
        *,
        max_ttl: float = MAX_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, tuple[Any, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> list[Any] | None:
        """Return the answers kept for *key*, or None if none are (or they expired)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self._clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return list(entry[1])
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, answers: list[Any], ttl: float) -> None:
        """Keep *answers* (empty: a negative answer) for *ttl* seconds, at most `max_ttl`."""
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return  # RFC 1035 §3.2.1: TTL 0 is "use only for the transaction in progress"
        with self._lock:
            self._entries[key] = (self._clock() + ttl, tuple(answers))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every answer."""
        with self._lock:
            self._entries.clear()


#: The process's cache: every `Resolver` made without one shares it.
PROCESS_CACHE = DnsCache()


class DnsTemporaryError(Exception):
    """The resolver could not answer now (timeout, SERVFAIL, none reachable)."""


class Resolver:
    """DNS look-ups for mail authentication through one dnspython resolver."""

    def __init__(
        self,
        resolver: dns.resolver.Resolver | None = None,
        cache: DnsCache | None = PROCESS_CACHE,
    ) -> None:
        #: None: the default resolver at each look-up, so the box's configuration
        #: (and a test's override of it) is read when it is used.
        self._resolver = resolver
        #: None: every look-up asks the network.
        self.cache = cache

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
            # Keyed by where the answer came from too: a test (or an operator) pointing
            # the box at another resolver must not read the first one's answers.
            key = (_source(resolver), qname, rdtype.upper())
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                return cached
            answer = resolver.resolve(
                qname, rdtype, lifetime=timeout, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            if self.cache is not None:
                responses = exc.responses()  # type: ignore[no-untyped-call]
                self._keep(key, [], responses.get(qname))
            return []
        except dns.exception.DNSException as exc:
            # A failure is never kept: the next message asks again (a cut of the link
            # must end with the link, not with a TTL).
            raise DnsTemporaryError(f"{name} {rdtype}: {exc}") from None
        wanted = dns.rdatatype.from_text(rdtype)
        found: list[Any] = []
        for rrset in answer.response.answer:
            if rrset.rdtype != wanted:
                continue  # the CNAMEs on the way
            for rdata in rrset:
                found.append(_plain(rdata, wanted))
        if self.cache is not None:
            self._keep(key, found, answer.response)
        return found

    def _keep(self, key: Hashable, found: list[Any], response: dns.message.Message | None) -> None:
        ttl = cache_ttl(response)
        if ttl is not None and self.cache is not None:
            self.cache.put(key, found, ttl)

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


def cache_ttl(response: dns.message.Message | None) -> float | None:
    """Return how long *response*'s answer may be kept, None if it may not be.

    A positive answer: the least TTL on the way (the CNAMEs and the records). A negative
    one (NXDOMAIN, or NOERROR with no record of the type): the least of the SOA's TTL
    and its MINIMUM field, RFC 2308 §5; without an SOA it is not kept (RFC 2308 §5,
    "SHOULD NOT be cached"), unlike dnspython's own cache, which keeps it 300 s.
    """
    if not isinstance(response, dns.message.QueryMessage):
        return None  # none, or not the answer to a query
    if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return None
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException:
        return None  # a CNAME loop, an answer with NXDOMAIN: not an answer to keep
    if chain.answer is None and not any(
        rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority
    ):
        return None
    return float(chain.minimum_ttl)


def _source(resolver: dns.resolver.Resolver) -> tuple[object, ...]:
    return (tuple(str(server) for server in resolver.nameservers), resolver.port)


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
