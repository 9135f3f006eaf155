"""DKIM (appliance.protection.dkim): keys, signing, verifying, Authentication-Results.

Signatures are checked by an independent verifier: dkimpy's own ``dkimverify`` script,
run as a subprocess whose resolver asks a DNS server on 127.0.0.1 (tests/peers/dns_stub)
that serves the published TXT record. In-process verification gets a dict as its DNS.
Nothing here touches the network beyond loopback.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import socket
import stat
import subprocess
import sys
from datetime import date
from pathlib import Path

import dns.resolver
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.box import Box, init_box
from appliance.cli import main
from appliance.config import Config, load_config
from appliance.mail.smtp.policy import Port
from appliance.protection import dkim
from appliance.protection.authentication import InboundAuthenticator
from appliance.protection.dkim_commands import zone_lines
from appliance.registry import smtp_service
from appliance.security.keys import create_box_keys
from tests.appliance.conftest import BoxFactory, Person
from tests.appliance.protection.records import DictResolver
from tests.harness import free_port_offset
from tests.peers.dns_stub import resolver_override, txt_server

DOMAIN = "a.go.th"
TODAY = date(2026, 12, 7)
HOST = "mail.a.go.th"
DKIMVERIFY = Path(sys.executable).with_name("dkimverify")

MESSAGE = (
    b"From: Somchai <somchai@a.go.th>\r\n"
    b"To: khun.b@b.go.th\r\n"
    b"Subject: =?utf-8?b?4LiX4LiU4Liq4Lit4Lia?=\r\n"
    b"Date: Mon, 07 Dec 2026 10:00:00 +0700\r\n"
    b"Message-ID: <dkim-1@a.go.th>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Body line one\r\n"
    b"Body  line two   \r\n"
)


@pytest.fixture
def keyring(tmp_path: Path) -> dkim.DkimKeyring:
    keys_dir = tmp_path / "keys"
    create_box_keys(keys_dir)
    ring = dkim.DkimKeyring(keys_dir)
    ring.ensure(DOMAIN, TODAY)
    return ring


def dns_of(keyring: dkim.DkimKeyring) -> dict[str, str]:
    return {r.name: r.value for d in keyring.domains() for r in keyring.records(d)}


def dict_dns(records: dict[str, str]) -> dkim.DnsFunc:
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip(".").lower())
        return None if value is None else value.encode()

    return lookup


def dkim_part(field: str) -> str:
    """The dkim= result of an Authentication-Results value, without its properties."""
    (part,) = [p.strip() for p in field.split(";") if p.strip().startswith("dkim=")]
    return part.split(" ")[0]


def dkimverify(message: bytes, records: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    """Run dkimpy's ``dkimverify`` on *message* with *records* served on loopback DNS."""
    with txt_server(records) as port:
        site = resolver_override(tmp_path / "site", port)
        done = subprocess.run(
            [str(DKIMVERIFY)],
            input=message,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(site)},
            check=False,
        )
    return done.returncode, (done.stdout + done.stderr).decode()


# -- keys ----------------------------------------------------------------------------


def test_first_key_is_dated_sealed_and_2048_bits(keyring: dkim.DkimKeyring) -> None:
    keys = keyring.keys(DOMAIN)
    assert keys == dkim.DomainKeys(DOMAIN, "eb20261207", ("eb20261207",))
    sealed = keyring.keys_dir / "dkim-a.go.th-eb20261207.sealed"
    assert b"PRIVATE KEY" not in sealed.read_bytes()  # encrypted at rest
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in keyring.private_key(DOMAIN, "eb20261207")
    (record,) = keyring.records(DOMAIN)
    assert record.name == "eb20261207._domainkey.a.go.th"
    assert record.value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # 2048-bit SPKI
    assert record.active
    # Asking again makes nothing new.
    assert keyring.ensure(DOMAIN, date(2027, 1, 1)) == keys


