"""Signed signature sets: how the hub publishes ClamAV databases and rspamd rules, and how
a box checks and installs them (issue 23, "signatures during a cut").

A set is a folder (the hub's mirror, or ``edgebox-signatures`` on a USB stick)::

    signatures.json     {"format": "edgebox-signatures/1", "set_id": 32 hex digits,
                         "created_at": unix s,
                         "files": {"clamd/<name>" | "rspamd/<name>":
                                   {"sha256": hex, "size": bytes}, ...}}
    signatures.sig      ECDSA P-256 / SHA-256 signature (DER) over signatures.json
    signer.pem          the signing certificate, then its CA's
    clamd/              ClamAV databases: .cvd .cld .cdiff (freshclam's), .ndb .hdb ...
    rspamd/             rspamd rule and map files, installed into rspamd's local.d

The trust is the provisioning stick's, reused as it is: the signer must be a
codeSigning certificate issued by a provisioning CA the box trusts and not revoked
(appliance.provisioning.bundle `trusted_signer`, `revoked`). The hub issues itself
such a certificate when it publishes (``edgebox hub signatures publish``); a
technician's stick key signs a stick's set the same way.

A set older than (or the same as) the one installed is refused: a replayed old set
must not take newer signatures away. Installing is all or nothing per file set: every
file is checked against the signed manifest *before* the first one is written, and
each is written beside its target and renamed over it, so clamd never reads half a
database. What this is not: the transport (appliance.protection.signature_sync) or the
engines' reload (same).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.provisioning.bundle import BundleError, revoked, trusted_signer
from appliance.store.files import fsync_dir, write_atomically

FORMAT: Final = "edgebox-signatures/1"
MANIFEST: Final = "signatures.json"
SIGNATURE: Final = "signatures.sig"
SIGNER: Final = "signer.pem"
#: The folder of a set on a USB stick (beside ``edgebox-provisioning``).
STICK_DIR: Final = "edgebox-signatures"
#: Where a box remembers what it installed (DATA/<this>).
INSTALLED: Final = Path("run") / "signatures-installed.json"
ENGINES: Final = ("clamd", "rspamd")
#: clamd(8) reads these from its DatabaseDirectory (clamscan(1) "FILES"); anything
#: else in a mirror folder is not a signature database and is not published.
CLAMD_SUFFIXES: Final = frozenset(
    {".cvd", ".cld", ".cdiff", ".cud", ".ndb", ".ndu", ".hdb", ".hsb", ".hdu", ".hsu",
     ".mdb", ".msb", ".ldb", ".ldu", ".cdb", ".ign", ".ign2", ".fp", ".sfp", ".pdb",
     ".gdb", ".wdb", ".yar", ".yara", ".ftm", ".info", ".cfg", ".crb", ".idb", ".cat"}
)  # fmt: skip
#: rspamd's local.d takes configuration snippets and maps.
RSPAMD_SUFFIXES: Final = frozenset([".conf", ".inc", ".map", ".txt", ".lua", ".re"])
_NAME = re.compile(r"(clamd|rspamd)/[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
#: A set's manifest is small; the databases are fetched one by one.
MAX_MANIFEST: Final = 256 * 1024


class SignatureSetError(Exception):
    """A set the box refuses, with the reason in English and Thai; nothing changed."""

    def __init__(self, reason: str, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        #: A short stable word: malformed, foreign, tampered, revoked, expired, old.
        self.reason = reason
        self.message_en = message_en
        self.message_th = message_th


def _malformed(what: str) -> SignatureSetError:
    return SignatureSetError(
        "malformed", f"malformed signature set: {what}", f"ชุดข้อมูลไวรัสไม่ถูกรูปแบบ: {what}"
    )


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class SignatureSet:
    """A parsed set manifest (verified when it came from `verify_set`)."""

    set_id: str
    created_at: int
    files: Mapping[str, FileEntry]
    manifest_bytes: bytes


def parse_manifest(raw: bytes) -> SignatureSet:
    """Read ``signatures.json``; raise `SignatureSetError` when it is not a set manifest."""
    if len(raw) > MAX_MANIFEST:
        raise _malformed("signatures.json is too large")
    try:
        body: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed("signatures.json is not JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise _malformed(f"not an {FORMAT} manifest")
    set_id, created_at, files = body.get("set_id"), body.get("created_at"), body.get("files")
    if not isinstance(set_id, str) or not _HEX32.fullmatch(set_id):
        raise _malformed("set_id")
    if type(created_at) is not int or not 0 <= created_at < 2**40:
        raise _malformed("created_at")
    if not isinstance(files, dict) or not files:
        raise _malformed("files")
    entries: dict[str, FileEntry] = {}
    for name, entry in files.items():
        if not _NAME.fullmatch(name) or not isinstance(entry, dict):
            raise _malformed(f"file name {str(name)[:80]!r}")
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _malformed(f"sha256 of {name}")
        if type(size) is not int or not 0 <= size < 2**40:
            raise _malformed(f"size of {name}")
        entries[name] = FileEntry(digest, size)
    return SignatureSet(set_id, created_at, entries, raw)


def verify_set(
    raw: bytes,
    signature: bytes,
    chain_pem: bytes,
    *,
    anchors: list[x509.Certificate],
    crls: list[x509.CertificateRevocationList],
    now: dt.datetime,
    installed: SignatureSet | None = None,
) -> SignatureSet:
    """Check the manifest's signature, signer and age; return the set it describes.

    Raise `SignatureSetError` with the first reason found; *installed* is the set the
    box holds now (a set not newer than it is refused as ``old``).
    """
    signature_set = parse_manifest(raw)
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError:
        raise _malformed("signer.pem holds no readable certificate") from None
    try:
        signer, issuer = trusted_signer(chain, anchors, now)
    except BundleError as exc:
        raise SignatureSetError(exc.reason, exc.message_en, exc.message_th) from None
    try:
        key = signer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(signature, raw, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureSetError(
            "tampered", "the signature set's signature does not match (it was changed)",
            "ลายมือชื่อของชุดข้อมูลไวรัสไม่ตรง (ถูกแก้ไข)",
        ) from None  # fmt: skip
    if revoked(signer, issuer, crls):
        raise SignatureSetError(
            "revoked", "the signature set's signing certificate was revoked",
            "ใบรับรองที่ลงลายมือชื่อชุดข้อมูลไวรัสถูกเพิกถอนแล้ว",
        )  # fmt: skip
    if installed is not None and signature_set.created_at <= installed.created_at:
        raise SignatureSetError(
            "old", f"the signature set {signature_set.set_id} is not newer than the one"
            f" installed ({installed.set_id})",
            "ชุดข้อมูลไวรัสนี้ไม่ใหม่กว่าชุดที่ติดตั้งอยู่",
        )  # fmt: skip
    return signature_set


def check_file(signature_set: SignatureSet, name: str, data: bytes) -> None:
    """Raise `SignatureSetError` unless *data* is the file *name* the manifest signs."""
    entry = signature_set.files.get(name)
    if entry is None or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise SignatureSetError(
            "tampered", f"{name} does not match the signed manifest",
            f"ไฟล์ {name} ไม่ตรงกับรายการที่ลงลายมือชื่อ (ถูกแก้ไขหรือไม่ครบ)",
        )  # fmt: skip


def changed_files(new: SignatureSet, installed: SignatureSet | None) -> list[str]:
    """The files of *new* the box lacks: only these travel over the link."""
    held = installed.files if installed is not None else {}
    return sorted(name for name, entry in new.files.items() if held.get(name) != entry)


# --- the hub side: making a set ----------------------------------------------------------------


def collect_mirror(folder: Path) -> dict[str, Path]:
    """The publishable files of a mirror folder: ``engine/name`` -> path.

    ClamAV databases at the top (freshclam's folder as it is) or under ``clamd/``;
    rspamd files under ``rspamd/``. Anything else is not a signature file and is left.
    """
    candidates = [(p, "clamd", CLAMD_SUFFIXES) for p in folder.iterdir()]
    for engine, suffixes in (("clamd", CLAMD_SUFFIXES), ("rspamd", RSPAMD_SUFFIXES)):
        if (folder / engine).is_dir():
            candidates += [(p, engine, suffixes) for p in (folder / engine).iterdir()]
    found: dict[str, Path] = {}
    for path, engine, suffixes in candidates:
        name = f"{engine}/{path.name}"
        if path.is_symlink() or not path.is_file() or path.suffix not in suffixes:
            continue
        if _NAME.fullmatch(name):
            found[name] = path
    return dict(sorted(found.items()))


def make_manifest(
    files: Mapping[str, bytes], key_pem: bytes, *, now: dt.datetime
) -> tuple[bytes, bytes]:
    """Return (signatures.json, signatures.sig) for *files* signed with *key_pem*."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the signing key must be an EC key")
    manifest = {
        "format": FORMAT,
        "set_id": uuid.uuid4().hex,
        "created_at": int(now.timestamp()),
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(files.items())
        },
    }
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    parse_manifest(raw)  # the box's own reading, before anything is written
    return raw, key.sign(raw, ec.ECDSA(hashes.SHA256()))


