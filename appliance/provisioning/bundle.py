"""The signed USB provisioning bundle: its format, how it is made and how it is checked.

A bundle is a folder ``edgebox-provisioning`` at the top of a stick (`BUNDLE_DIR`)::

    manifest.json      {"format": "edgebox-provisioning/1", "bundle_id": 32 hex digits,
                        "created_at": unix s, "not_after": unix s,
                        "box_ids": [box id, ...] (empty: any box),
                        "files": {name: SHA-256 hex, ...},
                        "update": {"file", "size", "sha256"} (optional)}
    manifest.sig       ECDSA P-256 / SHA-256 signature (DER) over manifest.json's bytes
    signer.pem         the technician's certificate, then its CA's (``edgebox hub
                       provisioning-cert``)
    provisioning-crl.pem  optional: the hub's newest revocation list
    answers.toml       the setup answers (the wizard's: agency, first admin, uplink)
    users.csv          optional: users to add
    token.txt          optional: an enrolment token for the hub named in the answers
    *.raucb            optional: a signed system update (RAUC bundle) the manifest's
                       ``update`` names with its size and SHA-256; too big to read
                       whole, it is hashed as it is read (`check_update_file`) and then
                       RAUC checks its own signature (appliance.update.install)

Only the manifest is signed; every other file (payload, certificates, CRL) is bound to
it by its hash in the manifest, so a byte flipped anywhere (manifest, signature,
certificate or payload) is refused. A file the manifest does not name is ignored (a
stick may hold other things, and the result files).

Checking is sans-I/O: `parse_bundle` takes the folder's files as bytes, `verify_bundle`
takes the trust anchors, revocation lists, the time, the box id and the ids applied
before. What is applied and how is appliance.provisioning.usb.

What this is not: encryption. The answers (the first admin's password, users'
passwords, the token) are on the stick in the clear, signed only; docs/provisioning.md
tells the technician to wipe the stick after use.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tomllib
import uuid
import warnings
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.provisioning.provision import ProvisioningRequest
from appliance.provisioning.wizard import Draft, StepError, check_step
from appliance.store.files import fsync_dir, write_atomically

BUNDLE_DIR: Final = "edgebox-provisioning"
FORMAT: Final = "edgebox-provisioning/1"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
SIGNER: Final = "signer.pem"
CRL: Final = "provisioning-crl.pem"
ANSWERS: Final = "answers.toml"
USERS: Final = "users.csv"
TOKEN: Final = "token.txt"  # noqa: S105 (a file name)
PAYLOAD_FILES: Final = (ANSWERS, USERS, TOKEN)
#: Every file but the manifest and its signature is hashed in the manifest, the
#: certificates too: the box ignores the CA a stick brings, and a flipped byte there
#: must still be refused.
HASHED_FILES: Final = (*PAYLOAD_FILES, SIGNER, CRL)
#: What the box reads off a stick, and no more: a stick is untrusted until verified.
MAX_FILE: Final = 1024 * 1024
#: What `cryptography` raises on a damaged certificate or CRL, at load or on access.
_X509_ERRORS: Final = (
    ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
)  # fmt: skip
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: An update bundle's name on the stick.
_UPDATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\.raucb")
#: The largest update bundle a stick may carry (a root slot is smaller).
MAX_UPDATE: Final = 2 * 1024**3
_HEX32 = re.compile(r"[0-9a-f]{32}")


class BundleError(Exception):
    """A bundle the box refuses, with the reason in English and Thai."""

    def __init__(self, reason: str, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        #: A short stable word for logs and tests: malformed, tampered, foreign, ...
        self.reason = reason
        self.message_en = message_en
        self.message_th = message_th


def _malformed(what: str) -> BundleError:
    return BundleError("malformed", f"malformed bundle: {what}", f"ชุดข้อมูลไม่ถูกรูปแบบ: {what}")


@dataclass(frozen=True)
class UpdateFile:
    """The system update a stick carries: its file beside the manifest, size, hash."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    bundle_id: str
    created_at: int
    not_after: int
    box_ids: tuple[str, ...]
    files: Mapping[str, str]
    update: UpdateFile | None = None


