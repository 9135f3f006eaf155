"""Sign-in lock-out: per address, per IP, success clears, locks end and double."""

from __future__ import annotations

from appliance.security.lockout import Lockout


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(lockout: Lockout, times: int, address: str = "a@x", ip: str = "10.0.0.1") -> float:
    wait = 0.0
    for _ in range(times):
        wait = lockout.failure(address, ip)
    return wait


def test_five_failures_lock_the_address_for_fifteen_minutes() -> None:
    clock = Clock()
    lockout = Lockout(clock=clock)
    assert fail(lockout, 4) == 0
    assert lockout.retry_after("a@x", "10.0.0.2") == 0
    assert fail(lockout, 1) == 900
    # Locked from any IP, since it is the address that is under attack.
    assert lockout.retry_after("a@x", "10.0.0.9") == 900
    assert lockout.retry_after("b@x", "10.0.0.9") == 0
    clock.now = 899
    assert lockout.retry_after("a@x", None) == 1
    clock.now = 900
    assert lockout.retry_after("a@x", None) == 0


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    lockout = Lockout(clock=clock)
    fail(lockout, 4)
    clock.now = 15 * 60 + 1
    assert fail(lockout, 4) == 0
    assert fail(lockout, 1) == 900


def test_success_clears_the_address() -> None:
    lockout = Lockout(clock=Clock())
    fail(lockout, 4)
    lockout.success("a@x")
    assert fail(lockout, 4) == 0


def test_twenty_failures_from_one_ip_lock_the_ip() -> None:
    lockout = Lockout(clock=Clock())
    for n in range(19):
        assert lockout.failure(f"user{n}@x", "10.9.9.9") == 0
    assert lockout.failure("user19@x", "10.9.9.9") == 900
    assert lockout.retry_after("fresh@x", "10.9.9.9") == 900
    assert lockout.retry_after("fresh@x", "10.9.9.8") == 0
    # A correct password for one account does not clear the IP's lock.
    lockout.success("fresh@x")
    assert lockout.retry_after("fresh@x", "10.9.9.9") == 900


def test_repeated_locks_double_up_to_the_cap() -> None:
    clock = Clock()
    lockout = Lockout(clock=clock, max_lock=3000)
    waits = []
    for _ in range(4):
        waits.append(fail(lockout, 5))
        clock.now += waits[-1]
    assert waits == [900, 1800, 3000, 3000]
    # A quiet window resets the doubling.
    clock.now += 15 * 60 + 1
    assert fail(lockout, 5) == 900


def test_memory_is_bounded() -> None:
    clock = Clock()
    lockout = Lockout(clock=clock, max_keys=50)
    for n in range(200):
        lockout.failure(f"user{n}@x", f"10.0.{n // 250}.{n % 250}")
    assert len(lockout) <= 50
    clock.now = 10_000
    lockout.failure("late@x", "10.1.1.1")
    assert len(lockout) == 2, "stale entries are dropped"
