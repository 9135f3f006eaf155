"""The per-process DNS answer cache (appliance.protection.resolver).

The clock is injected: a list whose last value is "now". The network side is a
dnspython resolver whose ``resolve`` answers from crafted DNS messages and counts the
questions, so what is kept, for how long and when the network is asked again is
visible without a server; one test asks the loopback DNS stub for real.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from appliance.protection import spf
from appliance.protection.resolver import (
    PROCESS_CACHE,
    DnsCache,
    DnsTemporaryError,
    Resolver,
    cache_ttl,
)
from tests.peers.dns_stub import txt_server

SOA = "ns.b.go.th. hostmaster.b.go.th. 1 3600 600 86400 {minimum}"


class Clock:
    """Seconds that move only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(
    name: str,
    rdtype: str,
    *,
    answers: list[tuple[int, str]] = (),  # type: ignore[assignment]
    rcode: int = dns.rcode.NOERROR,
    soa: tuple[int, int] | None = None,
) -> dns.message.Message:
    """A response to *name*/*rdtype* with (ttl, text) answers and an SOA (ttl, minimum)."""
    query = dns.message.make_query(name, rdtype)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    qname = dns.name.from_text(name)
    for ttl, text in answers:
        reply.answer.append(dns.rrset.from_text(qname, ttl, dns.rdataclass.IN, rdtype, text))
    if soa is not None:
        ttl, minimum = soa
        reply.authority.append(
            dns.rrset.from_text("b.go.th.", ttl, "IN", "SOA", SOA.format(minimum=minimum))
        )
    return wire(reply)


def wire(message: dns.message.Message) -> dns.message.Message:
    """*message* as the resolver gets it: through the wire format (which indexes it)."""
    return dns.message.from_wire(message.to_wire())