@dataclass(frozen=True)
class Bundle:
    """A parsed (not yet verified) bundle: the manifest, its signature and the files."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    chain: tuple[x509.Certificate, ...]
    crl: x509.CertificateRevocationList | None
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class UserEntry:
    address: str
    name_th: str
    name_en: str | None
    unit: str | None
    password: str
    admin: bool


@dataclass(frozen=True)
class Payload:
    """What a verified bundle asks for."""

    request: ProvisioningRequest | None
    users: tuple[UserEntry, ...] = ()
    token: str | None = None
    hub_url: str | None = None
    kinds: tuple[str, ...] = field(default=())
    #: The wizard's network and time answers (wizard.check_step), or None.
    network: dict[str, Any] | None = None
    time: dict[str, Any] | None = None
    #: A system update to install (appliance.update.install), or None.
    update: UpdateFile | None = None


# --- parsing (structure only) -----------------------------------------------------------


def parse_bundle(files: Mapping[str, bytes]) -> Bundle:
    """Parse the bundle folder's *files* (name -> bytes); raise `BundleError` if malformed."""
    for name in (MANIFEST, SIGNATURE, SIGNER):
        if name not in files:
            raise _malformed(f"{name} is missing")
    raw = files[MANIFEST]
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed("manifest.json is not JSON") from None
    manifest = _manifest(body)
    try:
        with warnings.catch_warnings():
            # `cryptography` only warns of some damage (an attribute's length): here a
            # damaged certificate is a refused one.
            warnings.simplefilter("error")
            chain = tuple(x509.load_pem_x509_certificates(files[SIGNER]))
            for cert in chain:
                _parsed_now(cert)
    except (*_X509_ERRORS, Warning):
        raise _malformed("signer.pem holds no readable certificate") from None
    crl = None
    if CRL in files and CRL in manifest.files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                crl = x509.load_pem_x509_crl(files[CRL])
                _ = (crl.issuer, crl.extensions, list(crl))
        except (*_X509_ERRORS, Warning):
            raise _malformed("provisioning-crl.pem is not a revocation list") from None
    named = {name: files[name] for name in manifest.files if name in files}
    return Bundle(manifest, raw, files[SIGNATURE], chain, crl, named)


def _parsed_now(cert: x509.Certificate) -> None:
    """Touch every field verification reads: `cryptography` parses them lazily, and a
    damaged field must be a malformed bundle here, not a ValueError later."""
    _ = (cert.subject, cert.issuer, cert.serial_number, cert.extensions)
    _ = (cert.not_valid_before_utc, cert.not_valid_after_utc)
    _ = (cert.public_key(), cert.signature_hash_algorithm)


def _manifest(body: Any) -> Manifest:
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _malformed(f"not an {FORMAT} manifest")
    bundle_id = body.get("bundle_id")
    if not isinstance(bundle_id, str) or not _HEX32.fullmatch(bundle_id):
        raise _malformed("bundle_id")
    created_at, not_after = body.get("created_at"), body.get("not_after")
    for value in (created_at, not_after):
        # type() rather than isinstance: JSON true is not a time.
        if type(value) is not int or not 0 <= value < 2**40:
            raise _malformed("created_at / not_after")
    assert isinstance(created_at, int)
    assert isinstance(not_after, int)
    box_ids = body.get("box_ids", [])
    if not isinstance(box_ids, list) or not all(
        isinstance(b, str) and _HEX32.fullmatch(b) for b in box_ids
    ):
        raise _malformed("box_ids")
    update = _update_file(body.get("update"))
    hashes_ = body.get("files")
    if (
        not isinstance(hashes_, dict)
        or SIGNER not in hashes_
        or not (update is not None or any(n in PAYLOAD_FILES for n in hashes_))
        or not all(n in HASHED_FILES and isinstance(h, str) and _HEX64.fullmatch(h)
                   for n, h in hashes_.items())
    ):  # fmt: skip
        raise _malformed("files")
    return Manifest(bundle_id, created_at, not_after, tuple(box_ids), dict(hashes_), update)


def _update_file(raw: Any) -> UpdateFile | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _malformed("update")
    name, size, digest = raw.get("file"), raw.get("size"), raw.get("sha256")
    if not (isinstance(name, str) and _UPDATE_NAME.fullmatch(name)
            and type(size) is int and 0 < size <= MAX_UPDATE
            and isinstance(digest, str) and _HEX64.fullmatch(digest)):  # fmt: skip
        raise _malformed("update")
    return UpdateFile(name, size, digest)


