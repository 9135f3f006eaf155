"""Tests of scrypt password hashing: format, Thai passwords, malformed stored values."""

from __future__ import annotations

import base64
import hashlib
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.security import passwords
from appliance.security.passwords import (
    DUMMY_HASH,
    MAX_PASSWORD_CHARS,
    hash_password,
    needs_rehash,
    verify_password,
)


def _scrypt_string(password: str, *, log2_n: int, r: int, p: int, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=r, p=p, dklen=32)
    salt64 = base64.b64encode(salt).decode()
    return f"scrypt${log2_n}${r}${p}${salt64}${base64.b64encode(digest).decode()}"


def test_hash_is_self_describing() -> None:
    stored = hash_password("correct horse")
    scheme, log2_n, r, p, salt, digest = stored.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32


def test_verify_accepts_right_and_refuses_wrong_password() -> None:
    stored = hash_password("correct horse")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_each_hash_has_its_own_salt() -> None:
    assert hash_password("same") != hash_password("same")


def test_thai_password() -> None:
    stored = hash_password("รหัสผ่านลับมาก๑๒๓")
    assert verify_password("รหัสผ่านลับมาก๑๒๓", stored)
    assert not verify_password("รหัสผ่านลับมาก123", stored)


@pytest.mark.parametrize(
    ("typed_here", "typed_there"),
    [
        # ปู่: tone mark before or after the below-vowel, as different keyboards send it.
        ("\u0e1b\u0e48\u0e39", "\u0e1b\u0e39\u0e48"),
        # é precomposed, or e + COMBINING ACUTE ACCENT.
        ("caf\u00e9", "cafe\u0301"),
    ],
)
def test_equal_looking_passwords_are_equal(typed_here: str, typed_there: str) -> None:
    assert typed_here != typed_there
    assert unicodedata.normalize("NFC", typed_here) == unicodedata.normalize("NFC", typed_there)
    assert verify_password(typed_there, hash_password(typed_here))


def test_empty_password_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        hash_password("")


def test_overlong_password_is_refused() -> None:
    assert verify_password("x" * MAX_PASSWORD_CHARS, hash_password("x" * MAX_PASSWORD_CHARS))
    with pytest.raises(ValueError, match=r"1025 characters long; at most 1024"):
        hash_password("x" * (MAX_PASSWORD_CHARS + 1))
    assert not verify_password("x" * (MAX_PASSWORD_CHARS + 1), DUMMY_HASH)


def test_lone_surrogate_is_a_plain_mismatch() -> None:
    assert not verify_password("\ud800", hash_password("abc"))


_GOOD = "scrypt$14$8$1$lMK9NnY6FD4jTxxgttwfuQ==$qcspRqeg0As+PSoQzScQM/1buzDQpuqciht9IaEnxfE="


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "$".join(["scrypt"] * 6),
        _GOOD.replace("scrypt$", "bcrypt$"),
        _GOOD + "$extra",
        _GOOD.rsplit("$", 1)[0],
        _GOOD.replace("$14$", "$ 14$"),
        _GOOD.replace("$14$", "$1_4$"),
        _GOOD.replace("$14$", "$๑๔$"),  # Thai digits: int() would accept them
        _GOOD.replace("$14$", "$0$"),
        _GOOD.replace("$8$1$", "$8$0$"),
        _GOOD.replace("$14$", "$40$"),  # 2**40: would take the box down
        _GOOD.replace("$8$1$", "$8$99$"),  # CPU far beyond the budget
        _GOOD.replace("$8$1$", "$64$1$"),  # memory beyond the budget
        _GOOD.replace("lMK9", "!!!!"),  # not base64
        _GOOD.rsplit("$", 1)[0] + "$",  # empty digest
        _GOOD.rsplit("$", 1)[0] + "$" + base64.b64encode(b"short").decode(),
    ],
)
def test_malformed_stored_value_is_false_not_an_error(stored: str) -> None:
    assert verify_password("anything", stored) is False
    assert needs_rehash(stored)


def test_non_string_inputs_are_false() -> None:
    assert verify_password("x", None) is False  # type: ignore[arg-type]
    assert verify_password(None, DUMMY_HASH) is False  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("scrypt$0123456789+/=abcXYZ ๑"), max_size=80))
def test_verify_never_raises_on_garbage(stored: str) -> None:
    assert verify_password("guess", stored) in (True, False)


def test_needs_rehash() -> None:
    assert not needs_rehash(hash_password("pw"))
    salt = b"0123456789abcdef"
    weaker = _scrypt_string("pw", log2_n=10, r=8, p=1, salt=salt)
    assert verify_password("pw", weaker)  # older parameters still verify...
    assert needs_rehash(weaker)  # ...and are due for an upgrade
    assert needs_rehash(_scrypt_string("pw", log2_n=14, r=8, p=1, salt=b"short salt"))


def test_dummy_hash_is_a_current_valid_hash() -> None:
    assert not needs_rehash(DUMMY_HASH)
    assert passwords._parse(DUMMY_HASH) is not None
    assert not verify_password("", DUMMY_HASH)
    assert not verify_password("password", DUMMY_HASH)
