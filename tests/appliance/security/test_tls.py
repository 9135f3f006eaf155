"""Tests of the box's local CA and server certificate, down to a real TLS handshake."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.security import keys as box_keys
from appliance.security import tls
from appliance.security.certificates import private_pem
from appliance.security.tls import (
    TLSPaths,
    client_ssl_context,
    ensure_tls_material,
    server_ssl_context,
)
from tests.harness import require_tool

HOST = "mail.moph.go.th"
DOMAIN = "moph.go.th"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keys_dir = tmp_path / "keys"
    ensure_tls_material(keys_dir, [HOST], [DOMAIN])
    return keys_dir


def _files(paths: TLSPaths) -> dict[str, bytes]:
    return {
        name: getattr(paths, name).read_bytes()
        for name in ("ca_cert", "ca_key", "server_cert", "server_key")
    }


def _chain(paths: TLSPaths) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(paths.server_cert.read_bytes())


def _ca_key(paths: TLSPaths) -> ec.EllipticCurvePrivateKey:
    pem = box_keys.unseal(paths.ca_key.parent, tls.CA_KEY_PURPOSE, paths.ca_key.read_bytes())
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _sans(cert: x509.Certificate) -> tuple[set[str], set[object]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.IPAddress))


# --- generation --------------------------------------------------------------------


def test_files_and_modes(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    assert sorted(p.name for p in keys.iterdir()) == [
        "ca.key.sealed",
        "ca.pem",
        "provisioning.secret",
        "server.key",
        "server.pem",
    ]
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_cert.stat().st_mode) == 0o644
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def test_ca_certificate(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = _ca_key(paths)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert ca.public_key() == key.public_key()
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"edgebox local CA {HOST}"
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3652)


def test_server_certificate(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    leaf, ca = _chain(paths)  # leaf first, then the CA
    assert ca.public_bytes(serialization.Encoding.PEM) == paths.ca_cert.read_bytes()
    leaf.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert leaf.public_key() == key.public_key()
    dns, ips = _sans(leaf)
    assert dns == {HOST, "localhost"}
    assert ips == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Issue 16: the whole span, backdating included, within the 397 days every client takes.
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(days=397)


def test_hostnames_are_normalised(tmp_path: Path) -> None:
    paths = ensure_tls_material(
        tmp_path, ["MAIL.Example.go.th.", "10.1.2.3", "สพฐ.ไทย", "mail.example.go.th"]
    )
    leaf = _chain(paths)[0]
    dns, ips = _sans(leaf)
    thai = "สพฐ.ไทย".encode("idna").decode()
    assert dns == {"mail.example.go.th", thai, "localhost"}
    assert ipaddress.ip_address("10.1.2.3") in ips
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mail.example.go.th"


def test_no_hostnames_gives_localhost(tmp_path: Path) -> None:
    paths = ensure_tls_material(tmp_path, [])
    assert _sans(_chain(paths)[0])[0] == {"localhost"}


@pytest.mark.parametrize("bad", ["", "under_score.go.th", "-dash.go.th", "a..b", "sp ace.go.th"])
def test_invalid_hostname_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid hostname"):
        ensure_tls_material(tmp_path, [bad])
    assert not any(tmp_path.iterdir())


def test_single_string_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="sequence of names"):
        ensure_tls_material(tmp_path, HOST)


# --- idempotence and renewal -------------------------------------------------------


def test_second_run_changes_nothing(keys: Path) -> None:
    before = _files(TLSPaths.in_dir(keys))
    ensure_tls_material(keys, [HOST])
    ensure_tls_material(keys, ["localhost", HOST.upper()])  # a subset, other spelling
    assert _files(TLSPaths.in_dir(keys)) == before
    assert not [p for p in keys.iterdir() if p.name.endswith(".tmp")]


def test_new_hostname_reissues_server_from_same_ca(keys: Path) -> None:
    before = _files(TLSPaths.in_dir(keys))
    paths = ensure_tls_material(keys, [HOST, "box2.moph.go.th"])
    after = _files(paths)
    assert after["ca_cert"] == before["ca_cert"]
    assert after["ca_key"] == before["ca_key"]
    assert after["server_cert"] != before["server_cert"]
    assert after["server_key"] != before["server_key"]
    leaf, ca = _chain(paths)
    leaf.verify_directly_issued_by(ca)
    assert {"box2.moph.go.th", HOST} <= _sans(leaf)[0]
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600


def test_server_near_expiry_is_reissued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "SERVER_VALIDITY", dt.timedelta(days=20))
    before = _files(ensure_tls_material(tmp_path, [HOST]))
    monkeypatch.undo()
    paths = ensure_tls_material(tmp_path, [HOST])
    after = _files(paths)
    assert after["ca_cert"] == before["ca_cert"]
    assert after["server_cert"] != before["server_cert"]
    leaf = _chain(paths)[0]
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=390)


def test_ca_near_expiry_replaces_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "CA_VALIDITY", dt.timedelta(days=20))
    before = _files(ensure_tls_material(tmp_path, [HOST]))
    # The server certificate never outlives its CA.
    leaf, ca = _chain(TLSPaths.in_dir(tmp_path))
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    monkeypatch.undo()
    after = _files(ensure_tls_material(tmp_path, [HOST]))
    assert after["ca_cert"] != before["ca_cert"]
    assert after["server_cert"] != before["server_cert"]
    leaf, ca = _chain(TLSPaths.in_dir(tmp_path))
    leaf.verify_directly_issued_by(ca)


def test_mismatched_server_key_is_repaired(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    # As if power failed after the new key was written but before its certificate.
    paths.server_key.write_bytes(private_pem(ec.generate_private_key(ec.SECP256R1())))
    ensure_tls_material(keys, [HOST])
    leaf = _chain(paths)[0]
    key = serialization.load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert leaf.public_key() == key.public_key()


def test_missing_ca_key_replaces_everything(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    old_ca = paths.ca_cert.read_bytes()
    paths.ca_key.unlink()
    ensure_tls_material(keys, [HOST])
    assert paths.ca_cert.read_bytes() != old_ca
    leaf, ca = _chain(paths)
    leaf.verify_directly_issued_by(ca)


def test_garbage_server_cert_is_replaced(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    paths.server_cert.write_bytes(b"not a certificate")
    ensure_tls_material(keys, [HOST])
    assert len(_chain(paths)) == 2


# --- contexts and a real handshake -------------------------------------------------


def test_contexts(keys: Path) -> None:
    server = server_ssl_context(keys)
    client = client_ssl_context(keys)
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname
    # Trusts this box's CA only: no system roots.
    assert client.cert_store_stats()["x509_ca"] == 1


def test_contexts_need_the_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ensure_tls_material"):
        server_ssl_context(tmp_path)
    with pytest.raises(FileNotFoundError, match="ensure_tls_material"):
        client_ssl_context(tmp_path)


async def _handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, hostname: str
) -> bytes:
    """Run a TLS session over an in-memory stream; return what the server received."""
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_context, server_hostname=hostname)
    server = trio.SSLStream(server_raw, server_context, server_side=True)
    received = b""

    async def serve() -> None:
        nonlocal received
        try:
            await server.do_handshake()
            received = bytes(await server.receive_some())
            await server.send_all(b"250 ok")
        except trio.BrokenResourceError:
            pass  # the client refused us; the test looks at the client side

    refused: trio.BrokenResourceError | None = None
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                await client.do_handshake()
                await client.send_all(b"EHLO client")
                assert await client.receive_some() == b"250 ok"
            except trio.BrokenResourceError as exc:
                # Raised after the nursery, so the test sees it bare, not in a group.
                refused = exc
            finally:
                # Let the server see EOF if the client gave up mid-handshake.
                await trio.aclose_forcefully(client_raw)
    if refused is not None:
        raise refused
    return received


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1", HOST])
async def test_handshake_verifies_hostname(keys: Path, hostname: str) -> None:
    received = await _handshake(server_ssl_context(keys), client_ssl_context(keys), hostname)
    assert received == b"EHLO client"


async def test_handshake_refuses_wrong_hostname(keys: Path) -> None:
    with pytest.raises(trio.BrokenResourceError) as info:
        await _handshake(server_ssl_context(keys), client_ssl_context(keys), "evil.example")
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "mismatch" in cause.verify_message


async def test_handshake_refuses_another_boxs_ca(keys: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_tls_material(other, [HOST])
    with pytest.raises(trio.BrokenResourceError) as info:
        await _handshake(server_ssl_context(keys), client_ssl_context(other), HOST)
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError)
    assert "self-signed" in cause.verify_message


# --- issue 16: lifetime, renewal, name constraints, the sealed CA key, ciphers -----


def test_renewal_is_due_at_two_thirds_of_life(keys: Path) -> None:
    leaf = _chain(TLSPaths.in_dir(keys))[0]
    start = leaf.not_valid_before_utc
    assert not tls.server_renewal_due(leaf, start + dt.timedelta(days=264))
    assert tls.server_renewal_due(leaf, start + dt.timedelta(days=266))
    # And a run started after that point reissues it.
    before = TLSPaths.in_dir(keys).server_cert.read_bytes()
    ensure_tls_material(keys, [HOST], now=start + dt.timedelta(days=300))
    assert TLSPaths.in_dir(keys).server_cert.read_bytes() != before


def test_ca_name_constraints(keys: Path) -> None:
    ca = x509.load_pem_x509_certificate(TLSPaths.in_dir(keys).ca_cert.read_bytes())
    extension = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical  # RFC 5280 §4.2.1.10
    permitted = extension.value.permitted_subtrees or []
    dns = {g.value for g in permitted if isinstance(g, x509.DNSName)}
    ips = {g.value for g in permitted if isinstance(g, x509.IPAddress)}
    # mail.moph.go.th is under the agency's domain, so it adds no subtree of its own.
    assert dns == {DOMAIN, "localhost"}
    assert ips == {ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")}
    assert extension.value.excluded_subtrees is None


def test_ca_constraints_take_the_box_ips(tmp_path: Path) -> None:
    paths = ensure_tls_material(tmp_path, ["box.example.go.th", "10.1.2.3"], ["moe.go.th"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    permitted = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    dns = {g.value for g in permitted.permitted_subtrees or [] if isinstance(g, x509.DNSName)}
    ips = {g.value for g in permitted.permitted_subtrees or [] if isinstance(g, x509.IPAddress)}
    assert dns == {"moe.go.th", "box.example.go.th", "localhost"}
    assert ipaddress.ip_network("10.1.2.3/32") in ips


def _foreign_leaf(paths: TLSPaths, name: str) -> x509.Certificate:
    """Sign a server certificate for *name* with the box CA, as a thief of its key would."""
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(_ca_key(paths), hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("www.moph.go.th", True), ("www.krungthai.com", False), ("moph.go.th.evil.com", False)],
)
def test_openssl_applies_the_name_constraints(
    keys: Path, tmp_path: Path, name: str, accepted: bool
) -> None:
    openssl = require_tool("openssl")
    paths = TLSPaths.in_dir(keys)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(_foreign_leaf(paths, name).public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(
        [openssl, "verify", "-CAfile", str(paths.ca_cert), str(leaf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if accepted:
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        assert done.returncode != 0
        assert "permitted subtree violation" in done.stdout + done.stderr


def test_ca_key_is_sealed(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    sealed = paths.ca_key.read_bytes()
    assert b"PRIVATE KEY" not in sealed
    with pytest.raises(ValueError, match="Unable to load PEM"):
        serialization.load_pem_private_key(sealed, password=None)
    # Without the provisioning secret the CA key is lost, and a new CA is made: the
    # certificate on disk is no use without its key.
    (keys / "provisioning.secret").write_bytes(bytes(32))
    old_ca = paths.ca_cert.read_bytes()
    ensure_tls_material(keys, [HOST])
    assert paths.ca_cert.read_bytes() != old_ca


def test_plain_ca_key_of_an_older_box_is_sealed_and_shredded(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    key = _ca_key(paths)
    before = _files(paths)
    paths.ca_key.unlink()
    legacy = keys / "ca.key"
    legacy.write_bytes(private_pem(key))
    ensure_tls_material(keys, [HOST])
    assert not legacy.exists()
    assert _ca_key(paths).private_numbers() == key.private_numbers()
    # The same CA and server certificate: nothing a client trusts has changed.
    assert paths.ca_cert.read_bytes() == before["ca_cert"]
    assert paths.server_cert.read_bytes() == before["server_cert"]


def _unconstrained_ca(paths: TLSPaths) -> bytes:
    """Replace the CA on disk by one without name constraints, as older boxes have."""
    key = _ca_key(paths)
    old = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(old.not_valid_before_utc)
        .not_valid_after(old.not_valid_after_utc)
    )
    for extension in old.extensions:
        if not isinstance(extension.value, x509.NameConstraints):
            builder = builder.add_extension(extension.value, extension.critical)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    paths.ca_cert.write_bytes(pem)
    paths.server_cert.unlink()
    return pem


def test_older_unconstrained_ca_is_kept(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    pem = _unconstrained_ca(paths)
    # Even for a name outside the agency's domain: the phones trusting it keep working.
    ensure_tls_material(keys, [HOST, "box.other.go.th"])
    assert paths.ca_cert.read_bytes() == pem
    assert tls.ca_name_constraints(x509.load_pem_x509_certificate(pem)) is None
    leaf, ca = _chain(paths)
    leaf.verify_directly_issued_by(ca)


def test_constrained_ca_that_cannot_name_the_box_is_replaced(keys: Path) -> None:
    paths = TLSPaths.in_dir(keys)
    before = paths.ca_cert.read_bytes()
    ensure_tls_material(keys, [HOST, "box.other.go.th"], [DOMAIN])
    assert paths.ca_cert.read_bytes() != before
    leaf, ca = _chain(paths)
    leaf.verify_directly_issued_by(ca)
    assert "box.other.go.th" in _sans(leaf)[0]


async def test_reload_reaches_live_contexts(keys: Path) -> None:
    context = server_ssl_context(keys)
    paths = TLSPaths.in_dir(keys)
    first = _chain(paths)[0]
    ensure_tls_material(keys, [HOST, "box2.moph.go.th"])
    assert tls.reload_server_contexts(keys) >= 1
    client = client_ssl_context(keys)
    received = await _handshake(context, client, "box2.moph.go.th")
    assert received == b"EHLO client"
    assert _chain(paths)[0].serial_number != first.serial_number


def test_tls12_suites_are_aead_with_forward_secrecy(keys: Path) -> None:
    for context in (server_ssl_context(keys), client_ssl_context(keys)):
        suites = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert suites
        for suite in suites:
            assert suite["kea"] == "kx-ecdhe", suite["name"]
            assert suite["aead"], suite["name"]


async def test_cbc_client_is_refused(keys: Path) -> None:
    client_context = client_ssl_context(keys)
    client_context.maximum_version = ssl.TLSVersion.TLSv1_2
    client_context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, client_context, server_hostname=HOST)
    server = trio.SSLStream(server_raw, server_ssl_context(keys), server_side=True)
    outcomes: list[str] = []

    async def side(name: str, stream: trio.SSLStream[trio.abc.Stream]) -> None:
        try:
            await stream.do_handshake()
            outcomes.append(f"{name} ok")
        except trio.BrokenResourceError:
            outcomes.append(f"{name} refused")
        finally:
            await trio.aclose_forcefully(stream.transport_stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "server", server)
            nursery.start_soon(side, "client", client)
    assert sorted(outcomes) == ["client refused", "server refused"]


def test_older_long_certificate_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "SERVER_VALIDITY", dt.timedelta(days=826))
    before = _files(ensure_tls_material(tmp_path, [HOST]))
    monkeypatch.undo()
    paths = ensure_tls_material(tmp_path, [HOST])
    assert paths.server_cert.read_bytes() != before["server_cert"]
    assert paths.ca_cert.read_bytes() == before["ca_cert"]
    leaf = _chain(paths)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(days=397)
