"""Deadlines, the link's return and the restart of stuck rounds, on trio's mock clock.

`LinkWatch` steps around in-memory streams (no sockets needed to test time), and a
`LinkMonitor` whose gin probe is a scripted link: up, cut (refused at once) or black
hole (never answers). Every assertion is on the mock clock or the order of events.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from appliance.sync.clock import SystemClock
from appliance.sync.link import (
    RECOVERY_INTERVAL,
    SUSPECT_AFTER,
    Hysteresis,
    LinkMonitor,
    LinkState,
    _Link,
)
from appliance.sync.liveness import (
    STUCK_AFTER,
    LinkStalled,
    LinkWatch,
    StepKind,
    describe,
)
from appliance.sync.status import SyncStatus


async def test_an_idle_deadline_moves_only_while_bytes_move(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    watch = LinkWatch()

    async def trickle() -> None:
        for _ in range(20):  # a byte every 0.5 s for 10 s, then silence
            await trio.sleep(0.5)
            await send.send_all(b"x")

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        received = 0
        stalled: LinkStalled | None = None
        for _ in range(100):  # bounded: one byte per pass, 20 bytes sent
            try:
                with watch.step("waiting for hub", 1.0) as step:
                    data = await receive.receive_some(10)
                    step.moved(len(data))
                    received += len(data)
            except LinkStalled as exc:
                stalled = exc
                break
    # Ten seconds of bytes were never cut short by a 1 s deadline; the silence was.
    assert received == 20
    assert trio.current_time() - start == pytest.approx(11.0)
    assert str(stalled) == "waiting for hub: timed out (no byte for 1 s)"
    assert watch.waiting == 0


async def test_a_probe_cuts_silent_handshakes_and_after_trouble_every_silent_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = LinkWatch()
    reasons: dict[str, str] = {}

    async def wait(name: str, kind: StepKind, quiet_for: float = math.inf) -> None:
        try:
            with watch.step(name, 300.0, kind) as step:
                while True:  # bytes every `quiet_for` seconds (never, by default)
                    await trio.sleep(min(quiet_for, 1000.0))
                    step.moved(1)
        except LinkStalled as exc:
            reasons[name] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "TLS handshake with hub", StepKind.HANDSHAKE)
        nursery.start_soon(wait, "waiting for FETCH", StepKind.EXCHANGE)
        nursery.start_soon(wait, "busy download", StepKind.EXCHANGE, 0.5)
        await trio.sleep(5.0)
        # A probe that began now and got through, with no trouble before: only the
        # handshake is dead (the probe's own handshake just worked).
        assert watch.probe_succeeded(trio.current_time(), after_trouble=False) == 1
        await trio.sleep(0.01)
        assert set(reasons) == {"TLS handshake with hub"}
        assert reasons["TLS handshake with hub"] == (
            "TLS handshake with hub: cut short after 5.0 s without a byte: "
            "the link came back (a probe got through)"
        )
        assert watch.returns == 1
        # After trouble every silent wait goes; one that moved bytes within
        # STUCK_AFTER is alive and stays.
        assert watch.probe_succeeded(trio.current_time(), after_trouble=True) == 1
        await trio.sleep(0.01)
        assert set(reasons) == {"TLS handshake with hub", "waiting for FETCH"}
        assert watch.returns == 2
        assert watch.cuts == 2
        assert watch.waiting == 1
        nursery.cancel_scope.cancel()
    assert STUCK_AFTER < 5.0


def test_a_reason_is_never_empty() -> None:
    assert describe(trio.TooSlowError()) == "no answer in time"
    assert describe(trio.BrokenResourceError()) == "BrokenResourceError"
    assert describe(ConnectionResetError(104, "Connection reset by peer")) == (
        "ConnectionResetError: [Errno 104] Connection reset by peer"
    )


async def until(condition: Any) -> None:
    """Return once *condition()* holds (mock time; bounded to an hour of it)."""
    with trio.fail_after(3600):
        while True:
            if condition():
                return
            await trio.sleep(0.05)


class ScriptedLink:
    """The centre as the gin probe sees it: "up", "cut" or "blackhole"."""

    def __init__(self) -> None:
        self.mode = "up"
        self.changed_at = 0.0

    def set(self, mode: str) -> None:
        self.mode, self.changed_at = mode, trio.current_time()

    async def probe(self) -> None:
        await trio.sleep(0.01)  # a round trip
        if self.mode == "cut":
            raise ConnectionRefusedError(111, "Connection refused")
        if self.mode == "blackhole":
            await trio.sleep_forever()  # the handshake is dropped; it never answers


def scripted_monitor(tmp_path: Path, link: ScriptedLink, watch: LinkWatch) -> LinkMonitor:
    config = SimpleNamespace(
        link_probe_interval=15.0,  # the default: only trouble makes it probe faster
        data_dir=tmp_path,
        hub_url="",
        central_smtp="",
        central_imap="",
        international_probe="",
    )
    clock = SystemClock()  # trio.sleep, so on the mock clock
    monitor = LinkMonitor(
        config,
        SyncStatus(tmp_path, clock),
        clock,
        watch=watch,
    )
    monitor._links["gin"] = _Link("gin", "https://hub:7443", link.probe)
    monitor._trackers["gin"] = Hysteresis("https://hub:7443")
    return monitor


class StubReplicator:
    """A replicator's loop as the real ones run it: a round, then a back-off or a wake."""

    def __init__(self, watch: LinkWatch, link: ScriptedLink) -> None:
        self.watch, self.link = watch, link
        self.rounds: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def serve(self) -> None:
        while True:
            self._wake = trio.Event()
            returns = self.watch.returns
            self.rounds.append((trio.current_time(), self.link.mode))
            try:
                # A connection made now lives or dies with the link as it is now.
                with self.watch.step("TLS handshake with hub", 30.0, StepKind.HANDSHAKE):
                    if self.link.mode != "up":
                        await trio.sleep_forever()
                    await trio.sleep(0.05)
                delay = 60.0
            except LinkStalled as exc:
                self.failures.append(str(exc))
                delay = 0.0 if self.watch.returns != returns else 300.0  # back-off
            with trio.move_on_after(delay):
                await self._wake.wait()


