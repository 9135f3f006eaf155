"""The USB bundle: made by the technician's tool, refused for every fault, never crashing.

Verification is sans-I/O, so every case here is a plain function call on bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.provisioning.bundle import (
    BUNDLE_DIR,
    MANIFEST,
    BundleError,
    parse_bundle,
    read_bundle_files,
    read_payload,
    verify_bundle,
)
from appliance.security.provisioning_ca import revoke_technician_certificate

from .stick import ADMIN, DOMAIN, USERS_CSV, technician, write_bundle

BOX = "0123456789abcdef0123456789abcdef"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def stick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], bytes, Path]:
    """A good bundle's files, the CA that vouches for it, and the hub's keys folder."""
    folder = tmp_path_factory.mktemp("hub")
    tech = technician(folder)
    out = tmp_path_factory.mktemp("stick")
    write_bundle(out, tech, users=USERS_CSV)
    return read_bundle_files(out / BUNDLE_DIR), tech.ca_pem, tech.hub_keys


def verify(files: dict[str, bytes], ca_pem: bytes, **changes: object) -> x509.Certificate:
    arguments: dict[str, object] = {
        "anchors": x509.load_pem_x509_certificates(ca_pem),
        "crls": [],
        "now": NOW,
        "box_id": BOX,
        "applied": set(),
    }
    arguments.update(changes)
    return verify_bundle(parse_bundle(files), **arguments)  # type: ignore[arg-type]


def reason(files: dict[str, bytes], ca_pem: bytes, **changes: object) -> str:
    with pytest.raises(BundleError) as refused:
        verify(files, ca_pem, **changes)
    assert refused.value.message_th
    assert refused.value.message_en
    return refused.value.reason


def test_a_good_bundle_verifies_and_carries_the_answers_and_users(stick) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    signer = verify(files, ca_pem)
    assert signer.subject.rfc4514_string().startswith("CN=ช่างสมศักดิ์")
    payload = read_payload(parse_bundle(files))
    assert payload.request is not None
    assert payload.request.domain == DOMAIN
    assert payload.request.admin_address == ADMIN
    assert [u.address for u in payload.users] == [f"somchai@{DOMAIN}", f"suda@{DOMAIN}"]
    assert [u.admin for u in payload.users] == [False, True]
    assert payload.kinds == ("provision", "add-users")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_byte_flipped_anywhere_is_refused(stick, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    name = data.draw(st.sampled_from(sorted(files)))
    position = data.draw(st.integers(0, len(files[name]) - 1))
    bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
    flipped = bytearray(files[name])
    flipped[position] ^= bit
    with pytest.raises(BundleError) as refused:
        verify({**files, name: bytes(flipped)}, ca_pem)
    assert refused.value.reason in ("malformed", "tampered", "foreign")


def test_every_byte_of_every_file_flipped_is_refused(stick) -> None:  # type: ignore[no-untyped-def]
    """Exhaustive over positions (three bits each): hypothesis found damaged certificates
    that `cryptography` rejects with its own exceptions, so the sweep stays."""
    files, ca_pem, _ = stick
    flips = 0
    for name, data in files.items():
        for position in range(len(data)):
            for bit in (0x01, 0x20, 0x80):
                flipped = bytearray(data)
                flipped[position] ^= bit
                with pytest.raises(BundleError):
                    verify({**files, name: bytes(flipped)}, ca_pem)
                flips += 1
    assert flips > 3 * 2000


def test_a_missing_payload_file_is_refused(stick) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    assert reason({k: v for k, v in files.items() if k != "users.csv"}, ca_pem) == "tampered"


def test_a_bundle_signed_under_another_ca_is_foreign(stick, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    stranger = technician(tmp_path / "other-hub")
    assert reason(files, stranger.ca_pem) == "foreign"
    # A stranger who copies the real CA certificate into the chain gains nothing: the
    # box checks against its own anchors.
    out = tmp_path / "stick"
    write_bundle(out, stranger)
    forged = read_bundle_files(out / BUNDLE_DIR)
    assert reason(forged, ca_pem) == "foreign"
    assert reason(files, ca_pem, anchors=[]) == "foreign"


def test_an_expired_bundle_and_an_expired_certificate_are_refused(stick) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    assert reason(files, ca_pem, now=NOW + dt.timedelta(days=8)) == "expired"
    assert reason(files, ca_pem, now=NOW + dt.timedelta(days=31)) == "expired"
    assert reason(files, ca_pem, now=NOW - dt.timedelta(days=2)) == "expired"


def test_a_bundle_for_other_boxes_is_refused(tmp_path: Path) -> None:
    tech = technician(tmp_path / "hub")
    write_bundle(tmp_path / "stick", tech, box_ids=("f" * 32, BOX))
    files = read_bundle_files(tmp_path / "stick" / BUNDLE_DIR)
    verify(files, tech.ca_pem)
    assert reason(files, tech.ca_pem, box_id="e" * 32) == "wrong-box"


def test_a_replayed_bundle_is_refused(stick) -> None:  # type: ignore[no-untyped-def]
    files, ca_pem, _ = stick
    bundle_id = json.loads(files[MANIFEST])["bundle_id"]
    assert reason(files, ca_pem, applied={bundle_id}) == "replayed"


def test_a_revoked_technician_is_refused_by_a_crl_the_ca_signed(tmp_path: Path) -> None:
    tech = technician(tmp_path / "hub")
    write_bundle(tmp_path / "stick", tech)
    files = read_bundle_files(tmp_path / "stick" / BUNDLE_DIR)
    before = x509.load_pem_x509_crl(tech.crl_pem)
    verify(files, tech.ca_pem, crls=[before])
    after = x509.load_pem_x509_crl(revoke_technician_certificate(tech.hub_keys, tech.serial))
    assert reason(files, tech.ca_pem, crls=[after]) == "revoked"
    # A list signed by someone else revokes nothing.
    other = technician(tmp_path / "other")
    forged = x509.load_pem_x509_crl(revoke_technician_certificate(other.hub_keys, tech.serial))
    verify(files, tech.ca_pem, crls=[forged])


def test_the_tool_refuses_answers_the_box_could_not_read(tmp_path: Path) -> None:
    tech = technician(tmp_path / "hub")
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "stick", tech, answers=b"[agency\n")
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "stick", tech, users=b"email,name\nx@y,z\n")
    assert not (tmp_path / "stick" / BUNDLE_DIR / MANIFEST).exists()


names = st.sampled_from(
    ["manifest.json", "manifest.sig", "signer.pem", "answers.toml", "users.csv",
     "token.txt", "provisioning-crl.pem", "other"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(files=st.dictionaries(names, st.binary(max_size=300)))
def test_the_parser_refuses_any_bytes_with_a_bundle_error(files: dict[str, bytes]) -> None:
    try:
        bundle = parse_bundle(files)
        read_payload(bundle)
    except BundleError as exc:
        why = exc.reason
    else:
        return
    assert why == "malformed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(["format", "bundle_id", "created_at", "not_after", "box_ids", "files"]),
       value=json_values)  # fmt: skip
def test_any_manifest_field_is_checked_before_use(stick, key: str, value: object) -> None:  # type: ignore[no-untyped-def]
    files, _, _ = stick
    manifest = json.loads(files[MANIFEST])
    manifest[key] = value
    try:
        parse_bundle({**files, MANIFEST: json.dumps(manifest).encode()})
    except BundleError as exc:
        why = exc.reason
    else:
        return
    assert why == "malformed"
