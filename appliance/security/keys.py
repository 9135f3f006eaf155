"""Per-box key material: the provisioning secret and the wrapped data key.

Every message and attachment blob is encrypted with one 256-bit *data key* per box
(DESIGN.md principle 5). The data key never touches the disk in the clear: it is stored
only wrapped (AES-256-GCM) under a key-encryption key (KEK) derived with HKDF-SHA256
from the box's *provisioning secret*. Factory reset destroys the wrapped data key, and
with it every blob on the box.

Files in ``keys_dir`` (``DATA/keys``, mode 0700):

================================  =====  ================================================
file                              mode   content
================================  =====  ================================================
``provisioning.secret``           0600   32 random bytes
``data.key.wrapped``              0600   version (1 byte) | nonce (12) | GCM(data key) (48)
``*.sealed`` (e.g. ``ca.key``)    0600   another private key sealed the same way (`seal`)
================================  =====  ================================================

What this is not: the provisioning flow itself, or the place where the TLS files live
(`appliance.security.tls` seals the CA key with `seal`). A
later provisioning step will deliver the secret from a signed USB stick or the setup
wizard; until then :func:`create_box_keys` generates it locally.

These are plain synchronous functions; async callers run them in a worker thread.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.store.files import fsync_dir

PROVISIONING_SECRET_FILE = "provisioning.secret"  # noqa: S105 -- a file name, not a secret
WRAPPED_DATA_KEY_FILE = "data.key.wrapped"

#: Size of the provisioning secret and of the data key, in bytes (256 bits each).
SECRET_SIZE = 32
DATA_KEY_SIZE = 32

#: First byte of ``data.key.wrapped``; bump it when the wrapping scheme changes.
WRAP_VERSION = 1

_WRAP_INFO = b"edgebox data-key wrap v1"
_WRAP_AAD = b"edgebox data key"
_NONCE_SIZE = 12
_TAG_SIZE = 16
#: Exact size of ``data.key.wrapped``: version, nonce, encrypted key, GCM tag.
WRAPPED_SIZE = 1 + _NONCE_SIZE + DATA_KEY_SIZE + _TAG_SIZE

_FILE_MODE = 0o600
_DIR_MODE = 0o700


class KeyMaterialError(Exception):
    """The box's key material is missing, damaged or does not match; the message says which."""


def create_box_keys(keys_dir: Path) -> None:
    """Create the provisioning secret and the wrapped data key where they are missing.

    Idempotent: existing files are never overwritten, so calling this at every boot is
    safe. A wrapped data key without its provisioning secret is an error rather than a
    reason to make a new secret: a new secret could never unwrap the old key, and
    silently replacing it would make every stored blob unreadable.
    """
    ensure_provisioning_secret(keys_dir)
    secret_path = keys_dir / PROVISIONING_SECRET_FILE
    wrapped_path = keys_dir / WRAPPED_DATA_KEY_FILE

    if not wrapped_path.exists():
        # Read the secret back from disk rather than reusing the bytes generated above:
        # another process may have won the race to create it, and the key must be
        # wrapped under the secret that is actually stored.
        secret = _read_secret(secret_path)
        _write_new_file(wrapped_path, _wrap(secret, secrets.token_bytes(DATA_KEY_SIZE)))


def ensure_provisioning_secret(keys_dir: Path) -> None:
    """Create the provisioning secret if it is missing (and nothing depends on an old one).

    Anything already wrapped under a secret (the data key, the CA key) makes a missing
    secret an error: a new secret could never unwrap what the old one sealed.
    """
    _make_private_dir(keys_dir)
    secret_path = keys_dir / PROVISIONING_SECRET_FILE
    if secret_path.exists():
        return
    sealed = [p.name for p in (keys_dir / WRAPPED_DATA_KEY_FILE, *keys_dir.glob("*.sealed"))]
    sealed = [name for name in sealed if (keys_dir / name).exists()]
    if sealed:
        raise KeyMaterialError(
            f"provisioning secret {secret_path} is missing but {', '.join(sealed)} exist; "
            "refusing to create a new secret, which could never unwrap them. Restore the "
            "secret from the provisioning media, or factory-reset the box."
        )
    _write_new_file(secret_path, secrets.token_bytes(SECRET_SIZE))


def seal(keys_dir: Path, purpose: str, plaintext: bytes) -> bytes:
    """Encrypt *plaintext* (a private key) under the provisioning secret for *purpose*.

    The same scheme as the data key: AES-256-GCM under a key derived with HKDF from the
    provisioning secret, the *purpose* in both the HKDF info and the associated data,
    so a sealed CA key can never be passed off as the data key or the other way round.
    Format: version (1 byte) | nonce (12) | GCM(plaintext) with its tag.
    """
    secret = _read_secret(keys_dir / PROVISIONING_SECRET_FILE)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    label = purpose.encode("ascii")
    sealed = AESGCM(_derive_kek(secret, b"edgebox seal v1 " + label)).encrypt(
        nonce, plaintext, label
    )
    return bytes([WRAP_VERSION]) + nonce + sealed


