"""What the hub's fair admission shows its operator: queue depth and each box's wait.

Two surfaces, both read from `RequestGate.figures` (appliance.sync.hub.request_gate)
and `HandshakeGate.figures` (appliance.sync.hub.handshake_gate):

- **/metrics** (`AdmissionCollector`, on the loopback metrics port of ``edgebox run``,
  appliance.health.metrics): requests running and waiting, boxes waiting, requests
  served and answered busy by reason, the measured service time and, per box (label
  ``box``), its last and longest wait, its requests running and waiting, and its busy
  answers;
- **``DATA/run/hub-admission-<pid>.json``**, rewritten every `REPORT_EVERY` seconds by
  every process that serves hub-sync (``edgebox run --role hub`` and each ``edgebox hub
  worker``: each admits its own requests), removed when it stops. `read_admission`
  adds up the fresh ones for ``edgebox status`` (`admission_lines`): the queue now, the
  boxes that waited longest, the TLS handshakes, and the limits, which count **per
  process**: every surface says so and multiplies them by the processes reporting
  (docs/hub.md, "When many boxes call at once", why they are not shared).

What this is not: the policy (appliance.sync.hub.fair_queue) or the box's side.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.store.files import write_atomically
from appliance.sync.clock import Clock
from appliance.sync.hub.handshake_gate import HandshakeGate
from appliance.sync.hub.request_gate import RequestGate

log = logging.getLogger("edgebox.hub")

#: Seconds between rewrites of a process's report file.
REPORT_EVERY: Final = 5.0
#: A report older than this is of a process that no longer runs (killed: no clean-up).
STALE_AFTER: Final = 6 * REPORT_EVERY
REPORT_PREFIX: Final = "hub-admission-"
#: Boxes `admission_lines` names, slowest first.
SLOWEST_SHOWN: Final = 5


class AdmissionCollector(Collector):
    """Gauges and counters of one process's `RequestGate`, read at scrape time."""

    def __init__(self, gate: RequestGate, handshakes: HandshakeGate | None = None) -> None:
        self.gate = gate
        self.handshakes = handshakes

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: the box labels come and go

    def collect(self) -> Iterator[Metric]:
        figures = self.gate.figures()
        requests = GaugeMetricFamily(
            "edgebox_hub_requests", "Box requests at the hub, running or waiting for their turn",
            labels=["state"],
        )  # fmt: skip
        requests.add_metric(["running"], figures.running)
        requests.add_metric(["waiting"], figures.waiting)
        yield requests
        yield GaugeMetricFamily(
            "edgebox_hub_boxes_waiting", "Boxes with a request waiting", value=figures.boxes_waiting
        )
        yield CounterMetricFamily(
            "edgebox_hub_requests_served", "Box requests admitted", value=figures.served
        )
        busy = CounterMetricFamily(
            "edgebox_hub_busy", "Requests answered 503 busy, by reason", labels=["reason"]
        )
        for reason, count in sorted(figures.busy.items()):
            busy.add_metric([reason], count)
        yield busy
        yield GaugeMetricFamily(
            "edgebox_hub_service_seconds", "Moving average of a request's run time",
            value=figures.service_time,
        )  # fmt: skip
        waits = GaugeMetricFamily(
            "edgebox_hub_box_wait_seconds", "A box's wait for its turn: its last, its longest",
            labels=["box", "which"],
        )  # fmt: skip
        box_requests = GaugeMetricFamily(
            "edgebox_hub_box_requests", "A box's requests running or waiting",
            labels=["box", "state"],
        )  # fmt: skip
        box_busy = CounterMetricFamily(
            "edgebox_hub_box_busy", "A box's requests answered 503 busy", labels=["box"]
        )
        for box, each in sorted(figures.boxes.items()):
            waits.add_metric([box, "last"], each.last_wait)
            waits.add_metric([box, "max"], each.max_wait)
            box_requests.add_metric([box, "running"], each.running)
            box_requests.add_metric([box, "waiting"], each.waiting)
            box_busy.add_metric([box], each.busy)
        yield waits
        yield box_requests
        yield box_busy
        # The bounds, labelled as what they are: this process's, not the hub's.
        policy = self.gate.policy
        limits = GaugeMetricFamily(
            "edgebox_hub_admission_limit", "A bound of the hub's admission, in this process",
            labels=["limit", "scope"],
        )  # fmt: skip
        limits.add_metric(["requests", "process"], policy.capacity)
        limits.add_metric(["box_requests", "process"], policy.per_box)
        limits.add_metric(["queue", "process"], policy.max_queue)
        if self.handshakes is not None:
            limits.add_metric(["handshakes", "process"], self.handshakes.policy.limit)
        yield limits
        if self.handshakes is not None:
            yield from _handshake_metrics(self.handshakes)