@pytest.mark.parametrize("outage", [1.5, 30.0], ids=["short black hole", "long black hole"])
async def test_a_round_stuck_in_a_black_hole_restarts_within_a_second_of_the_return(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, outage: float
) -> None:
    watch = LinkWatch()
    link = ScriptedLink()
    monitor = scripted_monitor(tmp_path, link, watch)
    replicator = StubReplicator(watch, link)
    monitor.on_up(replicator.wake)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        nursery.start_soon(replicator.serve)
        await trio.sleep(20.0)  # up, probed; the replicator's first round done
        assert monitor.state.gin.state is LinkState.UP
        link.set("blackhole")
        replicator.wake()  # new local mail: a round starts inside the black hole
        await trio.sleep(outage)
        link.set("up")
        back = link.changed_at
        await until(lambda: len(replicator.rounds) >= 3)
        restarted = replicator.rounds[2][0] - back
        nursery.cancel_scope.cancel()
    # The stuck round was cut by the link's return, not by its 30 s deadline, and
    # the next round began without a back-off: within the recovery probe's interval
    # plus the monitor's look (0.25 s) and a probe's round trip.
    assert replicator.rounds[1][1] == "blackhole"
    assert replicator.rounds[2][1] == "up"
    assert 0 <= restarted <= max(SUSPECT_AFTER - outage, 0) + RECOVERY_INTERVAL + 0.3
    assert len(replicator.failures) == 1
    assert "cut short" in replicator.failures[0]
    if outage < SUSPECT_AFTER:
        # Gone before anyone noticed: the probe the silent wait asked for got through.
        assert "the link came back" in replicator.failures[0]
    else:
        # Long enough for gin to be declared down, which cut the wait; the round
        # then waited for the return rather than hammering a dead link.
        assert "the link is down" in replicator.failures[0]


