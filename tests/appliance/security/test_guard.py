"""The sign-in guard: back-off per source, refusal of the source, never of the account."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.security.guard import Admission, AuthGuard, GuardPolicy, source_key

ATTACKER = "10.0.0.66"
OWNER_PC = "10.0.0.7"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock | None = None, **policy: float) -> AuthGuard:
    return AuthGuard(GuardPolicy(**policy), clock=clock or Clock())  # type: ignore[arg-type]


def fail(guard: AuthGuard, account: str, source: str, times: int = 1) -> list[Admission]:
    """Make *times* wrong attempts one after the other; return each one's admission."""
    seen = []
    for _ in range(times):
        admission = guard.admit(account, source)
        seen.append(admission)
        if not admission.refused:
            guard.failed(account, source)
    return seen


def test_the_delay_doubles_per_failure_up_to_the_cap() -> None:
    g = guard()
    delays = [a.delay for a in fail(g, "a@x.go.th", ATTACKER, 9)]
    assert delays == [0, 1, 2, 4, 8, 15, 15, 15, 15]


def test_the_source_is_refused_after_its_limit_even_with_the_right_password() -> None:
    clock = Clock()
    g = guard(clock)
    assert not any(a.refused for a in fail(g, "a@x.go.th", ATTACKER, 10))
    refusal = g.admit("a@x.go.th", ATTACKER)
    assert refusal.refused
    assert refusal.refused_for == 900
    # Another account from the same source: refused too (a spray is a source's doing).
    assert g.admit("b@x.go.th", ATTACKER).refused
    clock.now = 899
    assert g.admit("a@x.go.th", ATTACKER).refused_for == pytest.approx(1)
    clock.now = 900
    assert not g.admit("a@x.go.th", ATTACKER).refused


def test_the_owner_from_a_clean_source_is_never_refused() -> None:
    clock = Clock()
    g = guard(clock)
    # Every wrong password of a whole afternoon, from a hundred addresses.
    for n in range(100):
        fail(g, "director@x.go.th", f"10.1.{n}.1", 5)
        clock.now += 60
    owner = g.admit("director@x.go.th", OWNER_PC)
    assert not owner.refused
    # Only the account's modest delay, however many failures it has seen.
    assert owner.delay == 4
    g.succeeded("director@x.go.th", OWNER_PC)
    assert g.admit("director@x.go.th", OWNER_PC).delay == 0


def test_account_failures_add_a_delay_only_past_their_threshold() -> None:
    g = guard()
    for n in range(5):
        assert g.admit("a@x.go.th", OWNER_PC).delay == 0
        g.abandoned(OWNER_PC)
        fail(g, "a@x.go.th", f"10.2.0.{n}")
    waits = []
    for n in range(5, 9):
        waits.append(g.admit("a@x.go.th", OWNER_PC).delay)
        g.abandoned(OWNER_PC)
        fail(g, "a@x.go.th", f"10.2.0.{n}")
    assert waits == [1, 2, 4, 4]


def test_parallel_sign_ins_from_a_clean_source_do_not_wait() -> None:
    # A mail client opens several connections at once; an office shares one address.
    g = guard()
    delays = [g.admit(f"user{n}@x.go.th", OWNER_PC).delay for n in range(10)]
    assert delays == [0] * 10


def test_after_a_failure_attempts_in_flight_count_so_parallel_guesses_buy_nothing() -> None:
    g = guard()
    fail(g, "user0@x.go.th", ATTACKER)
    delays = [g.admit(f"user{n}@x.go.th", ATTACKER).delay for n in range(1, 5)]
    assert delays == [1, 2, 4, 8]
    for n in range(1, 5):
        g.failed(f"user{n}@x.go.th", ATTACKER)
    assert g.admit("user9@x.go.th", ATTACKER).delay == 15


def test_success_forgives_the_owners_own_typos_but_not_a_spray() -> None:
    g = guard()
    fail(g, "a@x.go.th", OWNER_PC, 3)
    g.admit("a@x.go.th", OWNER_PC)
    g.succeeded("a@x.go.th", OWNER_PC)
    assert g.admit("a@x.go.th", OWNER_PC).delay == 0
    g.abandoned(OWNER_PC)
    # A source that sprayed others' accounts keeps those failures after one success.
    for n in range(4):
        fail(g, f"user{n}@x.go.th", ATTACKER)
    g.admit("mine@x.go.th", ATTACKER)
    g.succeeded("mine@x.go.th", ATTACKER)
    assert g.admit("another@x.go.th", ATTACKER).delay == 8


