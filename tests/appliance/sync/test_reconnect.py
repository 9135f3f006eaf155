"""The box's side of a reconnect storm: its hub streams woken after its own delay.

On trio's MockClock (the `SystemClock` sleeps in trio time): the order of events and
the mock time, never the wall clock.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from appliance.sync.clock import SystemClock
from appliance.sync.liveness import LinkWatch
from appliance.sync.reconnect import (
    CUT_SHARE,
    RECONNECT_SPREAD,
    StaggeredWake,
    box_rng,
    jittered,
)


def test_each_box_draws_its_own_delays_and_the_same_box_the_same() -> None:
    assert box_rng("box0001").random() == box_rng("box0001").random()
    firsts = {box_rng(f"box{n:04d}").random() for n in range(600)}
    assert len(firsts) == 600


def test_six_hundred_boxes_spread_over_the_window_not_into_one_second() -> None:
    """A national return: 600 boxes' first delays fill the window about evenly."""
    delays = [box_rng(f"box{n:04d}").uniform(0, RECONNECT_SPREAD) for n in range(600)]
    per_second = Counter(int(d) for d in delays)
    assert set(per_second) == set(range(int(RECONNECT_SPREAD)))
    mean = 600 / RECONNECT_SPREAD
    assert max(per_second.values()) < 1.5 * mean  # no second takes a crowd


def test_a_back_off_is_only_ever_stretched_and_by_a_quarter_at_most() -> None:
    rng = box_rng("box0007")
    waits = [jittered(8.0, rng) for _ in range(200)]
    assert all(8.0 <= w < 10.0 for w in waits)
    assert len(set(waits)) == 200


async def test_the_return_reaches_the_hub_streams_after_the_boxs_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stagger = StaggeredWake(box_rng("box0042"), SystemClock(), LinkWatch())
    expected = box_rng("box0042").uniform(0, RECONNECT_SPREAD)
    woken: list[tuple[str, float]] = []
    stagger.subscribe(lambda: woken.append(("chat", trio.current_time())))
    stagger.subscribe(lambda: woken.append(("directory", trio.current_time())))
    async with trio.open_nursery() as nursery:
        await nursery.start(stagger.serve)
        await trio.sleep(3.0)
        back = trio.current_time()
        stagger.link_back()
        stagger.link_back()  # the monitor said it twice (a flapping link): one wake
        await trio.sleep(RECONNECT_SPREAD + 1)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in woken] == ["chat", "directory"]
    assert woken[0][1] - back == pytest.approx(expected)
    assert woken[0][1] == woken[1][1]
    assert stagger.passed_on == 1


async def test_a_hub_that_said_busy_is_not_called_before_its_retry_after_by_a_wake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = LinkWatch()
    stagger = StaggeredWake(box_rng("box0003"), SystemClock(), watch)
    woken: list[float] = []
    stagger.subscribe(lambda: woken.append(trio.current_time()))

    def broken() -> None:
        raise RuntimeError("a stream's bug")

    stagger.subscribe(broken)
    stagger.subscribe(lambda: woken.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        await nursery.start(stagger.serve)
        watch.hub_busy(45.0)  # a 503's Retry-After, longer than any spread
        back = trio.current_time()
        stagger.link_back()
        await trio.sleep(60.0)
        nursery.cancel_scope.cancel()
    # Both healthy streams woken (the broken one did not stop them), at the Retry-After.
    assert woken == [back + 45.0, back + 45.0]


@pytest.mark.parametrize(("cut", "window"), [(4.0, 4.0 * CUT_SHARE), (3600.0, RECONNECT_SPREAD)])
async def test_a_short_cut_is_spread_over_a_share_of_it_a_long_one_over_the_whole_window(
    autojump_clock: trio.testing.MockClock, cut: float, window: float
) -> None:
    """One office's blip is back within seconds (issue 24); a national cut is spread."""
    stagger = StaggeredWake(box_rng("box0042"), SystemClock(), LinkWatch(), cut_length=lambda: cut)
    expected = box_rng("box0042").uniform(0, window)
    woken: list[float] = []
    stagger.subscribe(lambda: woken.append(trio.current_time()))
    async with trio.open_nursery() as nursery:
        await nursery.start(stagger.serve)
        back = trio.current_time()
        stagger.link_back()
        await trio.sleep(RECONNECT_SPREAD + 1)
        nursery.cancel_scope.cancel()
    assert woken == [pytest.approx(back + expected)]
    assert woken[0] - back < window
