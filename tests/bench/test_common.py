"""The benchmarks' helpers that decide what is measured: waiting for idle servers."""

from __future__ import annotations

from tests.bench.common import wait_until_idle


class _FakeServer:
    """A clock and a CPU counter: busy (a full core) until *busy_until*, then idle."""

    def __init__(self, busy_until: float, background: float = 0.0) -> None:
        self.now = 0.0
        self.busy_until = busy_until
        self.background = background
        self.used = 0.0

    def sleep(self, seconds: float) -> None:
        busy = max(0.0, min(self.now + seconds, self.busy_until) - self.now)
        self.used += busy + (seconds - busy) * self.background
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def cpu(self, pids: list[int]) -> float:
        assert pids == [42]
        return self.used


def _wait(server: _FakeServer, **kwargs: float) -> tuple[float, bool]:
    return wait_until_idle(lambda: [42], clock=server.clock, sleep=server.sleep,
                           cpu=server.cpu, **kwargs)  # fmt: skip


def test_waits_for_the_background_work_to_end_then_a_quiet_window() -> None:
    server = _FakeServer(busy_until=40.0, background=0.01)
    waited, idle = _wait(server, quiet=3.0)
    assert idle
    # Not before the work ended, and no more than two windows after it.
    assert 40.0 + 3.0 <= waited <= 40.0 + 6.0


def test_an_idle_server_costs_one_quiet_window() -> None:
    waited, idle = _wait(_FakeServer(busy_until=0.0), quiet=3.0)
    assert (waited, idle) == (3.0, True)


def test_a_server_that_never_rests_is_given_up_on_at_the_limit() -> None:
    waited, idle = _wait(_FakeServer(busy_until=10_000.0), quiet=3.0, limit=60.0)
    assert not idle
    assert 60.0 <= waited < 61.0
