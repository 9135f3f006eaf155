"""The hub's PostgreSQL primary SIGKILLed mid-push, its synchronous standby promoted (issue 22).

A hub on PostgreSQL (`hub_database` in its config.json: a multi-host URL naming the
primary and the standby, ``target_session_attrs=read-write``) runs `edgebox run --role
hub` and two `edgebox hub worker` processes on the one sync port. Box A (a.go.th) and
box B (b.go.th), real `edgebox run` processes, share a room through it and their people
post into it without pause. In the middle of their pushes the primary is SIGKILLed with
every backend (a crash: no checkpoint, no goodbye), and the standby is promoted with
``pg_ctl promote`` as an operator would. Nothing restarts the hub: its processes find
the promoted server through the URL by themselves.

What must hold:

- every box converges: A and B show the same room, in the same order, every message
  once, none missing (each was stored on its box, which got a 201);
- the hub's order is one: on the promoted server the room's orders are 1..n, each
  once, and its messages in that order are exactly what both boxes show, so every
  event the hub answered "accepted" before the crash is there, once;
- while no server takes writes the hub answers 503 (never a 500, never a 200 for what
  did not commit), and its processes keep running;
- the enrolment register came through: a token issued before the crash enrols a third
  box after it.

It prints the failover's figures (docs/BENCHMARKS.md, issue 22): time from the
primary's death to the promoted standby taking writes, and to the first push a hub
process committed on it (read from the rows' commit timestamps).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.store.settings import Settings
from appliance.sync.hub.chat import PULL_PATH
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubUnavailable
from tests.appliance.sync.hub.test_worker_processes import _Worker
from tests.e2e.test_hub_crash import Api, Chatter, shared_room
from tests.e2e.uplink import FAST, PASSWORDS, SETTLE, enrol, wait_for
from tests.harness import RunningBox, edgebox, init_box, start_box
from tests.postgres import ReplicatedPostgres

pytestmark = pytest.mark.slow

#: Messages each side posts during the test, and the pause between two.
MESSAGES = 60
GAP = 0.08
#: Messages the hub has ordered before the primary dies (so pushes are under way).
BEFORE_KILL = 12


def _hub_rows(url: str, room_id: str) -> tuple[list[int], list[str]]:
    """The room at the hub: its events' orders, and its messages' texts in order."""
    import json

    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        orders = [
            int(r[0])
            for r in conn.execute(
                "SELECT room_order FROM chat.events WHERE room_id = %s"
                " AND room_order IS NOT NULL ORDER BY room_order",
                (room_id,),
            )
        ]
        texts = [
            str(json.loads(r[0]).get("text", ""))
            for r in conn.execute(
                "SELECT content FROM chat.messages WHERE room_id = %s AND deleted = 0"
                " ORDER BY room_order",
                (room_id,),
            )
        ]
    return orders, texts


async def _refused_for_now(edge: Path, hub_url: str) -> str:
    """A box's request while no server takes writes: the 503 it gets, as the box reads it."""
    client = HubClient(edge / "keys", hub_url, timeout=30)
    try:
        with pytest.raises(HubUnavailable) as unavailable:
            await client(PULL_PATH, {"after": 0, "limit": 1})
    finally:
        await client.aclose()
    return str(unavailable.value)