def unseal(keys_dir: Path, purpose: str, sealed: bytes) -> bytes:
    """Decrypt what `seal` made for *purpose*; raise KeyMaterialError if it cannot."""
    secret = _read_secret(keys_dir / PROVISIONING_SECRET_FILE)
    if len(sealed) < 1 + _NONCE_SIZE + _TAG_SIZE or sealed[0] != WRAP_VERSION:
        raise KeyMaterialError(f"sealed {purpose} is truncated or of an unknown format")
    label = purpose.encode("ascii")
    nonce = sealed[1 : 1 + _NONCE_SIZE]
    try:
        return AESGCM(_derive_kek(secret, b"edgebox seal v1 " + label)).decrypt(
            nonce, sealed[1 + _NONCE_SIZE :], label
        )
    except InvalidTag:
        raise KeyMaterialError(
            f"sealed {purpose} cannot be opened: wrong provisioning secret or corrupted file"
        ) from None


def shred(path: Path) -> None:
    """Overwrite *path* with zeros, fsync and unlink it (best effort, see below)."""
    _shred(path)
    fsync_dir(path.parent)


def load_data_key(keys_dir: Path) -> bytes:
    """Unwrap and return the 32-byte data key, or raise KeyMaterialError saying why not."""
    secret = _read_secret(keys_dir / PROVISIONING_SECRET_FILE)
    wrapped_path = keys_dir / WRAPPED_DATA_KEY_FILE
    try:
        wrapped = wrapped_path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"data key {wrapped_path} is missing: the box was factory-reset or never set up"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read data key {wrapped_path}: {exc}") from exc

    if len(wrapped) != WRAPPED_SIZE:
        raise KeyMaterialError(
            f"data key {wrapped_path} is truncated or corrupted "
            f"({len(wrapped)} bytes, expected {WRAPPED_SIZE})"
        )
    if wrapped[0] != WRAP_VERSION:
        raise KeyMaterialError(
            f"data key {wrapped_path} has unsupported format version {wrapped[0]} "
            f"(this software reads version {WRAP_VERSION})"
        )
    nonce = wrapped[1 : 1 + _NONCE_SIZE]
    try:
        return AESGCM(_derive_kek(secret)).decrypt(nonce, wrapped[1 + _NONCE_SIZE :], _WRAP_AAD)
    except InvalidTag:
        raise KeyMaterialError(
            "data key cannot be unwrapped: wrong provisioning secret or corrupted file "
            f"({wrapped_path})"
        ) from None


def destroy_data_key(keys_dir: Path) -> None:
    """Overwrite the wrapped data key with zeros, fsync it and unlink it (factory reset).

    Leftover temp copies from a crashed :func:`create_box_keys` are destroyed too, so no
    copy of the wrapped key survives in this directory. Overwriting in place is best
    effort: a journalling filesystem or a flash translation layer may still hold old
    sectors, so a box leaving the office should also lose its provisioning secret.
    Absent files are not an error; a reset interrupted halfway can simply be rerun.
    """
    if not keys_dir.is_dir():
        return
    targets = [keys_dir / WRAPPED_DATA_KEY_FILE, *keys_dir.glob(f".{WRAPPED_DATA_KEY_FILE}.*.tmp")]
    for path in targets:
        _shred(path)
    fsync_dir(keys_dir)


def _derive_kek(secret: bytes, info: bytes = _WRAP_INFO) -> bytes:
    # No salt: the secret is already 256 uniformly random bits, so HKDF-Extract has
    # nothing to add (RFC 5869 §3.1); the info string separates this use of the secret
    # from any other key a later version derives from it.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(secret)


def _wrap(secret: bytes, data_key: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(_derive_kek(secret)).encrypt(nonce, data_key, _WRAP_AAD)
    return bytes([WRAP_VERSION]) + nonce + sealed


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"provisioning secret {path} is missing: the box is not provisioned"
        ) from None
    except OSError as exc:
        raise KeyMaterialError(f"cannot read provisioning secret {path}: {exc}") from exc
    if len(secret) != SECRET_SIZE:
        raise KeyMaterialError(
            f"provisioning secret {path} is corrupted ({len(secret)} bytes, expected {SECRET_SIZE})"
        )
    return secret


def _make_private_dir(path: Path) -> None:
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        return
    # mkdir's mode is filtered by the umask; set it explicitly so it is 0700 whatever
    # the umask of the process that first boots the box.
    path.chmod(_DIR_MODE)
    fsync_dir(path.parent)


def _write_new_file(path: Path, data: bytes) -> None:
    """Atomically create ``path`` with ``data`` (mode 0600) unless it already exists.

    The content is written to a temp file in the same directory and fsynced, then
    published under its final name. Publishing uses ``os.link`` rather than
    ``os.replace``: link fails if the name exists, so two processes creating keys at the
    same time can never overwrite a key that may already protect data. Finally the
    directory is fsynced so the new name survives a power cut.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL + mode at creation: the file is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        with open(fd, "wb") as f:
            # The umask may have filtered the mode given to os.open; state it again.
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else created it first; theirs is kept, ours is discarded
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _shred(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with open(fd, "wb", closefd=True) as f:
        size = os.fstat(f.fileno()).st_size
        f.write(bytes(size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink(missing_ok=True)
