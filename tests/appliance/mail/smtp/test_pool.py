"""The hand-off between an MX worker and the main process, in one process with no sockets.

The worker's forwarders (`ForwardedDelivery`, `ForwardedTrafficLog`, `ForwardedMetrics`)
talk to a `CommitDesk` over a trio memory stream pair; the desk's delivery and traffic
log are fakes that record the order of events. The processes themselves (the pool, a
SIGKILLed worker) are in tests/e2e/test_smtp_workers.py.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.compliance.traffic_log import TrafficRecord
from appliance.config import load_config
from appliance.health.metrics import BoxMetrics
from appliance.mail.delivery import Envelope, Recipient, Trace
from appliance.mail.mailstore import QuotaExceeded
from appliance.mail.smtp.handoff import Kind, encode_head
from appliance.mail.smtp.pool import (
    Channel,
    CommitDesk,
    DeliveryFailed,
    ForwardedDelivery,
    ForwardedMetrics,
    ForwardedTrafficLog,
    WorkerLink,
    config_from_values,
    config_values,
    envelope_from_header,
    envelope_header,
)

ENVELOPE = Envelope(
    sender="somchai@example.org",
    recipients=(
        Recipient("malee@demo.go.th", True, notify="FAILURE", quota_bytes=1000),
        Recipient("postmaster@demo.go.th", True, mailboxes=("admin@demo.go.th",)),
        Recipient("x@other.go.th", False, orcpt="rfc822;x@other.go.th"),
    ),
    trace=Trace(helo="mx.example.org", client_ip="192.0.2.1", protocol="ESMTPS"),
    ret="HDRS",
    envid="abc",
)


class FakeDelivery:
    def __init__(self, events: list[str], fail: BaseException | None = None) -> None:
        self.events = events
        self.fail = fail
        self.calls: list[tuple[Envelope, bytes, str, list[bytes]]] = []

    async def deliver(
        self,
        envelope: Envelope,
        content: bytes,
        *,
        folder: str = "INBOX",
        on_top: Sequence[bytes] = (),
    ) -> str:
        self.calls.append((envelope, content, folder, list(on_top)))
        await trio.sleep(0.01)  # the group commit's fsync
        if self.fail is not None:
            raise self.fail
        self.events.append("fsynced")
        return "QUEUEID1"


class FakeTraffic:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.records: list[TrafficRecord] = []

    async def append(self, record: TrafficRecord) -> None:
        await trio.sleep(0.01)
        self.records.append(record)
        self.events.append("logged")


@asynccontextmanager
async def linked(
    delivery: FakeDelivery, traffic: FakeTraffic, metrics: BoxMetrics
) -> AsyncIterator[WorkerLink]:
    worker_end, main_end = trio.testing.memory_stream_pair()
    link = WorkerLink(Channel(worker_end, 1 << 20))
    desk = CommitDesk(
        Channel(main_end, 1 << 20), delivery=delivery, traffic=traffic, metrics=metrics
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(desk.serve)
        nursery.start_soon(_run_link, link)
        yield link
        nursery.cancel_scope.cancel()


async def _run_link(link: WorkerLink) -> None:
    try:
        await link.run()
    except Exception:  # noqa: S110 - MainGone when the test's streams close
        pass


def test_an_envelope_crosses_the_wire_whole() -> None:
    assert envelope_from_header(envelope_header(ENVELOPE)) == ENVELOPE


def test_the_settings_cross_the_wire_whole(tmp_path: Path) -> None:
    config = load_config(tmp_path, flags={"smtp_workers": 3, "max_connections": 7})
    assert config_from_values(config_values(config)) == config


async def test_the_worker_hears_stored_only_after_the_main_process_fsynced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    delivery = FakeDelivery(events)
    async with linked(delivery, FakeTraffic(events), BoxMetrics()) as link:
        queue_id = await ForwardedDelivery(link).deliver(
            ENVELOPE, b"Subject: hi\r\n\r\nbody\r\n", folder="Junk",
            on_top=(b"Authentication-Results: a\r\n", b"X-Spam: no\r\n"),
        )  # fmt: skip
        events.append("250")
    assert queue_id == "QUEUEID1"
    assert events == ["fsynced", "250"]
    [(envelope, content, folder, on_top)] = delivery.calls
    assert envelope == ENVELOPE
    assert content == b"Subject: hi\r\n\r\nbody\r\n"
    assert folder == "Junk"
    assert on_top == [b"Authentication-Results: a\r\n", b"X-Spam: no\r\n"]


@pytest.mark.parametrize(
    ("failure", "raised"),
    [
        (QuotaExceeded("malee@demo.go.th"), QuotaExceeded),
        (OSError(errno.ENOSPC, "full"), OSError),
        (LookupError("vanished"), DeliveryFailed),
    ],
)
async def test_a_refused_commit_reaches_the_worker_as_the_same_kind_of_error(
    autojump_clock: trio.testing.MockClock, failure: BaseException, raised: type[Exception]
) -> None:
    events: list[str] = []
    async with linked(FakeDelivery(events, failure), FakeTraffic(events), BoxMetrics()) as link:
        with pytest.raises(raised) as caught:
            await ForwardedDelivery(link).deliver(ENVELOPE, b"x\r\n")
    if isinstance(failure, QuotaExceeded):
        assert isinstance(caught.value, QuotaExceeded)
        assert caught.value.owner == "malee@demo.go.th"
    if isinstance(failure, OSError):
        assert caught.value.errno == errno.ENOSPC  # type: ignore[attr-defined]


async def test_traffic_lines_and_counts_land_in_the_main_process(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    traffic = FakeTraffic(events)
    metrics = BoxMetrics()
    record = TrafficRecord(
        time=datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC), service="smtp-mx", event="accepted",
        client_ip="192.0.2.1", sender="a@example.org", recipients=("malee@demo.go.th",),
        message_id="QUEUEID1", size=10, result="250 2.0.0 spf=none",
    )  # fmt: skip
    async with linked(FakeDelivery(events), traffic, metrics) as link:
        forwarded = ForwardedMetrics(link)
        forwarded.smtp_messages.labels("mx", "accepted").inc()
        forwarded.storage_refusals.labels("smtp-mx").inc()
        await ForwardedTrafficLog(link).append(record)
        events.append("250")
        await trio.sleep(0.1)
    # Fsynced before the session goes on to its reply, as in one process.
    assert events == ["logged", "250"]
    assert traffic.records == [record]
    assert metrics.smtp_messages.labels("mx", "accepted")._value.get() == 1
    assert metrics.storage_refusals.labels("smtp-mx")._value.get() == 1


async def test_a_deliver_cut_short_by_the_workers_death_stores_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []
    delivery = FakeDelivery(events)
    worker_end, main_end = trio.testing.memory_stream_pair()
    desk = CommitDesk(
        Channel(main_end, 1 << 20), delivery=delivery, traffic=FakeTraffic(events),
        metrics=BoxMetrics(),
    )  # fmt: skip
    content = b"Subject: cut\r\n\r\n" + b"x" * 5000
    header = {"id": 1, "envelope": envelope_header(ENVELOPE), "folder": "INBOX", "on_top": []}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(desk.serve)
        await worker_end.send_all(encode_head(Kind.DELIVER, header, len(content)))
        await worker_end.send_all(content[:2000])
        # SIGKILL: the worker's end closes with the frame half sent.
        await worker_end.aclose()
    assert delivery.calls == []
    assert events == []


async def test_a_frame_no_worker_sends_ends_the_desk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from appliance.mail.smtp.handoff import FrameError

    events: list[str] = []
    worker_end, main_end = trio.testing.memory_stream_pair()
    desk = CommitDesk(
        Channel(main_end, 1 << 20), delivery=FakeDelivery(events),
        traffic=FakeTraffic(events), metrics=BoxMetrics(),
    )  # fmt: skip
    await worker_end.send_all(encode_head(Kind.HELLO, {}, 0))
    with pytest.raises(FrameError, match="HELLO is not sent by a worker"):
        await desk.serve()
