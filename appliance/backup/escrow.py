"""Escrow of each box's backup key at the hub: wrapped to the hub's escrow key.

A box's backup key dies with the box unless it was written down: the agency's recovery
sheet is one copy, and the hub holds the other, so a box whose sheet was lost can still
be restored. The hub cannot read it on its own: the key is wrapped to the hub's
*escrow key*, an X25519 key pair made once on the hub, whose private half is sealed
under the hub's provisioning secret (`appliance.security.keys.seal`) and used only by
an operator's ``edgebox hub escrow`` command, never by the sync service.

Wrapping (ECIES in the manner of RFC 9180's base mode, built from `cryptography`'s
primitives)::

    ephemeral X25519 key e;  shared = X25519(e, hub escrow public key)
    wrap key = HKDF-SHA256(shared, salt = e.pub || hub.pub, info = INFO || box id)
    wrapped  = "x25519-v1." || b64(e.pub) || "." || b64(AES-256-GCM(wrap key, 0^12, backup key,
               AAD = box id || 0x00 || key id))

A fresh ephemeral key per wrap means the fixed nonce never repeats under one wrap key.
The box id and key id in the AAD tie a wrapped key to its box: a wrapped key filed under
another box's name does not unwrap.

What this is not: where the wrapped keys are kept (`appliance.backup.hubstore`) or
sent (`appliance.backup.offsite`). Plain synchronous functions.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.backup.crypto import KEY_SIZE, key_id
from appliance.security.keys import KeyMaterialError, seal, unseal
from appliance.store.files import write_atomically

#: The hub's sealed escrow private key and its public half, in ``HUB/keys``.
ESCROW_PRIVATE: Final = "escrow.key.sealed"
ESCROW_PUBLIC: Final = "escrow.pub"
_SEAL_PURPOSE: Final = "backup escrow key"
_INFO: Final = b"edgebox backup escrow v1 "
_FORMAT: Final = "x25519-v1"


class EscrowError(ValueError):
    """A wrapped key that does not unwrap: damaged, another box's, or another hub's."""


def ensure_escrow_key(keys_dir: Path) -> bytes:
    """Return the hub's escrow public key (raw 32 bytes), making the pair the first time."""
    public = keys_dir / ESCROW_PUBLIC
    if not public.exists():
        private = X25519PrivateKey.generate()
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        # The private half first: a public key without it would take wrapped keys that
        # nobody can ever unwrap.
        write_atomically(keys_dir / ESCROW_PRIVATE, seal(keys_dir, _SEAL_PURPOSE, raw))
        pub = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        write_atomically(public, base64.b64encode(pub) + b"\n", mode=0o644)
    return load_escrow_public(keys_dir)


def load_escrow_public(keys_dir: Path) -> bytes:
    """Return the hub's escrow public key; raise KeyMaterialError if there is none."""
    try:
        raw = base64.b64decode((keys_dir / ESCROW_PUBLIC).read_bytes(), validate=False)
    except (OSError, binascii.Error):
        raise KeyMaterialError(f"no escrow key in {keys_dir}") from None
    if len(raw) != 32:
        raise KeyMaterialError(f"the escrow public key in {keys_dir} is damaged")
    return raw


def wrap_key(hub_public: bytes, box_id: str, backup_key: bytes) -> str:
    """Return *backup_key* wrapped to the hub's escrow key, bound to *box_id*."""
    if len(hub_public) != 32:
        raise EscrowError("an escrow public key is 32 bytes")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(hub_public))
    sealed = AESGCM(_wrap_key(shared, ephemeral_public, hub_public, box_id)).encrypt(
        bytes(12), backup_key, _aad(box_id, key_id(backup_key))
    )
    return ".".join((_FORMAT, _b64(ephemeral_public), _b64(sealed)))


def unwrap_key(keys_dir: Path, box_id: str, wanted_key_id: str, wrapped: str) -> bytes:
    """Return the backup key in *wrapped*, with the hub's sealed escrow private key."""
    try:
        tag, ephemeral_text, sealed_text = wrapped.split(".")
        if tag != _FORMAT:
            raise EscrowError(f"unknown escrow format {tag!r}")
        ephemeral_public = base64.urlsafe_b64decode(ephemeral_text + "==")
        sealed = base64.urlsafe_b64decode(sealed_text + "==")
    except (ValueError, binascii.Error) as exc:
        raise EscrowError(f"not a wrapped key: {exc}") from None
    try:
        private = X25519PrivateKey.from_private_bytes(
            unseal(keys_dir, _SEAL_PURPOSE, (keys_dir / ESCROW_PRIVATE).read_bytes())
        )
    except FileNotFoundError:
        raise KeyMaterialError(f"no escrow private key in {keys_dir}") from None
    hub_public = load_escrow_public(keys_dir)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = AESGCM(_wrap_key(shared, ephemeral_public, hub_public, box_id)).decrypt(
            bytes(12), sealed, _aad(box_id, wanted_key_id)
        )
    except (InvalidTag, ValueError):
        raise EscrowError(
            "the wrapped key does not unwrap: damaged, wrapped for another box, "
            "or to another hub's escrow key"
        ) from None
    if len(key) != KEY_SIZE or key_id(key) != wanted_key_id:
        raise EscrowError("the unwrapped key is not the key it was filed as")
    return key


def _wrap_key(shared: bytes, ephemeral_public: bytes, hub_public: bytes, box_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + hub_public,
        info=_INFO + box_id.encode("ascii"),
    ).derive(shared)


def _aad(box_id: str, wanted_key_id: str) -> bytes:
    return box_id.encode("ascii") + b"\x00" + wanted_key_id.encode("ascii")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
