"""Prometheus metrics: what the services count, and what the health monitor last read.

Where: a separate listener on loopback only (``127.0.0.1``, dev port 7464 plus the
offset), never on the HTTPS port. The console's sign-in is a browser session with CSRF
tokens that a scraper cannot hold, and a second kind of credential on the HTTPS port
would be one more thing to leak; a loopback port needs none, since only processes on
the box (a local Prometheus agent or node exporter's textfile collector) or a
technician's SSH tunnel can reach it. docs/health.md says the same for operators.

Two kinds of metric:

- counters the services bump as things happen (`BoxMetrics`): mail accepted and
  refused per SMTP port, IMAP sessions and commands, chat posts;
- gauges read at scrape time from the latest `Snapshot` of the `HealthMonitor`
  (`SnapshotCollector`): the outbound queue by urgency, link state, sync lag, CPU,
  memory, disk, temperatures, resident memory, each check's level, and the disk
  guard's state. Scraping never does I/O of its own.

Each box has its own `CollectorRegistry`, so several boxes in one test process do not
share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.health import Finding
from appliance.health.snapshot import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

URGENCY_NAMES = ("normal", "urgent", "very_urgent", "most_urgent")


class BoxMetrics:
    """The counters services bump; one per box."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.smtp_messages = Counter(
            "edgebox_smtp_messages", "Messages at the end of SMTP DATA, by port and result",
            ["port", "result"], registry=r,
        )  # fmt: skip
        self.imap_sessions = Gauge(
            "edgebox_imap_sessions", "Open IMAP connections", ["listener"], registry=r
        )
        self.imap_commands = Counter(
            "edgebox_imap_commands", "IMAP commands handled, by command", ["command"], registry=r
        )
        self.chat_posts = Counter(
            "edgebox_chat_posts", "Chat messages posted, by result", ["result"], registry=r
        )
        self.storage_refusals = Counter(
            "edgebox_storage_refusals",
            "New data refused because the data volume is at its reserve, by service",
            ["service"],
            registry=r,
        )

    def attach(self, collector: Collector) -> None:
        """Add a collector read at scrape time (the health monitor's)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The text exposition format of everything registered."""
        return generate_latest(self.registry)


class SnapshotCollector(Collector):
    """Gauges from the health monitor's latest snapshot and findings."""

    def __init__(
        self,
        latest: Callable[[], tuple[Snapshot | None, list[Finding]]],
        streams: Callable[[], int] = lambda: 0,
        refusing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.latest = latest
        self.streams = streams
        self.refusing = refusing

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: its families depend on the snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot, findings = self.latest()
        yield _gauge("edgebox_chat_streams", "Open chat event streams (WebSockets)",
                     self.streams())  # fmt: skip
        yield _gauge("edgebox_disk_guard_refusing",
                     "1 while new data is refused for lack of disk space",
                     int(self.refusing()))  # fmt: skip
        if snapshot is None:
            return
        yield from _machine(snapshot)
        yield from _queue(snapshot)
        yield from _link(snapshot)
        levels = GaugeMetricFamily(
            "edgebox_health_check_level", "Each finding's level: 0 ok, 1 warn, 2 error",
            labels=["check", "subject"],
        )  # fmt: skip
        for finding in findings:
            levels.add_metric([_check_of(finding), finding.check], int(finding.level))
        yield levels


def _check_of(finding: Finding) -> str:
    # The services check names each finding after its service.
    known = {"disk", "memory", "temperature", "clock", "queue", "link", "services"}
    return finding.check if finding.check in known else "services"


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _machine(snapshot: Snapshot) -> Iterator[Metric]:
    if snapshot.cpu_percent is not None:
        yield _gauge("edgebox_cpu_busy_ratio", "Busy share of all cores, 0-1",
                     snapshot.cpu_percent / 100)  # fmt: skip
    if snapshot.memory is not None:
        yield _gauge("edgebox_memory_total_bytes", "Memory of the machine", snapshot.memory.total)
        yield _gauge("edgebox_memory_available_bytes", "Memory available to new allocations",
                     snapshot.memory.available)  # fmt: skip
    if snapshot.disk is not None:
        yield _gauge("edgebox_data_volume_size_bytes", "Size of the data volume",
                     snapshot.disk.total)  # fmt: skip
        yield _gauge("edgebox_data_volume_free_bytes", "Free bytes on the data volume",
                     snapshot.disk.free)  # fmt: skip
    temps = GaugeMetricFamily("edgebox_temperature_celsius", "Each sensor", labels=["sensor"])
    for sensor, reading in sorted(snapshot.temperatures.items()):
        temps.add_metric([sensor], reading.current)
    yield temps
    rss = GaugeMetricFamily("edgebox_process_resident_bytes", "Resident memory per process",
                            labels=["process"])  # fmt: skip
    for process, size in sorted(snapshot.rss.items()):
        rss.add_metric([process], size)
    yield rss


def _queue(snapshot: Snapshot) -> Iterator[Metric]:
    waiting = GaugeMetricFamily("edgebox_outbound_queue_recipients",
                                "Recipients waiting in the outbound queue, by urgency",
                                labels=["urgency"])  # fmt: skip
    oldest = GaugeMetricFamily("edgebox_outbound_queue_oldest_age_seconds",
                               "Age of the oldest waiting recipient, by urgency",
                               labels=["urgency"])  # fmt: skip
    by_level = {group.urgency: group for group in snapshot.queue}
    for level, name in enumerate(URGENCY_NAMES):
        group = by_level.get(level)
        waiting.add_metric([name], group.recipients if group else 0)
        oldest.add_metric([name], max(0.0, snapshot.now - group.oldest) if group else 0)
    yield waiting
    yield oldest


def _link(snapshot: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily("edgebox_link_up", "1 up, 0 down, -1 unknown or not probed",
                           labels=["link"])  # fmt: skip
    for name in ("gin", "international"):
        reading = getattr(snapshot.link, name, None)
        state = getattr(getattr(reading, "state", None), "value", "unknown")
        up.add_metric([name], {"up": 1, "down": 0}.get(state, -1))
    yield up
    lag = GaugeMetricFamily("edgebox_sync_lag_seconds",
                            "Seconds since each sync stream's last successful round",
                            labels=["stream"])  # fmt: skip
    for stream, entry in sorted(snapshot.sync.items()):
        last = _number(entry.get("last_success"))
        if last is not None:
            lag.add_metric([stream], max(0.0, snapshot.now - last))
    yield lag


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