def test_rotation_keeps_the_old_key_published_until_retired(
    keyring: dkim.DkimKeyring,
) -> None:
    rotated = keyring.rotate(DOMAIN, TODAY)  # the same day: a second selector of the date
    assert rotated.active == "eb20261207-2"
    assert rotated.published == ("eb20261207-2", "eb20261207")
    names = [(r.name.split(".")[0], r.active) for r in keyring.records(DOMAIN)]
    assert names == [("eb20261207-2", True), ("eb20261207", False)]
    signed = dkim.sign_outbound(keyring, MESSAGE)
    assert dkim.parse_tags(dkim_field(signed))["s"] == "eb20261207-2"

    with pytest.raises(dkim.DkimKeyError, match="rotate before retiring"):
        keyring.retire(DOMAIN, "eb20261207-2")
    kept = keyring.retire(DOMAIN, "eb20261207")
    assert kept.published == ("eb20261207-2",)
    assert not (keyring.keys_dir / "dkim-a.go.th-eb20261207.sealed").exists()
    with pytest.raises(dkim.DkimKeyError, match="no DKIM selector"):
        keyring.retire(DOMAIN, "eb20261207")


def test_a_key_sealed_for_one_selector_does_not_open_as_another(
    keyring: dkim.DkimKeyring,
) -> None:
    keyring.rotate(DOMAIN, date(2027, 6, 1))
    old = keyring.keys_dir / "dkim-a.go.th-eb20261207.sealed"
    new = keyring.keys_dir / "dkim-a.go.th-eb20270601.sealed"
    new.write_bytes(old.read_bytes())
    with pytest.raises(Exception, match="cannot be opened"):
        keyring.private_key(DOMAIN, "eb20270601")


def test_a_thai_domain_signs_and_publishes_in_a_labels(keyring: dkim.DkimKeyring) -> None:
    # RFC 8616 §4: d= and the key's name are A-labels; the directory keeps U-labels.
    thai = "กรมทดสอบ.ไทย"
    keys = keyring.ensure(thai, TODAY)
    a_label = thai.encode("idna").decode()
    assert keys.domain == a_label
    assert keyring.keys(a_label) == keys  # one domain, however it is written
    (record,) = keyring.records(thai)
    assert record.name == f"eb20261207._domainkey.{a_label}"
    message = MESSAGE.replace(b"somchai@a.go.th", f"somchai@{thai}".encode())
    signed = dkim.sign_outbound(keyring, message)
    assert dkim.parse_tags(dkim_field(signed))["d"] == a_label
    (result,) = dkim.verify(signed, dict_dns(dns_of(keyring)))
    assert result.result == "pass"


def test_bad_domains_and_selectors_are_refused(keyring: dkim.DkimKeyring) -> None:
    for bad in ("../etc", "a..go.th", "", "x" * 300):
        with pytest.raises(dkim.DkimKeyError):
            keyring.ensure(bad, TODAY)
    with pytest.raises(dkim.DkimKeyError):
        keyring.private_key(DOMAIN, "../../x")


# -- signing, checked by dkimverify ---------------------------------------------------


def dkim_field(content: bytes) -> str:
    values = [v for n, v in email_fields(content) if n.lower() == "dkim-signature"]
    assert len(values) == 1, values
    return values[0]


def email_fields(content: bytes) -> list[tuple[str, str]]:
    from appliance.mail.headers import parse_headers

    return parse_headers(content)


def test_signature_verifies_with_dkimverify_and_a_tampered_body_fails(
    keyring: dkim.DkimKeyring, tmp_path: Path
) -> None:
    signed = dkim.sign_outbound(keyring, MESSAGE)
    tags = dkim.parse_tags(dkim_field(signed))
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == DOMAIN
    assert tags["s"] == "eb20261207"
    signed_names = tags["h"].lower().split(":")
    for name in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert name in signed_names
    records = dns_of(keyring)

    assert dkimverify(signed, records, tmp_path) == (0, "signature ok\n")
    tampered = signed.replace(b"Body line one", b"Body line 1")
    code, output = dkimverify(tampered, records, tmp_path)
    assert code == 1
    assert "body hash mismatch" in output
    # Relaxed canonicalisation (RFC 6376 §3.4.4): white space changes on the way pass.
    rewrapped = signed.replace(b"Body  line two   ", b"Body line two")
    code, output = dkimverify(rewrapped, records, tmp_path)
    assert code == 0, output


