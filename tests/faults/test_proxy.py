"""Every mode of the fault proxy, as a client on 127.0.0.1 sees it.

Targets are tiny trio servers in the test (echo, sink, source). Wall-clock checks only
bound from the side the proxy guarantees (a latency is at least what was set); the one
rate check measures over a transfer of a few seconds, as the benchmark relies on it.
Upper bounds (a latency removed, chunks that overlap) are taken on trio's mock clock.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.faults.proxy import (
    BURST_SECONDS,
    Bandwidth,
    Cut,
    FaultProxy,
    Flap,
    Latency,
    Pass,
    ProxyProcess,
    SharedLink,
    Stall,
    mode_json,
    parse_modes,
)


@dataclass
class Target:
    port: int
    connections: int = 0
    received: int = 0
    errors: list[BaseException] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


async def start_target(
    nursery: trio.Nursery, behaviour: Callable[[Target, trio.SocketStream], Awaitable[None]]
) -> Target:
    target = Target(0)

    async def handler(stream: trio.SocketStream) -> None:
        target.connections += 1
        try:
            await behaviour(target, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            target.errors.append(exc)

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    target.port = listeners[0].socket.getsockname()[1]
    return target


async def echo(target: Target, stream: trio.SocketStream) -> None:
    async for data in stream:
        target.received += len(data)
        await stream.send_all(data)


async def sink(target: Target, stream: trio.SocketStream) -> None:
    """Read to EOF, then answer how many bytes came."""
    count = 0
    async for data in stream:
        count += len(data)
    target.received += count
    await stream.send_all(f"{count}\n".encode())


async def source(target: Target, stream: trio.SocketStream) -> None:
    """Send the number of bytes asked for on the first line, then close."""
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive_some(64)
    left = int(line)
    block = b"d" * 16384
    while left:
        piece = block[: min(left, len(block))]
        await stream.send_all(piece)
        left -= len(piece)


async def connect(port: int) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def read_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


async def ping(sock: trio.socket.SocketType, payload: bytes = b"ping") -> float:
    """Send *payload* through an echo target; return the round-trip time."""
    start = trio.current_time()
    await sock.send(payload)
    assert await read_exactly(sock, len(payload)) == payload
    return trio.current_time() - start


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"not true after {seconds} s")


# --- pass and counting ---------------------------------------------------------------------


async def test_pass_forwards_both_ways_and_counts_every_byte(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    payload = bytes(range(256)) * 1000  # 256,000 bytes
    async with FaultProxy(target.address) as proxy:
        sock = await connect(proxy.port)
        with sock:
            await sock.send(b"")
            sent = 0
            for start in range(0, len(payload), 10_000):
                sent += await sock.send(payload[start : start + 10_000])
            assert await read_exactly(sock, len(payload)) == payload[:sent]
        await until(lambda: proxy.stats()["open_connections"] == 0)
        assert (proxy.bytes_up, proxy.bytes_down) == (sent, sent) == (len(payload), len(payload))
        assert target.received == len(payload)
        assert proxy.connections == 1
        assert proxy.resets == 0


async def test_half_close_is_passed_on(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, sink)
    async with FaultProxy(target.address) as proxy:
        sock = await connect(proxy.port)
        with sock:
            await sock.send(b"x" * 5000)
            sock.shutdown(trio.socket.SHUT_WR)
            assert await read_exactly(sock, 5) == b"5000\n"
            assert await sock.recv(10) == b""


# --- cut -------------------------------------------------------------------------------------


async def test_cut_resets_open_connections_and_refuses_new_ones(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        sock = await connect(proxy.port)
        with sock:
            await ping(sock)
            proxy.cut()
            with pytest.raises(ConnectionResetError):
                await sock.recv(10)
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy.port)
        # The centre's side of the connection is reset too.
        await until(lambda: bool(target.errors))
        assert proxy.resets == 1

        proxy.restore()
        sock = await connect(proxy.port)
        with sock:
            await ping(sock)


async def test_an_unreachable_target_resets_the_client(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as dead_end:
        dead_end.cut()
        async with FaultProxy(("127.0.0.1", dead_end.port)) as proxy:
            sock = await connect(proxy.port)
            with sock, pytest.raises(ConnectionResetError):
                await sock.recv(10)


# --- black hole --------------------------------------------------------------------------------


async def test_blackhole_never_answers_and_freezes_open_connections(
    nursery: trio.Nursery,
) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        old = await connect(proxy.port)
        await ping(old)
        proxy.blackhole()

        new = await connect(proxy.port)  # the kernel accepts; nothing more happens
        await new.send(b"hello?")
        await old.send(b"still there?")
        for sock in (new, old):
            with trio.move_on_after(0.5) as waited:
                await sock.recv(100)
            assert waited.cancelled_caught  # the client's time-out is all it gets
        await until(lambda: proxy.bytes_dropped == len(b"hello?"))
        assert target.connections == 1

        # Back up: the frozen connection resumes with nothing lost; the one made in the
        # black hole stays dead, as its handshake never reached the centre.
        proxy.restore()
        assert await read_exactly(old, len(b"still there?")) == b"still there?"
        await ping(old)
        with trio.move_on_after(0.3) as waited:
            await new.recv(100)
        assert waited.cancelled_caught
        assert target.connections == 1
        old.close()
        new.close()


# --- latency, bandwidth, stalls -------------------------------------------------------------


# The two latency tests run on trio's mock clock (autojump_clock): time passes only in
# the proxy's own sleeps, never while the machine is busy, so an upper bound on a round
# trip is a property of the proxy, not of how loaded the machine running the test is.


async def test_latency_is_added_in_each_direction(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        proxy.set(Latency(150))
        sock = await connect(proxy.port)
        with sock:
            for _ in range(3):
                assert await ping(sock) >= 0.300
            proxy.restore()
            # Chunks already in flight keep their delay; a new ping does not get one.
            assert await ping(sock) < 0.150


async def test_latency_does_not_limit_throughput(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # Chunks in flight overlap: a megabyte takes about one delay, not one per chunk.
    target = await start_target(nursery, sink)
    async with FaultProxy(target.address) as proxy:
        proxy.set(Latency(100))
        sock = await connect(proxy.port)
        with sock:
            start = trio.current_time()
            data = memoryview(b"z" * 1_000_000)
            while data:
                data = data[await sock.send(data) :]
            sock.shutdown(trio.socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                reply += await sock.recv(64)
            elapsed = trio.current_time() - start
        assert int(reply) == 1_000_000
        assert elapsed >= 0.2  # one way for the data, one for the reply
        # 1 MB in 16 KiB chunks, one delay each in turn, would take over 6 s (mock clock:
        # only the proxy's delays count, so a slow machine cannot reach it).
        assert elapsed < 3


async def test_bandwidth_is_shared_by_connections_and_directions(nursery: trio.Nursery) -> None:
    rate = 10_000_000  # 10 Mbit/s: the benchmark's office line
    upload, download = 1_500_000, 1_500_000  # 2.4 s at that rate
    # One proxy in front of a target that both sinks and sources, so one bucket sees
    # both directions and both connections.
    both = await start_target(nursery, _sink_or_source)
    async with FaultProxy(both.address) as proxy:
        proxy.set(Bandwidth(rate))
        assert proxy.stats()["modes"] == [{"mode": "bandwidth", "bits_per_s": rate}]
        received: dict[str, int] = {}
        start = trio.current_time()
        with trio.fail_after(30):
            async with trio.open_nursery() as transfers:
                transfers.start_soon(_push, proxy.port, upload, received)
                transfers.start_soon(_pull, proxy.port, download, received)
        elapsed = trio.current_time() - start
    assert received == {"up": upload, "down": download}
    wire = proxy.bytes_up + proxy.bytes_down
    assert wire >= upload + download
    # Never faster than the line (the pacing itself is tested on a mock clock below).
    # No lower bound: a CPU-starved machine is slower, which says nothing of the proxy.
    assert wire * 8 / elapsed <= rate * 1.05


@pytest.mark.parametrize(
    ("directions", "full_duplex", "share"),
    [
        # Two downloads through two proxies: the line's rate is their sum, either way.
        pytest.param(("down", "down"), False, 1, id="two proxies, one rate"),
        pytest.param(("down", "down"), True, 1, id="full-duplex, same direction"),
        # One upload beside one download: half-duplex shares the rate between them;
        # full-duplex gives each direction all of it, so both finish in half the time.
        pytest.param(("up", "down"), False, 1, id="half-duplex, both ways"),
        pytest.param(("up", "down"), True, 2, id="full-duplex, both ways"),
    ],
)
async def test_a_shared_link_limits_several_proxies_together(
    nursery: trio.Nursery, directions: tuple[str, str], full_duplex: bool, share: int
) -> None:
    rate = 10_000_000
    each = 1_000_000  # through each of two proxies: 1.6 s together at the shared rate
    line = SharedLink(rate, full_duplex=full_duplex)
    first = await start_target(nursery, _sink_or_source)
    second = await start_target(nursery, _sink_or_source)
    async with (
        FaultProxy(first.address, link=line) as one,
        FaultProxy(second.address, link=line) as two,
    ):
        received: dict[str, int] = {}
        start = trio.current_time()
        with trio.fail_after(30):
            async with trio.open_nursery() as transfers:
                pairs = zip((one, two), directions, ("one", "two"), strict=True)
                for proxy, direction, key in pairs:
                    move = _push if direction == "up" else _pull
                    transfers.start_soon(move, proxy.port, each, received, key)
        elapsed = trio.current_time() - start
    assert received == {"one": each, "two": each}
    wire = one.bytes_up + one.bytes_down + two.bytes_up + two.bytes_down
    assert wire >= 2 * each
    # Each proxy alone has no limit: only the shared line holds them to its rate.
    assert wire * 8 / elapsed <= share * rate * 1.08


@pytest.mark.parametrize(
    ("full_duplex", "seconds"), [(False, 2.0), (True, 1.0)], ids=["half-duplex", "full-duplex"]
)
async def test_a_shared_link_paces_both_directions_on_its_buckets(
    autojump_clock: trio.abc.Clock, full_duplex: bool, seconds: float
) -> None:
    """One second of data each way: two seconds on one bucket, one second on two.

    Virtual time (trio's mock clock): the pacing arithmetic, free of the machine's speed.
    """
    rate = 10_000_000
    chunk = 16_384
    line = SharedLink(rate, full_duplex=full_duplex)
    finished: dict[str, float] = {}

    async def send(direction: Literal["up", "down"]) -> None:
        for _ in range(rate // 8 // chunk):  # 76 chunks: one second at the rate, less a chunk
            await line.pace(chunk, direction)
        finished[direction] = trio.current_time() - start

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, "up")
        nursery.start_soon(send, "down")
    line_time = 2 * (rate // 8 // chunk) * chunk * 8 / rate
    expected = line_time * seconds / 2.0
    # The bucket lends BURST_SECONDS of line time to a line that was idle.
    assert max(finished.values()) == pytest.approx(expected, abs=BURST_SECONDS + 1e-9)
    if full_duplex:  # each direction on its own: neither waited for the other
        assert min(finished.values()) == pytest.approx(expected, abs=BURST_SECONDS + 1e-9)


async def _push(port: int, size: int, received: dict[str, int], key: str = "up") -> None:
    """Send *size* bytes to the sink behind *port*; record the count it reports."""
    sock = await connect(port)
    with sock:
        await sock.send(b"sink\n")
        block = b"u" * 65536
        left = size
        while left:
            left -= await sock.send(block[: min(left, len(block))])
        sock.shutdown(trio.socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            reply += await sock.recv(64)
        received[key] = int(reply)


async def _pull(port: int, size: int, received: dict[str, int], key: str = "down") -> None:
    """Ask the source behind *port* for *size* bytes; record how many arrived."""
    sock = await connect(port)
    with sock:
        await sock.send(f"source {size}\n".encode())
        count = 0
        while chunk := await sock.recv(65536):
            count += len(chunk)
        received[key] = count


def test_a_shared_link_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="bits_per_s"):
        SharedLink(0)


async def _sink_or_source(target: Target, stream: trio.SocketStream) -> None:
    line = b""
    while not line.endswith(b"\n"):
        data = await stream.receive_some(1)
        if not data:
            return
        line += data
    command, _, size = line.decode().strip().partition(" ")
    if command == "sink":
        await sink(target, stream)
    else:
        left = int(size)
        block = b"d" * 16384
        while left:
            piece = block[: min(left, len(block))]
            await stream.send_all(piece)
            left -= len(piece)


async def test_stall_freezes_transfers_for_a_while_every_period(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        sock = await connect(proxy.port)
        with sock:
            proxy.set(Stall(stall_s=0.4, every_s=0.8))
            times: list[float] = []
            with trio.fail_after(20):
                while sum(times) < 1.7 and len(times) < 500:
                    times.append(await ping(sock, f"{len(times):05}".encode()))
                    await trio.sleep(0.02)
        # A ping sent as a stall begins waits it out; pings in between still pass.
        assert max(times) >= 0.3
        assert len(times) >= 3


# --- flapping -----------------------------------------------------------------------------


async def test_flap_alternates_between_up_and_cut(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        proxy.set(Flap(up_s=0.3, down_s=0.3))
        outcomes: list[bool] = []
        with trio.fail_after(30):
            for _ in range(60):
                try:
                    sock = await connect(proxy.port)
                    with sock, trio.fail_after(2):
                        await ping(sock)
                    outcomes.append(True)
                except (ConnectionRefusedError, ConnectionResetError, EOFError):
                    outcomes.append(False)
                await trio.sleep(0.04)
        changes = sum(1 for a, b in itertools.pairwise(outcomes) if a != b)
        assert changes >= 3, outcomes

        proxy.restore()
        sock = await connect(proxy.port)
        with sock:
            await ping(sock)


# --- lifetime, modes, process --------------------------------------------------------------


async def test_leaving_the_block_closes_everything(nursery: trio.Nursery) -> None:
    target = await start_target(nursery, echo)
    async with FaultProxy(target.address) as proxy:
        sock = await connect(proxy.port)
        await ping(sock)
        port = proxy.port
    with sock, trio.fail_after(5):
        assert await sock.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        await connect(port)


def test_modes_round_trip_through_json() -> None:
    modes = (Flap(1, 2), Latency(30), Bandwidth(1e6), Stall(0.5, 3))
    text = json.dumps([mode_json(m) for m in modes])
    assert parse_modes(json.loads(text)) == modes
    assert parse_modes({"mode": "loss", "stall_s": 1, "every_s": 5}) == (Stall(1, 5),)
    assert parse_modes({"mode": "pass"}) == (Pass(),)


@pytest.mark.parametrize(
    "bad",
    [
        [{"mode": "cut"}, {"mode": "pass"}],
        {"mode": "latency"},
        {"mode": "latency", "ms": -1},
        {"mode": "latency", "ms": float("nan")},
        {"mode": "bandwidth", "bits_per_s": "fast"},
        {"mode": "stall", "stall_s": 5, "every_s": 5},
        {"mode": "warp"},
        "cut",
        [{"mode": "latency", "ms": 1}, {"mode": "latency", "ms": 2}],
    ],
)
def test_bad_modes_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        parse_modes(bad)


def _json_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner)


_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    _json_containers,
    max_leaves=10,
)


@given(
    st.one_of(
        _json,
        st.fixed_dictionaries(
            {"mode": st.sampled_from(["pass", "cut", "latency", "stall", "flap", "x"])},
            optional={"ms": _json, "stall_s": _json, "every_s": _json, "up_s": _json},
        ),
    )
)
def test_parse_modes_returns_modes_or_says_why(value: object) -> None:
    try:
        modes = parse_modes(value)
    except ValueError as exc:
        reason = str(exc)
        assert reason
    else:
        assert modes
        assert all(type(m) in (Pass, Cut, Latency, Stall, Flap) for m in modes)


@pytest.mark.slow
async def test_process_mode_is_switched_through_its_control_port(
    nursery: trio.Nursery,
) -> None:
    target = await start_target(nursery, echo)
    proxy = await trio.to_thread.run_sync(
        lambda: ProxyProcess(target.address, modes=[Latency(20)], max_seconds=120)
    )
    with proxy:
        sock = await connect(proxy.port)
        with sock:
            assert await ping(sock) >= 0.04
            await trio.to_thread.run_sync(proxy.control.cut)
            with pytest.raises(ConnectionResetError):
                await sock.recv(10)
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy.port)
        await trio.to_thread.run_sync(proxy.control.restore)
        sock = await connect(proxy.port)
        with sock:
            await ping(sock, b"12345")
        await until(lambda: target.connections == 2)
        stats = await trio.to_thread.run_sync(proxy.control.stats)
        assert stats["bytes_up"] == stats["bytes_down"] == len(b"ping") + len(b"12345")
        assert stats["resets"] == 1
        assert stats["modes"] == [{"mode": "pass"}]
        with pytest.raises(ValueError, match="unknown mode"):
            await trio.to_thread.run_sync(lambda: proxy.control.request({"set": {"mode": "x"}}))
