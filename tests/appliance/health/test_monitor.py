"""The health monitor on a real data directory, `/metrics` on loopback, promtool."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.box import Box
from appliance.config import DEV_PORTS, Config, load_config
from appliance.health import Level
from appliance.health.metrics import SnapshotCollector
from appliance.health.metrics_service import MetricsService
from appliance.health.monitor import HealthMonitor
from appliance.health.readings import DiskReading, FakeReadings, Temperature
from appliance.health.snapshot import ServiceState
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.sync.status import SyncStatus
from tests.appliance.conftest import BoxFactory
from tests.harness import require_tool

GiB = 1024**3
DOMAIN = "health.go.th"


def _metrics_on_a_free_port(data: Path) -> Config:
    # Offset cancels the metrics dev port: the listener binds port 0 and reports its port.
    return dataclasses.replace(load_config(data), port_offset=-DEV_PORTS["metrics"])


@pytest.fixture
async def box(make_box: BoxFactory) -> Box:
    return await make_box(DOMAIN, config=_metrics_on_a_free_port)


def fake_machine() -> FakeReadings:
    return FakeReadings(
        cpu=3.0,
        default_disk=DiskReading(total=100 * GiB, free=1 * GiB),
        sensors={"coretemp/Package id 0": Temperature(45.0, 80.0, 100.0)},
        rss={4242: 150 * 1024**2},
    )


def states() -> dict[str, ServiceState]:
    return {"imap": ServiceState(True, 0, ("127.0.0.1:2143",)), "search-index": ServiceState(True)}


async def test_a_round_judges_the_box_and_the_panel_reads_the_first_problem(box: Box) -> None:
    readings = fake_machine()
    monitor = HealthMonitor(
        box.config, box.mailstore.outbound_groups, readings, service_states=states, interval=30.0
    )
    assert monitor.findings() == []
    assert monitor.first_problem() is None

    findings = await monitor.check_now()

    by_check = {f.check: f for f in findings}
    assert by_check["imap"].level is Level.OK
    assert by_check["disk"].level is Level.WARN  # 1 GiB < the 2 GiB warning
    assert monitor.level() is Level.WARN
    problem = monitor.first_problem()
    assert problem is not None
    assert problem.check == "disk"
    # The clock check's memory of the latest time seen survives a restart.
    assert (box.config.data_dir / "run" / "clock.json").exists()


async def test_the_monitor_runs_on_its_interval(
    box: Box, autojump_clock: trio.testing.MockClock
) -> None:
    monitor = HealthMonitor(
        box.config,
        box.mailstore.outbound_groups,
        fake_machine(),
        service_states=states,
        interval=30.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        await monitor.wait_for_round()
        began = trio.current_time()
        await monitor.wait_for_round()
        assert trio.current_time() - began == pytest.approx(30.0)
        nursery.cancel_scope.cancel()
    assert monitor.rounds >= 2


async def _queue(box: Box, urgency: str) -> None:
    trace = Trace(helo="pc.health.go.th", client_ip="192.0.2.7", protocol="ESMTPSA")
    content = f"X-Urgency: {urgency}\r\nSubject: t\r\n\r\nbody\r\n".encode()
    envelope = Envelope(
        sender=f"a@{DOMAIN}", recipients=[Recipient("r@far.example", local=False)], trace=trace
    )
    await box.delivery.deliver(envelope, content)


async def _scrape(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_metrics_on_loopback_cover_every_area_and_promtool_accepts_them(
    box: Box, nursery: trio.Nursery
) -> None:
    SyncStatus(box.config.data_dir).success("mailbox")
    await _queue(box, "ด่วนที่สุด")
    monitor = HealthMonitor(
        box.config, box.mailstore.outbound_groups, fake_machine(), service_states=states
    )
    box.metrics.attach(SnapshotCollector(monitor.latest, streams=lambda: 2))
    box.metrics.smtp_messages.labels("mx", "accepted").inc()
    box.metrics.imap_commands.labels("SELECT").inc()
    box.metrics.chat_posts.labels("created").inc()
    await monitor.check_now()
    [address] = await nursery.start(MetricsService(box.config, box.metrics).serve)
    host, _, port = address.rpartition(":")
    assert host == "127.0.0.1", "metrics never listen beyond loopback"

    reply = await _scrape(int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/plain; version=0.0.4" in head
    text = body.decode()
    for name in (
        'edgebox_smtp_messages_total{port="mx",result="accepted"} 1.0',
        'edgebox_imap_commands_total{command="SELECT"} 1.0',
        'edgebox_chat_posts_total{result="created"} 1.0',
        "edgebox_chat_streams 2.0",
        'edgebox_outbound_queue_recipients{urgency="most_urgent"} 1.0',
        'edgebox_outbound_queue_recipients{urgency="normal"} 0.0',
        'edgebox_link_up{link="gin"} -1.0',
        'edgebox_sync_lag_seconds{stream="mailbox"}',
        "edgebox_cpu_busy_ratio 0.03",
        "edgebox_data_volume_free_bytes 1.073741824e+09",
        'edgebox_temperature_celsius{sensor="coretemp/Package id 0"} 45.0',
        'edgebox_health_check_level{check="disk",subject="disk"} 1.0',
        'edgebox_health_check_level{check="services",subject="imap"} 0.0',
        "edgebox_disk_guard_refusing 0.0",
    ):
        assert name in text, name
    promtool = require_tool("promtool")
    checked = await trio.run_process(
        [promtool, "check", "metrics"], stdin=body, capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr

    missing = await _scrape(int(port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404")
    post = await _scrape(
        int(port), b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert post.startswith(b"HTTP/1.1 405")
    garbage = await _scrape(int(port), b"\x00\x01 not http\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")
    # The listener survived all of that.
    again = await _scrape(int(port), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200")


@settings(max_examples=150, deadline=None)
@given(request=st.binary(max_size=600))
def test_any_bytes_get_an_answer_or_a_close_never_a_crash(request: bytes) -> None:
    from appliance.health.metrics import BoxMetrics

    service = MetricsService(load_config(Path("/nonexistent")), BoxMetrics())

    async def main() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.handle, server)
            await client.send_all(request)
            await client.send_eof()
            chunks = []
            while chunk := await client.receive_some(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    reply = trio.run(main)
    assert reply == b"" or re.match(rb"HTTP/1\.1 (200|400|404|405) ", reply), reply[:80]
