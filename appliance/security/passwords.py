"""Password hashing for every account on the box: scrypt, in a self-describing string.

A stored hash reads ``scrypt$<log2 n>$<r>$<p>$<b64 salt>$<b64 hash>``, so the cost
parameters travel with each hash: raising them later only needs `needs_rehash` and a
fresh `hash_password` at the next successful login, never a flag day.

What this is not: account storage, lock-out or rate limiting (the directory and the
rate limiter own those), and not async. scrypt costs tens of milliseconds of CPU and
16 MiB of memory on purpose, so async callers run these functions in a worker thread
(``trio.to_thread.run_sync``) and never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from typing import Final

#: scrypt cost parameters for new hashes: n = 2**14, r = 8, p = 1 costs 16 MiB and
#: roughly 50-100 ms per hash on the box's CPUs, the usual interactive-login setting.
LOG2_N: Final = 14
R: Final = 8
P: Final = 1
DKLEN: Final = 32
SALT_BYTES: Final = 16

#: Longest password accepted. Far above any memorable password; the limit stops a
#: client from making the server hash megabytes per login attempt.
MAX_PASSWORD_CHARS: Final = 1024

_SCHEME: Final = "scrypt"

# Bounds on what `verify_password` accepts from a stored string. Stored hashes are
# ours, but a damaged or tampered row must cost one failed login, not minutes of CPU
# or gigabytes of memory. The budget leaves room to raise today's cost 16-fold later.
_MAX_WORK: Final = 16 * (2**LOG2_N) * R * P  # n * r * p, proportional to CPU time
_MAX_MEMORY: Final = 64 * 1024 * 1024  # scrypt needs about 128 * r * n bytes
_DKLEN_RANGE: Final = range(16, 65)
_DECIMAL: Final = re.compile(r"[0-9]{1,2}")


#: A valid hash of a password nobody knows. `verify_password(attempt, DUMMY_HASH)` for a
#: login to an unknown or disabled account costs the same time as a real check, so the
#: response time does not tell an attacker which addresses exist.
DUMMY_HASH: Final = (
    "scrypt$14$8$1$lMK9NnY6FD4jTxxgttwfuQ==$qcspRqeg0As+PSoQzScQM/1buzDQpuqciht9IaEnxfE="
)


def hash_password(password: str) -> str:
    """Hash *password* with a fresh random salt; return the self-describing string."""
    data = _password_bytes(password)
    if not data:
        raise ValueError("password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(
            f"password is {len(password)} characters long; at most {MAX_PASSWORD_CHARS} allowed"
        )
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(data, salt=salt, n=2**LOG2_N, r=R, p=P, dklen=DKLEN)
    return "$".join((_SCHEME, str(LOG2_N), str(R), str(P), _b64encode(salt), _b64encode(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Return whether *password* matches *stored*; False, never an error, if malformed."""
    parsed = _parse(stored)
    if parsed is None or not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        return False
    log2_n, r, p, salt, expected = parsed
    try:
        actual = hashlib.scrypt(
            _password_bytes(password),
            salt=salt,
            n=2**log2_n,
            r=r,
            p=p,
            dklen=len(expected),
            # OpenSSL's default cap (32 MiB) would refuse a stronger future setting.
            maxmem=_MAX_MEMORY + 1024 * 1024,
        )
    except (ValueError, MemoryError, UnicodeError):
        return False
    return hmac.compare_digest(actual, expected)


def is_password_hash(stored: object) -> bool:
    """Return whether *stored* is a hash in our format, with costs we are willing to check.

    For a hash made elsewhere and handed in (the setup wizard's draft): the directory
    stores only what this accepts, so a row never holds a plaintext or a foreign scheme.
    """
    return _parse(stored) is not None


def needs_rehash(stored: str) -> bool:
    """Return whether *stored* should be replaced by a hash with today's parameters."""
    parsed = _parse(stored)
    if parsed is None:
        return True
    log2_n, r, p, salt, digest = parsed
    return (log2_n, r, p, len(salt), len(digest)) != (LOG2_N, R, P, SALT_BYTES, DKLEN)


def _password_bytes(password: str) -> bytes:
    # NFC first (as RFC 8265's OpaqueString profile does): the same visible password can
    # arrive as different code-point sequences depending on keyboard, phone or browser.
    # In Thai, a tone mark and a below-vowel over one consonant (ปู่ = ป + ู + ่) may be
    # typed in either order; in Latin, é may be one code point or e + a combining accent.
    # Hashing the raw string would lock users out when they change device; NFC puts
    # combining marks in canonical order and composes them, so equal text hashes equal.
    # "surrogatepass" turns a lone surrogate from a broken client into bytes that
    # simply do not match, rather than an exception on the login path.
    if not isinstance(password, str):
        raise TypeError(f"password must be str, not {type(password).__name__}")
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def _parse(stored: object) -> tuple[int, int, int, bytes, bytes] | None:
    """Split a stored hash into its parts, or None if it is not one we can check."""
    if not isinstance(stored, str):
        return None
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    # Plain ASCII digits only: int() alone would also take " 14", "1_4" and Thai digits.
    if not all(_DECIMAL.fullmatch(part) for part in parts[1:4]):
        return None
    log2_n, r, p = (int(part) for part in parts[1:4])
    try:
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return None
    if min(log2_n, r, p) < 1:
        return None
    if (2**log2_n) * r * p > _MAX_WORK or 128 * r * (2**log2_n) > _MAX_MEMORY:
        return None
    if not salt or len(digest) not in _DKLEN_RANGE:
        return None
    return log2_n, r, p, salt, digest


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
