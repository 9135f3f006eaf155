"""The hub's fair admission: the pure queue under any arrival pattern, and its trio gate.

The queue (`FairQueue`) is driven by a small discrete-event simulation with no trio and
no clock: arrivals at given times with given service times, the deadlines of waiting
requests, the ends of running ones. Hypothesis picks the patterns; every run checks
the rules of the module docstring. The gate (`RequestGate`) is driven by trio's
MockClock with autojump, so waits of seconds take none.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sync.hub.errors import HubError
from appliance.sync.hub.fair_queue import (
    AdmissionPolicy,
    Busy,
    BusyReason,
    FairQueue,
    Ticket,
)
from appliance.sync.hub.request_gate import RequestGate

# --- the pure queue, simulated -----------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at: float
    box: str
    service: float


@dataclass
class Run:
    """What happened to every request of one simulated run."""

    #: (time, box, ticket number) of each admission, in the order the queue made them.
    admissions: list[tuple[float, str, int]] = field(default_factory=list)
    #: ticket number -> (time, reason, retry_after) of each busy answer.
    busy: dict[int, tuple[float, BusyReason, int]] = field(default_factory=dict)
    #: Requests told busy at once (no ticket): (time, box, reason).
    refused: list[tuple[float, str, BusyReason]] = field(default_factory=list)
    tickets: dict[int, Ticket] = field(default_factory=dict)
    #: ticket number -> how many admissions there were when it became the oldest
    #: waiting request of its box.
    head_since: dict[int, int] = field(default_factory=dict)
    #: For each admission (same order as *admissions*): requests running per box just
    #: before it.
    running_before: list[dict[str, int]] = field(default_factory=list)


def simulate(policy: AdmissionPolicy, arrivals: list[Arrival], seed: int = 0) -> Run:
    """Feed *arrivals* to a `FairQueue`; check the invariants at every step."""
    queue = FairQueue(policy, random.Random(seed))
    run = Run()
    running: dict[int, float] = {}  # ticket number -> when it ends
    service: dict[int, float] = {}
    waiting: dict[str, list[Ticket]] = defaultdict(list)
    per_box: Counter[str] = Counter()
    pending = sorted(arrivals, key=lambda a: a.at)
    now = 0.0

    def admitted(tickets: list[Ticket]) -> None:
        for ticket in tickets:
            run.running_before.append(dict(per_box))
            run.admissions.append((now, ticket.box, ticket.number))
            line = waiting[ticket.box]
            assert line[:1] == [ticket], "first come, first served within a box"
            line.pop(0)
            if line:
                run.head_since[line[0].number] = len(run.admissions)
            per_box[ticket.box] += 1
            running[ticket.number] = now + service[ticket.number]

    def check() -> None:
        figures = queue.figures()
        assert figures.running == len(running) <= policy.capacity
        assert all(count <= policy.per_box for count in per_box.values())
        assert figures.waiting == sum(len(line) for line in waiting.values())
        assert figures.waiting <= policy.max_queue
        eligible = [b for b, line in waiting.items() if line and per_box[b] < policy.per_box]
        # Work-conserving: no free slot while an eligible box waits.
        assert not (figures.running < policy.capacity and eligible)

    while pending or running or any(waiting.values()):
        deadlines = [t.deadline for line in waiting.values() for t in line]
        now = min([pending[0].at if pending else math.inf, *running.values(), *deadlines])
        # Ends first (they free slots), then deadlines, then arrivals.
        for number, ends in sorted(running.items(), key=lambda item: item[1]):
            if ends <= now:
                del running[number]
                ticket = run.tickets[number]
                per_box[ticket.box] -= 1
                admitted(queue.finish(ticket, now))
        for line in list(waiting.values()):
            for ticket in [t for t in line if t.deadline <= now]:
                answer = queue.withdraw(ticket, now)
                assert answer is not None  # it was waiting, so it is refused now
                assert answer.reason is BusyReason.WAITED_TOO_LONG
                run.busy[ticket.number] = (now, answer.reason, answer.retry_after)
                index = line.index(ticket)
                line.remove(ticket)
                if index == 0 and line:
                    run.head_since[line[0].number] = len(run.admissions)
        while pending and pending[0].at <= now:
            arrival = pending.pop(0)
            got = queue.arrive(arrival.box, now)
            if isinstance(got, Busy):
                assert got.reason in (BusyReason.QUEUE_FULL, BusyReason.BOX_QUEUE_FULL)
                run.refused.append((now, arrival.box, got.reason))
                continue
            run.tickets[got.number] = got
            service[got.number] = arrival.service
            line = waiting[arrival.box]
            line.append(got)
            if len(line) == 1:
                run.head_since[got.number] = len(run.admissions)
            if got.admitted:
                admitted([got])
        check()
    return run


boxes = st.sampled_from([f"box{i}" for i in range(12)])
arrival_patterns = st.lists(
    st.builds(
        Arrival,
        at=st.floats(0, 30, allow_nan=False).map(lambda x: round(x, 1)),
        box=boxes,
        service=st.floats(0.1, 5, allow_nan=False).map(lambda x: round(x, 1)),
    ),
    max_size=120,
)
policies = st.builds(
    AdmissionPolicy,
    capacity=st.integers(1, 4),
    per_box=st.integers(1, 2),
    max_wait=st.sampled_from([2.0, 10.0, 60.0]),
    max_queue=st.integers(1, 60),
    box_queue=st.integers(1, 8),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, arrivals=arrival_patterns, seed=st.integers(0, 2**16))
def test_any_arrival_pattern_is_served_in_turn_within_the_bound(
    policy: AdmissionPolicy, arrivals: list[Arrival], seed: int
) -> None:
    run = simulate(policy, arrivals, seed)
    admitted = {number for _, _, number in run.admissions}
    # Every request gets one answer: it ran, or it was told busy (none lost, none twice).
    assert admitted.isdisjoint(run.busy)
    assert len(admitted) + len(run.busy) + len(run.refused) == len(arrivals)
    assert len(run.admissions) == len(admitted)
    for at, _box, number in run.admissions:
        ticket = run.tickets[number]
        # Nobody runs after its bound: the wait is at most max_wait.
        assert at - ticket.arrived <= policy.max_wait + 1e-9
    for number, (at, _reason, retry_after) in run.busy.items():
        # Told busy exactly at its bound, never later (no time-out on the box's side).
        assert at == pytest.approx(run.tickets[number].deadline)
        assert policy.min_retry <= retry_after <= 2 * policy.max_retry
    # Round robin over boxes: from the moment a request is its box's oldest waiting
    # one, while its box is below its share, no other box runs twice before it.
    for index, (_at, box, number) in enumerate(run.admissions):
        others: Counter[str] = Counter()
        for earlier in range(run.head_since[number], index):
            other = run.admissions[earlier][1]
            if other != box and run.running_before[earlier].get(box, 0) < policy.per_box:
                others[other] += 1
        assert max(others.values(), default=0) <= 1, (box, others)


def test_a_box_with_a_week_of_backlog_cannot_starve_the_others() -> None:
    policy = AdmissionPolicy(capacity=2, per_box=2, max_wait=600, box_queue=8)
    # The heavy box keeps 8 requests waiting at all times (one per stream it runs);
    # 199 light boxes call once each, just after it.
    heavy = [Arrival(0.0, "heavy", 0.1) for _ in range(10)]
    heavy += [Arrival(0.1 * i, "heavy", 0.1) for i in range(1, 400)]
    light = [Arrival(0.01, f"light{i:03}", 0.1) for i in range(199)]
    run = simulate(policy, heavy + light)
    order = [box for _, box, _ in run.admissions]
    last_light = max(i for i, box in enumerate(order) if box.startswith("light"))
    # Every light box ran, in about one round of the ring: the heavy box had one turn
    # per round (2 slots), not the queue.
    assert sum(box.startswith("light") for box in order) == 199
    assert order[: last_light + 1].count("heavy") <= 4
    waits = [at - run.tickets[n].arrived for at, box, n in run.admissions if box != "heavy"]
    assert max(waits) <= 199 * 0.1 / 2 + 0.5  # one round of 199 requests over 2 slots


def test_a_full_queue_says_busy_at_once_and_when_to_come_back() -> None:
    queue = FairQueue(AdmissionPolicy(capacity=1, max_queue=2, box_queue=1), random.Random(7))
    first = queue.arrive("a", 0.0)
    assert isinstance(first, Ticket)
    assert first.admitted
    assert isinstance(queue.arrive("b", 0.0), Ticket)
    # One request of box b waits already: its own line is full.
    busy = queue.arrive("b", 0.0)
    assert isinstance(busy, Busy)
    assert busy.reason is BusyReason.BOX_QUEUE_FULL
    assert isinstance(queue.arrive("c", 0.0), Ticket)
    busy = queue.arrive("d", 0.0)
    assert isinstance(busy, Busy)
    assert busy.reason is BusyReason.QUEUE_FULL
    assert busy.retry_after >= 1
    figures = queue.figures()
    assert (figures.running, figures.waiting, figures.boxes_waiting) == (1, 2, 2)
    assert figures.busy == {"queue_full": 1, "box_queue_full": 1, "waited_too_long": 0}
    assert figures.boxes["b"].busy == 1


def test_retry_after_grows_with_the_queue_and_is_spread() -> None:
    policy = AdmissionPolicy(capacity=2, per_box=1, max_queue=5000, box_queue=1)
    queue = FairQueue(policy, random.Random(1))
    held = [queue.arrive(f"box{i}", 0.0) for i in range(1002)]
    # A measured service time of 1 s: 1000 waiting over 2 slots drain in about 500 s,
    # past max_retry (120): every answer lies in [120, 240].
    for ticket in held[:2]:
        assert isinstance(ticket, Ticket)
        queue.finish(ticket, 0.1)
    queue.service_time = 1.0
    answers = {queue.retry_after() for _ in range(200)}
    assert min(answers) >= 120
    assert max(answers) <= 240
    assert len(answers) > 20  # spread, not one value for everyone
    empty = FairQueue(policy, random.Random(1))
    assert all(1 <= empty.retry_after() <= 2 for _ in range(50))


def test_a_cancelled_waiter_is_forgotten_and_bad_calls_are_refused() -> None:
    queue = FairQueue(AdmissionPolicy(capacity=1))
    running = queue.arrive("a", 0.0)
    waiting = queue.arrive("b", 0.0)
    assert isinstance(running, Ticket)
    assert isinstance(waiting, Ticket)
    assert queue.cancel(waiting)
    assert queue.figures().waiting == 0
    assert queue.finish(running, 1.0) == []
    with pytest.raises(ValueError, match="never ran"):
        queue.finish(waiting, 1.0)
    with pytest.raises(ValueError, match="not a waiting ticket"):
        queue.withdraw(waiting, 1.0)
    with pytest.raises(ValueError, match="at least 1"):
        AdmissionPolicy(capacity=0)
    with pytest.raises(ValueError, match="max_wait"):
        AdmissionPolicy(max_wait=0)


# --- the trio gate, on a MockClock ------------------------------------------------------


async def test_a_waiting_request_hears_every_second_then_runs_in_its_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = RequestGate(AdmissionPolicy(capacity=1, max_wait=20))
    heard: list[float] = []
    started: dict[str, float] = {}

    async def call(box: str, hold: float) -> None:
        async def waiting() -> None:
            heard.append(trio.current_time())

        async with gate.turn(box, waiting):
            started[box] = trio.current_time()
            await trio.sleep(hold)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a", 5.0)
        await trio.sleep(0.5)
        nursery.start_soon(call, "b", 1.0)
    assert started == {"a": 0.0, "b": 5.0}
    # b waited 4.5 s: an interim answer each second of it.
    assert heard == pytest.approx([1.5, 2.5, 3.5, 4.5])
    figures = gate.figures()
    assert figures.boxes["b"].last_wait == pytest.approx(4.5)
    assert (figures.running, figures.waiting, figures.served) == (0, 0, 2)


async def test_past_its_bound_a_request_is_answered_503_and_never_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = RequestGate(AdmissionPolicy(capacity=1, max_wait=3), rng=random.Random(3))
    ran: list[str] = []

    async def hold() -> None:
        async with gate.turn("a"):
            await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.sleep(0.1)
        with pytest.raises(HubError) as refused:
            async with gate.turn("b"):
                ran.append("b")
        assert trio.current_time() == pytest.approx(3.1)
    error = refused.value
    assert (error.status, error.code) == (503, "hub_busy")
    assert error.retry_after is not None
    assert error.retry_after >= 1
    assert error.body()["error"]["reason"] == "waited_too_long"
    assert error.body()["error"]["retry_after"] == error.retry_after
    assert ran == []
    assert gate.figures().busy["waited_too_long"] == 1


async def test_a_waiter_whose_client_leaves_gives_its_place_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = RequestGate(AdmissionPolicy(capacity=1, max_wait=30))
    order: list[str] = []

    async def call(box: str, hold: float) -> None:
        async with gate.turn(box):
            order.append(box)
            await trio.sleep(hold)

    async def leaves() -> None:
        async def gone() -> None:
            raise trio.BrokenResourceError("the box hung up")

        with pytest.raises(trio.BrokenResourceError):
            async with gate.turn("quitter", gone):
                order.append("quitter")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a", 4.0)
        await trio.sleep(0.1)
        nursery.start_soon(leaves)
        await trio.sleep(0.1)
        nursery.start_soon(call, "b", 1.0)
        await trio.sleep(2)
        assert gate.figures().waiting == 1  # only b: the quitter left at its first beat
    assert order == ["a", "b"]
    assert gate.figures().busy == {"queue_full": 0, "box_queue_full": 0, "waited_too_long": 0}


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 200), st.integers(1, 40)),
        min_size=1,
        max_size=60,
    ),
    capacity=st.integers(1, 3),
    max_wait=st.integers(1, 30),
)
def test_the_gate_answers_every_arrival_pattern_within_its_bound(
    calls: list[tuple[int, int, int]], capacity: int, max_wait: int
) -> None:
    """Any arrival pattern (box, tenths of a second, tenths held): each request runs
    within max_wait of its arrival or is told busy at max_wait; the bounds hold."""
    policy = AdmissionPolicy(capacity=capacity, per_box=1, max_wait=float(max_wait))
    outcomes: list[tuple[str, float]] = []
    in_turn: Counter[str] = Counter()

    async def main() -> None:
        gate = RequestGate(policy, rng=random.Random(0))

        async def call(box: str, at: float, hold: float) -> None:
            await trio.sleep(at)
            try:
                async with gate.turn(box):
                    in_turn[box] += 1
                    assert sum(in_turn.values()) <= capacity
                    assert in_turn[box] <= 1
                    outcomes.append(("ran", trio.current_time() - at))
                    await trio.sleep(hold)
                    in_turn[box] -= 1
            except HubError as exc:
                outcomes.append((f"busy {exc.status}", trio.current_time() - at))

        async with trio.open_nursery() as nursery:
            for box, tenths, held in calls:
                nursery.start_soon(call, f"box{box}", tenths / 10, held / 10)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(outcomes) == len(calls)
    for what, waited in outcomes:
        assert waited <= max_wait + 1e-6
        assert what in ("ran", "busy 503")
        if what != "ran":
            assert waited == pytest.approx(max_wait) or waited == pytest.approx(0)
