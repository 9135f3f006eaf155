"""Health benchmark: the idle cost of the health checks, and the demo box's idle RSS.

What it measures:

1. **One health round, in process**: `HealthMonitor.check_now` with the real psutil
   readings on a freshly initialised box, repeated ``--rounds`` times, CPU time per
   round (``time.process_time``), plus one `/metrics` render (a scrape). The idle cost
   is that CPU time divided by the default ``health_interval`` (30 s; and by 15 s for a
   Prometheus scrape), as a share of one core. Target: under 1 %.
2. **The demo box at idle**: a real `edgebox run --demo` on loopback, left alone for
   ``--window`` seconds after it is ready (every service running: health, link monitor,
   indexer, ...): its CPU time over the window as a share of one core, and its RSS at
   the end. This is the whole box at rest, health included.

What it is not: a load test, or part of ``make test`` (collected only with ``-m bench``).

    .venv/bin/python tests/bench/bench_health.py [--rounds 200] [--window 60]

Results are printed and written to tests/bench/results/health.json.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil
import pytest
import trio

from appliance.box import init_box, open_box
from appliance.config import Config, load_config
from appliance.health.metrics import SnapshotCollector
from appliance.health.monitor import HealthMonitor
from appliance.health.readings import PsutilReadings
from tests.bench.common import RESULTS_DIR, commit, write_results
from tests.harness import start_box

RESULTS = RESULTS_DIR / "health.json"
SCRAPE_INTERVAL = 15.0


async def _rounds(data: Path, rounds: int) -> dict[str, Any]:
    await init_box(data, "bench.go.th")
    config: Config = load_config(data)
    async with open_box(config) as box:
        monitor = HealthMonitor(box.config, box.mailstore.outbound_groups, PsutilReadings())
        box.metrics.attach(SnapshotCollector(monitor.latest, streams=box.chat.fanout.stream_count))
        await monitor.check_now()  # warm up: imports, first psutil reads
        box.metrics.render()
        began = time.process_time()
        for _ in range(rounds):
            await monitor.check_now()
        round_cpu = (time.process_time() - began) / rounds
        began = time.process_time()
        for _ in range(rounds):
            box.metrics.render()
        scrape_cpu = (time.process_time() - began) / rounds
        interval = config.health_interval
    return {
        "rounds": rounds,
        "health_interval_s": interval,
        "cpu_ms_per_round": round(round_cpu * 1000, 3),
        "cpu_ms_per_scrape": round(scrape_cpu * 1000, 3),
        "idle_share_of_one_core_pct": round(100 * round_cpu / interval, 4),
        "with_scrapes_every_15s_pct": round(
            100 * (round_cpu / interval + scrape_cpu / SCRAPE_INTERVAL), 4
        ),
    }


def _demo_idle(root: Path, window: float) -> dict[str, Any]:
    box = start_box(root / "demo", demo=True)
    try:
        process = psutil.Process(box.process.pid)
        time.sleep(10)  # start-up work (demo users, first link probes, reconcile) settles
        before = process.cpu_times()
        wall = time.monotonic()
        time.sleep(window)
        after = process.cpu_times()
        elapsed = time.monotonic() - wall
        rss = process.memory_info().rss
        cpu = (after.user - before.user) + (after.system - before.system)
    finally:
        box.stop()
    return {
        "window_s": round(elapsed, 1),
        "cpu_share_of_one_core_pct": round(100 * cpu / elapsed, 3),
        "rss_mib": round(rss / 1024**2, 1),
    }


def run(rounds: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        health = trio.run(_rounds, Path(tmp) / "box", rounds)
        idle = _demo_idle(Path(tmp), window)
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "load_before": list(psutil.getloadavg()),
        },
        "health": health,
        "demo_idle": idle,
    }


def report(result: dict[str, Any]) -> None:
    health, idle = result["health"], result["demo_idle"]
    print(f"health round: {health['cpu_ms_per_round']} ms CPU every "
          f"{health['health_interval_s']:.0f} s = {health['idle_share_of_one_core_pct']} % "
          f"of one core (target < 1 %)")  # fmt: skip
    print(f"  with a /metrics scrape every 15 s ({health['cpu_ms_per_scrape']} ms each): "
          f"{health['with_scrapes_every_15s_pct']} %")  # fmt: skip
    print(f"demo box idle for {idle['window_s']} s: {idle['cpu_share_of_one_core_pct']} % "
          f"of one core, RSS {idle['rss_mib']} MiB")  # fmt: skip


@pytest.mark.bench
def test_bench_health() -> None:
    result = run(rounds=100, window=30.0)
    report(result)
    assert result["health"]["idle_share_of_one_core_pct"] < 1.0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    outcome = run(args.rounds, args.window)
    report(outcome)
    write_results(RESULTS, outcome)
