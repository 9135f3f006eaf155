"""Encrypted, content-addressed blob store for message bodies and attachments.

A blob is an immutable byte string stored once under an id derived from its content,
so a message delivered to five local users is written once. The id is an HMAC of the
content under a key derived from the box's data key, never a plain hash: a plain
SHA-256 on disk would let anyone holding the disk confirm a guessed document.

Layout under ``root`` (``DATA/blobs``)::

    root/tmp/<random>                 half-written blobs; removed by clean_temp()
    root/<id[0:2]>/<id[2:4]>/<id>     one file per blob

File format (all integers big-endian)::

    +--------+---------+-----------------+--------------+---------------------------+
    | magic  | version | plaintext length| nonce prefix | chunk 0 | chunk 1 | ...     |
    | "EBB1" | 1 byte  | 8 bytes         | 8 bytes      |                           |
    +--------+---------+-----------------+--------------+---------------------------+
    chunk i = AES-256-GCM(plaintext[i*1MiB : (i+1)*1MiB]) = ciphertext || 16-byte tag
      nonce = nonce prefix (8) || i (4 bytes)
      AAD   = blob id (32 raw bytes) || i (4 bytes) || final flag (1 byte: 1 on the last)

Every chunk but the last holds exactly 1 MiB of plaintext; the last holds the rest (an
empty blob is one empty chunk). The chunk index in nonce and AAD detects reordered or
dropped chunks, the final flag detects truncation at a chunk boundary, and the blob id
in the AAD detects a file copied or renamed to another id's path. The header is not in
the AAD, but it cannot be altered unnoticed either: the plaintext length fixes where
every chunk starts and which one carries the final flag, and the nonce prefix feeds
every nonce, so a changed header makes a tag fail.

What this is not: an index, a reference counter or a garbage collector. Which blobs a
mailbox or a chat room uses lives in the databases; callers delete blobs nobody refers
to, using :meth:`BlobStore.iter_ids` to find orphans.

Methods are synchronous and keep no mutable state besides the filesystem, so async
callers run them concurrently via ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.store.files import fsync_dir

MAGIC = b"EBB1"
FORMAT_VERSION = 1
#: Plaintext bytes per chunk. Also the bound on memory a reader needs: a chunk's
#: plaintext is released only after its tag has been checked.
CHUNK_SIZE = 1 << 20
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
#: magic, version, plaintext length, nonce prefix.
HEADER = struct.Struct(">4sBQ8s")
HEADER_SIZE = HEADER.size
#: The chunk index is 4 bytes in the nonce, so a blob has at most 2**32 chunks (4 PiB).
MAX_CHUNKS = 1 << 32

_ID_INFO = b"edgebox blob id v1"
_CONTENT_INFO = b"edgebox blob content v1"
_DIGEST_INFO = b"edgebox metadata digest v1"
_TMP_DIR = "tmp"
_DIR_MODE = 0o700
_FILE_MODE = 0o600
# fullmatch with an explicit ASCII class: no trailing newline, no upper case, no Unicode
# digits, nothing a path could be built from except 64 hex characters.
_ID_RE = re.compile(r"[0-9a-f]{64}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")


class BlobMissing(Exception):
    """No blob is stored under this id."""


class BlobCorrupt(Exception):
    """The blob file exists but fails authentication or is malformed."""


class BlobStore:
    """Encrypted, content-addressed blobs in one directory tree."""

    def __init__(self, root: Path, data_key: bytes) -> None:
        if len(data_key) != 32:
            raise ValueError(f"data key must be 32 bytes, got {len(data_key)}")
        self.root = root
        self._tmp = root / _TMP_DIR
        # Two keys from one: the id key only names blobs and the content key only
        # encrypts them, so neither use can leak anything about the other.
        self._id_key = _derive(data_key, _ID_INFO)
        self._content_key = _derive(data_key, _CONTENT_INFO)
        self._digest_key = _derive(data_key, _DIGEST_INFO)
        # AEAD objects hold only the key and may be shared between threads.
        self._aead = AESGCM(self._content_key)
        self._root_text = os.fspath(root)
        _make_dir(root, parents=True)
        _make_dir(self._tmp)

    def blob_id(self, content: bytes) -> str:
        """Return the id ``content`` is stored under: 64 lowercase hex characters."""
        return hmac.new(self._id_key, content, hashlib.sha256).hexdigest()

    def digest(self, value: bytes) -> str:
        """Return a keyed digest of message metadata (e.g. a Message-ID) for indexes.

        Databases may hold this instead of the value itself: equal values still match,
        but nothing readable from the message sits under the data directory.
        """
        return hmac.new(self._digest_key, value, hashlib.sha256).hexdigest()

    def put(self, content: bytes) -> str:
        """Store ``content`` durably unless it is already stored; return its id.

        When this returns, the blob file and its directory entry are fsynced.
        """
        blob_id = self.blob_id(content)
        path = self._path(blob_id)
        if path.exists():
            return blob_id

        n_chunks = _chunk_count(len(content))
        if n_chunks > MAX_CHUNKS:
            raise ValueError(f"blob too large: {len(content)} bytes")
        prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
        aead = AESGCM(self._content_key)
        raw_id = bytes.fromhex(blob_id)
        view = memoryview(content)

        tmp = self._tmp / secrets.token_hex(16)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            with open(fd, "wb") as f:
                # The umask may have filtered the mode given to os.open; state it again.
                os.fchmod(f.fileno(), _FILE_MODE)
                f.write(HEADER.pack(MAGIC, FORMAT_VERSION, len(content), prefix))
                # Encrypt and write one chunk at a time so a large blob costs one chunk of
                # extra memory, not a second copy of the whole content.
                for index in range(n_chunks):
                    final = index == n_chunks - 1
                    chunk = view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
                    f.write(aead.encrypt(_nonce(prefix, index), chunk, _aad(raw_id, index, final)))
                f.flush()
                os.fsync(f.fileno())
            level1 = self.root / blob_id[0:2]
            _make_dir(level1)
            _make_dir(path.parent)
            # Two puts of the same content may race here; each replaces with a complete,
            # valid file, so whichever lands last is as good as the other.
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return blob_id

    def get(self, blob_id: str) -> bytes:
        """Return the whole plaintext of a blob, authenticated.

        The hot path of IMAP FETCH: one read of the file, its chunks decrypted from
        memory with the store's one cipher object, and a path built without pathlib;
        the checks are those of `iter_plaintext`, whole-file ones first.
        """
        _check_id(blob_id)
        path = os.path.join(self._root_text, blob_id[0:2], blob_id[2:4], blob_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(f"no blob {blob_id}") from None
        try:
            size = os.fstat(fd).st_size
            sealed = bytearray()
            while len(sealed) < size:  # a short read happens only on odd file systems
                piece = os.read(fd, size - len(sealed))
                if not piece:
                    break
                sealed += piece
        finally:
            os.close(fd)
        if len(sealed) < HEADER_SIZE:
            raise BlobCorrupt(f"blob {blob_id} is truncated in its header")
        length, prefix = _parse_header(bytes(sealed[:HEADER_SIZE]), blob_id, len(sealed))
        raw_id = bytes.fromhex(blob_id)
        view = memoryview(sealed)
        plain = []
        n_chunks = _chunk_count(length)
        for index in range(n_chunks):
            start = HEADER_SIZE + index * (CHUNK_SIZE + TAG_SIZE)
            final = index == n_chunks - 1
            end = len(sealed) if final else start + CHUNK_SIZE + TAG_SIZE
            try:
                plain.append(
                    self._aead.decrypt(
                        _nonce(prefix, index), view[start:end], _aad(raw_id, index, final)
                    )
                )
            except InvalidTag:
                raise BlobCorrupt(f"blob {blob_id} fails authentication in chunk {index}") from None
        return plain[0] if n_chunks == 1 else b"".join(plain)

    def iter_plaintext(self, blob_id: str, chunk_size: int | None = None) -> Iterator[bytes]:
        """Yield a blob's plaintext in pieces of at most ``chunk_size`` bytes.

        Without ``chunk_size`` the pieces are the stored chunks (up to 1 MiB). Each piece
        is authenticated before it is yielded, but a blob truncated *and* given a forged
        header is only found out at the end: BlobCorrupt may then be raised after some
        pieces were yielded, and a caller streaming to a client must abort the transfer.

        BlobMissing and a malformed header are raised here, before iteration starts, so
        a caller can answer "not found" before it sends anything.
        """
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        path = self._path(blob_id)
        with _open_blob(path, blob_id):
            pass  # checked now; the generator opens the file again when iterated
        return self._pieces(path, blob_id, chunk_size)

    def size(self, blob_id: str) -> int:
        """Return the plaintext size of a blob, read from its header.

        This does not decrypt: the header is checked only against the file's size. A
        forged length is caught by the tags when the blob is read.
        """
        with _open_blob(self._path(blob_id), blob_id) as (_, length, _prefix):
            return length

    def exists(self, blob_id: str) -> bool:
        """Return whether a blob file is stored under ``blob_id``."""
        return self._path(blob_id).is_file()

    def delete(self, blob_id: str, *, durable: bool = True) -> None:
        """Remove a blob; removing an absent blob is not an error.

        ``durable=False`` skips the directory fsync: a crash may then bring the file
        back, which is right only for a caller whose start-up sweep removes unreferenced
        blobs (the mail store's). It saves an fsync per sent or expunged message.
        """
        path = self._path(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        if durable:
            fsync_dir(path.parent)

    def iter_ids(self) -> Iterator[str]:
        """Yield the id of every stored blob, in sorted order; stray files are skipped."""
        for level1 in _sorted_subdirs(self.root):
            for level2 in _sorted_subdirs(level1):
                prefix = level1.name + level2.name
                for entry in sorted(os.scandir(level2), key=lambda e: e.name):
                    name = entry.name
                    if _ID_RE.fullmatch(name) and name.startswith(prefix) and entry.is_file():
                        yield name

    def clean_temp(self) -> int:
        """Remove half-written blobs left by a crash; return how many were removed.

        Call this at start-up, before any put: a put in progress has its temp file here.
        """
        removed = 0
        for entry in os.scandir(self._tmp):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        if removed:
            fsync_dir(self._tmp)
        return removed

    def disk_usage(self) -> int:
        """Return the bytes allocated on disk under ``root``, directories included (like du)."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    continue  # deleted while we walked
        return total + os.lstat(self.root).st_blocks * 512

    # -- internals -------------------------------------------------------------------

    def _path(self, blob_id: str) -> Path:
        # Blob paths are built only here and in `get`, only from a validated id: nothing
        # from outside (an IMAP client, a sync peer) can steer them elsewhere in the tree.
        _check_id(blob_id)
        return self.root / blob_id[0:2] / blob_id[2:4] / blob_id

    def _decrypt_chunks(self, path: Path, blob_id: str) -> Iterator[bytes]:
        aead = AESGCM(self._content_key)
        raw_id = bytes.fromhex(blob_id)
        with _open_blob(path, blob_id) as (f, length, prefix):
            n_chunks = _chunk_count(length)
            for index in range(n_chunks):
                final = index == n_chunks - 1
                want = (length - index * CHUNK_SIZE if final else CHUNK_SIZE) + TAG_SIZE
                sealed = f.read(want)
                if len(sealed) != want:
                    raise BlobCorrupt(f"blob {blob_id} is truncated in chunk {index}")
                try:
                    yield aead.decrypt(_nonce(prefix, index), sealed, _aad(raw_id, index, final))
                except InvalidTag:
                    raise BlobCorrupt(
                        f"blob {blob_id} fails authentication in chunk {index}"
                    ) from None
            if f.read(1):
                raise BlobCorrupt(f"blob {blob_id} has data after its final chunk")

    def _pieces(self, path: Path, blob_id: str, chunk_size: int | None) -> Iterator[bytes]:
        for plain in self._decrypt_chunks(path, blob_id):
            if chunk_size is None:
                if plain:
                    yield plain
                continue
            for start in range(0, len(plain), chunk_size):
                yield plain[start : start + chunk_size]


def _check_id(blob_id: str) -> None:
    if not isinstance(blob_id, str) or not _ID_RE.fullmatch(blob_id):
        raise ValueError(f"invalid blob id {blob_id!r}: expected 64 lowercase hex characters")


@contextmanager
def _open_blob(path: Path, blob_id: str) -> Iterator[tuple[BinaryIO, int, bytes]]:
    """Open a blob file and check its header; yield (file, plaintext length, nonce prefix)."""
    try:
        # Opened outside `with` so only the open itself maps FileNotFoundError to
        # BlobMissing; the `with f:` below closes it.
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise BlobMissing(f"no blob {blob_id}") from None
    with f:
        length, prefix = _check_header(f, blob_id)
        yield f, length, prefix


def _check_header(f: BinaryIO, blob_id: str) -> tuple[int, bytes]:
    header = f.read(HEADER_SIZE)
    if len(header) != HEADER_SIZE:
        raise BlobCorrupt(f"blob {blob_id} is truncated in its header")
    return _parse_header(header, blob_id, os.fstat(f.fileno()).st_size)


def _parse_header(header: bytes, blob_id: str, actual: int) -> tuple[int, bytes]:
    """Check a blob's header against the file's size *actual*; return (length, prefix)."""
    magic, version, length, prefix = HEADER.unpack(header)
    if magic != MAGIC:
        raise BlobCorrupt(f"blob {blob_id} is not an edgebox blob (bad magic)")
    if version != FORMAT_VERSION:
        raise BlobCorrupt(f"blob {blob_id} has unsupported format version {version}")
    # A cheap early check, so a truncated or padded file fails before any plaintext is
    # released; the tags remain the real check.
    expected = _stored_size(length)
    if actual != expected:
        raise BlobCorrupt(
            f"blob {blob_id} is {actual} bytes on disk, expected {expected} for its length"
        )
    return int(length), bytes(prefix)


def _chunk_count(length: int) -> int:
    # An empty blob is still one (empty) chunk, so it carries a final-flagged tag too.
    return max(1, -(-length // CHUNK_SIZE))


def _stored_size(length: int) -> int:
    return HEADER_SIZE + length + _chunk_count(length) * TAG_SIZE


def _nonce(prefix: bytes, index: int) -> bytes:
    # The STREAM construction: Hoang, Reyhanitabar, Rogaway, Vizár, "Online
    # Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance" (CRYPTO 2015).
    return prefix + index.to_bytes(4, "big")


def _aad(raw_id: bytes, index: int, final: bool) -> bytes:
    return raw_id + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


def _sorted_subdirs(path: Path) -> list[Path]:
    return sorted(
        Path(e.path)
        for e in os.scandir(path)
        if _FANOUT_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    )


def _make_dir(path: Path, *, parents: bool = False) -> None:
    """Create ``path`` (0700) if missing, and fsync its parent so the entry is durable."""
    if path.is_dir():
        return
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        # Created by a concurrent put that may not have fsynced the parent yet; do it
        # here too rather than return with a blob whose directory entry could vanish.
        pass
    else:
        path.chmod(_DIR_MODE)  # mkdir's mode is filtered by the umask
    fsync_dir(path.parent)
