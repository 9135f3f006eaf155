"""Chat benchmark: 1,000 WebSocket clients in 20 rooms of 50, a steady 200 messages/s.

Set-up (not timed): a fresh box with 1,000 users, 20 group rooms of 50 members and a
session token per user, made in-process (`Directory.add_user`, `Chat.create_room`,
`Sessions.create`) so the set-up does not spend minutes on 1,000 scrypt sign-ins.
Then ``edgebox run`` serves it and this script:

- opens 1,000 WebSocket streams from ``--processes`` listener processes (default 2:
  one Python process parsing 10,000 TLS frames a second would itself add the
  latency it is meant to measure) (``/api/v1/stream``, TLS, bearer token), one per user;
- posts ``--rate`` messages a second for ``--seconds`` seconds through
  ``POST /api/v1/rooms/{id}/messages`` on 20 keep-alive HTTPS connections (one per
  room; each message from a random member, with its own bearer token);
- records, for every (message, member) pair, the time from just before the POST was
  written to the moment the member's stream delivered the event.

Printed: deliveries expected and seen, median / p90 / p99 / max send-to-delivery
latency, messages/s sustained (accepted POSTs over the sending window), and the
server's peak RSS. The target (issue 4) is p99 under 100 ms on this 2-core machine.

There is no reference server to run beside it (G-Chat is not available here); the
figure is compared with the target instead.

    .venv/bin/python tests/bench/bench_chat.py [--clients 1000] [--rooms 20] [--rate 200]

What it is not: part of ``make test`` (pytest collects it only with ``-m bench``).
Results go to tests/bench/results/chat.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import random
import select
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import h11
import psutil
import pytest
import trio
from wsproto.utilities import generate_accept_token

from tests.bench.common import (
    REPO,
    RESULTS_DIR,
    RssSampler,
    commit,
    edgebox_exe,
    machine,
    running_edgebox,
    scratch_dir,
    write_results,
)
from tests.peers import LOOPBACK

RESULTS = RESULTS_DIR / "chat.json"
DOMAIN = "chat.bench.go.th"
HTTPS_BASE_PORT = 8443

SETUP_SCRIPT = r"""
import json, sys, datetime, trio
from pathlib import Path
from appliance.box import configured, open_box
from appliance.security import passwords

