"""Chat push micro-benchmark: what one pushed event costs on the wire and at the hub.

The hub's half of the sync catch-up (bench_catchup.py) without the link: box A of
``a.go.th`` holds *messages* chat posts (the catch-up's rooms and texts, `chat_plan`)
waiting for the hub; they are pushed in batches of 200 straight into the hub's push
route (`ChatHub.push`) by the box's own `ChatReplicator.push`, through JSON both ways
as the HTTPS listener would, and gzip'ed at the level the hub client uses, to count
the bytes the line would carry.

Figures (on a shared machine read the CPU ones, not wall time):

- wire bytes per event: the push request as JSON, and gzip'ed; the answer likewise;
- chat text bytes per event (what was typed);
- hub events/s and CPU µs per event (process CPU: the route, the writer thread, JSON).

    .venv/bin/python tests/bench/bench_chat_push.py --messages 4000
    .venv/bin/python tests/bench/bench_chat_push.py --messages 4000 --profile /tmp/push.prof

Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_catchup import USERS, chat_plan, post_plan
from tests.bench.common import commit, passwords_unhashed

ROOMS = 80
BATCH = 200
GZIP_LEVEL = 1


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def run(messages: int, profile: Path | None) -> dict[str, Any]:
    from appliance.box import configured, init_box, open_box
    from appliance.sync.chat import ChatReplicator
    from appliance.sync.clock import ManualClock
    from appliance.sync.hub.chat import ChatHub
    from appliance.sync.status import SyncStatus
    from appliance.sync.transport import Peer

    with tempfile.TemporaryDirectory(prefix="edgebox-push-") as tmp:
        root = Path(tmp)
        await init_box(root / "hub", "hub.go.th")
        await init_box(root / "a", "a.go.th")
        async with (
            open_box(configured(root / "hub", {}, {})) as hub,
            open_box(configured(root / "a", {}, {})) as a,
        ):
            # Set-up only: nobody signs in, so skip scrypt for 500 users twice.
            with passwords_unhashed():
                for box in (hub, a):
                    if await box.directory.agency("a.go.th") is None:
                        await box.directory.add_agency("a.go.th", "กรม ก")
                    for n in range(USERS):
                        await box.directory.add_user(
                            f"user{n:03d}@a.go.th", password="x" * 16, name_th=f"ผู้ใช้ {n}"
                        )
            layout, posts = chat_plan(7, ROOMS, messages)
            # Only a.go.th people: this bench has no b.go.th.
            layout = [[m for m in ms if m.endswith("@a.go.th")] for ms in layout]
            started = time.monotonic()
            text_bytes = await post_plan(a, layout, posts, tasks=32)
            print(f"posted {messages} in {time.monotonic() - started:.0f} s", flush=True)

            route = ChatHub(hub.chat, hub.directory).push
            peer = Peer(a.identity.box_id, "a.go.th")
            figures = {"json_req": 0, "gzip_req": 0, "json_ans": 0, "gzip_ans": 0}
            hub_time = {"cpu": 0.0, "wall": 0.0, "writer": 0.0}
            profiler = cProfile.Profile() if profile else None
            writer_profiler = cProfile.Profile() if profile else None
            # The hub chat database's writer thread, where accept_pushed's job runs:
            # its own CPU time (thread_time), and its profile if asked for.
            db = hub.chat._db
            commit = db._commit_batch

            def measured(batch: Any) -> None:
                started = time.thread_time()
                try:
                    if writer_profiler is not None:
                        writer_profiler.runcall(commit, batch)
                    else:
                        commit(batch)
                finally:
                    hub_time["writer"] += time.thread_time() - started

            db._commit_batch = measured  # type: ignore[method-assign]

            async def link(path: str, body: Any) -> Any:
                """A `HubCall` straight into the hub's push route, counting the bytes."""
                raw = _dumps(body)
                figures["json_req"] += len(raw)
                figures["gzip_req"] += len(gzip.compress(raw, GZIP_LEVEL))
                cpu, wall = time.process_time(), time.perf_counter()
                if profiler:
                    profiler.enable()
                answer = await route(peer, json.loads(raw))
                out = _dumps(answer)
                if profiler:
                    profiler.disable()
                hub_time["cpu"] += time.process_time() - cpu
                hub_time["wall"] += time.perf_counter() - wall
                figures["json_ans"] += len(out)
                figures["gzip_ans"] += len(gzip.compress(out, GZIP_LEVEL))
                return json.loads(out)

            clock = ManualClock()
            replicator = ChatReplicator(
                a.chat, a.identity.domain, link, SyncStatus(root / "a", clock), clock, batch=BATCH
            )
            events, done = await replicator.push()
            assert done
            if profiler and profile:
                profiler.dump_stats(str(profile))
                assert writer_profiler is not None
                writer_profiler.dump_stats(str(profile) + ".writer")
    hub_cpu, hub_wall = hub_time["cpu"], hub_time["wall"]
    result = {
        "events": events,
        "text_bytes_per_event": round(text_bytes / max(1, events), 1),
        **{f"{k}_bytes_per_event": round(v / max(1, events), 1) for k, v in figures.items()},
        "hub_events_per_s": round(events / hub_wall, 1),
        "hub_cpu_us_per_event": round(hub_cpu / events * 1e6, 1),
        # The writer thread alone (all of the hub's chat writes while pushing).
        "hub_writer_cpu_us_per_event": round(hub_time["writer"] / events * 1e6, 1),
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the hub's part")
    args = parser.parse_args(argv)
    result = {"commit": commit(), **trio.run(run, args.messages, args.profile)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
