"""The backup key and the encrypted file format of everything written to a backup.

Every file a backup holds (database snapshots, settings, keys, the traffic log, blobs
and the manifest) is one *backup file*: AES-256-GCM in 1 MiB chunks, the same STREAM
construction as the blob store (`appliance.store.blobs`), so a file can be encrypted
and checked while it streams, and truncation, reordering or a file passed off under
another name are detected::

    +--------+---------+-----------+-------------------------------------------+
    | "EBK1" | version | salt (16) | chunk 0 | chunk 1 | ... (last flagged)      |
    +--------+---------+-----------+-------------------------------------------+
    file key = HKDF-SHA256(backup key, salt, "edgebox backup file v1")
    chunk i  = AES-256-GCM(file key, nonce = 0^8 || i, plaintext, AAD)
    AAD      = label || 0x00 || i (4 bytes) || final flag (1 byte)

The *label* is the file's name in the backup (``db/mail.sqlite``, ``blob/<id>``,
``manifest``): a file copied over another's name fails its first tag. A fresh random
salt gives every file its own key, so the fixed nonce counter never repeats under one
key. Unlike the blob format the length is not in the header: the final flag marks the
end, and a file that ends without a flagged chunk is reported truncated.

The backup key is 32 random bytes per box, kept in ``keys/backup.key.sealed`` sealed
under the provisioning secret (`appliance.security.keys.seal`), and printed for the
agency's recovery sheet as 17 groups of four hex digits: the key and a two-byte
checksum, so a mistyped group is caught before a restore starts.

What this is not: which files a backup holds (`appliance.backup.snapshot`) or how they
come back (`appliance.backup.restore`). Plain synchronous functions.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.security.keys import KeyMaterialError, seal, unseal
from appliance.store.files import fsync_dir

MAGIC = b"EBK1"
FORMAT_VERSION = 1
CHUNK_SIZE = 1024 * 1024
KEY_SIZE = 32
SALT_SIZE = 16
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + 1 + SALT_SIZE

#: The sealed backup key in ``DATA/keys``.
SEALED_KEY_FILE = "backup.key.sealed"
_SEAL_PURPOSE = "backup key"
_FILE_INFO = b"edgebox backup file v1"
_KEY_ID_INFO = b"edgebox backup key id v1"
#: Bytes of checksum after the key on the recovery sheet.
_CHECK_SIZE = 2
_GROUP = 4


class BackupDamaged(Exception):
    """A backup file failed a check; the message names the file and the check."""

    def __init__(self, part: str, check: str) -> None:
        super().__init__(f"{part}: {check}")
        self.part = part
        self.check = check


class BadRecoveryKey(ValueError):
    """The recovery words are not a backup key (wrong length, a typo, not hex)."""


def ensure_backup_key(keys_dir: Path) -> bytes:
    """Return the box's backup key, making and sealing a random one the first time."""
    path = keys_dir / SEALED_KEY_FILE
    if not path.exists():
        sealed = seal(keys_dir, _SEAL_PURPOSE, secrets.token_bytes(KEY_SIZE))
        _publish_new(path, sealed)
    return load_backup_key(keys_dir)


def load_backup_key(keys_dir: Path) -> bytes:
    """Unseal the box's backup key; raise KeyMaterialError if it is missing or damaged."""
    path = keys_dir / SEALED_KEY_FILE
    try:
        sealed = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(
            f"no backup key at {path}: no backup was ever made on this box"
        ) from None
    key = unseal(keys_dir, _SEAL_PURPOSE, sealed)
    if len(key) != KEY_SIZE:
        raise KeyMaterialError(f"backup key {path} has {len(key)} bytes, expected {KEY_SIZE}")
    return key


def key_id(key: bytes) -> str:
    """Return a short public fingerprint of *key*: which key a backup needs, not the key."""
    return HKDF(algorithm=hashes.SHA256(), length=8, salt=None, info=_KEY_ID_INFO).derive(key).hex()