def _handshake_metrics(gate: HandshakeGate) -> Iterator[Metric]:
    figures = gate.figures()
    now = GaugeMetricFamily(
        "edgebox_hub_handshakes", "TLS handshakes of boxes, running or waiting for a slot",
        labels=["state"],
    )  # fmt: skip
    now.add_metric(["running"], figures.running)
    now.add_metric(["waiting"], figures.waiting)
    yield now
    ended = CounterMetricFamily(
        "edgebox_hub_handshakes", "TLS handshakes by outcome (shed: closed before TLS)",
        labels=["outcome"],
    )  # fmt: skip
    ended.add_metric(["done"], figures.done)
    ended.add_metric(["failed"], figures.failed)
    ended.add_metric(["shed_queue_full"], figures.shed_queue_full)
    ended.add_metric(["shed_waited_too_long"], figures.shed_waited_too_long)
    yield ended


def report_path(run_dir: Path, pid: int | None = None) -> Path:
    """This process's report file (or *pid*'s)."""
    return Path(run_dir) / f"{REPORT_PREFIX}{pid or os.getpid()}.json"


def admission_report(
    gate: RequestGate, now: float, handshakes: HandshakeGate | None = None
) -> dict[str, Any]:
    """The JSON document of *gate*'s (and *handshakes*') figures at Unix time *now*."""
    figures, policy = gate.figures(), gate.policy
    report: dict[str, Any] = {
        "written_at": now,
        "pid": os.getpid(),
        "capacity": policy.capacity,
        "per_box": policy.per_box,
        "max_wait": policy.max_wait,
        "running": figures.running,
        "waiting": figures.waiting,
        "boxes_waiting": figures.boxes_waiting,
        "served": figures.served,
        "busy": figures.busy,
        "service_time": round(figures.service_time, 4),
        "longest_wait": round(figures.max_wait, 3),
        "boxes": {
            box: {
                "running": each.running,
                "waiting": each.waiting,
                "served": each.served,
                "busy": each.busy,
                "last_wait": round(each.last_wait, 3),
                "max_wait": round(each.max_wait, 3),
                "mean_wait": round(each.total_wait / each.served, 3) if each.served else 0.0,
            }
            for box, each in sorted(figures.boxes.items())
        },
    }
    if handshakes is not None:
        shaken = handshakes.figures()
        report["handshakes"] = {
            "limit": shaken.limit,
            "running": shaken.running,
            "waiting": shaken.waiting,
            "done": shaken.done,
            "failed": shaken.failed,
            "shed_queue_full": shaken.shed_queue_full,
            "shed_waited_too_long": shaken.shed_waited_too_long,
            "longest_wait": round(shaken.longest_wait, 3),
        }
    return report


async def keep_reporting(
    gate: RequestGate,
    run_dir: Path,
    clock: Clock,
    every: float = REPORT_EVERY,
    *,
    handshakes: HandshakeGate | None = None,
) -> None:
    """Rewrite this process's report every *every* seconds until cancelled; then remove it."""
    path = report_path(run_dir)
    try:
        while True:
            report = admission_report(gate, clock.now(), handshakes)
            body = json.dumps(report, sort_keys=True).encode()
            try:
                # fsync'ed: off the event loop, which answers the boxes meanwhile.
                await trio.to_thread.run_sync(_write, path, body)
            except OSError as exc:
                log.warning("cannot write %s: %s", path, exc.strerror or exc)
            await trio.sleep(every)
    finally:
        path.unlink(missing_ok=True)


def _write(path: Path, body: bytes) -> None:
    write_atomically(path, body, mode=0o644)


