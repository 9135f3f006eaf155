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
import json
import multiprocessing
import random
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import h11  # noqa: E402
import pytest  # noqa: E402
import trio  # noqa: E402
import wsproto  # noqa: E402
import wsproto.events as ws  # noqa: E402

from tests.bench.bench_smtp import RssSampler, _commit, _edgebox_exe, _machine, running_edgebox  # noqa: E402
from tests.peers import LOOPBACK  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "chat.json"
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
    exe = _edgebox_exe()
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
        #: (client_id, time) of every message.posted a listener got
        self.received: list[tuple[str, float]] = []
        #: send -> HTTP answer of each POST (accepted, committed, published)
        self.post_latencies: list[float] = []
        self.accepted = 0
        self.refused = 0
        self.expected = 0
        self.connected = 0
        self.all_connected = trio.Event()

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(LOOPBACK, self.port)
        stream = trio.SSLStream(tcp, self.context, server_hostname="localhost")
        await stream.do_handshake()
        return stream

    async def listener(self, address: str, clients: int) -> None:
        stream = await self._connect()
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(conn.send(ws.Request(
            host="localhost", target="/api/v1/stream?cursor=0",
            extra_headers=[(b"authorization", f"Bearer {self.tokens[address]}".encode())],
        )))  # fmt: skip
        buffer: list[str] = []
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, ws.AcceptConnection):
                    self.connected += 1
                    if self.connected == clients:
                        self.all_connected.set()
                elif isinstance(event, ws.RejectConnection):
                    raise RuntimeError(f"stream refused for {address}: {event.status_code}")
                elif isinstance(event, ws.TextMessage):
                    buffer.append(event.data)
                    if event.message_finished:
                        self._delivered("".join(buffer))
                        buffer.clear()
                elif isinstance(event, ws.Ping):
                    await stream.send_all(conn.send(event.response()))
                elif isinstance(event, ws.CloseConnection):
                    return

    def _delivered(self, text: str) -> None:
        now = time.perf_counter()
        message = json.loads(text)
        if message.get("type") != "event":
            return
        event = message["event"]
        if event["type"] != "message.posted":
            return
        client_id = event["payload"]["message"].get("client_id")
        if client_id:
            self.received.append((client_id, now))

    async def sender(self, room: dict[str, Any], rate: float, seconds: float, seed: int) -> None:
        """Post to one room at *rate*/s on one keep-alive connection."""
        rng = random.Random(seed)
        stream = await self._connect()
        conn = h11.Connection(h11.CLIENT)
        interval = 1.0 / rate
        start = trio.current_time()
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
            else:
                self.refused += 1
            conn.start_next_cycle()
            n += 1

    @staticmethod
    async def _response(stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection) -> int:
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status


async def listen(bench: Bench, addresses: list[str], connected: Any, stop: Any) -> None:
    """One listener process: hold *addresses*' streams until told to stop."""
    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses):
            nursery.start_soon(bench.listener, address, len(addresses))
            if i % 50 == 49:
                await trio.sleep(0.05)  # do not stampede the accept queue
        with trio.fail_after(300):
            await bench.all_connected.wait()
        connected.put(len(addresses))
        while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing event, polled
            await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


def listener_process(port: int, cafile: str, setup: dict[str, Any], addresses: list[str],
                     connected: Any, stop: Any, out: str) -> None:  # fmt: skip
    context = ssl.create_default_context(cafile=cafile)
    bench = Bench(port, context, setup)
    trio.run(listen, bench, addresses, connected, stop)
    Path(out).write_text(json.dumps(bench.received))


async def send_all_rooms(bench: Bench, rate: float, seconds: float) -> float:
    per_room = rate / len(bench.rooms)
    started = time.perf_counter()
    async with trio.open_nursery() as senders:
        for i, room in enumerate(bench.rooms):
            senders.start_soon(bench.sender, room, per_room, seconds, i)
    return time.perf_counter() - started


def drive(port: int, cafile: Path, setup: dict[str, Any], clients: int, rate: float,
          seconds: float, work: Path, processes: int) -> dict[str, Any]:  # fmt: skip
    """Listeners in *processes* processes (so the client is not the bottleneck), senders here.

    Times are `time.perf_counter()` (CLOCK_MONOTONIC, shared by all processes).
    """
    mp = multiprocessing.get_context("fork")
    connected, stop = mp.Queue(), mp.Event()
    addresses = list(setup["tokens"])[:clients]
    workers = []
    for n in range(processes):
        out = str(work / f"received-{n}.json")
        worker = mp.Process(target=listener_process, args=(
            port, str(cafile), setup, addresses[n::processes], connected, stop, out))  # fmt: skip
        worker.start()
        workers.append((worker, out))
    for _ in range(processes):
        connected.get(timeout=300)
    time.sleep(1)
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    bench = Bench(port, context, setup)
    sending = trio.run(send_all_rooms, bench, rate, seconds)
    time.sleep(5)  # the last deliveries (bounded; a late one counts as missing)
    stop.set()
    received: list[tuple[str, float]] = []
    for worker, out in workers:
        worker.join(60)
        received += [tuple(pair) for pair in json.loads(Path(out).read_text())]
    latencies = sorted(t - bench.sent_at[c] for c, t in received if c in bench.sent_at)

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
        "sustained_msgs_per_s": bench.accepted / sending,
        "latency_ms_median": statistics.median(latencies) * 1000 if latencies else None,
        "latency_ms_p90": pct(0.90) if latencies else None,
        "latency_ms_p99": pct(0.99) if latencies else None,
        "latency_ms_max": latencies[-1] * 1000 if latencies else None,
        "post_ms_median": statistics.median(posts) * 1000,
        "post_ms_p99": posts[int(0.99 * len(posts))] * 1000,
    }


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
                           work, processes)  # fmt: skip
        result["peak_rss_mb"] = rss.peak / 1e6
    result.update(commit=_commit(), machine=_machine())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--port-offset", type=int, default=3100)
    parser.add_argument("--processes", type=int, default=2, help="listener processes")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    try:
        result = run(args.clients, args.rooms, args.rate, args.seconds, work, args.port_offset,
                     args.processes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


@pytest.mark.bench
def test_bench_chat(tmp_path: Path) -> None:
    result = run(100, 4, 20, 3, tmp_path, 3200)
    assert result["deliveries"] == result["expected_deliveries"]


if __name__ == "__main__":
    sys.exit(main())