def check_update_file(folder: Path, update: UpdateFile) -> Path:
    """The update bundle on the stick, if it is the one the signed manifest names (size
    and SHA-256, read in chunks); raise `BundleError` ("tampered") otherwise."""
    path = folder / update.name
    tampered = BundleError(
        "tampered", f"{update.name} does not match the signed manifest",
        f"ไฟล์ {update.name} ไม่ตรงกับรายการที่ลงลายมือชื่อ (ถูกแก้ไขหรือหายไป)",
    )  # fmt: skip
    if path.is_symlink() or not path.is_file() or path.stat().st_size != update.size:
        raise tampered
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != update.sha256:
        raise tampered
    return path


# --- verification -------------------------------------------------------------------------


def verify_bundle(
    bundle: Bundle,
    *,
    anchors: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    now: dt.datetime,
    box_id: str,
    applied: Set[str],
) -> x509.Certificate:
    """Check signature, chain, revocation, time, box and replay; return the signer's cert.

    Raise `BundleError` with the first reason found. The order matters only for the
    message: a bundle refused for any reason changes nothing.
    """
    signer, issuer = _trusted_signer(bundle.chain, anchors, now)
    try:
        key = signer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(bundle.signature, bundle.manifest_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BundleError(
            "tampered", "the manifest's signature does not match (the bundle was changed)",
            "ลายมือชื่อของชุดข้อมูลไม่ตรง (ชุดข้อมูลถูกแก้ไข)",
        ) from None  # fmt: skip
    for name, digest in bundle.manifest.files.items():
        data = bundle.files.get(name)
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            raise BundleError(
                "tampered", f"{name} does not match the signed manifest",
                f"ไฟล์ {name} ไม่ตรงกับรายการที่ลงลายมือชื่อ (ถูกแก้ไขหรือหายไป)",
            )  # fmt: skip
    if revoked(signer, issuer, [*crls, *([bundle.crl] if bundle.crl is not None else [])]):
        raise BundleError(
            "revoked", "the technician's certificate was revoked",
            "ใบรับรองของช่างเทคนิคถูกเพิกถอนแล้ว",
        )  # fmt: skip
    if now.timestamp() > bundle.manifest.not_after:
        raise BundleError(
            "expired", "the bundle has expired (not-after has passed)",
            "ชุดข้อมูลหมดอายุแล้ว",
        )  # fmt: skip
    if bundle.manifest.box_ids and box_id not in bundle.manifest.box_ids:
        raise BundleError(
            "wrong-box", f"the bundle is not for this box ({box_id})",
            f"ชุดข้อมูลนี้ไม่ได้ทำไว้สำหรับเครื่องนี้ ({box_id})",
        )  # fmt: skip
    if bundle.manifest.bundle_id in applied:
        raise BundleError(
            "replayed", f"bundle {bundle.manifest.bundle_id} was applied on this box before",
            f"ชุดข้อมูล {bundle.manifest.bundle_id} เคยใช้กับเครื่องนี้แล้ว ใช้ซ้ำไม่ได้",
        )  # fmt: skip
    return signer


def revoked(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    crls: list[x509.CertificateRevocationList],
) -> bool:
    """Whether a revocation list *issuer* signed names *cert* (RFC 5280 §6.3)."""
    for crl in crls:
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            continue  # a list the CA did not sign says nothing
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return True
    return False


def _trusted_signer(
    chain: tuple[x509.Certificate, ...], anchors: list[x509.Certificate], now: dt.datetime
) -> tuple[x509.Certificate, x509.Certificate]:
    foreign = BundleError(
        "foreign", "the bundle is not signed by a provisioning key this box trusts",
        "ชุดข้อมูลไม่ได้ลงลายมือชื่อด้วยกุญแจที่เครื่องนี้เชื่อถือ",
    )  # fmt: skip
    if not chain:
        raise foreign
    signer = chain[0]
    # The CA is the box's own copy (an anchor), never the one the stick brings along.
    for anchor in anchors:
        if anchor.subject != signer.issuer:
            continue
        try:
            signer.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        issuer = anchor
        break
    else:
        raise foreign
    if not (
        signer.not_valid_before_utc <= now <= signer.not_valid_after_utc
        and issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc
    ):
        raise BundleError(
            "expired", "the technician's certificate (or its CA) is not valid now",
            "ใบรับรองของช่างเทคนิค (หรือของผู้ออกใบรับรอง) หมดอายุหรือยังไม่เริ่มใช้",
        )  # fmt: skip
    try:
        usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise foreign from None
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages or constraints.ca:
        raise foreign
    return signer, issuer


#: The signer check, shared with other signed sets the provisioning CA vouches for
#: (appliance.protection.signatures: signature sets on the hub and on sticks).
trusted_signer = _trusted_signer


# --- the payload --------------------------------------------------------------------------


def read_payload(bundle: Bundle) -> Payload:
    """Return what a verified *bundle* asks for; raise `BundleError` if malformed."""
    kinds: list[str] = []
    request = hub_url = token = None
    network = time = None
    if ANSWERS in bundle.files:
        request, hub_url = parse_answers(bundle.files[ANSWERS])
        if request is not None:
            kinds.append("provision")
        network, time = parse_system_answers(bundle.files[ANSWERS])
        if network or time:
            kinds.append("system")
    users: tuple[UserEntry, ...] = ()
    if USERS in bundle.files:
        users = parse_users(bundle.files[USERS])
        kinds.append("add-users")
    if TOKEN in bundle.files:
        token = _text(bundle.files[TOKEN], TOKEN).strip()
        if not token or not hub_url:
            raise _malformed("an enrolment token needs [uplink] hub in answers.toml")
        kinds.append("enrol")
    update = bundle.manifest.update
    if update is not None:
        kinds.append("update")
    return Payload(request, users, token, hub_url, tuple(kinds), network, time, update)


def parse_system_answers(data: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The ``[network]`` and ``[time]`` tables, checked as the web wizard checks them.

    Keys as the wizard's form fields (``mode``, ``interface``, ``hostname``, ``address``,
    ``gateway``, ``dns``; ``timezone``, ``ntp``); lists of DNS or NTP servers may be
    TOML arrays. A table that is absent is None: the box keeps the image's settings.
    """
    try:
        answers = tomllib.loads(_text(data, ANSWERS))
    except tomllib.TOMLDecodeError as exc:
        raise _malformed(f"answers.toml: {exc}") from None
    checked: list[dict[str, Any] | None] = []
    for step in ("network", "time"):
        table = answers.get(step)
        if table is None:
            checked.append(None)
            continue
        if not isinstance(table, dict):
            raise _malformed(f"answers.toml [{step}] must be a table")
        fields: dict[str, str] = {}
        for key, value in table.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = " ".join(value)
            if not isinstance(value, str):
                raise _malformed(f"answers.toml [{step}] {key} must be text")
            fields[str(key)] = value
        if step == "network":
            fields.setdefault("mode", "static" if "address" in fields else "dhcp")
        try:
            checked.append(check_step(step, fields, Draft()))
        except StepError as exc:
            where = f"answers.toml [{step}] {exc.field}"
            en, th = f"{where}: {exc.message_en}", f"{where}: {exc.message_th}"
            raise BundleError("refused", en, th) from None
    return checked[0], checked[1]


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{name} is not UTF-8") from None


def parse_answers(data: bytes) -> tuple[ProvisioningRequest | None, str | None]:
    """Parse the answers (TOML): the agency and first admin, and the hub; shape only.

    The values are checked by `ProvisioningRequest.checked` (provision()), the same as
    for the web setup path. No ``[agency]`` means the bundle does not provision (a
    bundle for a provisioned box: users or an enrolment only).
    """
    try:
        answers = tomllib.loads(_text(data, ANSWERS))
    except tomllib.TOMLDecodeError as exc:
        raise _malformed(f"answers.toml: {exc}") from None
    uplink = answers.get("uplink", {})
    hub = uplink.get("hub") if isinstance(uplink, dict) else None
    if hub is not None and not isinstance(hub, str):
        raise _malformed("answers.toml [uplink] hub")
    if "agency" not in answers:
        return None, hub
    agency, admin = answers.get("agency"), answers.get("admin")
    if not isinstance(agency, dict) or not isinstance(admin, dict):
        raise _malformed("answers.toml needs [agency] and [admin] tables")

    def text(table: dict[str, Any], key: str, required: bool = True) -> str | None:
        value = table.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise _malformed(f"answers.toml: {key} must be text")
        return value

    request = ProvisioningRequest(
        domain=text(agency, "domain") or "",
        agency_name_th=text(agency, "name_th") or "",
        agency_name_en=text(agency, "name_en", False),
        admin_address=text(admin, "address") or "",
        admin_name_th=text(admin, "name_th") or "",
        admin_name_en=text(admin, "name_en", False),
        admin_password=text(admin, "password") or "",
    )
    return request, hub


USER_COLUMNS: Final = ("email", "name_th", "name_en", "unit", "password", "admin")


def parse_users(data: bytes) -> tuple[UserEntry, ...]:
    """Parse users.csv (header `USER_COLUMNS`; name_en, unit, admin may be empty)."""
    rows = list(csv.reader(io.StringIO(_text(data, USERS))))
    if not rows or tuple(c.strip() for c in rows[0]) != USER_COLUMNS:
        raise _malformed(f"users.csv must start with the header {','.join(USER_COLUMNS)}")
    users = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(USER_COLUMNS):
            raise _malformed(f"users.csv line {number}: {len(USER_COLUMNS)} columns expected")
        email, name_th, name_en, unit, password, admin = (c.strip() for c in row)
        if not email or not name_th or not password or admin not in ("", "yes", "no"):
            raise _malformed(f"users.csv line {number}: email, name_th, password, admin=yes/no")
        users.append(UserEntry(email, name_th, name_en or None, unit or None, password,
                               admin == "yes"))  # fmt: skip
    return tuple(users)


# --- making one (the technician's tool) -------------------------------------------------------


def create_bundle(
    out_dir: Path,
    *,
    payload: Mapping[str, bytes],
    key_pem: bytes,
    chain_pem: bytes,
    not_after: dt.datetime,
    box_ids: tuple[str, ...] = (),
    crl_pem: bytes | None = None,
    now: dt.datetime | None = None,
    update: Path | None = None,
) -> str:
    """Write a signed bundle of *payload* into ``out_dir/edgebox-provisioning``; return its id.

    *update*, a signed RAUC bundle, is copied beside it and named in the manifest.

    The payload files are checked as the box will parse them, so a technician learns
    of a typo at the desk, not on site.
    """
    now = now or dt.datetime.now(dt.UTC)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the provisioning key must be an EC key (edgebox hub provisioning-cert)")
    chain = x509.load_pem_x509_certificates(chain_pem)
    if chain[0].public_key() != key.public_key():
        raise ValueError("the key does not belong to the certificate")
    if not_after <= now:
        raise ValueError("not-after must be in the future")
    hashed = {**payload, SIGNER: chain_pem, **({CRL: crl_pem} if crl_pem is not None else {})}
    manifest = {
        "format": FORMAT,
        "bundle_id": uuid.uuid4().hex,
        "created_at": int(now.timestamp()),
        "not_after": int(not_after.timestamp()),
        "box_ids": list(box_ids),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in hashed.items()},
    }
    if update is not None:
        digest = hashlib.sha256()
        with update.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        manifest["update"] = {"file": update.name, "size": update.stat().st_size,
                              "sha256": digest.hexdigest()}  # fmt: skip
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    files = {**hashed, MANIFEST: raw, SIGNATURE: key.sign(raw, ec.ECDSA(hashes.SHA256()))}
    read_payload(parse_bundle(files))  # the box's own reading, before anything is written
    folder = out_dir / BUNDLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()  # an older bundle's files must not mix with this one's
    if update is not None:
        copied = folder / update.name
        shutil.copyfile(update, copied)
        with copied.open("rb") as f:
            os.fsync(f.fileno())
    # The manifest last: a stick pulled early has no manifest, so no bundle at all.
    for name, data in sorted(files.items(), key=lambda item: item[0] == MANIFEST):
        write_atomically(folder / name, data, mode=0o600)
    fsync_dir(folder)
    return str(manifest["bundle_id"])


def read_bundle_files(folder: Path) -> dict[str, bytes]:
    """Read the bundle folder's regular files (each at most `MAX_FILE` bytes)."""
    files: dict[str, bytes] = {}
    for path in folder.iterdir():
        if path.is_symlink() or not path.is_file():
            continue  # a stick is untrusted: no link may point into the box
        if path.name.endswith(".raucb"):
            continue  # an update: hashed as it is read, when the manifest names it
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise _malformed(f"{path.name} is larger than {MAX_FILE} bytes")
        files[path.name] = data
    return files
