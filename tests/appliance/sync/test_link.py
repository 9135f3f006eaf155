"""The link monitor against a real TLS "centre" behind the fault proxy, on a ManualClock.

Probes are real connections on 127.0.0.1; only the time between probes is the test's
clock. After moving the clock, a test waits for the probe that woke to finish
(`LinkMonitor.wait_for_probes`), since a probe's network I/O is not clock time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from appliance.box import Box, init_box, open_box
from appliance.config import load_config
from appliance.security.tls import ensure_tls_material, server_ssl_context
from appliance.sync.clock import ManualClock
from appliance.sync.link import (
    LINK_FILE,
    Hysteresis,
    LinkMonitor,
    LinkReading,
    LinkSnapshot,
    LinkState,
    read_link_state,
)
from appliance.sync.liveness import LinkWatch
from appliance.sync.status import SyncStatus
from appliance.sync.uplink import link_report
from tests.faults import FaultProxy

DOMAIN = "link.go.th"
INTERVAL = 15.0
START = 1_800_000_000.0


async def start_centre(nursery: trio.Nursery, keys: Path) -> tuple[str, int]:
    """A TLS server with its own CA (keys/ca.pem) that completes handshakes and waits."""
    ensure_tls_material(keys, ["centre.test"])
    context = server_ssl_context(keys)

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            await tls.do_handshake()
            async for _ in tls:
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return ("127.0.0.1", listeners[0].socket.getsockname()[1])


@asynccontextmanager
async def edge_box(tmp_path: Path, centre_keys: Path | None, **settings: Any) -> AsyncIterator[Box]:
    data = tmp_path / "edge"
    await init_box(data, DOMAIN)
    if centre_keys is not None:
        shutil.copy(centre_keys / "ca.pem", data / "keys" / "central-ca.pem")
    config = load_config(data, flags={"link_probe_interval": INTERVAL, **settings})
    async with open_box(config) as box:
        yield box


@asynccontextmanager
async def running(monitor: LinkMonitor) -> AsyncIterator[LinkMonitor]:
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.serve)
        yield monitor
        nursery.cancel_scope.cancel()


async def tick(clock: ManualClock, monitor: LinkMonitor, probes: int, link: str = "gin") -> None:
    """Move to the next probe and wait until probe number *probes* has finished."""
    await clock.advance(INTERVAL)
    with trio.fail_after(30):
        await monitor.wait_for_probes(link, probes)  # type: ignore[arg-type]


def written(box: Box) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((box.config.data_dir / LINK_FILE).read_text())
    return result


async def test_gin_goes_down_after_two_failures_and_up_after_one_success(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgebox.link")
    centre = await start_centre(nursery, tmp_path / "centre")
    clock = ManualClock(START)
    async with FaultProxy(centre) as proxy:
        hub = f"https://127.0.0.1:{proxy.port}"
        async with edge_box(tmp_path, tmp_path / "centre", hub_url=hub) as box:
            monitor = LinkMonitor(
                box.config,
                SyncStatus(box.config.data_dir, clock),
                clock,
                recovery_interval=INTERVAL,
            )
            woken: list[float] = []
            monitor.on_up(lambda: woken.append(clock.now()))
            unsubscribed: list[float] = []
            monitor.on_up(lambda: unsubscribed.append(1.0))()  # subscribe, then leave

            def broken() -> None:
                raise RuntimeError("a subscriber's bug")

            monitor.on_up(broken)
            async with running(monitor):
                with trio.fail_after(30):
                    await monitor.wait_for_probes("gin", 1)
                assert monitor.state.gin == LinkReading(LinkState.UP, START, hub, None)
                assert written(box)["gin"]["state"] == "up"
                assert proxy.connections == 1

                proxy.cut()
                await tick(clock, monitor, 2)
                assert monitor.state.gin.state is LinkState.UP  # one failure is not an outage
                await tick(clock, monitor, 3)
                gin = monitor.state.gin
                assert gin.state is LinkState.DOWN
                assert gin.since == START + 2 * INTERVAL
                assert gin.error is not None
                assert "Connection refused" in gin.error
                assert written(box)["gin"] == {
                    "state": "down", "since": gin.since, "target": hub,
                    "error": gin.error,
                }  # fmt: skip
                await tick(clock, monitor, 4)
                assert monitor.state.gin.since == START + 2 * INTERVAL
                assert woken == []
                assert monitor.last_cut == 0.0

                proxy.restore()
                await tick(clock, monitor, 5)
                assert monitor.state.gin.state is LinkState.UP
                assert monitor.state.gin.since == START + 4 * INTERVAL
                await tick(clock, monitor, 6)
                assert woken == [START + 4 * INTERVAL]
                # From the first failed probe to the one that succeeded (trio time).
                assert monitor.last_cut > 0
                assert unsubscribed == []
            assert monitor.state.international.state is LinkState.UNKNOWN

    transitions = [r.getMessage() for r in caplog.records if r.name == "edgebox.link"]
    assert sum("gin link down" in m for m in transitions) == 1
    assert sum("gin link up" in m for m in transitions) == 2
    assert any("subscriber failed" in m for m in transitions)
    # A clean stop leaves "unknown", not a stale "up".
    stopped = read_link_state(box.config.data_dir)
    assert stopped is not None
    assert stopped.gin.state is LinkState.UNKNOWN


async def test_a_hub_that_said_busy_is_not_taken_for_a_cut_link(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Issue 22: after a national cut the hub sheds load (503 + Retry-After). Probes it
    # is too busy to answer within that Retry-After are not counted: no "GIN down", no
    # cut of the waits; once the Retry-After is over, failures count again.
    centre = await start_centre(nursery, tmp_path / "centre")
    clock = ManualClock(START)
    async with FaultProxy(centre) as proxy:
        hub = f"https://127.0.0.1:{proxy.port}"
        async with edge_box(tmp_path, tmp_path / "centre", hub_url=hub) as box:
            watch = LinkWatch()
            monitor = LinkMonitor(
                box.config, SyncStatus(box.config.data_dir, clock), clock, watch=watch,
                recovery_interval=INTERVAL,
            )  # fmt: skip
            async with running(monitor):
                with trio.fail_after(30):
                    await monitor.wait_for_probes("gin", 1)
                assert monitor.state.gin.state is LinkState.UP
                watch.hub_busy(600)  # a replicator was told "busy, come back in 600 s"
                proxy.cut()
                for probe in (2, 3, 4):
                    await tick(clock, monitor, probe)
                    assert monitor.state.gin.state is LinkState.UP
                assert written(box)["gin"]["state"] == "up"
                assert watch.returns == 0  # nothing counted as trouble, nothing cut
                watch.busy_until = trio.current_time()  # its Retry-After is over
                await tick(clock, monitor, 5)
                await tick(clock, monitor, 6)
                assert monitor.state.gin.state is LinkState.DOWN


async def test_a_black_hole_is_down_although_tcp_connects(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    centre = await start_centre(nursery, tmp_path / "centre")
    clock = ManualClock(START)
    async with FaultProxy(centre) as proxy:
        proxy.blackhole()
        hub = f"https://127.0.0.1:{proxy.port}"
        async with edge_box(tmp_path, tmp_path / "centre", hub_url=hub) as box:
            monitor = LinkMonitor(
                box.config,
                SyncStatus(box.config.data_dir, clock),
                clock,
                probe_timeout=0.3,
                recovery_interval=INTERVAL,
            )
            async with running(monitor):
                with trio.fail_after(30):
                    await monitor.wait_for_probes("gin", 1)
                await tick(clock, monitor, 2)
                assert monitor.state.gin.state is LinkState.DOWN
                assert monitor.state.gin.error == "no answer in time"
        assert proxy.connections == 2


async def test_an_untrusted_centre_is_not_up(tmp_path: Path, nursery: trio.Nursery) -> None:
    centre = await start_centre(nursery, tmp_path / "centre")
    clock = ManualClock(START)
    hub = f"https://127.0.0.1:{centre[1]}"
    async with edge_box(tmp_path, None, hub_url=hub) as box:  # central-ca.pem missing
        monitor = LinkMonitor(
            box.config, SyncStatus(box.config.data_dir, clock), clock, recovery_interval=INTERVAL
        )
        async with running(monitor):
            with trio.fail_after(30):
                await monitor.wait_for_probes("gin", 1)
            await tick(clock, monitor, 2)
            gin = monitor.state.gin
            assert gin.state is LinkState.DOWN
            assert gin.error is not None
            assert gin.error.startswith("certificate not trusted")


async def test_a_starttls_relay_must_greet_and_international_is_a_tcp_connect(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    said: list[bytes] = []

    async def relay(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 relay.centre.test ESMTP\r\n")
        said.append(await stream.receive_some(100))
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, relay, 0)
    relay_port = listeners[0].socket.getsockname()[1]
    outside = await nursery.start(trio.serve_tcp, lambda s: s.aclose(), 0)
    outside_port = outside[0].socket.getsockname()[1]
    clock = ManualClock(START)
    async with FaultProxy(("127.0.0.1", outside_port)) as cable:
        settings = {
            "central_smtp": f"smtp://127.0.0.1:{relay_port}",
            "international_probe": f"127.0.0.1:{cable.port}",
        }
        async with edge_box(tmp_path, None, **settings) as box:
            monitor = LinkMonitor(
                box.config,
                SyncStatus(box.config.data_dir, clock),
                clock,
                recovery_interval=INTERVAL,
            )
            async with running(monitor):
                with trio.fail_after(30):
                    await monitor.wait_for_probes("gin", 1)
                    await monitor.wait_for_probes("international", 1)
                state = monitor.state
                assert state.gin.state is LinkState.UP
                assert state.gin.target == f"smtp://127.0.0.1:{relay_port}"
                assert said == [b"QUIT\r\n"]
                assert state.international.state is LinkState.UP

                cable.cut()  # an international cable cut: GIN stays up
                await tick(clock, monitor, 2, "international")
                await tick(clock, monitor, 3, "international")
                with trio.fail_after(30):
                    await monitor.wait_for_probes("gin", 3)
                assert monitor.state.international.state is LinkState.DOWN
                assert monitor.state.gin.state is LinkState.UP


async def test_nothing_configured_probes_nothing(tmp_path: Path) -> None:
    clock = ManualClock(START)
    async with edge_box(tmp_path, None) as box:
        monitor = LinkMonitor(
            box.config, SyncStatus(box.config.data_dir, clock), clock, recovery_interval=INTERVAL
        )
        async with running(monitor):
            await clock.advance(10 * INTERVAL)
            assert monitor.probes == {"gin": 0, "international": 0}
            snapshot = read_link_state(box.config.data_dir)
            assert snapshot is not None
            assert snapshot.gin.state is LinkState.UNKNOWN
            assert snapshot.gin.error is not None
            assert "not enrolled" in snapshot.gin.error
        lines = link_report(box.config.data_dir, [], clock.now(), "en")
        assert lines[1] == "international: not probed"


async def test_a_bad_setting_is_reported_not_fatal(tmp_path: Path) -> None:
    clock = ManualClock(START)
    settings = {"hub_url": "ftp://hub", "international_probe": "nonsense"}
    async with edge_box(tmp_path, None, **settings) as box:
        monitor = LinkMonitor(
            box.config, SyncStatus(box.config.data_dir, clock), clock, recovery_interval=INTERVAL
        )
        async with running(monitor):
            state = monitor.state
        assert state.gin.state is LinkState.UNKNOWN
        assert state.gin.error is not None
        assert state.gin.error.startswith("hub_url:")
        assert state.international.error is not None
        assert "not host:port" in state.international.error


# --- hysteresis ---------------------------------------------------------------------------


def test_hysteresis_table() -> None:
    link = Hysteresis("t", down_after=2, up_after=1)
    assert link.observe(False, 1, "x") is None
    assert link.observe(False, 2, "y") == LinkReading(LinkState.DOWN, 2, "t", "y")
    assert link.observe(False, 3, "z") is None
    assert link.reading.error == "z"
    assert link.observe(True, 4) == LinkReading(LinkState.UP, 4, "t", None)
    assert link.observe(True, 5) is None
    assert link.observe(False, 6, "a") is None
    assert link.observe(True, 7) is None
    assert link.observe(False, 8, "b") is None
    assert link.reading.state is LinkState.UP
    with pytest.raises(ValueError, match="at least 1"):
        Hysteresis("t", down_after=0)


@given(
    st.lists(st.booleans(), max_size=60),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=4),
)
def test_hysteresis_follows_streaks(results: list[bool], down_after: int, up_after: int) -> None:
    link = Hysteresis("t", down_after=down_after, up_after=up_after)
    expected = LinkState.UNKNOWN
    for step, ok in enumerate(results):
        changed = link.observe(ok, float(step), None if ok else "e")
        streak = 0
        for earlier in reversed(results[: step + 1]):
            if earlier != ok:
                break
            streak += 1
        before = expected
        if ok and streak >= up_after:
            expected = LinkState.UP
        elif not ok and streak >= down_after:
            expected = LinkState.DOWN
        assert link.reading.state is expected
        assert (changed is not None) == (expected is not before)


# --- edgebox status --------------------------------------------------------------------------


def write_snapshot(data_dir: Path, snapshot: LinkSnapshot) -> None:
    path = data_dir / LINK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snapshot.to_json()))


def test_status_lines_show_links_queue_backlog_and_streams(tmp_path: Path) -> None:
    now = START + 3 * 86400
    write_snapshot(
        tmp_path,
        LinkSnapshot(
            gin=LinkReading(
                LinkState.DOWN, now - 2 * 3600 - 5 * 60, "https://hub:7443", "no answer in time"
            ),
            international=LinkReading(LinkState.UP, START, "8.8.8.8:53"),
        ),
    )  # fmt: skip
    clock = ManualClock(now - 600)
    status = SyncStatus(tmp_path, clock)
    status.success("outbound", sent=4)
    status.failure("chat", "HubUnavailable: connection refused")
    groups = [
        (3, "a@link.go.th", 2, int(now - 86400)),
        (0, "b@link.go.th", 5, int(now - 2 * 86400 - 3600)),
        (0, "c@link.go.th", 1, int(now - 60)),
        (7, "", 1, int(now - 30)),  # an unknown level counts as the nearest one
    ]

    lines = link_report(tmp_path, groups, now, "en")

    assert lines == [
        "gin: down (since 2027-01-18 05:55 UTC, 2 h 5 min ago): no answer in time",
        "international: up (since 2027-01-15 08:00 UTC, 3 d ago)",
        "outbound queue: most urgent 3 · very urgent 0 · urgent 0 · normal 6 (total 9)",
        "backlog age: 2 d 1 h (queued 2027-01-16 07:00 UTC)",
        "last sync outbound: 10 min ago",
        "last sync mailbox: never",
        "last sync chat: never (last error: HubUnavailable: connection refused)",
        "last sync directory: never",
    ]
    thai = link_report(tmp_path, groups, now, "th")
    assert thai[0].startswith("gin: down (ตั้งแต่ ")
    assert thai[2] == "คิวขาออก: ด่วนที่สุด 3 · ด่วนมาก 0 · ด่วน 0 · ปกติ 6 (รวม 9)"
    assert thai[4] == "ซิงก์ล่าสุด อีเมลขาออก: 10 นาทีที่แล้ว"


def test_status_lines_before_the_monitor_ever_ran(tmp_path: Path) -> None:
    lines = link_report(tmp_path, [], START, "en")
    assert lines[:4] == [
        "gin: unknown (monitor has not run)",
        "international: unknown (monitor has not run)",
        "outbound queue: most urgent 0 · very urgent 0 · urgent 0 · normal 0 (total 0)",
        "backlog age: none",
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / LINK_FILE).write_text("[1, 2")
    assert read_link_state(tmp_path) is None
    (tmp_path / LINK_FILE).write_text('{"gin": {"state": "sideways", "since": "x"}}')
    odd = read_link_state(tmp_path)
    assert odd is not None
    assert odd.gin == LinkReading()


def test_status_shows_when_the_sync_certificate_ends(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "box")])
    ends = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(ends - dt.timedelta(days=365)).not_valid_after(ends)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (keys / "sync.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    before = (ends - dt.timedelta(days=20)).timestamp()
    assert link_report(tmp_path, [], before, "en")[-1] == (
        "sync certificate: valid until 2027-03-01 (20 d left)"
    )
    assert link_report(tmp_path, [], before, "th")[-1] == (
        "ใบรับรองซิงก์: ใช้ได้ถึง 2027-03-01 (เหลือ 20 วัน)"
    )
    after = (ends + dt.timedelta(hours=1)).timestamp()
    assert link_report(tmp_path, [], after, "en")[-1] == "sync certificate: EXPIRED on 2027-03-01"
    # Without a certificate (not enrolled) there is no such line.
    assert not any("certificate" in line for line in link_report(tmp_path / "x", [], after))