async def test_a_cut_is_seen_down_and_the_return_wakes_every_subscriber_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    watch = LinkWatch()
    link = ScriptedLink()
    monitor = scripted_monitor(tmp_path, link, watch)
    woken: list[float] = []
    monitor.on_up(lambda: woken.append(trio.current_time()))
    reasons: list[str] = []

    async def long_answer() -> None:
        # A round waiting for a slow answer when the link is cut (a real cut would
        # reset it; a black hole holds it): gin going down cuts it.
        try:
            with watch.step("waiting for /sync/v1/chat/pull", 60.0):
                await trio.sleep_forever()
        except LinkStalled as exc:
            reasons.append(str(exc))

    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await trio.sleep(1.0)
        nursery.start_soon(long_answer)
        await trio.sleep(20.0)
        assert woken == []  # start-up (unknown -> up) wakes no one
        link.set("cut")
        cut_at = link.changed_at
        await until(lambda: monitor.state.gin.state is LinkState.DOWN)
        # Seen within a regular probe (15 s) and a recovery probe after it.
        assert trio.current_time() - cut_at <= 15.0 + RECOVERY_INTERVAL + 0.3
        await trio.sleep(0.01)
        assert len(reasons) == 1
        assert "the link is down" in reasons[0]
        await trio.sleep(600.0)  # a long outage: probed every second throughout
        link.set("up")
        back = link.changed_at
        await until(lambda: woken)
        nursery.cancel_scope.cancel()
    assert 0 < woken[0] - back <= RECOVERY_INTERVAL + 0.3
    assert len(woken) == 1


async def test_a_busy_server_is_not_cut_by_a_probe_that_finds_the_link_well(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    watch = LinkWatch()
    link = ScriptedLink()
    monitor = scripted_monitor(tmp_path, link, watch)
    woken: list[float] = []
    monitor.on_up(lambda: woken.append(trio.current_time()))
    finished: list[float] = []

    async def slow_answer() -> None:
        # The centre thinks for 8 s (a large SEARCH): silent past SUSPECT_AFTER, so the
        # monitor probes, finds the link well and leaves the wait alone.
        with watch.step("waiting for SEARCH", 60.0):
            await trio.sleep(8.0)
        finished.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await trio.sleep(1.0)
        probes = monitor.probes["gin"]
        await slow_answer()
        assert monitor.probes["gin"] == probes + 1  # one probe asked for, no storm
        nursery.cancel_scope.cancel()
    assert finished
    assert woken == []
    assert watch.cuts == 0


async def test_a_probe_held_by_a_black_hole_does_not_count_after_a_newer_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    watch = LinkWatch()
    link = ScriptedLink()
    monitor = scripted_monitor(tmp_path, link, watch)
    states: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await trio.sleep(14.9)
        link.set("blackhole")  # the next probe (at 15 s) hangs until its time-out
        await trio.sleep(1.0)
        link.set("up")
        for _ in range(200):  # 10 s: past the hung probe's time-out
            states.append(monitor.state.gin.state)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    # The hung probe was trouble (probes every second), a newer probe got through,
    # and the hung one's late failure was not counted: the link never went down.
    assert set(states) == {LinkState.UP}
    assert monitor.probes["gin"] >= 4


async def test_a_hub_that_said_busy_is_probed_at_the_interval_not_every_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 22: a hub shedding load is not handshaken with every second by every box."""
    watch = LinkWatch()
    link = ScriptedLink()
    monitor = scripted_monitor(tmp_path, link, watch)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await trio.sleep(1.0)
        # Too busy to finish a handshake (it holds them), and it said so: 120 s.
        watch.hub_busy(120.0)
        link.set("blackhole")
        before = len(monitor._in_flight["gin"]) + monitor.probes["gin"]
        await trio.sleep(100.0)
        during = len(monitor._in_flight["gin"]) + monitor.probes["gin"] - before
        assert during <= math.ceil(100.0 / 15.0)  # the 15 s interval, no faster
        assert monitor.state.gin.state is LinkState.UP
        # Its Retry-After over and still no handshake: trouble, probed every second.
        await trio.sleep(30.0)
        after = len(monitor._in_flight["gin"]) + monitor.probes["gin"] - before - during
        assert after >= 8  # MAX_IN_FLIGHT caps the hung ones; the rest time out and go
        nursery.cancel_scope.cancel()
