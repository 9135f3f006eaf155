"""`Rounds`: a round now, then one per interval, at once when woken; on trio's MockClock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from appliance.sync.clock import ManualClock
from appliance.sync.rounds import Rounds


class Recorder:
    """A round that notes the (mock) time it ran at; it may raise or hang on request."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.fail: list[Exception] = []
        self.hang = False

    async def __call__(self) -> None:
        self.times.append(trio.current_time())
        if self.fail:
            raise self.fail.pop(0)
        if self.hang:
            await trio.sleep_forever()


async def test_a_round_now_then_one_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    rounds, recorder = Rounds("test", 10.0), Recorder()
    with trio.move_on_after(35):
        await rounds.run(recorder)
    assert recorder.times == [0.0, 10.0, 20.0, 30.0]


async def test_a_wake_cuts_the_wait_short(mock_clock: trio.testing.MockClock) -> None:
    rounds, recorder = Rounds("test", 10.0), Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rounds.run, recorder)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(3)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.times == [0.0]
        rounds.wake()  # the link came back
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.times == [0.0, 3.0]
        # The interval counts again from the woken round.
        mock_clock.jump(9)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.times == [0.0, 3.0]
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.times == [0.0, 3.0, 13.0]
        nursery.cancel_scope.cancel()


async def test_a_wake_during_a_round_starts_the_next_one_right_after_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    rounds = Rounds("test", 10.0)
    times: list[float] = []

    async def slow_round() -> None:
        times.append(trio.current_time())
        await trio.sleep(2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rounds.run, slow_round)
        await trio.testing.wait_all_tasks_blocked()
        rounds.wake()  # during the first round
        mock_clock.jump(2)
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0, 2.0]
        # Not woken during the second: the whole interval after it.
        mock_clock.jump(2)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(9)
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0, 2.0]
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0, 2.0, 14.0]
        nursery.cancel_scope.cancel()


async def test_a_failed_round_is_logged_with_its_reason_and_the_rounds_go_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    rounds, recorder = Rounds("directory-sync", 10.0), Recorder()
    recorder.fail = [ValueError("the hub's answer had no cursor")]
    with caplog.at_level(logging.ERROR, "edgebox.sync.rounds"), trio.move_on_after(25):
        await rounds.run(recorder)
    assert recorder.times == [0.0, 10.0, 20.0]
    (failed,) = [r for r in caplog.records if r.name == "edgebox.sync.rounds"]
    assert failed.levelno == logging.ERROR
    message = failed.getMessage()
    assert "directory-sync" in message
    assert "ValueError: the hub's answer had no cursor" in message
    assert failed.exc_info is not None  # the traceback, for the unexpected


async def test_cancellation_ends_the_rounds_even_inside_a_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rounds, recorder = Rounds("test", 10.0), Recorder()
    # Cancelled during a wait.
    with trio.move_on_after(15) as scope:
        await rounds.run(recorder)
    assert scope.cancelled_caught
    assert recorder.times == [0.0, 10.0]
    # Cancelled during a round: `Cancelled` is not a failed round to log and go on from.
    recorder.hang = True
    with trio.move_on_after(5) as scope:
        await rounds.run(recorder)
    assert scope.cancelled_caught
    assert recorder.times == [0.0, 10.0, 15.0]


async def test_the_interval_is_asked_at_every_wait(autojump_clock: trio.testing.MockClock) -> None:
    waits = iter([5.0, -1.0, 20.0, 100.0])  # a deadline already past is "now"
    rounds, recorder = Rounds("test", lambda: next(waits)), Recorder()
    with trio.move_on_after(30):
        await rounds.run(recorder)
    assert recorder.times == [0.0, 5.0, 5.0, 25.0]


async def test_the_waits_may_run_on_the_sync_clock() -> None:
    """A service driven by a `ManualClock` (the directory replicator) waits on it."""
    clock = ManualClock()
    rounds = Rounds("test", 60.0, sleep=clock.sleep)
    seen: list[float] = []

    async def round_() -> None:
        seen.append(clock.now())

    start = clock.now()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rounds.run, round_)
        await clock.advance(59)
        assert seen == [start]
        await clock.advance(1)
        assert seen == [start, start + 60]
        rounds.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [start, start + 60, start + 60]
        nursery.cancel_scope.cancel()


async def test_a_held_wait_is_at_least_the_hold_and_no_wake_cuts_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A busy hub said "come back in 30 s": the link monitor's wake must not send it early."""
    rounds = Rounds("test", 10.0)
    times: list[float] = []

    async def busy_once() -> None:
        times.append(trio.current_time())
        if len(times) == 1:
            rounds.hold(30.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(rounds.run, busy_once)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(20)
        rounds.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0]
        mock_clock.jump(10)
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0, 30.0]
        # The hold was for one wait: the next is the interval, and a wake cuts it again.
        mock_clock.jump(1)
        rounds.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert times == [0.0, 30.0, 31.0]
        nursery.cancel_scope.cancel()
