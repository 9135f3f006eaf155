"""The injectable clock: sleepers wake in deadline order as a test moves time."""

from __future__ import annotations

import trio

from appliance.sync.clock import ManualClock, SystemClock


async def test_manual_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "week", 7 * 86400)
        nursery.start_soon(sleeper, "minute", 60)
        nursery.start_soon(sleeper, "hour", 3600)
        await clock.advance(3600)
        assert woke == [("minute", 1060.0), ("hour", 4600.0)]
        await clock.advance(7 * 86400)
    assert woke[-1] == ("week", 1000.0 + 7 * 86400)
    assert clock.now() == 1000.0 + 3600 + 7 * 86400


async def test_a_retry_loop_gets_every_wake_up_it_would_have_had() -> None:
    clock = ManualClock(start=0.0)
    attempts: list[float] = []

    async def retry_every_ten_minutes() -> None:
        while len(attempts) < 100:
            attempts.append(clock.now())
            await clock.sleep(600)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(retry_every_ten_minutes)
        await clock.advance(3600, step=60)
        nursery.cancel_scope.cancel()
    assert attempts == [0.0, 600.0, 1200.0, 1800.0, 2400.0, 3000.0, 3600.0]


async def test_sleep_of_nothing_returns_at_once(autojump_clock: trio.abc.Clock) -> None:
    clock = ManualClock()
    before = clock.now()
    with trio.fail_after(1):
        await clock.sleep(0)
        await clock.sleep(-5)
    assert clock.now() == before


async def test_system_clock_reads_the_wall_clock(autojump_clock: trio.abc.Clock) -> None:
    import time

    clock = SystemClock()
    # Bracketed by two readings of the wall clock: true however slowly the lines run.
    before = time.time()
    now = clock.now()
    assert before <= now <= time.time()
    # On trio's mock clock: a negative sleep that waited (a second, or for ever) would
    # meet the limit however idle or busy the machine is.
    with trio.fail_after(0.5):
        await clock.sleep(-1)
