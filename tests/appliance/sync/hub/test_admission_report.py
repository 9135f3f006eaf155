"""What the operator sees of the hub's fair admission: /metrics, the report files, status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from appliance.sync.clock import ManualClock
from appliance.sync.hub.admission_report import (
    STALE_AFTER,
    AdmissionCollector,
    admission_lines,
    admission_report,
    keep_reporting,
    read_admission,
    report_path,
)
from appliance.sync.hub.fair_queue import AdmissionPolicy, Ticket
from appliance.sync.hub.request_gate import RequestGate

NOW = 1_800_000_000.0


async def _busy_gate() -> RequestGate:
    """A gate where box a ran, b waited 2 s and runs now, and c was told busy."""
    gate = RequestGate(AdmissionPolicy(capacity=1, max_wait=3))
    a, b, c = (gate.queue.arrive(box, at) for box, at in (("a", 0.0), ("b", 0.0), ("c", 0.5)))
    assert isinstance(a, Ticket)
    assert isinstance(b, Ticket)
    assert isinstance(c, Ticket)
    assert gate.queue.withdraw(c, 3.5) is not None
    assert gate.queue.finish(a, 2.0) == [b]
    return gate


async def test_metrics_show_the_queue_and_each_box_wait() -> None:
    registry = CollectorRegistry()
    registry.register(AdmissionCollector(await _busy_gate()))
    text = generate_latest(registry).decode()
    assert 'edgebox_hub_requests{state="running"} 1.0' in text
    assert 'edgebox_hub_requests{state="waiting"} 0.0' in text
    assert 'edgebox_hub_box_wait_seconds{box="b",which="max"} 2.0' in text
    assert 'edgebox_hub_box_busy_total{box="c"} 1.0' in text
    assert 'edgebox_hub_busy_total{reason="waited_too_long"} 1.0' in text
    assert "edgebox_hub_requests_served_total 2.0" in text


async def test_status_adds_up_the_fresh_reports_of_every_process(tmp_path: Path) -> None:
    gate = await _busy_gate()
    mine = admission_report(gate, NOW)
    assert mine["boxes"]["b"]["max_wait"] == 2.0
    assert mine["busy"]["waited_too_long"] == 1
    other = json.loads(json.dumps(mine))
    other["boxes"] = {"z": {**mine["boxes"]["b"], "max_wait": 9.5, "busy": 2}}
    other["served"], other["waiting"] = 10, 4
    stale = {**other, "written_at": NOW - STALE_AFTER - 1, "served": 1000}
    for pid, report in ((1, mine), (2, other), (3, stale)):
        report_path(tmp_path, pid).write_text(json.dumps(report))
    (tmp_path / "hub-admission-4.json").write_text("{half a fi")
    summary = read_admission(tmp_path, NOW + 1)
    assert summary is not None
    assert summary.processes == 2
    assert (summary.served, summary.waiting) == (12, 4)
    assert [box for box, _, _ in summary.slowest][:2] == ["z", "b"]
    lines = admission_lines(summary)
    assert lines[0].startswith("hub admission (2 process(es)): 2 running, 4 waiting")
    assert "waited_too_long 2" in lines[0]
    assert lines[1] == "longest waits for a turn: z 9.5 s, b 2.0 s, a 0.0 s, c 0.0 s"
    assert read_admission(tmp_path / "none", NOW) is None


async def test_a_serving_process_keeps_its_report_fresh_and_removes_it(tmp_path: Path) -> None:
    gate = await _busy_gate()
    clock = ManualClock(NOW)
    path = report_path(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_reporting, gate, tmp_path, clock, 0.05)
        with trio.fail_after(10):
            while not path.exists():  # noqa: ASYNC110 - a thread writes it
                await trio.sleep(0.02)
        assert json.loads(path.read_text())["pid"] == os.getpid()
        summary = read_admission(tmp_path, NOW)
        assert summary is not None
        assert summary.running == 1
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_every_surface_says_the_limits_are_per_process_and_shows_the_handshakes(
    tmp_path: Path,
) -> None:
    """Two processes of hub_requests 1: status says 2 at most over 2, and adds handshakes."""
    import ssl

    from appliance.sync.hub.handshake_gate import HandshakeGate, HandshakePolicy

    gate = await _busy_gate()
    handshakes = HandshakeGate(ssl.create_default_context(), HandshakePolicy(limit=3))
    handshakes.done, handshakes.shed_waited_too_long, handshakes.longest_wait = 40, 2, 3.9
    registry = CollectorRegistry()
    registry.register(AdmissionCollector(gate, handshakes))
    text = generate_latest(registry).decode()
    assert 'edgebox_hub_admission_limit{limit="requests",scope="process"} 1.0' in text
    assert 'edgebox_hub_admission_limit{limit="handshakes",scope="process"} 3.0' in text
    assert 'edgebox_hub_handshakes_total{outcome="shed_waited_too_long"} 2.0' in text
    assert 'edgebox_hub_handshakes{state="running"} 0.0' in text
    for pid in (1, 2):
        report = admission_report(gate, NOW, handshakes)
        report_path(tmp_path, pid).write_text(json.dumps(report))
    summary = read_admission(tmp_path, NOW)
    assert summary is not None
    lines = admission_lines(summary)
    assert lines[2] == (
        "limits count per process: 2 requests running at most over 2 process(es)"
        " (hub_requests each), 2 per box in each"
    )
    assert lines[3] == (
        "TLS handshakes: 0 running of 6 at most (hub_handshakes per process), 0 waiting;"
        " done 80, failed 0, shed 4, longest wait 3.9 s"
    )