def test_outbound_is_signed_once_and_only_for_our_domains(keyring: dkim.DkimKeyring) -> None:
    signed = dkim.sign_outbound(keyring, MESSAGE)
    # The same bytes again (a resend of already signed content): no second signature.
    assert dkim.sign_outbound(keyring, signed) == signed
    # Another domain's author, or no single From: not ours to vouch for.
    other = MESSAGE.replace(b"somchai@a.go.th", b"someone@elsewhere.example")
    assert dkim.sign_outbound(keyring, other) == other
    two = MESSAGE.replace(b"From: Somchai <", b"From: x@a.go.th, Somchai <")
    assert dkim.sign_outbound(keyring, two) == two
    # Someone else's signature on the message does not stop ours.
    foreign = b"DKIM-Signature: v=1; d=elsewhere.example; s=x; b=abc\r\n" + MESSAGE
    assert dkim.sign_outbound(keyring, foreign).count(b"DKIM-Signature:") == 2


# -- inbound verification and Authentication-Results ----------------------------------


def results_of(content: bytes) -> list[str]:
    return [v for n, v in email_fields(content) if n.lower() == "authentication-results"]


def test_inbound_pass_fail_none_and_permerror(keyring: dkim.DkimKeyring) -> None:
    dns = dict_dns(dns_of(keyring))
    signed = dkim.sign_outbound(keyring, MESSAGE)

    passed = dkim.authenticate_inbound(signed, HOST, dns)
    assert passed.startswith(b"Authentication-Results: mail.a.go.th;\r\n\tdkim=pass")
    assert results_of(passed) == ["mail.a.go.th; dkim=pass header.d=a.go.th header.s=eb20261207"]
    assert passed.endswith(signed)

    failed = dkim.authenticate_inbound(signed.replace(b"line one", b"line 1"), HOST, dns)
    assert results_of(failed)[0].startswith("mail.a.go.th; dkim=fail (")

    unsigned = dkim.authenticate_inbound(MESSAGE, HOST, dns)
    assert results_of(unsigned) == ["mail.a.go.th; dkim=none"]

    no_key = dkim.authenticate_inbound(signed, HOST, dict_dns({}))
    assert results_of(no_key)[0].startswith("mail.a.go.th; dkim=permerror")


def test_a_dns_timeout_is_a_temperror(keyring: dkim.DkimKeyring) -> None:
    def timing_out(name: bytes, timeout: float = 5) -> bytes | None:
        raise dkim.dkim.DnsTimeoutError("timed out")

    signed = dkim.sign_outbound(keyring, MESSAGE)
    (result,) = results_of(dkim.authenticate_inbound(signed, HOST, timing_out))
    assert result.startswith("mail.a.go.th; dkim=temperror")


def test_forged_results_claiming_our_name_are_removed_others_kept(
    keyring: dkim.DkimKeyring,
) -> None:
    forged = (
        b"Authentication-Results: MAIL.A.GO.TH; dkim=pass header.d=a.go.th\r\n"
        b"Authentication-Results: (a comment)\r\n mail.a.go.th 1; dkim=pass\r\n"
        b"Authentication-Results: mx.elsewhere.example; dkim=pass\r\n"
    )
    out = dkim.authenticate_inbound(forged + MESSAGE, HOST, dict_dns(dns_of(keyring)))
    assert results_of(out) == ["mail.a.go.th; dkim=none", "mx.elsewhere.example; dkim=pass"]
    assert out.endswith(MESSAGE)


# -- the header parsing, with hypothesis ----------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=20)


@given(st.text(max_size=300))
def test_parse_tags_and_authserv_id_never_raise(value: str) -> None:
    tags = dkim.parse_tags(value)
    assert all(name and "=" not in name for name in tags)
    dkim.authserv_id(value)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), _token))
def test_parse_tags_reads_what_a_tag_list_says(tags: dict[str, str]) -> None:
    # RFC 6376 §3.2: FWS may surround tags, values and separators.
    text = " ;\r\n\t".join(f" {name} =\r\n {value} " for name, value in tags.items())
    assert dkim.parse_tags(text) == tags


