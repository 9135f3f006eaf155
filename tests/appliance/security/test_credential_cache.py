"""VerifiedCredentials: recently verified passwords skip scrypt, and nothing else does."""

from __future__ import annotations

from appliance.security.credential_cache import VerifiedCredentials


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_remembers_a_verified_password_for_its_hash_until_the_ttl() -> None:
    clock = Clock()
    cache = VerifiedCredentials(ttl=60, clock=clock)
    assert not cache.matches("a@x.go.th", "secret", "hash1")
    cache.remember("a@x.go.th", "secret", "hash1")
    assert cache.matches("a@x.go.th", "secret", "hash1")
    assert not cache.matches("a@x.go.th", "Secret", "hash1")
    assert not cache.matches("b@x.go.th", "secret", "hash1")
    clock.now += 61
    assert not cache.matches("a@x.go.th", "secret", "hash1")
    assert len(cache) == 0


def test_a_changed_stored_hash_forgets_the_old_password() -> None:
    cache = VerifiedCredentials()
    cache.remember("a@x.go.th", "old", "hash-old")
    assert not cache.matches("a@x.go.th", "old", "hash-new")
    # and the stale entry is gone, not merely skipped
    assert not cache.matches("a@x.go.th", "old", "hash-old")


def test_neither_address_nor_password_is_kept() -> None:
    cache = VerifiedCredentials()
    cache.remember("a@x.go.th", "รหัสผ่าน-ลับ", "hash1")
    held = repr(cache._entries)
    assert "รหัสผ่าน" not in held
    assert "a@x.go.th" not in held


def test_bounded_least_recent_first() -> None:
    cache = VerifiedCredentials(max_entries=2)
    cache.remember("a@x", "p", "h")
    cache.remember("b@x", "p", "h")
    cache.remember("c@x", "p", "h")
    assert len(cache) == 2
    assert not cache.matches("a@x", "p", "h")
    assert cache.matches("c@x", "p", "h")
