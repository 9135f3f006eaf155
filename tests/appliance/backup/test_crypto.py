"""The backup file format and the recovery words: round trips, and every fault named."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.backup import crypto
from appliance.backup.crypto import (
    BackupDamaged,
    BadRecoveryKey,
    decrypt_bytes,
    encrypt_bytes,
    ensure_backup_key,
    key_to_words,
    load_backup_key,
    words_to_key,
)
from appliance.security.keys import create_box_keys

KEY = bytes(range(32))


@given(st.binary(min_size=32, max_size=32))
def test_recovery_words_round_trip(key: bytes) -> None:
    words = key_to_words(key)
    assert len(words.split()) == 17
    assert words_to_key(words) == key
    assert words_to_key(words.upper().replace(" ", "-")) == key


def test_a_mistyped_group_is_caught() -> None:
    words = key_to_words(KEY).split()
    words[3] = "0000" if words[3] != "0000" else "1111"
    with pytest.raises(BadRecoveryKey, match="typo"):
        words_to_key(" ".join(words))


@given(st.text(max_size=120))
def test_any_typed_text_is_a_key_or_a_clean_refusal(text: str) -> None:
    try:
        assert len(words_to_key(text)) == 32
    except BadRecoveryKey:
        pass


@given(st.binary(max_size=5000), st.text(min_size=1, max_size=20))
def test_encrypt_decrypt_round_trip(data: bytes, label: str) -> None:
    assert decrypt_bytes(KEY, label, encrypt_bytes(KEY, label, data)) == data


def test_multi_chunk_file_streams_and_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "CHUNK_SIZE", 1000)
    data = secrets.token_bytes(3500)
    out = io.BytesIO()
    size, digest = crypto.encrypt_stream(KEY, "db/mail.sqlite", io.BytesIO(data), out)
    assert size == 3500
    import hashlib

    assert digest == hashlib.sha256(data).hexdigest()
    sealed = out.getvalue()
    assert len(sealed) == crypto.HEADER_SIZE + 4 * crypto.TAG_SIZE + 3500
    assert b"".join(crypto.decrypt_stream(KEY, "db/mail.sqlite", io.BytesIO(sealed))) == data
    # Dropping the last chunk is truncation, detected by the final flag.
    cut = sealed[: crypto.HEADER_SIZE + 3 * (1000 + crypto.TAG_SIZE)]
    with pytest.raises(BackupDamaged, match="chunk 2"):
        decrypt_bytes(KEY, "db/mail.sqlite", cut)


@pytest.mark.parametrize("where", [0, 4, 10, 30, -1])
def test_one_flipped_byte_is_named(where: int) -> None:
    sealed = bytearray(encrypt_bytes(KEY, "config.json", b'{"box": 1}'))
    sealed[where] ^= 0x01
    with pytest.raises(BackupDamaged) as caught:
        decrypt_bytes(KEY, "config.json", bytes(sealed))
    assert caught.value.part == "config.json"


def test_a_file_under_another_name_or_key_fails() -> None:
    sealed = encrypt_bytes(KEY, "keys/provisioning.secret", b"s" * 32)
    with pytest.raises(BackupDamaged, match="authentication"):
        decrypt_bytes(KEY, "keys/data.key.wrapped", sealed)
    with pytest.raises(BackupDamaged, match="authentication"):
        decrypt_bytes(bytes(32), "keys/provisioning.secret", sealed)


def test_backup_key_is_made_once_and_sealed(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    create_box_keys(keys)
    first = ensure_backup_key(keys)
    assert ensure_backup_key(keys) == first == load_backup_key(keys)
    assert first not in (keys / crypto.SEALED_KEY_FILE).read_bytes()
    assert oct((keys / crypto.SEALED_KEY_FILE).stat().st_mode & 0o777) == "0o600"