@dataclass
class AdmissionSummary:
    """Every running hub process's admission, added up (`read_admission`)."""

    processes: int = 0
    running: int = 0
    waiting: int = 0
    boxes_waiting: int = 0
    served: int = 0
    busy: dict[str, int] = field(default_factory=dict)
    #: (box, longest wait in seconds, its busy answers), slowest first.
    slowest: list[tuple[str, float, int]] = field(default_factory=list)
    #: Each process's bounds added up: the hub's true totals (they count per process).
    capacity: int = 0
    per_box: set[int] = field(default_factory=set)
    #: TLS handshakes, added up over the processes that report them (`handshake_gate`).
    handshakes: dict[str, float] = field(default_factory=dict)


def read_admission(run_dir: Path, now: float) -> AdmissionSummary | None:
    """Add up the fresh report files under *run_dir*; None if no hub process wrote one."""
    summary = AdmissionSummary()
    worst: dict[str, tuple[float, int]] = {}
    for path in sorted(Path(run_dir).glob(f"{REPORT_PREFIX}*.json")):
        try:
            report = json.loads(path.read_text("utf-8"))
            if not isinstance(report, dict) or now - float(report["written_at"]) > STALE_AFTER:
                continue
            summary.processes += 1
            for name in ("running", "waiting", "boxes_waiting", "served"):
                setattr(summary, name, getattr(summary, name) + int(report[name]))
            summary.capacity += int(report.get("capacity", 0))
            summary.per_box.add(int(report.get("per_box", 0)))
            for name, value in dict(report.get("handshakes") or {}).items():
                if name == "longest_wait":
                    summary.handshakes[name] = max(summary.handshakes.get(name, 0.0), value)
                else:
                    summary.handshakes[name] = summary.handshakes.get(name, 0) + int(value)
            for reason, count in dict(report["busy"]).items():
                summary.busy[reason] = summary.busy.get(reason, 0) + int(count)
            for box, each in dict(report["boxes"]).items():
                wait, busy = worst.get(box, (0.0, 0))
                worst[box] = (max(wait, float(each["max_wait"])), busy + int(each["busy"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours: the next look sees the new one
    if not summary.processes:
        return None
    ranked = sorted(worst.items(), key=lambda item: (-item[1][0], item[0]))
    summary.slowest = [(box, wait, busy) for box, (wait, busy) in ranked[:SLOWEST_SHOWN]]
    return summary


def admission_lines(summary: AdmissionSummary) -> list[str]:
    """``edgebox status`` lines of a hub's admission (English, like the other figures)."""
    busy = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.busy.items()))
    lines = [
        f"hub admission ({summary.processes} process(es)): {summary.running} running,"
        f" {summary.waiting} waiting from {summary.boxes_waiting} box(es);"
        f" served {summary.served}, answered busy: {busy or 'none'}",
    ]
    if summary.slowest:
        worst = ", ".join(f"{box} {wait:.1f} s" for box, wait, _ in summary.slowest)
        lines.append(f"longest waits for a turn: {worst}")
    if summary.capacity:
        per_box = "/".join(str(n) for n in sorted(summary.per_box))
        lines.append(
            f"limits count per process: {summary.capacity} requests running at most over"
            f" {summary.processes} process(es) (hub_requests each), {per_box} per box in each"
        )
    shaken = summary.handshakes
    if shaken:
        shed = int(shaken.get("shed_queue_full", 0) + shaken.get("shed_waited_too_long", 0))
        lines.append(
            f"TLS handshakes: {int(shaken.get('running', 0))} running of"
            f" {int(shaken.get('limit', 0))} at most (hub_handshakes per process),"
            f" {int(shaken.get('waiting', 0))} waiting; done {int(shaken.get('done', 0))},"
            f" failed {int(shaken.get('failed', 0))}, shed {shed},"
            f" longest wait {shaken.get('longest_wait', 0.0):.1f} s"
        )
    return lines


__all__ = [
    "REPORT_EVERY",
    "AdmissionCollector",
    "AdmissionSummary",
    "admission_lines",
    "admission_report",
    "keep_reporting",
    "read_admission",
    "report_path",
]