def test_refusals_double_and_a_quiet_window_resets_them() -> None:
    clock = Clock()
    g = guard(clock, max_refusal=3000)
    refusals = []
    for _ in range(4):
        fail(g, "a@x.go.th", ATTACKER, 10)
        refusals.append(g.refused_for(ATTACKER))
        clock.now += refusals[-1]
    assert refusals == [900, 1800, 3000, 3000]
    clock.now += 3600 + 1
    fail(g, "a@x.go.th", ATTACKER, 10)
    assert g.refused_for(ATTACKER) == 900


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    g = guard(clock)
    fail(g, "a@x.go.th", ATTACKER, 9)
    clock.now = 3601
    assert g.admit("a@x.go.th", ATTACKER).delay == 0
    g.abandoned(ATTACKER)
    fail(g, "a@x.go.th", ATTACKER, 9)
    assert not g.admit("a@x.go.th", ATTACKER).refused


def test_an_ipv6_host_is_one_source_across_its_64() -> None:
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2:aaaa::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key(None) == source_key("not an address") == "unknown"
    g = guard()
    fail(g, "a@x.go.th", "2001:db8:1:2::1", 10)
    assert g.admit("a@x.go.th", "2001:db8:1:2::beef").refused
    assert not g.admit("a@x.go.th", "2001:db8:1:3::1").refused


def test_the_admin_sees_sources_and_accounts_and_can_unlock() -> None:
    clock = Clock()
    g = guard(clock)
    fail(g, "a@x.go.th", ATTACKER, 7)
    fail(g, "b@y.go.th", ATTACKER, 3)
    clock.now += 5
    fail(g, "a@x.go.th", "10.0.0.8", 1)
    g.admit("a@x.go.th", ATTACKER)  # refused: not a failure
    [newest, attacker] = g.sources()
    assert newest.source == "10.0.0.8"
    assert attacker.source == ATTACKER
    assert attacker.accounts == (("a@x.go.th", 7), ("b@y.go.th", 3))
    assert attacker.refused_for == 895
    assert attacker.idle_for == 5
    assert attacker.refused_attempts == 1
    assert g.tried_from(ATTACKER) == {"a@x.go.th", "b@y.go.th"}
    accounts = {state.account: state for state in g.accounts()}
    assert accounts["a@x.go.th"].failures == 8
    assert accounts["a@x.go.th"].delay == 4  # the account cap
    assert accounts["a@x.go.th"].sources == ((ATTACKER, 7), ("10.0.0.8", 1))
    assert g.unlock_source(ATTACKER)
    assert not g.admit("a@x.go.th", ATTACKER).refused
    g.abandoned(ATTACKER)
    assert g.unlock_account("a@x.go.th")
    assert not g.unlock_account("a@x.go.th")
    assert g.admit("a@x.go.th", OWNER_PC).delay == 0


def test_an_unlock_while_an_attempt_runs_is_harmless() -> None:
    g = guard()
    fail(g, "a@x.go.th", ATTACKER, 3)
    g.admit("a@x.go.th", ATTACKER)
    g.unlock_source(ATTACKER)
    g.failed("a@x.go.th", ATTACKER)
    assert g.admit("a@x.go.th", ATTACKER).delay == 1


def test_memory_is_bounded() -> None:
    clock = Clock()
    g = guard(clock, max_keys=50)
    for n in range(200):
        fail(g, f"user{n}@x.go.th", f"10.0.{n // 250}.{n % 250}")
    assert len(g) <= 100
    clock.now = 10_000
    fail(g, "late@x.go.th", "10.1.1.1")
    assert len(g) == 2, "stale entries are dropped"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a@x.go.th", "b@x.go.th", "c@y.go.th"]),
            st.sampled_from([ATTACKER, "10.0.0.67", "2001:db8::1", None]),
            st.booleans(),
            st.floats(min_value=0, max_value=1200),
        ),
        max_size=300,
    )
)
def test_no_history_refuses_or_long_delays_an_owner_on_a_clean_source(
    events: list[tuple[str, str | None, bool, float]],
) -> None:
    clock = Clock()
    g = guard(clock)
    for account, source, right, wait in events:
        clock.now += wait
        admission = g.admit(account, source)
        if admission.refused:
            assert admission.refused_for <= 4 * 3600
            continue
        assert admission.delay <= 15
        if right:
            g.succeeded(account, source)
        else:
            g.failed(account, source)
    for account in ("a@x.go.th", "b@x.go.th", "c@y.go.th"):
        owner = g.admit(account, OWNER_PC)
        assert not owner.refused
        assert owner.delay <= 4
        g.abandoned(OWNER_PC)