class Network(dns.resolver.Resolver):
    """A dnspython resolver answering from prepared messages; counts what it is asked."""

    def __init__(self, port: int = 53) -> None:
        super().__init__(configure=False)
        self.nameservers = ["127.0.0.1"]
        self.port = port
        self.replies: dict[tuple[str, str], dns.message.Message | Exception] = {}
        self.asked: list[tuple[str, str]] = []

    def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kw: Any) -> Any:  # type: ignore[override]
        key = (qname.to_text(), str(rdtype))
        self.asked.append(key)
        reply = self.replies[key]
        if isinstance(reply, Exception):
            raise reply
        if reply.rcode() == dns.rcode.NXDOMAIN:
            raise dns.resolver.NXDOMAIN(qnames=[qname], responses={qname: reply})
        return dns.resolver.Answer(
            qname, dns.rdatatype.from_text(str(rdtype)), dns.rdataclass.IN, reply
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def network() -> Network:
    net = Network()
    net.replies[("b.go.th.", "TXT")] = response("b.go.th.", "TXT", answers=[(300, '"v=spf1 -all"')])
    net.replies[("_dmarc.b.go.th.", "TXT")] = response(
        "_dmarc.b.go.th.", "TXT", rcode=dns.rcode.NXDOMAIN, soa=(3600, 60)
    )
    net.replies[("b.go.th.", "A")] = response("b.go.th.", "A", soa=(30, 900))
    net.replies[("nosoa.b.go.th.", "TXT")] = response(
        "nosoa.b.go.th.", "TXT", rcode=dns.rcode.NXDOMAIN
    )
    net.replies[("slow.b.go.th.", "TXT")] = dns.exception.Timeout()
    net.replies[("broken.b.go.th.", "TXT")] = dns.resolver.NoNameservers()
    return net


def test_a_positive_answer_is_kept_for_its_ttl(clock: Clock, network: Network) -> None:
    resolver = Resolver(network, DnsCache(clock=clock))
    assert resolver.txt("b.go.th") == [b"v=spf1 -all"]
    clock.now += 299
    assert resolver.txt("B.go.th.") == [b"v=spf1 -all"]  # names compare case-blind
    assert network.asked == [("b.go.th.", "TXT")]
    clock.now += 1
    assert resolver.txt("b.go.th") == [b"v=spf1 -all"]
    assert len(network.asked) == 2


def test_nxdomain_is_kept_for_the_soa_minimum(clock: Clock, network: Network) -> None:
    # RFC 2308 §5: the lesser of the SOA's TTL (3600) and its MINIMUM (60).
    resolver = Resolver(network, DnsCache(clock=clock))
    for _ in range(5):
        assert resolver.txt("_dmarc.b.go.th") == []
    assert len(network.asked) == 1
    clock.now += 60
    assert resolver.txt("_dmarc.b.go.th") == []
    assert len(network.asked) == 2


def test_nodata_is_kept_for_the_soa_ttl_when_it_is_less(clock: Clock, network: Network) -> None:
    resolver = Resolver(network, DnsCache(clock=clock))
    assert resolver.lookup("b.go.th", "A") == []
    clock.now += 29
    assert resolver.lookup("b.go.th", "A") == []
    assert len(network.asked) == 1
    clock.now += 1
    assert resolver.lookup("b.go.th", "A") == []
    assert len(network.asked) == 2


def test_a_negative_answer_without_an_soa_is_not_kept(clock: Clock, network: Network) -> None:
    # RFC 2308 §5: without the SOA there is no TTL to honour.
    resolver = Resolver(network, DnsCache(clock=clock))
    assert resolver.txt("nosoa.b.go.th") == []
    assert resolver.txt("nosoa.b.go.th") == []
    assert len(network.asked) == 2


def test_failures_are_never_kept(clock: Clock, network: Network) -> None:
    cache = DnsCache(clock=clock)
    resolver = Resolver(network, cache)
    for name in ("slow.b.go.th", "broken.b.go.th", "slow.b.go.th"):
        with pytest.raises(DnsTemporaryError):
            resolver.txt(name)
    assert len(network.asked) == 3
    assert len(cache) == 0
    # The link is back: the answer is asked for, not a remembered failure.
    network.replies[("slow.b.go.th.", "TXT")] = response(
        "slow.b.go.th.", "TXT", answers=[(60, '"ok"')]
    )
    assert resolver.txt("slow.b.go.th") == [b"ok"]


def test_answers_are_kept_apart_by_resolver(clock: Clock, network: Network) -> None:
    cache = DnsCache(clock=clock)
    assert Resolver(network, cache).txt("b.go.th") == [b"v=spf1 -all"]
    other = Network(port=5353)
    other.replies[("b.go.th.", "TXT")] = response("b.go.th.", "TXT", answers=[(60, '"other"')])
    assert Resolver(other, cache).txt("b.go.th") == [b"other"]


def test_no_cache_asks_every_time(network: Network) -> None:
    resolver = Resolver(network, cache=None)
    resolver.txt("b.go.th")
    resolver.txt("b.go.th")
    assert len(network.asked) == 2


def test_the_cache_is_bounded_least_recently_used_first(clock: Clock) -> None:
    cache = DnsCache(3, clock=clock)
    for key in "abc":
        cache.put(key, [key], 60)
    assert cache.get("a") == ["a"]  # a is now the most recently used
    cache.put("d", ["d"], 60)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [["a"], ["c"], ["d"]]


def test_ttls_are_capped_and_zero_is_not_kept(clock: Clock) -> None:
    cache = DnsCache(clock=clock, max_ttl=100)
    cache.put("long", [1], 86400)
    cache.put("zero", [2], 0)
    assert cache.get("zero") is None
    clock.now += 99
    assert cache.get("long") == [1]
    clock.now += 1
    assert cache.get("long") is None
    assert len(cache) == 0  # an expired entry is dropped when it is met


def test_a_cached_answer_is_a_copy(clock: Clock) -> None:
    cache = DnsCache(clock=clock)
    cache.put("k", [b"x"], 60)
    got = cache.get("k")
    assert got is not None
    got.append(b"y")
    assert cache.get("k") == [b"x"]


def test_cache_ttl_follows_cnames() -> None:
    reply = response("b.go.th.", "TXT", answers=[(600, '"x"')])
    assert cache_ttl(reply) == 600
    chained = dns.message.make_response(dns.message.make_query("www.b.go.th.", "TXT"))
    chained.answer.append(dns.rrset.from_text("www.b.go.th.", 20, "IN", "CNAME", "b.go.th."))
    chained.answer.append(dns.rrset.from_text("b.go.th.", 600, "IN", "TXT", '"x"'))
    assert cache_ttl(wire(chained)) == 20
    servfail = response("b.go.th.", "TXT", rcode=dns.rcode.SERVFAIL, soa=(60, 60))
    assert cache_ttl(servfail) is None
    assert cache_ttl(None) is None


def test_a_burst_of_spf_checks_asks_the_stub_once_per_name() -> None:
    # The loopback stub answers NXDOMAIN with an SOA (RFC 2308 §3), as a real server
    # does: the second and later checks of one sender are answered from the cache.
    with txt_server({"b.go.th": "v=spf1 ip4:127.0.0.1 -all"}) as port:
        real = dns.resolver.Resolver(configure=False)
        real.nameservers, real.port = ["127.0.0.1"], port
        cache = DnsCache()
        resolver = Resolver(real, cache)
        for _ in range(5):
            assert spf.check_host("127.0.0.1", "x@b.go.th", "h", resolver).result == "pass"
            assert resolver.txt("_dmarc.b.go.th") == []
        assert cache.misses == 2
        assert cache.hits == 8


def test_resolvers_share_the_process_cache_unless_given_another(network: Network) -> None:
    # The MX's authenticator and pyspf's look-ups each make a `Resolver()`: one cache.
    assert Resolver().cache is PROCESS_CACHE
    assert Resolver(network).cache is PROCESS_CACHE
    assert Resolver(network, cache=None).cache is None