@given(_token, st.sampled_from(["", " 1", " (note) "]), st.text(max_size=40))
def test_authserv_id_is_the_first_token(name: str, version: str, rest: str) -> None:
    assert dkim.authserv_id(f" (c) {name}{version}; {rest}") == name.lower()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["Subject", "Authentication-Results", "X-Other", "authentication-results"]
            ),
            st.sampled_from([HOST, "MAIL.a.go.th", "other.example", "(x) mail.a.go.th", ""]),
            st.booleans(),
        ),
        max_size=8,
    ),
    st.binary(max_size=200),
)
def test_stripping_touches_only_our_results(
    fields: list[tuple[str, str, bool]], body: bytes
) -> None:
    head = b"".join(
        f"{name}: {value};{chr(13) + chr(10) + ' ' if fold else ' '}dkim=pass\r\n".encode()
        for name, value, fold in fields
    )
    message = head + b"\r\n" + body
    out = dkim.without_our_results(message, HOST)
    assert out.endswith(b"\r\n" + body)
    kept = email_fields(out)
    ours = [
        (n, v)
        for n, v in email_fields(message)
        if n.lower() == "authentication-results" and dkim.authserv_id(v) == HOST
    ]
    assert len(kept) == len(email_fields(message)) - len(ours)
    results = [v for n, v in kept if n.lower() == "authentication-results"]
    assert all(dkim.authserv_id(v) != HOST for v in results)


# -- the MX port, in-process ----------------------------------------------------------


def _ports_at_a_free_offset(data: Path) -> Config:
    return load_config(data, flags={"port_offset": free_port_offset()})


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    somchai = Person(f"somchai@{DOMAIN}", "x-2569", "สมชาย")
    return await make_box(DOMAIN, people=[somchai], config=_ports_at_a_free_offset)


