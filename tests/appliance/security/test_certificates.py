"""The certificate factory: each of the seven kinds it makes keeps its exact shape.

Boxes, phones and the hub already trust certificates of these shapes, so a change in a
CA's extensions, criticality, key type or lifetime is a change in who trusts what. Each
kind is made through the module that owns it, and its extensions are compared, in
order, with what the builders made before there was one factory.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from appliance.provisioning.device import ensure_device
from appliance.security.certificates import (
    CertificateAuthority,
    ca_name,
    load_sealed_ca,
    new_ca,
    new_key,
    private_pem,
    signing_request,
    store_sealed_ca,
)
from appliance.security.keys import ensure_provisioning_secret
from appliance.security.provisioning_ca import (
    ensure_provisioning_ca,
    issue_technician_certificate,
)
from appliance.security.tls import ensure_tls_material
from appliance.sync.hub.ca import ensure_sync_ca, issue_box_certificate, load_csr

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

BC = ExtensionOID.BASIC_CONSTRAINTS
KU = ExtensionOID.KEY_USAGE
NC = ExtensionOID.NAME_CONSTRAINTS
EKU = ExtensionOID.EXTENDED_KEY_USAGE
SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME
SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER
AKI = ExtensionOID.AUTHORITY_KEY_IDENTIFIER


def shape(cert: x509.Certificate) -> list[tuple[x509.ObjectIdentifier, bool]]:
    return [(ext.oid, ext.critical) for ext in cert.extensions]


def is_p256(cert: x509.Certificate) -> bool:
    key = cert.public_key()
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def usage(cert: x509.Certificate) -> tuple[bool, bool, bool]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    return ku.digital_signature, ku.key_cert_sign, ku.crl_sign


def test_the_box_ca_and_its_server_certificate(tmp_path: Path) -> None:
    paths = ensure_tls_material(tmp_path, ["mail.moph.go.th"], ["moph.go.th"], now=NOW)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]

    assert shape(ca) == [(BC, True), (KU, True), (NC, True), (SKI, False), (AKI, False)]
    assert ca.subject.rfc4514_string() == "CN=edgebox local CA mail.moph.go.th,O=edgebox"
    assert ca.not_valid_before_utc == NOW - dt.timedelta(days=1)
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert usage(ca) == (False, True, True)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0

    assert shape(server) == [
        (BC, True), (KU, True), (EKU, False), (SAN, False), (SKI, False), (AKI, False)
    ]  # fmt: skip
    assert server.subject.rfc4514_string() == "CN=mail.moph.go.th"
    assert server.not_valid_after_utc - server.not_valid_before_utc == dt.timedelta(days=397)
    assert usage(server) == (True, False, False)
    assert is_p256(ca)
    assert is_p256(server)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)


def test_the_hub_sync_ca_and_a_box_certificate(tmp_path: Path) -> None:
    ca = ensure_sync_ca(tmp_path, NOW)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    box = issue_box_certificate(ca, load_csr(pem), "box-1", NOW)

    assert shape(ca.cert) == [(BC, True), (KU, True), (SKI, False), (AKI, False)]
    assert ca.cert.subject.rfc4514_string() == "CN=edgebox hub sync CA,O=edgebox"
    assert ca.cert.not_valid_before_utc == NOW - dt.timedelta(days=1)
    assert ca.cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert usage(ca.cert) == (False, True, True)

    assert shape(box) == [
        (BC, True), (KU, True), (EKU, False), (SAN, False), (SKI, False), (AKI, False)
    ]  # fmt: skip
    assert box.subject.rfc4514_string() == "CN=box-1"
    assert box.not_valid_before_utc == NOW - dt.timedelta(days=1)
    assert box.not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert box.public_key() == key.public_key()  # the box's P-384 key, as it asked
    assert is_p256(ca.cert)


def test_the_provisioning_ca_and_a_technician_certificate(tmp_path: Path) -> None:
    ca = ensure_provisioning_ca(tmp_path)
    _, chain = issue_technician_certificate(tmp_path, "Somchai", days=7)
    technician = x509.load_pem_x509_certificates(chain)[0]

    # No authority key identifier on this CA, and none of either on its leaves: as made
    # before the factory, so sticks signed then verify the same way.
    assert shape(ca.cert) == [(BC, True), (KU, True), (SKI, False)]
    assert ca.cert.subject.rfc4514_string() == "CN=edgebox hub provisioning CA,O=edgebox"
    life = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert life == dt.timedelta(days=3650, hours=1)
    assert shape(technician) == [(BC, True), (KU, True), (EKU, False)]
    assert technician.subject.rfc4514_string() == "CN=Somchai,O=edgebox technician"
    life = technician.not_valid_after_utc - technician.not_valid_before_utc
    assert life == dt.timedelta(days=7, hours=1)
    assert is_p256(ca.cert)
    assert is_p256(technician)


def test_a_sealed_ca_loads_back_and_a_mismatched_pair_does_not(tmp_path: Path) -> None:
    ensure_provisioning_secret(tmp_path)
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key.sealed"
    ca = new_ca(ca_name("test CA"), not_before=NOW, not_after=NOW + dt.timedelta(days=90))
    store_sealed_ca(ca, cert_path, key_path, "test-ca")
    assert b"PRIVATE KEY" not in key_path.read_bytes()

    def load(purpose: str = "test-ca", now: dt.datetime = NOW) -> CertificateAuthority | None:
        return load_sealed_ca(
            cert_path, key_path, purpose, now=now, renew_before=dt.timedelta(days=30)
        )

    loaded = load()
    assert loaded is not None
    assert loaded.pem == ca.pem
    assert private_pem(loaded.key) == private_pem(ca.key)
    # Sealed for another purpose, or ending within the renewal window: made anew.
    assert load(purpose="sync-ca-key") is None
    assert load(now=NOW + dt.timedelta(days=61)) is None
    other = new_ca(ca_name("other CA"), not_before=NOW, not_after=NOW + dt.timedelta(days=90))
    cert_path.write_bytes(other.pem)
    assert load() is None


def test_the_device_certificate_of_an_unprovisioned_box(tmp_path: Path) -> None:
    device = ensure_device(tmp_path)
    cert = x509.load_pem_x509_certificate(device.cert_file.read_bytes())

    assert shape(cert) == [(SAN, False), (BC, True), (EKU, False)]
    assert cert.issuer == cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == device.box_id
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3651)
    assert is_p256(cert)


def test_a_box_signing_request_is_one_the_hub_accepts() -> None:
    key = new_key()
    csr = load_csr(signing_request(key, "box-1"))
    assert csr.public_key() == key.public_key()
    assert csr.subject.rfc4514_string() == "CN=box-1"
