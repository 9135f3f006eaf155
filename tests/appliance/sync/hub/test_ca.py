"""The hub's sync CA and the box certificates it signs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.hub.ca import (
    BOX_VALIDITY,
    CertificateRequestError,
    box_id_of,
    ensure_sync_ca,
    issue_box_certificate,
    load_csr,
    valid_box_id,
)

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _csr_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "x") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_box_certificate_names_the_box_and_is_for_clients_only(tmp_path: Path) -> None:
    ca = ensure_sync_ca(tmp_path, NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    # The CSR asks for another name and a DNS SAN: the hub ignores both.
    cert = issue_box_certificate(ca, load_csr(_csr_pem(key, "someone-else")), "abc123", NOW)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "abc123"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:edgebox:box:abc123"]
    assert san.get_values_for_type(x509.DNSName) == []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == NOW + BOX_VALIDITY
    assert box_id_of(cert) == "abc123"


def test_sync_ca_is_made_once_and_kept(tmp_path: Path) -> None:
    first = ensure_sync_ca(tmp_path, NOW)
    again = ensure_sync_ca(tmp_path, NOW)
    assert first.pem == again.pem
    assert (tmp_path / "sync-ca.key.sealed").stat().st_mode & 0o077 == 0
    # Near its end it is replaced.
    later = ensure_sync_ca(tmp_path, NOW + dt.timedelta(days=3640))
    assert later.pem != first.pem


def test_csr_with_a_broken_signature_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(
        x509.load_pem_x509_csr(_csr_pem(key).encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRequestError, match="signature"):
        load_csr(tampered.decode())


def test_csr_with_an_rsa_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CertificateRequestError, match="EC"):
        load_csr(_csr_pem(key))


@given(st.one_of(st.text(max_size=300), st.none(), st.integers()))
def test_garbage_is_never_a_csr(text: object) -> None:
    with pytest.raises(CertificateRequestError):
        load_csr(text)


@pytest.mark.parametrize("box_id", ["", "A", "-a", "a" * 41, "a b", "ก", "a/b"])
def test_bad_box_ids_are_refused(tmp_path: Path, box_id: str) -> None:
    assert not valid_box_id(box_id)
    ca = ensure_sync_ca(tmp_path, NOW)
    csr = load_csr(_csr_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CertificateRequestError):
        issue_box_certificate(ca, csr, box_id, NOW)


def test_certificate_without_the_box_uri_names_no_box(tmp_path: Path) -> None:
    ca = ensure_sync_ca(tmp_path, NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "abc")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca.key, hashes.SHA256())
    )
    assert box_id_of(cert) is None


def test_sync_ca_key_is_sealed_and_an_older_plain_key_is_sealed_in_place(tmp_path: Path) -> None:
    """Issue 16: CA keys are protected at rest like the data key."""
    from appliance.security.certificates import private_pem

    first = ensure_sync_ca(tmp_path, NOW)
    sealed = tmp_path / "sync-ca.key.sealed"
    assert b"PRIVATE KEY" not in sealed.read_bytes()
    # As an older hub left it: the same key in the clear.
    sealed.unlink()
    (tmp_path / "sync-ca.key").write_bytes(private_pem(first.key))
    again = ensure_sync_ca(tmp_path, NOW)
    assert again.pem == first.pem  # the same CA: enrolled boxes' certificates stay valid
    assert not (tmp_path / "sync-ca.key").exists()
    assert sealed.exists()