async def main(data, clients, rooms, out):
    # Set-up only: the users never sign in with a password here.
    passwords.hash_password = lambda password: passwords.DUMMY_HASH
    async with open_box(configured(Path(data), {}, {})) as box:
        users = []
        for i in range(clients):
            users.append(await box.directory.add_user(
                f"user{i:04d}@" + box.identity.domain, password="x" * 12,
                name_th=f"ผู้ใช้ {i}", name_en=f"User {i}"))
        tokens = {}
        for user in users:
            token, _ = await box.sessions.create(user, client_ip="127.0.0.1",
                user_agent="bench", ttl=datetime.timedelta(hours=6))
            tokens[user.address] = token
        per_room = clients // rooms
        layout = []
        for r in range(rooms):
            members = users[r * per_room:(r + 1) * per_room]
            room = await box.chat.create_room(members[0], "group", name=f"ห้อง {r}",
                members=[m.address for m in members[1:]])
            layout.append({"id": room.id, "members": [m.address for m in members]})
    Path(out).write_text(json.dumps({"tokens": tokens, "rooms": layout}))

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
"""


def set_up(data: Path, clients: int, rooms: int, out: Path) -> dict[str, Any]:
    exe = edgebox_exe()
    subprocess.run([exe, "init", "--data", str(data), "--domain", DOMAIN], check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run(
        [sys.executable, "-c", SETUP_SCRIPT, str(data), str(clients), str(rooms), str(out)],
        check=True,
        cwd=REPO,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


class Bench:
    def __init__(self, port: int, context: ssl.SSLContext, setup: dict[str, Any]) -> None:
        self.port = port
        self.context = context
        self.tokens: dict[str, str] = setup["tokens"]
        self.rooms: list[dict[str, Any]] = setup["rooms"]
        #: client_id -> time the POST was written
        self.sent_at: dict[str, float] = {}
        #: client_id -> the members who must get it (accepted POSTs only)
        self.recipients: dict[str, list[str]] = {}
        #: send -> HTTP answer of each POST (accepted, committed, published)
        self.post_latencies: list[float] = []
        self.accepted = 0
        self.refused = 0
        self.expected = 0

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(LOOPBACK, self.port)
        stream = trio.SSLStream(tcp, self.context, server_hostname="localhost")
        await stream.do_handshake()
        return stream

    async def sender(
        self, room: dict[str, Any], rate: float, seconds: float, seed: int, phase: float
    ) -> None:
        """Post to one room at *rate*/s on one keep-alive connection, *phase* s late."""
        rng = random.Random(seed)
        stream = await self._connect()
        conn = h11.Connection(h11.CLIENT)
        interval = 1.0 / rate
        start = trio.current_time() + phase
        try:
            n = 0
            while n < rate * seconds:
                await trio.sleep_until(start + n * interval)
                sender = rng.choice(room["members"])
                client_id = f"{room['id']}-{n}"
                body = json.dumps({"kind": "text", "text": f"ข้อความทดสอบ {n}",
                                   "client_id": client_id}).encode()  # fmt: skip
                request = h11.Request(method="POST", target=f"/api/v1/rooms/{room['id']}/messages",
                    headers=[("host", "localhost"), ("content-type", "application/json"),
                             ("authorization", f"Bearer {self.tokens[sender]}"),
                             ("content-length", str(len(body)))])  # fmt: skip
                self.sent_at[client_id] = time.perf_counter()
                await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)) +
                                      conn.send(h11.EndOfMessage()))  # fmt: skip
                status = await self._response(stream, conn)
                self.post_latencies.append(time.perf_counter() - self.sent_at[client_id])
                if status in (200, 201):
                    self.accepted += 1
                    self.expected += len(room["members"])
                    self.recipients[client_id] = room["members"]
                else:
                    self.refused += 1
                conn.start_next_cycle()
                n += 1
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _response(stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection) -> int:
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status


# --- the listeners: plain selectors and non-blocking ssl ------------------------------
#
# A listener process holds hundreds of streams and takes thousands of frames a second.
# With trio.SSLStream and wsproto (Python code per TLS record and per frame) the two
# listener processes took more CPU than the server's fan-out on this 2-core machine,
# time the server then waited for. Here OpenSSL reads the socket itself and frames are
# cut by a few lines of code. Still honest: a frame's time is taken right after the
# recv that brought its last bytes, and every (member, message) pair is recorded and
# checked for exactly-once delivery afterwards (`drive`).


class StreamClient:
    """One member's WebSocket stream (RFC 6455 client side) on a non-blocking SSLSocket."""

    def __init__(self, address: str, sock: ssl.SSLSocket, trailing: bytes) -> None:
        self.address = address
        self.sock = sock
        self.buffer = bytearray(trailing)
        self.parts: list[bytes] = []
        self.closed = False

    def frames(self, now: float, received: list[tuple[str, str, float]]) -> None:
        """Cut whole frames off the buffer; record each message.posted as received *now*."""
        buf = self.buffer
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            if second & 0x80:
                raise RuntimeError("the server masked a frame (RFC 6455 §5.1)")
            size, start = second & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                return
            payload = bytes(buf[start : start + size])
            del buf[: start + size]
            opcode = first & 0x0F
            if opcode in (0x1, 0x0):  # text, or its continuation
                self.parts.append(payload)
                if first & 0x80:  # FIN
                    text, self.parts = b"".join(self.parts), []
                    self._message(text, now, received)
            elif opcode == 0x9:  # ping: answer with a pong (§5.5.3)
                self.send(_client_frame(0xA, payload))
            elif opcode == 0x8:  # close: echo it (§5.5.1) and stop
                self.send(_client_frame(0x8, payload[:2]))
                self.closed = True
                return

    def _message(self, text: bytes, now: float, received: list[tuple[str, str, float]]) -> None:
        message = json.loads(text)
        if message.get("type") != "event":
            return
        event = message["event"]
        if event["type"] != "message.posted":
            return
        client_id = event["payload"]["message"].get("client_id")
        if client_id:
            received.append((self.address, client_id, now))

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                select.select([], [self.sock], [], 1.0)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3) with a short control payload."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def open_stream(port: int, context: ssl.SSLContext, address: str, token: str) -> StreamClient:
    """Connect, handshake TLS and WebSocket (blocking); return the stream, non-blocking."""
    raw = socket.create_connection((LOOPBACK, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /api/v1/stream?cursor=0 HTTP/1.1\r\nHost: localhost\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"stream closed during the handshake for {address}")
        head += chunk
    head, _, trailing = head.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    if status.split()[1] != "101":
        raise RuntimeError(f"stream refused for {address}: {status}")
    headers = {n.strip().lower(): v.strip() for n, _, v in (x.partition(":") for x in lines)}
    accept = generate_accept_token(key.encode()).decode()
    if headers.get("sec-websocket-accept") != accept:  # §4.1: the server read our key
        raise RuntimeError(f"bad Sec-WebSocket-Accept for {address}")
    sock.setblocking(False)
    return StreamClient(address, sock, trailing)


def listen(port: int, context: ssl.SSLContext, tokens: dict[str, str], addresses: list[str],
           connected: Any, stop: Any) -> list[tuple[str, str, float]]:  # fmt: skip
    """Hold *addresses*' streams until told to stop; return every (member, client_id, time)."""
    received: list[tuple[str, str, float]] = []
    selector = selectors.DefaultSelector()
    clients = []
    for i, address in enumerate(addresses):
        client = open_stream(port, context, address, tokens[address])
        clients.append(client)
        selector.register(client.sock, selectors.EVENT_READ, client)
        client.frames(time.perf_counter(), received)
        if i % 50 == 49:
            time.sleep(0.05)  # do not stampede the accept queue
    connected.put(len(addresses))
    next_check = time.monotonic()
    while True:
        for key, _ in selector.select(timeout=0.2):
            client = key.data
            while True:  # drain: OpenSSL may hold more records than one recv returns
                try:
                    data = client.sock.recv(262144)
                except ssl.SSLWantReadError:
                    break
                now = time.perf_counter()
                if not data:
                    client.closed = True
                    break
                client.buffer += data
                client.frames(now, received)
            if client.closed:
                selector.unregister(client.sock)
        if time.monotonic() >= next_check:
            if stop.is_set():
                break
            next_check = time.monotonic() + 0.2
    for client in clients:
        client.sock.close()
    return received


def listener_process(port: int, cafile: str, tokens: dict[str, str], addresses: list[str],
                     connected: Any, stop: Any, out: str) -> None:  # fmt: skip
    context = ssl.create_default_context(cafile=cafile)
    received = listen(port, context, tokens, addresses, connected, stop)
    Path(out).write_text(json.dumps(received))


async def send_all_rooms(bench: Bench, rate: float, seconds: float) -> float:
    """Post *rate* messages a second in all, evenly spaced.

    Each room's sender starts 1/*rate* s after the one before, so the rooms' messages
    interleave into one steady stream (at 200/s, one every 5 ms). Started together,
    the 20 senders would post in bursts of 20 messages at once (1,000 deliveries),
    which measures queueing behind the burst rather than a steady load.
    """
    per_room = rate / len(bench.rooms)
    started = time.perf_counter()
    async with trio.open_nursery() as senders:
        for i, room in enumerate(bench.rooms):
            senders.start_soon(bench.sender, room, per_room, seconds, i, i / rate)
    return time.perf_counter() - started


def drive(port: int, cafile: Path, setup: dict[str, Any], clients: int, rate: float,
          seconds: float, work: Path, processes: int, server_pid: int,
          before_sending: Callable[[], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Listeners in *processes* processes (so the client is not the bottleneck), senders here.

    *before_sending* runs once every stream is open, just before the first post (the
    mixed benchmark starts its SMTP load there).

    Times are `time.perf_counter()` (CLOCK_MONOTONIC, shared by all processes). CPU
    seconds of the server and of the listeners are taken over the sending window.
    """
    mp = multiprocessing.get_context("fork")
    connected, stop = mp.Queue(), mp.Event()
    addresses = list(setup["tokens"])[:clients]
    workers = []
    for n in range(processes):
        out = str(work / f"received-{n}.json")
        worker = mp.Process(target=listener_process, args=(
            port, str(cafile), setup["tokens"], addresses[n::processes], connected, stop,
            out))  # fmt: skip
        worker.start()
        workers.append((worker, out))
    for _ in range(processes):
        connected.get(timeout=300)
    time.sleep(1)
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    bench = Bench(port, context, setup)
    watched = {"server": [psutil.Process(server_pid)],
               "listeners": [psutil.Process(w.pid) for w, _ in workers]}  # fmt: skip
    if before_sending is not None:
        before_sending()
    cpu_before = {name: _cpu(procs) for name, procs in watched.items()}
    sending = trio.run(send_all_rooms, bench, rate, seconds)
    cpu = {name: (_cpu(procs) - cpu_before[name]) / sending for name, procs in watched.items()}
    time.sleep(5)  # the last deliveries (bounded; a late one counts as missing)
    stop.set()
    received: list[tuple[str, str, float]] = []
    for worker, out in workers:
        worker.join(60)
        received += [(a, c, t) for a, c, t in json.loads(Path(out).read_text())]
    # Exactly once: each (member, accepted message) pair counts the first time only;
    # a second copy, or a message to someone not in its room, is counted apart.
    seen: set[tuple[str, str]] = set()
    duplicates = unexpected = 0
    latencies_list: list[float] = []
    for address, client_id, at in received:
        if address not in bench.recipients.get(client_id, ()):
            unexpected += 1
        elif (address, client_id) in seen:
            duplicates += 1
        else:
            seen.add((address, client_id))
            latencies_list.append(at - bench.sent_at[client_id])
    latencies = sorted(latencies_list)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    posts = sorted(bench.post_latencies)
    return {
        "clients": clients,
        "rooms": len(bench.rooms),
        "rate": rate,
        "seconds": seconds,
        "listener_processes": processes,
        "accepted": bench.accepted,
        "refused": bench.refused,
        "expected_deliveries": bench.expected,
        "deliveries": len(latencies),
        "duplicate_deliveries": duplicates,
        "unexpected_deliveries": unexpected,
        "sustained_msgs_per_s": bench.accepted / sending,
        "latency_ms_median": statistics.median(latencies) * 1000 if latencies else None,
        "latency_ms_p90": pct(0.90) if latencies else None,
        "latency_ms_p99": pct(0.99) if latencies else None,
        "latency_ms_max": latencies[-1] * 1000 if latencies else None,
        "post_ms_median": statistics.median(posts) * 1000,
        "post_ms_p99": posts[int(0.99 * len(posts))] * 1000,
        "server_cpu_s_per_s": cpu["server"],
        "listeners_cpu_s_per_s": cpu["listeners"],
    }


def _cpu(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by *processes*."""
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def run(clients: int, rooms: int, rate: float, seconds: float, work: Path,
        offset: int, processes: int = 2) -> dict[str, Any]:  # fmt: skip
    data = work / "data"
    print(f"[chat] setting up {clients} users, {rooms} rooms ...", flush=True)
    setup = set_up(data, clients, rooms, work / "setup.json")
    port = HTTPS_BASE_PORT + offset
    with running_edgebox(data, work / "edgebox.log", offset) as pid:
        with RssSampler(lambda: [pid]) as rss:
            print(f"[chat] {clients} streams, {rate}/s for {seconds}s ...", flush=True)
            result = drive(port, data / "keys" / "ca.pem", setup, clients, rate, seconds,
                           work, processes, pid)  # fmt: skip
        result["peak_rss_mb"] = rss.peak / 1e6
    result.update(commit=commit(), machine=machine())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--port-offset", type=int, default=3100)
    parser.add_argument("--processes", type=int, default=2, help="listener processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    with scratch_dir("bench-chat-") as work:
        result = run(
            args.clients,
            args.rooms,
            args.rate,
            args.seconds,
            work,
            args.port_offset,
            args.processes,
        )
    print(json.dumps(result, indent=2))
    write_results(args.out, result)
    return 0


@pytest.mark.bench
def test_bench_chat(tmp_path: Path) -> None:
    result = run(100, 4, 20, 3, tmp_path, 3200)
    assert result["deliveries"] == result["expected_deliveries"]
    assert result["duplicate_deliveries"] == result["unexpected_deliveries"] == 0


if __name__ == "__main__":
    sys.exit(main())