async def test_mx_adds_authentication_results_and_strips_forgeries(
    box: Box, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The sender's domain and key: another agency's box, here just a keyring.
    sender_keys = tmp_path / "sender-keys"
    create_box_keys(sender_keys)
    sender = dkim.DkimKeyring(sender_keys)
    sender.ensure("b.go.th", TODAY)
    message = MESSAGE.replace(b"Somchai <somchai@a.go.th>", b"khun.b@b.go.th").replace(
        b"To: khun.b@b.go.th", b"To: somchai@a.go.th"
    )
    signed = dkim.sign_outbound(sender, message)
    forged = f"Authentication-Results: {box.hostname}; dkim=pass\r\n".encode()

    service = smtp_service(box, Port.MX)
    service.authenticate = InboundAuthenticator(box.hostname, DictResolver(dns_of(sender)))
    await nursery.start(service.serve)
    port = box.config.port(service.name)

    def send(content: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("khun.b@b.go.th", [f"somchai@{DOMAIN}"], content)

    await trio.to_thread.run_sync(send, forged + signed)
    await trio.to_thread.run_sync(send, signed.replace(b"line one", b"line 1"))
    # Its own Message-ID: the same message unsigned would be taken for a resend of the
    # first (a signature added on the way is not part of what makes a message itself).
    await trio.to_thread.run_sync(send, message.replace(b"<dkim-1@", b"<dkim-2@"))
    got = []
    for row in await box.mailstore.messages(f"somchai@{DOMAIN}"):
        parsed = email.message_from_bytes(
            await box.mailstore.content(row), policy=email.policy.compat32
        )
        got.append([" ".join(v.split()) for v in parsed.get_all("Authentication-Results", [])])
    # One field each, ours (the forged one is gone); its dkim= beside SPF's and DMARC's.
    assert [[v.split(";")[0] for v in g] for g in got] == [[box.hostname]] * 3
    assert [[dkim_part(v) for v in g] for g in got] == [["dkim=pass"], ["dkim=fail"], ["dkim=none"]]


# -- the command line ----------------------------------------------------------------


def test_cli_shows_rotates_and_retires(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    trio.run(init_box, data, DOMAIN)
    assert main(["dkim", "show", "--data", str(data), "--agency", DOMAIN]) == 0
    # The key's record, then the SPF and DMARC records the agency should publish too.
    line, spf_line, dmarc_line = capsys.readouterr().out.splitlines()
    assert spf_line == f'{DOMAIN}. IN TXT ( "v=spf1 mx -all" ) ; SPF'
    assert (
        dmarc_line == f'_dmarc.{DOMAIN}. IN TXT ( "v=DMARC1; p=reject; adkim=r; aspf=r" ) ; DMARC'
    )
    assert line.startswith("eb")
    assert '._domainkey.a.go.th. IN TXT ( "v=DKIM1; k=rsa; p=' in line
    assert line.endswith("; signs now")
    first = line.split(".")[0]

    assert main(["dkim", "rotate", "--data", str(data), "--agency", DOMAIN]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(first)
    assert lines[1].endswith("old key, still published")

    retire = ["dkim", "retire", "--data", str(data), "--agency", DOMAIN, "--selector", first]
    assert main(retire) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["dkim", "show", "--data", str(data), "--agency", "nobody.go.th"]) == 1
    assert "does not serve nobody.go.th" in capsys.readouterr().err


def test_zone_lines_cut_long_values_into_255_octet_strings() -> None:
    record = dkim.TxtRecord("s._domainkey.a.go.th", "v=DKIM1; p=" + "A" * 600, active=True)
    line = zone_lines(record)
    strings = line.split('( "')[1].split('" )')[0].split('" "')
    assert [len(s) for s in strings] == [255, 255, 101]
    assert "".join(strings) == record.value


# -- hostile input, and the production look-up ------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"DKIM-Signature: v=1; a=rsa-sha256; d=a.go.th; s=eb20261207; b=AAAA; bh=AAAA;"
                b" h=from\r\n",
                b"DKIM-Signature: \r\n",
                b"DKIM-Signature: v=1; d=; s=\x00; h=;;==\r\n",
                b"DKIM-Signature: v=1; a=rsa-sha256; d=x..y; s=-; c=bogus/bogus; b=!!; bh=\r\n",
                b"From: somchai@a.go.th\r\n",
                b"\tfolded continuation\r\n",
                b"Subject: \xff\xfe\r\n",
                b"no colon here\r\n",
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    st.binary(max_size=100),
)
def test_hostile_signatures_get_a_verdict_never_an_exception(
    lines: list[bytes], body: bytes
) -> None:
    message = b"".join(lines) + b"\r\n" + body
    out = dkim.authenticate_inbound(message, HOST, dict_dns({}))
    (field,) = results_of(out)
    assert field.startswith("mail.a.go.th; dkim=")
    assert "dkim=pass" not in field


def test_system_lookup_finds_misses_and_times_out(
    keyring: dkim.DkimKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = dns_of(keyring)
    (name,) = records
    with txt_server(records) as port:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port
        monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
        assert dkim.system_dnsfunc(name.encode() + b".") == records[name].encode()
        assert dkim.system_dnsfunc(b"nobody._domainkey.a.go.th.") is None
        assert dkim.system_dnsfunc(b"\xff\xfe") is None
    # A server that never answers: a temporary error, never "no key".
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver.port = silent.getsockname()[1]
        with pytest.raises(dkim.dkim.DnsTimeoutError):
            dkim.system_dnsfunc(name.encode(), timeout=0.5)


async def test_a_resend_with_another_verdict_is_still_stored_once(
    box: Box, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The first try's key look-up times out (temperror), the resend's passes: the two
    # copies differ only in our Authentication-Results, a trace field (RFC 8601 §2.1).
    sender_keys = tmp_path / "sender-keys"
    create_box_keys(sender_keys)
    sender = dkim.DkimKeyring(sender_keys)
    sender.ensure("b.go.th", TODAY)
    message = MESSAGE.replace(b"Somchai <somchai@a.go.th>", b"khun.b@b.go.th").replace(
        b"To: khun.b@b.go.th", b"To: somchai@a.go.th"
    )
    signed = dkim.sign_outbound(sender, message)
    records = dns_of(sender)
    answers = iter(["timeout", "pass"])

    class Flaky(DictResolver):
        def dkim_key(self, name: bytes, timeout: float = 5) -> bytes | None:
            if next(answers) == "timeout":
                raise dkim.dkim.DnsTimeoutError("timed out")
            return dict_dns(records)(name)

    service = smtp_service(box, Port.MX)
    service.authenticate = InboundAuthenticator(box.hostname, Flaky())
    await nursery.start(service.serve)
    port = box.config.port(service.name)

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("khun.b@b.go.th", [f"somchai@{DOMAIN}"], signed)

    await trio.to_thread.run_sync(send)
    await trio.to_thread.run_sync(send)
    (row,) = await box.mailstore.messages(f"somchai@{DOMAIN}")
    (result,) = results_of(await box.mailstore.content(row))
    assert "dkim=temperror" in result