def _first_commit_after(url: str, moment: float) -> float | None:
    """The commit time (Unix seconds) of the first chat event committed after *moment*."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM min(pg_xact_commit_timestamp(xmin)))"
            " FROM chat.events WHERE pg_xact_commit_timestamp(xmin) > to_timestamp(%s)",
            (moment,),
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


@contextlib.contextmanager
def _hub_on(
    tmp_path: Path, url: str
) -> Iterator[tuple[RunningBox, list[_Worker], RunningBox, RunningBox]]:
    """The hub (main process and two workers) on *url*, and boxes A and B enrolled."""
    hub_data, a_data, b_data = tmp_path / "hub", tmp_path / "a", tmp_path / "b"
    init_box(hub_data, "hub.go.th", {})
    # As an operator sets it, so `edgebox hub token` and the workers read it too.
    settings = Settings(hub_data / "config.json")
    try:
        settings.update("config", {"role": "hub", "hub_database": url})
    finally:
        settings.close()
    init_box(a_data, "a.go.th", {"somchai@a.go.th": PASSWORDS["somchai@a.go.th"]})
    init_box(b_data, "b.go.th", {"dara@b.go.th": PASSWORDS["dara@b.go.th"]})
    hub = start_box(hub_data, extra=["--role", "hub"], env=FAST)
    workers: list[_Worker] = []
    boxes: list[RunningBox] = []
    try:
        workers += [_Worker(hub_data, hub.offset, n, url) for n in (1, 2)]
        enrol(hub, hub_data, a_data, "a.go.th")
        enrol(hub, hub_data, b_data, "b.go.th")
        boxes.append(start_box(a_data, env=FAST))
        boxes.append(start_box(b_data, env=FAST))
        yield hub, workers, boxes[0], boxes[1]
    finally:
        for box in reversed(boxes):
            box.stop()
            print(f"--- {box.data.name} ---", *box.output[-30:], sep="\n")
        for number, worker in enumerate(workers, 1):
            worker.stop(signal.SIGTERM)
            print(f"--- worker {number} ---", *worker.output[-30:], sep="\n")
        hub.stop()
        print("--- hub ---", *hub.output[-40:], sep="\n")


def test_the_hub_survives_a_postgresql_failover_and_every_box_converges(
    tmp_path: Path,
) -> None:
    pair = ReplicatedPostgres()
    try:
        _failover(tmp_path, pair)
    finally:
        print(pair.logs())
        pair.stop()


def _failover(tmp_path: Path, pair: ReplicatedPostgres) -> None:
    url = pair.new_database()
    with _hub_on(tmp_path, url) as (hub, workers, a, b), contextlib.ExitStack() as sessions:

        def api(box: RunningBox, address: str) -> Api:
            session = Api(box, address)
            sessions.callback(session.close)
            return session

        somchai, dara = api(a, "somchai@a.go.th"), api(b, "dara@b.go.th")
        room_id = shared_room(somchai, dara)

        # A third agency's token, issued on the primary before the crash.
        c_data = tmp_path / "c"
        init_box(c_data, "c.go.th", {})
        issued = edgebox("hub", "token", "--data", str(hub.data), "--agency", "c.go.th")
        token_c = issued.stdout.strip().splitlines()[-1]
        hub_url = f"https://127.0.0.1:{hub.port('hub-sync')}"

        talkers = [
            Chatter(api(a, "somchai@a.go.th"), room_id, "ก", MESSAGES, GAP),
            Chatter(api(b, "dara@b.go.th"), room_id, "ข", MESSAGES, GAP),
        ]
        for talker in talkers:
            talker.start()
        primary = pair.url_of(pair.primary_port, url.rpartition("/")[2].split("?")[0])
        wait_for(
            f"{BEFORE_KILL} messages ordered by the hub",
            lambda: len(_hub_rows(primary, room_id)[1]) >= BEFORE_KILL,
            timeout=SETTLE,
        )
        # The crash, mid-push: both boxes are posting and pushing.
        pair.kill_primary()
        # Its death: the last of its processes is gone (listing them on a busy
        # machine takes a while, and backends still commit until then).
        killed = time.time()
        still_posting = [t.is_alive() for t in talkers]
        # No server takes writes: a clear, retryable answer, not a 500 or a hang.
        answer = trio.run(_refused_for_now, a.data, hub_url)
        assert "store_unavailable" in answer, answer
        promoting = time.time()
        pair.promote()
        promoted = time.time()

        sent = ["เริ่ม"]
        for talker in talkers:
            talker.join(timeout=SETTLE)
            assert not talker.is_alive()
            assert talker.error is None, talker.error
            sent += talker.sent
        assert any(still_posting), "the kill came after the posting ended"

        def converged() -> list[str] | None:
            on_a, on_b = somchai.texts(room_id), dara.texts(room_id)
            return on_a if on_a == on_b and sorted(on_a) == sorted(sent) else None

        history = wait_for("one room history on A and B", converged)
        assert len(set(history)) == len(history) == len(sent)  # each once
        for prefix in ("ก", "ข"):  # each side's messages in the order posted
            mine = [t for t in history if t.startswith(prefix + " ")]
            assert mine == sorted(mine, key=lambda t: int(t.rsplit(" ", 1)[1])), prefix

        # The hub's one order, on the promoted server: 1..n, and the boxes show it.
        survivor = pair.url_of(pair.replica_port, url.rpartition("/")[2].split("?")[0])
        orders, hub_texts = _hub_rows(survivor, room_id)
        assert orders == list(range(1, len(orders) + 1))
        assert hub_texts == history

        # No hub process died, and none answered a store failure with a 500.
        assert hub.process.poll() is None
        for worker in workers:
            assert worker.process.poll() is None
        outputs = [*hub.output, *(line for w in workers for line in w.output)]
        assert not [line for line in outputs if "internal error ref=" in line]

        # The enrolment register came through the crash: the token enrols box C now.
        edgebox("enroll", "--data", str(c_data), "--hub", hub_url, "--token", token_c)

        first = _first_commit_after(survivor, killed)
        assert first is not None
        figures = {
            "503 checked, promotion started after the kill (s)": promoting - killed,
            "pg_ctl promote (s)": promoted - promoting,
            "first push committed after the kill (s)": first - killed,
            "first push after the promotion (s)": first - promoted,
            "messages": len(sent),
            "503 lines": sum("answering 503" in line for line in outputs),
        }
        print("failover:", {k: round(v, 2) for k, v in figures.items()})
