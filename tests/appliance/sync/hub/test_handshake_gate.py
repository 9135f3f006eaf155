"""The hub's bound on TLS handshakes at once: a reconnect storm waits for slots, in order.

The handshake is a stand-in that holds its slot until the test lets it go, so the
order of events is the test's, on trio's MockClock (no wall clock). The real TLS path
through the hub's listener is in test_fair_admission.py and test_server.py.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing

from appliance.net.listeners import ConnectionGate
from appliance.sync.hub.handshake_gate import HandshakeGate, HandshakePolicy, HandshakeShed
from appliance.sync.liveness import HANDSHAKE_DEADLINE


class Handshakes:
    """Stand-in handshakes: each waits for its own release; records start order."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.release: dict[int, trio.Event] = {}
        self.running = 0
        self.most = 0

    async def __call__(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        number = id(stream)
        self.started.append(number)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.setdefault(number, trio.Event()).wait()
        finally:
            self.running -= 1
        return stream


def _streams(count: int) -> list[trio.testing.MemoryStapledStream]:  # type: ignore[type-arg]
    return [trio.testing.memory_stream_pair()[0] for _ in range(count)]


def _gate(limit: int, handshakes: Handshakes, **bounds: float) -> HandshakeGate:
    policy = HandshakePolicy(limit=limit, **bounds)  # type: ignore[arg-type]
    return HandshakeGate(ssl.create_default_context(), policy, handshake=handshakes)


async def test_a_storm_runs_at_most_the_limit_at_once_and_the_rest_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shakes = Handshakes()
    gate = _gate(2, shakes)
    streams = _streams(6)
    done: list[int] = []

    async def connect(stream: trio.abc.Stream) -> None:
        await gate(stream)
        done.append(id(stream))

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(connect, stream)
            await trio.testing.wait_all_tasks_blocked()
        assert shakes.started == [id(s) for s in streams[:2]]
        assert (gate.running, gate.waiting) == (2, 4)
        for stream in streams:  # each ends 0.5 s after the one before
            await trio.sleep(0.5)
            shakes.release.setdefault(id(stream), trio.Event()).set()
            await trio.testing.wait_all_tasks_blocked()
    # Never more than two at once; a waiting connection started as a slot freed, first
    # come first served.
    assert shakes.most == 2
    assert shakes.started == [id(s) for s in streams]
    assert done == [id(s) for s in streams]
    figures = gate.figures()
    assert (figures.done, figures.running, figures.waiting) == (6, 0, 0)
    assert figures.shed_waited_too_long == figures.shed_queue_full == 0
    assert figures.longest_wait == pytest.approx(2.0)  # the sixth waited for the fourth's end


async def test_a_connection_without_a_slot_in_time_is_shed_before_its_box_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shakes = Handshakes()
    gate = _gate(1, shakes)
    held, late = _streams(2)
    shed_at: list[float] = []

    async def connect_late() -> None:
        with pytest.raises(HandshakeShed):
            await gate(late)
        shed_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate, held)
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
        nursery.start_soon(connect_late)
        await trio.sleep(10)
        assert shed_at == [began + gate.policy.max_wait]
        assert gate.policy.max_wait < HANDSHAKE_DEADLINE  # the box is still there to shed
        assert shakes.started == [id(held)]  # no CPU spent on the shed one
        shakes.release[id(held)].set()
    figures = gate.figures()
    assert (figures.done, figures.shed_waited_too_long, figures.waiting) == (1, 1, 0)
    # The slot went back: the next connection runs at once.
    fresh = _streams(1)[0]
    shakes.release[id(fresh)] = trio.Event()
    shakes.release[id(fresh)].set()
    assert await gate(fresh) is fresh


async def test_a_full_waiting_line_sheds_at_once_and_a_failed_handshake_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shakes = Handshakes()
    gate = _gate(1, shakes, max_waiting=1)
    first, second, third = _streams(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate, first)
        nursery.start_soon(gate, second)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(HandshakeShed):
            await gate(third)  # one runs, one waits: no room, and no wait
        assert gate.shed_queue_full == 1
        nursery.cancel_scope.cancel()  # both clients leave mid-way
    assert (gate.running, gate.waiting, gate.failed) == (0, 0, 1)
    assert gate._slots.value == 1


async def test_the_listener_closes_a_shed_connection_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A shed is a client gone (no fault logged, no last words), and the gate's count drops."""
    shakes = Handshakes()
    handshakes = _gate(1, shakes)
    gate = ConnectionGate(10, b"", handshakes, service="hub-sync")
    held, shed = _streams(2)
    served: list[int] = []

    class Served:
        def __init__(self, stream: trio.abc.Stream) -> None:
            self.stream = stream

        async def run(self) -> None:
            served.append(id(self.stream))

        async def fault(self, reference: str) -> None:
            raise AssertionError("a shed connection is no fault")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.admit, held, Served)
        await trio.testing.wait_all_tasks_blocked()
        await gate.admit(shed, Served)  # returns once shed, without raising
        assert gate.faults == 0
        assert gate.active == 1
        shakes.release[id(held)].set()
    assert served == [id(held)]
    assert handshakes.shed_waited_too_long == 1
