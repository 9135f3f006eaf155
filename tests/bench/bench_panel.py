"""Front-panel benchmark: the panel service's idle CPU and a link change's way to the display.

In one process: a box (``a.go.th``, made here) opened as `edgebox run` opens it, and
only its `PanelService`, talking to the real firmware under the MicroPython unix port
(`hw.twins.PanelSimulator`). Idle: the service runs at its defaults (refresh 0.5 s, the
queue every 2 s, heartbeat 2 s; health findings come from the box's monitor) for
``--idle`` seconds; the figure is this process's CPU time over that wall time (all
threads: the queue query runs in a worker) as a percentage of one core. The simulator's
own CPU is reported apart (on the box that is the panel's MCU, not the host). Latency:
the link monitor's state file is flipped between gin up and down ``--flips`` times, each
time timing until the display's RAM shows the new links page (the panel turns to it by
itself on "down"; on "up" it is still showing). Targets: idle < 1 % of one core, change
to display < 1 s.

    .venv/bin/python tests/bench/bench_panel.py [--idle 60] [--flips 10]

Not part of ``make test``; prints one JSON object, also written to
tests/bench/results/panel.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

# Runnable as a plain script: the repository root goes first on sys.path, so tests.* resolve.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio

from appliance.box import configured, init_box, open_box
from appliance.panel import BoxView, BoxViewSlot, PanelService
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import Lifecycle
from appliance.store.files import write_atomically
from appliance.sync.link import LINK_FILE, LinkReading, LinkSnapshot, LinkState
from hw.twins import PanelSimulator, build_firmware
from tests.bench.common import RESULTS_DIR, commit, cpu_seconds, machine, write_results
from tests.hw.conftest import render


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_link(data: Path, gin: LinkState) -> None:
    snapshot = LinkSnapshot(
        gin=LinkReading(target="smtp://central", state=gin, since=time.time()),
        international=LinkReading(),
        written_at=time.time(),
    )
    write_atomically(data / LINK_FILE, json.dumps(snapshot.to_json()).encode())


async def bench(work: Path, idle: float, flips: int) -> dict[str, object]:
    firmware = work / "firmware"
    version = build_firmware(firmware)
    data = work / "box"
    await init_box(data, "a.go.th", "a.go.th")
    (data / "run").mkdir(exist_ok=True)
    write_link(data, LinkState.UP)
    with PanelSimulator(work / "panel", firmware) as panel:
        config = configured(data, {"EDGEBOX_PANEL_DEVICE": str(panel.host_path)}, {})
        async with open_box(config) as box, trio.open_nursery() as nursery:
            lifecycle = Lifecycle(data, ensure_device(data))
            views = BoxViewSlot()
            service = PanelService(config, panel.host_path, lifecycle, views)
            views.current = BoxView(box.hostname, list, box.mailstore.outbound_groups)
            await nursery.start(service.serve)
            box_page = render(["EDGEBOX", "mail.a.go.th", "LAN", "127.0.0.1"])
            with trio.fail_after(60):
                while panel.display() != box_page:  # noqa: ASYNC110 (another process)
                    await trio.sleep(0.05)
            await trio.sleep(2)  # settle: the first disk check, the first queue query

            assert panel.process is not None
            cpu0, sim0, wall0 = process_cpu(), cpu_seconds(panel.process.pid), time.monotonic()
            await trio.sleep(idle)
            cpu1, sim1, wall1 = process_cpu(), cpu_seconds(panel.process.pid), time.monotonic()

            latencies = []
            for n in range(flips):
                gin = LinkState.DOWN if n % 2 == 0 else LinkState.UP
                expected = render(["LINKS", f"GIN: {gin.value}", "INTL: unknown", "Queue: 0"])
                start = time.monotonic()
                write_link(data, gin)
                with trio.fail_after(30):
                    while panel.display() != expected:  # noqa: ASYNC110 (another process)
                        await trio.sleep(0.005)
                latencies.append(time.monotonic() - start)
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    wall = wall1 - wall0
    latencies.sort()
    return {
        "firmware": version,
        "idle_seconds": round(wall, 1),
        "idle_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / wall, 3),
        "simulated_panel_cpu_percent": round(100 * (sim1 - sim0) / wall, 3),
        "link_change_to_display_s": {
            "flips": flips,
            "median": round(latencies[len(latencies) // 2], 3),
            "max": round(latencies[-1], 3),
        },
        "targets": {"idle_cpu_percent": 1.0, "link_change_to_display_s": 1.0},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--flips", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-panel-") as tmp:
        result = trio.run(bench, Path(tmp), args.idle, args.flips)
    result.update(commit=commit(), machine=machine())
    print(json.dumps(result, indent=2))
    write_results(RESULTS_DIR / "panel.json", result)


if __name__ == "__main__":
    main()
