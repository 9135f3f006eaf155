"""A fault-injecting TCP proxy: the uplink between a box and the centre, breakable on cue.

Tests put a `FaultProxy` between a box and the hub or the central mail servers and
switch its mode while traffic flows. Two kinds of mode, combinable:

- **What the link is** (at most one): `Pass` (forward), `Cut` (every open connection is
  reset with an RST and new ones are refused, like a router that answers for a dead
  line), `Blackhole` (packets vanish: see below), `Flap(up_s, down_s)` (alternates
  `Pass` and `Cut`).
- **How bytes move while it passes** (any of): `Latency(ms)` added in each direction,
  `Bandwidth(bits_per_s)` one token bucket shared by every connection and both
  directions (a 10 Mbit/s office line; `SharedLink` extends one line over several
  proxies), `Stall(stall_s, every_s)` (transfers freeze for
  *stall_s* at the end of every *every_s*: the loss bursts of a congested line, where
  TCP retransmits and nothing moves for a while).

A black hole is what a silent cable cut looks like to TCP: nothing comes back. A
connection open when it starts is frozen (nothing passes either way) and resumes with
nothing lost when the mode changes, as TCP would after retransmitting; a connection made
during it is accepted (the kernel completes the handshake before we can say no), and
everything it sends is read and dropped without an answer until the client gives up.

The proxy counts the bytes it delivered in each direction, so a benchmark can report
payload ÷ bytes on the wire. It listens on 127.0.0.1 only.

Two ways to run it: in-process in a trio test (``async with FaultProxy(target) as
proxy: proxy.set(Cut())``), or as a process for end-to-end tests whose boxes run in
other processes (``python -m tests.faults.proxy --target HOST:PORT``), switched through
a small line-of-JSON control port (`ProxyControl`, `ProxyProcess`).

Bounds: every connection holds at most `IN_FLIGHT_CHUNKS` chunks of `CHUNK` bytes per
direction; upstream connects time out after `CONNECT_TIMEOUT`; the process mode exits
after ``--max-seconds``; everything is closed when the proxy's block ends.

What this is not: a packet-level emulator (``tc netem`` was not available on the
development VM: the ``sch_netem`` kernel module is missing, see README.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import trio

#: Bytes read from a socket at once; at 10 Mbit/s one chunk is 13 ms of line time.
CHUNK: Final = 16 * 1024
#: Chunks buffered per direction of one connection (latency × bandwidth must fit).
IN_FLIGHT_CHUNKS: Final = 64
#: Seconds to reach the target before the client's connection is reset.
CONNECT_TIMEOUT: Final = 10.0
#: Credit the token bucket may hold, in seconds of line time: enough to absorb the
#: scheduler's late wake-ups without letting an idle link burst noticeably.
BURST_SECONDS: Final = 0.02
#: A control request is one short JSON line.
MAX_CONTROL_LINE: Final = 64 * 1024

Direction = Literal["up", "down"]


# --- modes -------------------------------------------------------------------------------


def _positive(name: str, value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class Pass:
    """Forward everything."""


@dataclass(frozen=True)
class Cut:
    """Reset open connections (RST) and refuse new ones."""


@dataclass(frozen=True)
class Blackhole:
    """Freeze open connections; accept new ones and drop what they send, never answer."""


@dataclass(frozen=True)
class Flap:
    """Alternate `Pass` for *up_s* and `Cut` for *down_s*, starting with `Pass`."""

    up_s: float
    down_s: float

    def __post_init__(self) -> None:
        _positive("up_s", self.up_s)
        _positive("down_s", self.down_s)


@dataclass(frozen=True)
class Latency:
    """Delay every chunk by *ms* milliseconds in each direction."""

    ms: float

    def __post_init__(self) -> None:
        _positive("ms", self.ms)


@dataclass(frozen=True)
class Bandwidth:
    """Limit all connections together, both directions, to *bits_per_s*."""

    bits_per_s: float

    def __post_init__(self) -> None:
        _positive("bits_per_s", self.bits_per_s)


@dataclass(frozen=True)
class Stall:
    """Within every *every_s*, let bytes flow for ``every_s - stall_s``, then freeze."""

    stall_s: float
    every_s: float

    def __post_init__(self) -> None:
        _positive("stall_s", self.stall_s)
        _positive("every_s", self.every_s)
        if self.stall_s >= self.every_s:
            raise ValueError("stall_s must be shorter than every_s (else it is a black hole)")


Mode = Pass | Cut | Blackhole | Flap | Latency | Bandwidth | Stall
_LINK_MODES: Final = (Pass, Cut, Blackhole, Flap)
_NAMES: Final[dict[str, type[Mode]]] = {
    "pass": Pass,
    "cut": Cut,
    "blackhole": Blackhole,
    "flap": Flap,
    "latency": Latency,
    "bandwidth": Bandwidth,
    "stall": Stall,
    "loss": Stall,  # what the issue calls it: loss shows up to TCP as stalls
}


def mode_json(mode: Mode) -> dict[str, Any]:
    """The control-channel form of *mode*: ``{"mode": "latency", "ms": 200}``."""
    name = next(key for key, kind in _NAMES.items() if kind is type(mode))
    return {"mode": name, **asdict(mode)}


def parse_modes(value: Any) -> tuple[Mode, ...]:
    """Read one mode object or a list of them (the control channel's ``set``; an empty
    list is `Pass`)."""
    items = value if isinstance(value, list) else [value]
    modes: list[Mode] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("mode"), str):
            raise ValueError(f"a mode is an object with a 'mode' name, not {item!r}")
        kind = _NAMES.get(item["mode"])
        if kind is None:
            raise ValueError(f"unknown mode {item['mode']!r}; known: {', '.join(_NAMES)}")
        arguments = {k: v for k, v in item.items() if k != "mode"}
        try:
            modes.append(kind(**arguments))
        except TypeError as exc:
            raise ValueError(f"mode {item['mode']!r}: {exc}") from None
    _check(modes)
    return tuple(modes) or (Pass(),)


def _check(modes: Sequence[Mode]) -> None:
    link = [m for m in modes if isinstance(m, _LINK_MODES)]
    if len(link) > 1:
        raise ValueError(f"at most one of pass, cut, blackhole, flap; got {link}")
    for kind in (Latency, Bandwidth, Stall):
        if sum(isinstance(m, kind) for m in modes) > 1:
            raise ValueError(f"{kind.__name__} given twice")


# --- the proxy ---------------------------------------------------------------------------


class _Pacer:
    """A token bucket for the whole link: each chunk waits for its line time."""

    def __init__(self, bits_per_s: float | None = None) -> None:
        self.bits_per_s = bits_per_s
        self._free_at = 0.0

    def set_rate(self, bits_per_s: float | None) -> None:
        self.bits_per_s = bits_per_s
        self._free_at = trio.current_time()

    async def pace(self, size: int) -> None:
        if self.bits_per_s is None:
            return
        # Reserve the next slot of line time before sleeping, with no await in between:
        # concurrent connections and both directions queue up on one timeline, so
        # their sum, not each of them, gets the configured rate.
        start = max(self._free_at, trio.current_time() - BURST_SECONDS)
        self._free_at = start + size * 8 / self.bits_per_s
        await trio.sleep_until(self._free_at)


class SharedLink:
    """One office line under several proxies: a token bucket they all draw from.

    A box reaches the centre on separate ports (hub sync, SMTP relay, IMAP), one proxy
    each, yet all of them cross the same 10 Mbit/s line. Give every proxy the same
    ``SharedLink(10_000_000)`` (``FaultProxy(target, link=line)``) and the sum of their
    connections, both directions, runs at that rate. It applies on top of each proxy's
    own modes (a proxy's `Bandwidth` still limits that proxy alone). Proxies sharing a
    link must run in one trio run (one process).

    ``full_duplex=True`` gives each direction its own bucket at the rate, as a leased
    line or an Ethernet uplink has: a reply coming down no longer waits behind the
    upload in flight. Without it (the default) the line is half-duplex, the stricter
    model: both directions share one bucket.
    """

    def __init__(self, bits_per_s: float, *, full_duplex: bool = False) -> None:
        _positive("bits_per_s", bits_per_s)
        self.bits_per_s = bits_per_s
        self.full_duplex = full_duplex
        up = _Pacer(bits_per_s)
        self._pacers: dict[Direction, _Pacer] = {
            "up": up,
            "down": _Pacer(bits_per_s) if full_duplex else up,
        }

    async def pace(self, size: int, direction: Direction = "up") -> None:
        await self._pacers[direction].pace(size)


def _reset(stream: trio.SocketStream | None) -> None:
    """Close *stream* with an RST rather than a FIN (SO_LINGER on, time-out 0)."""
    if stream is None:
        return
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed
    stream.socket.close()


@dataclass(eq=False)
class _Connection:
    client: trio.SocketStream
    upstream: trio.SocketStream | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    was_reset: bool = False

    def reset(self) -> None:
        """RST both sides now and stop the connection's tasks."""
        self.was_reset = True
        _reset(self.client)
        _reset(self.upstream)
        self.scope.cancel()


class FaultProxy:
    """One proxied link from 127.0.0.1:`port` to *target*; use as ``async with``."""

    def __init__(
        self, target: tuple[str, int], *, listen_port: int = 0, link: SharedLink | None = None
    ) -> None:
        self.target = target
        #: The line this proxy shares with others (None: only its own modes apply).
        self.link = link
        #: The port clients connect to (chosen free unless *listen_port* is given).
        self.port = listen_port
        #: Bytes delivered client → target and target → client.
        self.bytes_up = 0
        self.bytes_down = 0
        #: Bytes read from connections made during a black hole, and thrown away.
        self.bytes_dropped = 0
        #: Connections accepted, and connections ended by an RST from the proxy.
        self.connections = 0
        self.resets = 0
        self.modes: tuple[Mode, ...] = (Pass(),)
        #: True while the link is cut (`Cut`, or the down half of `Flap`).
        self.down = False
        self._blackhole = False
        self._latency = 0.0
        self._stall: Stall | None = None
        self._stall_since = 0.0
        self._pacer = _Pacer()
        self._conns: set[_Connection] = set()
        self._listener: trio.SocketListener | None = None
        self._changed = trio.Event()
        self._flap_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._stack = AsyncExitStack()

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._open_listener()
        self._nursery.start_soon(self._accept_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._close_listener()
        for conn in list(self._conns):
            conn.scope.cancel()
        return await self._stack.__aexit__(exc_type, exc, tb)

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, for a config value such as ``smtp://127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    # --- modes --------------------------------------------------------------------------

    def set(self, *modes: Mode) -> None:
        """Switch to *modes* now (no mode: `Pass`); shapes not named are switched off."""
        _check(modes)
        link = next((m for m in modes if isinstance(m, _LINK_MODES)), Pass())
        if self._flap_scope is not None:
            self._flap_scope.cancel()
            self._flap_scope = None
        self.modes = tuple(modes) or (Pass(),)
        self._latency = next((m.ms / 1000 for m in modes if isinstance(m, Latency)), 0.0)
        self._pacer.set_rate(next((m.bits_per_s for m in modes if isinstance(m, Bandwidth)), None))
        self._stall = next((m for m in modes if isinstance(m, Stall)), None)
        self._stall_since = trio.current_time()
        self._blackhole = isinstance(link, Blackhole)
        self._set_down(isinstance(link, Cut))
        if isinstance(link, Flap):
            assert self._nursery is not None, "use the proxy inside `async with`"
            self._flap_scope = trio.CancelScope()
            self._nursery.start_soon(self._flap, link, self._flap_scope)
        self._notify()

    def cut(self) -> None:
        self.set(Cut())

    def blackhole(self) -> None:
        self.set(Blackhole())

    def restore(self) -> None:
        """Back to a clean link: `Pass`, no latency, no limit, no stalls."""
        self.set(Pass())

    def stats(self) -> dict[str, Any]:
        return {
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_dropped": self.bytes_dropped,
            "connections": self.connections,
            "open_connections": len(self._conns),
            "resets": self.resets,
            "down": self.down,
            "modes": [mode_json(m) for m in self.modes],
        }

    def reset_counters(self) -> None:
        self.bytes_up = self.bytes_down = self.bytes_dropped = 0
        self.connections = self.resets = 0

    def _notify(self) -> None:
        # Tasks waiting for a change (a frozen connection, the accept loop) wake up and
        # look at the new settings.
        self._changed.set()
        self._changed = trio.Event()

    def _set_down(self, down: bool) -> None:
        self.down = down
        if down:
            self._close_listener()
            for conn in list(self._conns):
                self.resets += 1
                conn.reset()
        elif self._listener is None:
            self._open_listener()
        self._notify()

    async def _flap(self, flap: Flap, scope: trio.CancelScope) -> None:
        # Ends when the mode changes (set cancels *scope*) or the proxy closes.
        with scope:
            while True:
                await trio.sleep(flap.up_s)
                self._set_down(True)
                await trio.sleep(flap.down_s)
                self._set_down(False)

    # --- listening ----------------------------------------------------------------------

    def _open_listener(self) -> None:
        # A cut closes the listening socket so that connects are refused outright (a
        # probe doing only a TCP connect must see the cut); restoring binds the same
        # port again. Plain socket calls: they are all immediate on a loopback address.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # Connections still in the kernel's accept queue get an RST.
            listener.socket.close()

    async def _accept_loop(self) -> None:
        assert self._nursery is not None
        while True:  # ends when the proxy's nursery is cancelled
            listener = self._listener
            if listener is None:
                await self._changed.wait()
                continue
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, OSError):
                await trio.lowlevel.checkpoint()
                continue
            self.connections += 1
            self._nursery.start_soon(self._serve, stream)

    # --- one connection -----------------------------------------------------------------

    async def _serve(self, client: trio.SocketStream) -> None:
        conn = _Connection(client)
        self._conns.add(conn)
        try:
            with conn.scope:
                if self.down:
                    conn.reset()
                elif self._blackhole:
                    await self._drop(client)
                else:
                    await self._forward(conn)
        finally:
            self._conns.discard(conn)
            if not conn.was_reset:
                client.socket.close()
                if conn.upstream is not None:
                    conn.upstream.socket.close()

    async def _drop(self, client: trio.SocketStream) -> None:
        while True:  # ends when the client closes or the link is cut
            try:
                data = await client.receive_some(CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.bytes_dropped += len(data)

    async def _forward(self, conn: _Connection) -> None:
        with trio.move_on_after(CONNECT_TIMEOUT):
            try:
                conn.upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                pass
        if conn.upstream is None:
            # The far end is down: the client sees what it would see at the centre.
            self.resets += 1
            conn.reset()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, conn, conn.client, conn.upstream, "up")
            nursery.start_soon(self._pump, conn, conn.upstream, conn.client, "down")

    async def _pump(
        self,
        conn: _Connection,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: Direction,
    ) -> None:
        # Reading and delivering are two tasks joined by a bounded channel, so a chunk
        # waiting out its latency does not hold up the ones behind it (the line stays
        # full), and a slow reader pushes back on the sender through TCP.
        send, receive = trio.open_memory_channel[tuple[float, bytes]](IN_FLIGHT_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, conn, receive, sink, direction)
            async with send:
                while True:  # ends at EOF, an error, or a cut
                    try:
                        data = await source.receive_some(CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        # An RST from one end is passed on to the other.
                        conn.reset()
                        return
                    if not data:
                        break
                    await self._gate()
                    await self._pacer.pace(len(data))
                    if self.link is not None:
                        await self.link.pace(len(data), direction)
                    await send.send((trio.current_time() + self._latency, data))

    async def _deliver(
        self,
        conn: _Connection,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        sink: trio.SocketStream,
        direction: Direction,
    ) -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await self._gate()
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.reset()
                    return
                if direction == "up":
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        try:
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _gate(self) -> None:
        """Return when bytes may move: not in a black hole, not inside a stall."""
        while True:  # each turn waits for a mode change or the end of a stall
            if self._blackhole:
                await self._changed.wait()
                continue
            wait = self._stall_left(trio.current_time())
            if wait <= 0:
                return
            with trio.move_on_after(wait):
                await self._changed.wait()

    def _stall_left(self, now: float) -> float:
        stall = self._stall
        if stall is None:
            return 0.0
        phase = (now - self._stall_since) % stall.every_s
        flowing = stall.every_s - stall.stall_s
        return stall.every_s - phase if phase >= flowing else 0.0


# --- the control channel (process mode) --------------------------------------------------


async def serve_control(proxy: FaultProxy, stream: trio.abc.Stream) -> None:
    """Answer line-of-JSON requests on *stream* until it closes.

    Requests: ``{"set": MODE or [MODE, ...]}``, ``{"stats": true}``,
    ``{"reset_counters": true}``. Every answer is ``{"ok": true, "stats": {...}}`` or
    ``{"ok": false, "error": "..."}``.
    """
    buffer = b""
    async with stream:
        while True:  # one request per line; ends when the client closes
            while b"\n" not in buffer:
                if len(buffer) > MAX_CONTROL_LINE:
                    return
                try:
                    data = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            answer = _control(proxy, line)
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


def _control(proxy: FaultProxy, line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        if "set" in request:
            proxy.set(*parse_modes(request["set"]))
        elif request.get("reset_counters"):
            proxy.reset_counters()
        elif not request.get("stats"):
            raise ValueError("expected 'set', 'stats' or 'reset_counters'")
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "stats": proxy.stats()}


class ProxyControl:
    """Switch a proxy running in another process (blocking; call from a thread in trio)."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as sock:
            sock.sendall(json.dumps(body).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < MAX_CONTROL_LINE:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        answer: dict[str, Any] = json.loads(reply)
        if not answer.get("ok"):
            raise ValueError(f"proxy refused {body}: {answer.get('error')}")
        return answer

    def set(self, *modes: Mode) -> dict[str, Any]:
        stats: dict[str, Any] = self.request({"set": [mode_json(m) for m in modes]})["stats"]
        return stats

    def cut(self) -> None:
        self.set(Cut())

    def restore(self) -> None:
        self.set(Pass())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.request({"stats": True})["stats"]
        return stats


class ProxyProcess:
    """``python -m tests.faults.proxy`` as a child process; use as ``with``."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen_port: int = 0,
        modes: Iterable[Mode] = (),
        max_seconds: float = 3600,
        start_timeout: float = 30,
    ) -> None:
        command = [
            sys.executable, "-m", "tests.faults.proxy",
            "--target", f"{target[0]}:{target[1]}",
            "--listen-port", str(listen_port),
            "--control-port", "0",
            "--max-seconds", str(max_seconds),
        ]  # fmt: skip
        modes = list(modes)
        if modes:
            command += ["--mode", json.dumps([mode_json(m) for m in modes])]
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + start_timeout
        line = ""
        assert self.process.stdout is not None
        while not line.startswith("ready ") and time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:  # the process ended
                break
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"fault proxy did not start: {self._stderr()}")
        _, port, control_port = line.split()
        self.port = int(port)
        self.control = ProxyControl(int(control_port))

    def _stderr(self) -> str:
        try:
            _, err = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return "(no output)"
        return err or "(no output)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


async def _run(args: argparse.Namespace) -> None:
    with trio.move_on_after(args.max_seconds):
        async with FaultProxy(args.target, listen_port=args.listen_port) as proxy:
            if args.mode:
                proxy.set(*parse_modes(json.loads(args.mode)))
            listeners = await trio.open_tcp_listeners(args.control_port, host="127.0.0.1")
            control_port = listeners[0].socket.getsockname()[1]
            print(f"ready {proxy.port} {control_port}", flush=True)
            await trio.serve_listeners(functools.partial(serve_control, proxy), listeners)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.proxy", description="Fault-injecting TCP proxy (tests)."
    )
    parser.add_argument("--target", type=_host_port, required=True, help="HOST:PORT")
    parser.add_argument("--listen-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--control-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--mode", help='initial modes as JSON, e.g. \'{"mode": "cut"}\'')
    parser.add_argument("--max-seconds", type=float, default=3600, help="exit after this")
    args = parser.parse_args(argv)
    try:
        trio.run(_run, args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