def write_set(
    out: Path, files: Mapping[str, bytes], raw: bytes, signature: bytes, chain_pem: bytes
) -> None:
    """Write a signed set into *out* (the manifest last: no manifest, no set)."""
    for engine in ENGINES:
        (out / engine).mkdir(parents=True, exist_ok=True)
        keep = {name.split("/", 1)[1] for name in files if name.startswith(engine + "/")}
        for stale in (out / engine).iterdir():
            if stale.name not in keep:
                stale.unlink()
    for name, data in files.items():
        write_atomically(out / name, data, mode=0o644)
    write_atomically(out / SIGNER, chain_pem, mode=0o644)
    write_atomically(out / SIGNATURE, signature, mode=0o644)
    write_atomically(out / MANIFEST, raw, mode=0o644)
    fsync_dir(out)


# --- the box side: installing a set --------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """Where each engine's files go on this box."""

    clamd: Path
    rspamd: Path

    def path(self, name: str) -> Path:
        engine, _, base = name.partition("/")
        return (self.clamd if engine == "clamd" else self.rspamd) / base


def read_installed(data_dir: Path) -> SignatureSet | None:
    """The set this box installed last, or None."""
    try:
        return parse_manifest((data_dir / INSTALLED).read_bytes())
    except (OSError, SignatureSetError):
        return None


def install_set(
    data_dir: Path, signature_set: SignatureSet, files: Mapping[str, bytes], targets: Targets
) -> list[str]:
    """Write the set's *files* (those that changed) into the engines' folders atomically.

    Every file is checked first; a single bad one installs nothing. Return the names
    written. The record of the installed set is written last, so a box that stops in
    the middle fetches the rest again next round.
    """
    for name, data in files.items():
        check_file(signature_set, name, data)
    written = []
    for name in sorted(files):
        target = targets.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, files[name], mode=0o644)
        written.append(name)
    installed = data_dir / INSTALLED
    installed.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(installed, signature_set.manifest_bytes)
    return written
