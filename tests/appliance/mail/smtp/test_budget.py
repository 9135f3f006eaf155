"""The box-wide budget of message bytes being checked and stored (issue 21's memory bound).

Unit tests drive `MessageBudget` under trio's MockClock and check the order of events;
the last test sends several 1 MiB messages at once through the real MX listener in
process, with smtplib, and checks the budget was never exceeded while every message
was stored once.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.box import Box
from appliance.config import Config, load_config
from appliance.mail.headers import parse_headers
from appliance.mail.smtp.budget import MessageBudget
from appliance.mail.smtp.policy import Port
from appliance.protection.authentication import InboundAuthenticator
from appliance.registry import smtp_service
from tests.appliance.conftest import BoxFactory, Person
from tests.appliance.protection.records import DictResolver
from tests.harness import free_port_offset

DOMAIN = "a.go.th"
MiB = 1024 * 1024


class WatchedBudget(MessageBudget):
    """A budget that checks its own bound at every grant."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.grants: list[int] = []

    def _take(self, share: int) -> None:
        super()._take(share)
        assert self.in_use <= self.limit
        self.grants.append(share)


async def test_within_the_budget_nobody_waits(autojump_clock: trio.testing.MockClock) -> None:
    budget = MessageBudget(10)
    async with budget.hold(4), budget.hold(6):
        assert budget.in_use == 10
    assert budget.in_use == 0
    assert budget.peak == 10


async def test_beyond_the_budget_waiters_go_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = WatchedBudget(10)
    order: list[str] = []

    async def message(name: str, size: int, start: float, work: float) -> None:
        await trio.sleep(start)
        async with budget.hold(size):
            order.append(name)
            await trio.sleep(work)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(message, "a", 8, 0, 5)
        # b does not fit beside a; c would, but it came after b, so it waits too.
        nursery.start_soon(message, "b", 6, 1, 1)
        nursery.start_soon(message, "c", 2, 2, 1)
        await trio.sleep(3)
        assert order == ["a"]
        assert budget.in_use == 8
    # Granted in arrival order (b and c together once a is done: both fit then).
    assert budget.grants == [8, 6, 2]
    assert sorted(order) == ["a", "b", "c"]
    assert budget.peak <= 10
    assert budget.waited == 2
    assert budget.in_use == 0


async def test_a_message_larger_than_the_budget_runs_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = WatchedBudget(10)
    alone: list[bool] = []

    async def message(size: int, start: float) -> None:
        await trio.sleep(start)
        async with budget.hold(size):
            alone.append(budget.in_use == budget.limit if size >= 10 else True)
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(message, 3, 0)
        nursery.start_soon(message, 50, 0.5)
        nursery.start_soon(message, 3, 0.7)
    assert alone == [True, True, True]
    assert budget.grants == [3, 10, 3]


async def test_a_cancelled_waiter_leaves_the_queue_and_lets_the_next_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = WatchedBudget(10)
    got_in: list[str] = []

    big = trio.CancelScope()

    async def message(name: str, size: int, start: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(start)
            async with budget.hold(size):
                got_in.append(name)
                await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(message, "a", 6, 0, trio.CancelScope())
        nursery.start_soon(message, "big", 9, 1, big)  # a client that hangs up
        nursery.start_soon(message, "small", 4, 2, trio.CancelScope())
        await trio.sleep(3)
        # Only "a" is in: "small" fits but queues behind "big".
        assert got_in == ["a"]
        big.cancel()
        await trio.sleep(0.1)
        # "big" left the queue, which lets "small" in beside "a" at once.
        assert got_in == ["a", "small"]
    assert budget.in_use == 0
    assert not budget._waiters


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MessageBudget(0)


# --- through the real MX ------------------------------------------------------------------


def _ports(data: Path) -> Config:
    return load_config(data, flags={"port_offset": free_port_offset()})


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    somchai = Person(f"somchai@{DOMAIN}", "x-2569", "สมชาย")
    return await make_box(DOMAIN, people=[somchai], config=_ports)


def large_message(number: int) -> bytes:
    # A line starting with "." exercises the dot-unstuffing path of the protocol too.
    body = b"".join(b"line %06d of a large message\r\n" % i for i in range(MiB // 30))
    return (
        f"From: x@ok.go.th\r\nTo: somchai@{DOMAIN}\r\nSubject: large {number}\r\n"
        f"Message-ID: <large-{number}@ok.go.th>\r\n\r\n".encode()
        + body
        + b".leading dot\r\n"
    )


def send(port: int, content: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("client.ok.go.th")
        client.mail("x@ok.go.th")
        client.rcpt(f"somchai@{DOMAIN}")
        code, _ = client.data(content)
        return code


@pytest.mark.slow
async def test_concurrent_large_messages_stay_within_the_budget_and_all_arrive(
    box: Box, nursery: trio.Nursery
) -> None:
    # Room for two 1 MiB messages at once; six arrive together.
    budget = WatchedBudget(int(2.5 * MiB))
    service = smtp_service(box, Port.MX, budget)
    service.authenticate = InboundAuthenticator(
        box.hostname, DictResolver({"ok.go.th": "v=spf1 ip4:127.0.0.1 -all"})
    )
    await nursery.start(service.serve)
    port = box.config.port(service.name)
    messages = [large_message(n) for n in range(6)]
    codes: list[int] = []

    async def client(content: bytes) -> None:
        codes.append(await trio.to_thread.run_sync(send, port, content))

    async with trio.open_nursery() as clients:
        for content in messages:
            clients.start_soon(client, content)
    assert codes == [250] * 6
    assert budget.peak <= budget.limit
    assert budget.waited >= 1, "no session ever waited: the test proves nothing"
    assert budget.in_use == 0
    stored = await box.mailstore.messages(f"somchai@{DOMAIN}")
    assert len(stored) == 6
    for ref in stored:
        content = await box.mailstore.content(ref)
        # The stored form: our Received, then our Authentication-Results, then the
        # message as sent (dots unstuffed), each exactly once.
        names = [n.lower() for n, _ in parse_headers(content)][:3]
        assert names == ["received", "authentication-results", "from"]
        sent = next(m for m in messages if content.endswith(m))
        assert content.endswith(b"\r\n\r\n" + sent.split(b"\r\n\r\n", 1)[1])