def key_to_words(key: bytes) -> str:
    """Return *key* as the recovery sheet prints it: 17 groups of 4 hex digits."""
    raw = (key + hashlib.sha256(key).digest()[:_CHECK_SIZE]).hex()
    return " ".join(raw[i : i + _GROUP] for i in range(0, len(raw), _GROUP))


def words_to_key(words: str) -> bytes:
    """Read a key typed from the recovery sheet; spaces, dashes and case do not matter."""
    text = "".join(ch for ch in words.lower() if ch not in " -\t\n\r")
    expected = 2 * (KEY_SIZE + _CHECK_SIZE)
    if len(text) != expected:
        raise BadRecoveryKey(
            f"a recovery key has {expected // _GROUP} groups of {_GROUP} digits; "
            f"got {len(text)} digits"
        )
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BadRecoveryKey("a recovery key has only the digits 0-9 and a-f") from None
    key, check = raw[:KEY_SIZE], raw[KEY_SIZE:]
    if hashlib.sha256(key).digest()[:_CHECK_SIZE] != check:
        raise BadRecoveryKey("the recovery key's last group does not match: a typo?")
    return key


def encrypt_stream(key: bytes, label: str, source: BinaryIO, target: BinaryIO) -> tuple[int, str]:
    """Encrypt *source* into *target* as a backup file; return (plain size, SHA-256 hex)."""
    salt = secrets.token_bytes(SALT_SIZE)
    aead = AESGCM(_file_key(key, salt))
    target.write(MAGIC + bytes([FORMAT_VERSION]) + salt)
    digest = hashlib.sha256()
    size = 0
    index = 0
    chunk = source.read(CHUNK_SIZE)
    while True:
        following = source.read(CHUNK_SIZE) if len(chunk) == CHUNK_SIZE else b""
        final = not following
        digest.update(chunk)
        size += len(chunk)
        target.write(aead.encrypt(_nonce(index), chunk, _aad(label, index, final)))
        if final:
            return size, digest.hexdigest()
        chunk = following
        index += 1


def decrypt_stream(key: bytes, label: str, source: BinaryIO) -> Iterator[bytes]:
    """Yield the plaintext of a backup file chunk by chunk; raise BackupDamaged on a fault.

    Nothing is yielded before its tag is checked, so a caller never writes bytes that
    were not authenticated; it must still discard what it wrote if a later chunk fails.
    """
    header = source.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE or header[:4] != MAGIC:
        raise BackupDamaged(label, "not a backup file (bad header)")
    if header[4] != FORMAT_VERSION:
        raise BackupDamaged(label, f"unknown format version {header[4]}")
    aead = AESGCM(_file_key(key, header[5:]))
    index = 0
    sealed = source.read(CHUNK_SIZE + TAG_SIZE)
    while True:
        following = source.read(CHUNK_SIZE + TAG_SIZE)
        final = not following
        if len(sealed) < TAG_SIZE:
            raise BackupDamaged(label, f"truncated at chunk {index}")
        try:
            plain = aead.decrypt(_nonce(index), sealed, _aad(label, index, final))
        except InvalidTag:
            raise BackupDamaged(
                label, f"chunk {index} failed authentication (damaged, truncated or wrong key)"
            ) from None
        yield plain
        if final:
            return
        sealed = following
        index += 1


def encrypt_bytes(key: bytes, label: str, data: bytes) -> bytes:
    """Return *data* as a backup file (for the small manifest)."""
    out = io.BytesIO()
    encrypt_stream(key, label, io.BytesIO(data), out)
    return out.getvalue()


def decrypt_bytes(key: bytes, label: str, data: bytes) -> bytes:
    """Return the plaintext of a small backup file held in memory."""
    return b"".join(decrypt_stream(key, label, io.BytesIO(data)))


def _file_key(key: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_FILE_INFO).derive(key)


def _nonce(index: int) -> bytes:
    return bytes(8) + struct.pack(">I", index)


def _aad(label: str, index: int, final: bool) -> bytes:
    return label.encode("utf-8") + b"\x00" + struct.pack(">IB", index, 1 if final else 0)


def _publish_new(path: Path, data: bytes) -> None:
    # Like the data key: temp file, fsync, link (never overwrite a key that may already
    # protect backups), fsync the folder.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
