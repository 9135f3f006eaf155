"""SPF, DKIM and DMARC as one verdict (appliance.protection.authentication, .spf, .resolver).

In-process checks get their DNS from a dict (tests/appliance/protection/records.py); the
resolver's shapes are checked once against a real DNS server on 127.0.0.1
(tests/peers/dns_stub.py). The MX tests drive the real SMTP listener with smtplib.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from datetime import date
from pathlib import Path

import dns.resolver
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.box import Box
from appliance.compliance.traffic_log import TrafficRecord, iter_records
from appliance.config import Config, load_config
from appliance.mail.headers import parse_headers
from appliance.mail.smtp.authentication import Disposition, SpfCheck
from appliance.mail.smtp.policy import Port
from appliance.protection import dkim, publish, spf
from appliance.protection.authentication import InboundAuthenticator, from_domains
from appliance.protection.resolver import DnsTemporaryError, Resolver
from appliance.registry import smtp_service
from appliance.security.keys import create_box_keys
from tests.appliance.conftest import BoxFactory, Person
from tests.appliance.protection.records import DictResolver
from tests.harness import free_port_offset
from tests.peers.dns_stub import txt_server

HOST = "mail.a.go.th"
DOMAIN = "a.go.th"
TODAY = date(2026, 12, 7)


def message(sender: str, to: str = f"somchai@{DOMAIN}", subject: str = "hello") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 10:00:00 +0700\r\nMessage-ID: <m@b.go.th>\r\n\r\nbody\r\n"
    ).encode()


def results_of(content: bytes) -> list[str]:
    return [
        " ".join(v.split())
        for n, v in parse_headers(content)
        if n.lower() == "authentication-results"
    ]


# --- SPF ----------------------------------------------------------------------------------

SPF_RECORDS = {
    "b.go.th": "v=spf1 ip4:192.0.2.10 -all",
    "soft.go.th": "v=spf1 ip4:192.0.2.10 ~all",
    "helo.b.go.th": "v=spf1 a -all",
    "loop.go.th": "v=spf1 include:loop.go.th -all",
    "broken.go.th": "v=spf1 ip4:192.0.2.300 -all",
}
HELO_A = {("helo.b.go.th", "A"): ["192.0.2.20"]}


@pytest.mark.parametrize(
    ("client", "mail_from", "helo", "result", "scope"),
    [
        ("192.0.2.10", "x@b.go.th", "h", "pass", "mailfrom"),
        ("::ffff:192.0.2.10", "X@B.GO.TH", "h", "pass", "mailfrom"),
        ("192.0.2.11", "x@b.go.th", "h", "fail", "mailfrom"),
        ("192.0.2.11", "x@soft.go.th", "h", "softfail", "mailfrom"),
        ("192.0.2.11", "x@nothing.go.th", "h", "none", "mailfrom"),
        ("192.0.2.11", "x@loop.go.th", "h", "permerror", "mailfrom"),
        ("192.0.2.11", "x@broken.go.th", "h", "permerror", "mailfrom"),
        # A null reverse-path is checked as postmaster@HELO (RFC 7208 §2.4).
        ("192.0.2.20", "", "helo.b.go.th", "pass", "helo"),
        ("192.0.2.21", "", "helo.b.go.th", "fail", "helo"),
        ("192.0.2.21", "", "[192.0.2.21]", "none", "helo"),
        (None, "x@b.go.th", "h", "none", "mailfrom"),
    ],
)
def test_spf_results(
    client: str | None, mail_from: str, helo: str, result: str, scope: str
) -> None:
    checked = spf.check_host(client, mail_from, helo, DictResolver(SPF_RECORDS, HELO_A))
    assert (checked.result, checked.scope) == (result, scope)


def test_spf_dns_trouble_is_temperror() -> None:
    resolver = DictResolver(failing=["b.go.th"])
    assert spf.check_host("192.0.2.10", "x@b.go.th", "h", resolver).result == "temperror"


def test_the_resolver_shapes_against_a_real_dns_server() -> None:
    records = {"b.go.th": "v=spf1 ip4:127.0.0.1 -all", "_dmarc.b.go.th": "v=DMARC1; p=reject"}
    with txt_server(records) as port:
        real = dns.resolver.Resolver(configure=False)
        real.nameservers, real.port = ["127.0.0.1"], port
        resolver = Resolver(real)
        assert resolver.txt("_dmarc.b.go.th") == [b"v=DMARC1; p=reject"]
        assert resolver.txt("nothing.b.go.th") == []
        assert resolver.lookup("b.go.th", "A") == []  # the name exists, no A record
        assert spf.check_host("127.0.0.1", "x@b.go.th", "h", resolver).result == "pass"
        assert spf.check_host("127.0.0.2", "x@b.go.th", "h", resolver).result == "fail"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        real.port = silent.getsockname()[1]
        with pytest.raises(DnsTemporaryError):
            resolver.txt("b.go.th", timeout=0.3)
        assert spf.check_host("127.0.0.1", "x@b.go.th", "h", resolver, 0.5).result == ("temperror")


# --- the combined verdict -----------------------------------------------------------------


def signed_by_b(tmp_path: Path, content: bytes) -> tuple[bytes, dict[str, str]]:
    keys = tmp_path / "b-keys"
    create_box_keys(keys)
    ring = dkim.DkimKeyring(keys)
    ring.ensure("b.go.th", TODAY)
    return dkim.sign_outbound(ring, content), {r.name: r.value for r in ring.records("b.go.th")}


def check(records: dict[str, str], content: bytes, spf_check: SpfCheck | None,
          **kw: object) -> tuple[list[str], Disposition, frozenset[str], str]:  # fmt: skip
    checked = InboundAuthenticator(HOST, DictResolver(records), **kw).authenticate(  # type: ignore[arg-type]
        content, spf_check
    )
    return results_of(checked.content), checked.disposition, checked.authenticated, checked.summary


SPF_PASS = SpfCheck("pass", "b.go.th", "mailfrom")
SPF_FAIL = SpfCheck("fail", "b.go.th", "mailfrom", "SPF fail - not authorized")


def test_one_field_with_spf_dkim_and_dmarc() -> None:
    records = {"_dmarc.b.go.th": "v=DMARC1; p=reject"}
    fields, disposition, proven, summary = check(records, message("khun@b.go.th"), SPF_PASS)
    assert fields == [
        f"{HOST}; spf=pass smtp.mailfrom=b.go.th; dkim=none;"
        " dmarc=pass (p=reject dis=none) header.from=b.go.th"
    ]
    assert (disposition, proven) == (Disposition.DELIVER, frozenset({"b.go.th"}))
    assert summary == "spf=pass dkim=none dmarc=pass"


def test_dmarc_reject_quarantine_and_none() -> None:
    for policy, disposition in [
        ("reject", Disposition.REFUSE),
        ("quarantine", Disposition.JUNK),
        ("none", Disposition.DELIVER),
    ]:
        records = {"_dmarc.b.go.th": f"v=DMARC1; p={policy}"}
        softfail = SpfCheck("softfail", "b.go.th")
        fields, got, proven, summary = check(records, message("khun@b.go.th"), softfail)
        assert got is disposition, policy
        assert fields[0].endswith(f"dmarc=fail (p={policy} dis={policy}) header.from=b.go.th")
        assert proven == frozenset()
        assert summary == f"spf=softfail dkim=none dmarc=fail(p={policy})"


def test_an_aligned_dkim_pass_rescues_an_spf_fail(tmp_path: Path) -> None:
    signed, keys = signed_by_b(tmp_path, message("khun@b.go.th"))
    records = {**keys, "_dmarc.b.go.th": "v=DMARC1; p=reject"}
    (field,), disposition, proven, _ = check(records, signed, SPF_FAIL)
    assert "spf=fail (SPF fail - not authorized) smtp.mailfrom=b.go.th" in field
    assert "dkim=pass header.d=b.go.th" in field
    assert field.endswith("dmarc=pass (p=reject dis=none) header.from=b.go.th")
    assert (disposition, proven) == (Disposition.DELIVER, frozenset({"b.go.th"}))


def test_spf_fail_without_dmarc_goes_to_junk_softfail_does_not() -> None:
    _, disposition, _, _ = check({}, message("khun@b.go.th"), SPF_FAIL)
    assert disposition is Disposition.JUNK
    _, disposition, _, _ = check({}, message("khun@b.go.th"), SpfCheck("softfail", "b.go.th"))
    assert disposition is Disposition.DELIVER


def test_the_strictest_of_several_from_domains() -> None:
    records = {"_dmarc.b.go.th": "v=DMARC1; p=none", "_dmarc.c.go.th": "v=DMARC1; p=reject"}
    content = message("khun@b.go.th, other@c.go.th")
    (field,), disposition, _, _ = check(records, content, SpfCheck("none", "x.go.th"))
    assert disposition is Disposition.REFUSE
    assert "header.from=b.go.th" in field
    assert "header.from=c.go.th" in field


def test_a_trusted_relay_gets_dkim_only_and_forged_fields_go() -> None:
    forged = f"Authentication-Results: {HOST}; spf=pass; dmarc=pass\r\n".encode()
    records = {"_dmarc.b.go.th": "v=DMARC1; p=reject"}
    fields, disposition, _, summary = check(records, forged + message("khun@b.go.th"), None)
    assert fields == [f"{HOST}; dkim=none"]
    assert (disposition, summary) == (Disposition.DELIVER, "dkim=none")


def test_dns_trouble_is_temporary_and_refuses_nothing() -> None:
    authenticator = InboundAuthenticator(HOST, DictResolver(failing=["_dmarc.b.go.th"]))
    checked = authenticator.authenticate(message("khun@b.go.th"), SpfCheck("temperror", "b.go.th"))
    assert checked.disposition is Disposition.DELIVER
    assert checked.temporary
    assert "dmarc=temperror" in results_of(checked.content)[0]


async def test_a_check_past_its_time_limit_is_temperror() -> None:
    class Stuck(DictResolver):
        def lookup(self, name: str, rdtype: str, timeout: float = 5.0) -> list[object]:
            release.wait(10)
            return []

    release = threading.Event()
    authenticator = InboundAuthenticator(HOST, Stuck(), spf_time_limit=0.2, message_time_limit=0.2)
    try:
        sender = await authenticator.check_sender("192.0.2.1", "h", "x@b.go.th")
        checked = await authenticator.check_message(message("khun@b.go.th"), sender)
    finally:
        release.set()
    assert sender.result == "temperror"
    assert checked.temporary
    assert checked.disposition is Disposition.DELIVER
    assert "dkim=temperror" in results_of(checked.content)[0]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"From: a@b.go.th\r\n",
                b"From: =?utf-8?b?4Liq?= <x@\xe0\xb8\xaa.go.th>\r\n",
                b"From: <@>, ,,\r\n",
                b"From: a@-bad-.go.th, b@..\r\n",
                b"From: \r\n",
                b"DKIM-Signature: v=1; d=b.go.th; s=x; b=; bh=\r\n",
                b"Authentication-Results: mail.a.go.th; dmarc=pass\r\n",
                b"\tfolded\r\n",
            ]
        ),
        max_size=6,
    ),
    st.sampled_from(["pass", "fail", "none", "temperror"]),
)
def test_hostile_headers_get_one_field_never_an_exception(lines: list[bytes], result: str) -> None:
    content = b"".join(lines) + b"\r\nbody\r\n"
    records = {"_dmarc.b.go.th": "v=DMARC1; p=reject"}
    checked = InboundAuthenticator(HOST, DictResolver(records)).authenticate(
        content, SpfCheck(result, "b.go.th")
    )
    (field,) = results_of(checked.content)
    assert field.startswith(f"{HOST}; spf={result}")
    assert all(d.isascii() for d in from_domains(content))


# --- the MX port --------------------------------------------------------------------------


def traffic(box: Box) -> list[TrafficRecord]:
    return list(iter_records(box.config.data_dir / "log" / "traffic"))


def _ports(data: Path) -> Config:
    return load_config(data, flags={"port_offset": free_port_offset()})


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    somchai = Person(f"somchai@{DOMAIN}", "x-2569", "สมชาย")
    return await make_box(DOMAIN, people=[somchai], config=_ports)


async def serve_mx(box: Box, nursery: trio.Nursery, records: dict[str, str]) -> int:
    service = smtp_service(box, Port.MX)
    service.authenticate = InboundAuthenticator(box.hostname, DictResolver(records))
    await nursery.start(service.serve)
    return box.config.port(service.name)


def send(port: int, sender: str, content: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.b.go.th")
        code, reply = client.mail(sender)
        if code != 250:
            return code, reply
        client.rcpt(f"somchai@{DOMAIN}")
        return client.data(content)


async def test_mx_refuses_p_reject_files_p_quarantine_and_logs_each_verdict(
    box: Box, nursery: trio.Nursery
) -> None:
    records = {
        "reject.go.th": "v=spf1 ip4:192.0.2.1 -all",
        "_dmarc.reject.go.th": "v=DMARC1; p=reject",
        "_dmarc.junk.go.th": "v=DMARC1; p=quarantine",
        "ok.go.th": "v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.ok.go.th": "v=DMARC1; p=reject",
    }
    port = await serve_mx(box, nursery, records)
    refused = await trio.to_thread.run_sync(send, port, "x@reject.go.th", message("x@reject.go.th"))
    assert refused[0] == 550
    assert b"5.7.1" in refused[1]
    assert b"DMARC" in refused[1]
    junk = await trio.to_thread.run_sync(send, port, "x@junk.go.th", message("x@junk.go.th"))
    ok = await trio.to_thread.run_sync(send, port, "x@ok.go.th", message("x@ok.go.th"))
    assert junk[0] == ok[0] == 250
    inbox = await box.mailstore.messages(f"somchai@{DOMAIN}")
    spam = await box.mailstore.messages(f"somchai@{DOMAIN}", "Junk")
    assert len(inbox) == len(spam) == 1
    (field,) = results_of(await box.mailstore.content(inbox[0]))
    assert field == (
        f"{box.hostname}; spf=pass smtp.mailfrom=ok.go.th; dkim=none;"
        " dmarc=pass (p=reject dis=none) header.from=ok.go.th"
    )
    lines = [r.result for r in traffic(box) if r.service == "smtp-mx"]
    assert "550 5.7.1 spf=fail dkim=none dmarc=fail(p=reject)" in lines
    assert "250 2.0.0 spf=none dkim=none dmarc=fail(p=quarantine) to-junk" in lines
    assert "250 2.0.0 spf=pass dkim=none dmarc=pass" in lines


async def test_own_domain_needs_proof_dmarc_record_or_not(box: Box, nursery: trio.Nursery) -> None:
    me = f"somchai@{DOMAIN}"
    # The agency publishes SPF naming 127.0.0.1 (say, its own second server) and no DMARC.
    port = await serve_mx(box, nursery, {DOMAIN: "v=spf1 ip4:127.0.0.1 -all"})
    proven = await trio.to_thread.run_sync(send, port, me, message(me))
    assert proven[0] == 250
    # An envelope of another domain, the From ours: no aligned pass, refused at DATA.
    forged = await trio.to_thread.run_sync(send, port, "x@other.go.th", message(me))
    assert forged[0] == 550
    assert b"submission port" in forged[1]
    lines = [r.result for r in traffic(box) if r.service == "smtp-mx"]
    assert "550 5.7.1 spf=none dkim=none dmarc=none" in lines


async def test_own_envelope_sender_without_spf_pass_is_refused_at_mail_from(
    box: Box, nursery: trio.Nursery
) -> None:
    me = f"somchai@{DOMAIN}"
    port = await serve_mx(box, nursery, {DOMAIN: "v=spf1 ip4:192.0.2.1 -all"})
    refused = await trio.to_thread.run_sync(send, port, me, message(me))
    assert refused[0] == 550
    records = [r for r in traffic(box) if r.event == "sender-rejected"]
    assert [(r.sender, r.result) for r in records] == [(me, "550 5.7.1 spf=fail")]


# --- what an agency should publish ----------------------------------------------------------


def test_the_spf_record_names_the_central_relay() -> None:
    assert publish.spf_value("") == "v=spf1 mx -all"
    assert publish.spf_value("smtp://relay.gin.go.th:587") == "v=spf1 mx a:relay.gin.go.th -all"
    assert publish.spf_value("smtps://10.20.0.5:465") == "v=spf1 mx ip4:10.20.0.5 -all"
    assert publish.spf_value("smtp://[fd00::5]:25") == "v=spf1 mx ip6:fd00::5 -all"
    thai = publish.sender_records("กรม.go.th", "")
    assert [r.name for r in thai] == ["xn--12c8df.go.th", "_dmarc.xn--12c8df.go.th"]


def test_no_resolver_configuration_is_temporary(monkeypatch: pytest.MonkeyPatch) -> None:
    def unconfigured() -> dns.resolver.Resolver:
        raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")

    monkeypatch.setattr(dns.resolver, "get_default_resolver", unconfigured)
    with pytest.raises(DnsTemporaryError):
        Resolver().txt("_dmarc.b.go.th")
    checked = InboundAuthenticator(HOST).authenticate(
        message("khun@b.go.th"), spf.check_host("192.0.2.1", "x@b.go.th", "h", Resolver())
    )
    assert checked.temporary
    (field,) = results_of(checked.content)
    assert field.startswith(f"{HOST}; spf=temperror (SPF Temporary Error: DNS b.go.th TXT")
    assert field.endswith(
        "dmarc=temperror (_dmarc.b.go.th TXT: no /etc/resolv.conf) header.from=b.go.th"
    )


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "v=spf1",
                    "-all",
                    "~all",
                    "?all",
                    "+all",
                    "a",
                    "mx",
                    "ptr",
                    "exists:%{i}.x.go.th",
                    "include:b.go.th",
                    "redirect=b.go.th",
                    "ip4:192.0.2.0/24",
                    "ip6:::1/200",
                    "ip4:300.1.1.1",
                    "exp=%{l}",
                    "a:%{d}/33",
                    "%{z}",
                    "mx/24//64",
                    "=a",
                ]
            ),
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
        ),
        max_size=8,
    )
)
def test_any_spf_record_gets_a_result_never_an_exception(terms: list[str]) -> None:
    record = " ".join(["v=spf1", *terms])
    resolver = DictResolver({"b.go.th": record, "x.go.th": "v=spf1 -all"})
    checked = spf.check_host("192.0.2.10", "someone@b.go.th", "h.b.go.th", resolver, 2.0)
    assert checked.result in spf.RESULTS
