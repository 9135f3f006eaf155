"""SignIn on trio's MockClock: delays are per-session trio sleeps, refusals, the log."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing

from appliance.compliance.traffic_log import TrafficRecord
from appliance.directory import User
from appliance.directory.signin import Refused, SignIn
from appliance.security.guard import AuthGuard, GuardPolicy

PASSWORD = "ถูกต้อง-2569"
OWNER = "malee@demo.go.th"


class Passwords:
    """The directory's password check, without scrypt or threads."""

    async def authenticate(self, address: str, password: str) -> User | None:
        if address.lower() == OWNER and password == PASSWORD:
            return cast(User, _User(OWNER))
        return None


class _User:
    def __init__(self, address: str) -> None:
        self.address = address


class Records:
    def __init__(self) -> None:
        self.records: list[TrafficRecord] = []

    async def append(self, record: TrafficRecord) -> None:
        self.records.append(record)


def make(**policy: Any) -> tuple[SignIn, Records]:
    records = Records()
    guard = AuthGuard(GuardPolicy(**policy), clock=trio.current_time)
    return SignIn(Passwords(), guard, records), records


async def timed(signin: SignIn, service: str, password: str, ip: str) -> tuple[object, float]:
    began = trio.current_time()
    outcome = await signin.check(service, OWNER, password, ip)
    return outcome, trio.current_time() - began


async def test_each_wrong_guess_waits_longer_then_the_source_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signin, _ = make(source_limit=6)
    waits = []
    for _ in range(6):
        outcome, took = await timed(signin, "imap", "guess", "10.0.0.66")
        assert outcome is None
        waits.append(took)
    assert waits == [0, 1, 2, 4, 8, 15]
    outcome, took = await timed(signin, "smtp-submission", PASSWORD, "10.0.0.66")
    assert isinstance(outcome, Refused)
    assert outcome.retry_after == 900
    assert took == 0, "a refusal costs the box nothing"


async def test_a_waiting_attacker_does_not_hold_up_the_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signin, _ = make()
    for _ in range(4):
        await signin.check("imap", OWNER, "guess", "10.0.0.66")
    finished: list[str] = []

    async def attacker() -> None:
        await signin.check("imap", OWNER, "guess", "10.0.0.66")  # waits 8 s
        finished.append("attacker")

    async def owner() -> None:
        outcome, took = await timed(signin, "web", PASSWORD, "10.0.0.7")
        assert isinstance(outcome, _User)
        assert took == 0
        finished.append("owner")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attacker)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(owner)
    assert finished == ["owner", "attacker"]


async def test_a_source_refused_during_the_wait_is_not_checked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signin, _ = make(source_limit=3)
    outcomes: list[object] = []

    async def guess() -> None:
        outcomes.append(await signin.check("web", OWNER, "guess", "10.0.0.66"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(guess)
    # Three were checked (waits 0, 1, 2 s); the two still waiting found the source
    # refused when they woke and never reached the password check.
    assert outcomes.count(None) == 3
    assert sum(isinstance(o, Refused) for o in outcomes) == 2


async def test_cancelled_attempts_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signin, _ = make()
    await signin.check("imap", OWNER, "guess", "10.0.0.66")
    with trio.move_on_after(0.5):
        await signin.check("imap", OWNER, "guess", "10.0.0.66")  # would wait 1 s
    # Still one failure and nothing in flight: the next waits 1 s, not 2.
    _, took = await timed(signin, "imap", "guess", "10.0.0.66")
    assert took == 1


async def test_every_outcome_is_in_the_traffic_log_without_the_password(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signin, log = make(source_limit=1)
    await signin.check("imaps", "Malee@Demo.go.th", "ความลับ-ห้ามบันทึก", "10.0.0.66")
    await signin.check("web", OWNER, PASSWORD, "10.0.0.66")
    await signin.check("smtp-submission", OWNER, PASSWORD, "10.0.0.7")
    seen = [(r.service, r.event, r.user, r.client_ip) for r in log.records]
    assert seen == [
        ("imaps", "auth-failed", OWNER, "10.0.0.66"),
        ("web", "auth-refused", OWNER, "10.0.0.66"),
        ("smtp-submission", "auth-ok", OWNER, "10.0.0.7"),
    ]
    assert log.records[1].result == "retry in 900 s"
    assert not any("ความลับ" in repr(r) or PASSWORD in repr(r) for r in log.records)
