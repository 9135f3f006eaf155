"""The link monitor: is the centre reachable over GIN, and is the wider internet?

A box keeps serving its office through any outage (DESIGN.md principle 2); what the
staff and the technician need is to *know* the state of the uplink, and the
replicators need to know the moment it comes back. Two links are watched apart, since
they fail apart (an international cable cut leaves GIN up; a GIN fault may leave the
internet up):

- **gin**: the centre. The hub's sync API (``config.hub_url``) when enrolled, else the
  central SMTP relay, else the central IMAP server. An ``https``/``smtps``/``imaps``
  target must complete a TLS handshake with a certificate the box trusts (the same
  `central_client_context` the replicators use); an ``smtp``/``imap`` (STARTTLS) target
  must answer with its greeting line (RFC 5321 §4.2, RFC 9051 §7.1). A bare TCP
  connect is not enough there: a black-holed path can still complete one.
- **international**: ``config.international_probe`` (``host:port``), a TCP connect.
  Empty: not probed, shown as "not probed".

Each link is probed every ``config.link_probe_interval`` seconds of the `Clock`, each
probe bounded by a time-out. One failed probe is not an outage (a lost SYN, a busy
server): a link goes *down* after `DOWN_AFTER` consecutive failures and *up* again
after `UP_AFTER` success (`Hysteresis`, a pure state machine). Only changes are acted
on: each is logged once and written to ``DATA/run/link.json`` (atomically, so `edgebox
status` and the console never read half a file).

A hub that answered a replicator "busy" (503 with Retry-After, `LinkWatch.hub_busy`) is
up: until that Retry-After is over a failed gin probe is not counted, so a hub shedding
load after a national cut never shows as a cut link (issue 22), and gin is probed only
at its interval, never at the faster pace of trouble (each probe is a handshake the
busy hub pays for).

Gin is also what tells the replicators the link is back (issue 24). A probe does not
wait for the one before it: a probe lost in a black hole would otherwise hide the
link's return until its time-out. While gin is in *trouble* (a probe failed or has
hung for `SLOW_PROBE`, or gin is down) it is probed every `RECOVERY_INTERVAL`; a
replicator's connection that fails (refused, reset, timed out) or a wait silent for
`SUSPECT_AFTER` asks for a probe at once. The first probe
that gets through after trouble is the link's return: the shared `LinkWatch` cuts
short every wait that has not moved a byte since that probe began, and the `on_up`
subscribers (the outbound relay and the replicators) start a round at once instead of
waiting out their back-off. Gin going down cuts the silent waits too.

`appliance.sync.uplink` reads that file, with `sync.json`, for every surface (the
console, ``/api/v1/link``, `edgebox status`). A cut uplink is never "unhealthy": the
box is built for it.

What this is not: the replicators' own error handling (each still fails and retries on
its own; the monitor only shortens the wait), or a health check of the local services.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

import trio

from appliance.config import Config
from appliance.store.files import write_atomically
from appliance.sync.central import (
    CentralError,
    Endpoint,
    central_client_context,
    parse_endpoint,
)
from appliance.sync.clock import Clock
from appliance.sync.liveness import LinkWatch
from appliance.sync.status import SyncStatus

log = logging.getLogger("edgebox.link")

LINK_FILE: Final = Path("run") / "link.json"
#: Consecutive failed probes before a link that was up is declared down.
DOWN_AFTER: Final = 2
#: Consecutive good probes before a link that was down is declared up.
UP_AFTER: Final = 1
#: Seconds one probe may take (connect, and the handshake or greeting).
PROBE_TIMEOUT: Final = 5.0
#: Seconds between gin probes while gin is in trouble: the link's return is seen
#: within this (at any `link_probe_interval`).
RECOVERY_INTERVAL: Final = 1.0
#: A gin probe still running after this many seconds is trouble (a black hole holds it).
SLOW_PROBE: Final = 2.0
#: A replicator's wait silent this many seconds asks for a gin probe at once.
SUSPECT_AFTER: Final = 2.0
#: Probes of one link running at once (in a black hole each runs to its time-out).
MAX_IN_FLIGHT: Final = 8
#: Seconds of trio time between looks at the probes in flight and the waits.
_LOOK_EVERY: Final = 0.25

LinkName = Literal["gin", "international"]
Probe = Callable[[], Awaitable[None]]


class LinkState(enum.Enum):
    #: The last probes reached the target.
    UP = "up"
    #: `DOWN_AFTER` probes in a row did not.
    DOWN = "down"
    #: Not probed yet, not configured, or the monitor is not running.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LinkReading:
    """One link's state as the monitor last decided it."""

    state: LinkState = LinkState.UNKNOWN
    #: Unix seconds of the change to *state*; None while unknown.
    since: float | None = None
    #: What is probed (``https://hub:7443``, ``host:port``); "" when nothing is.
    target: str = ""
    #: Why the last probe failed (for down), or why the link is not probed (unknown).
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "since": self.since,
            "target": self.target,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Any) -> LinkReading:
        if not isinstance(data, dict):
            return cls()
        try:
            state = LinkState(data.get("state"))
        except ValueError:
            state = LinkState.UNKNOWN
        since = data.get("since")
        error = data.get("error")
        return cls(
            state=state,
            since=float(since) if isinstance(since, int | float) else None,
            target=str(data.get("target") or ""),
            error=str(error) if error is not None else None,
        )


@dataclass(frozen=True)
class LinkSnapshot:
    """Both links, as written to ``DATA/run/link.json``."""

    gin: LinkReading = LinkReading()
    international: LinkReading = LinkReading()
    #: Unix seconds when the file was written.
    written_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "gin": self.gin.to_json(),
            "international": self.international.to_json(),
            "written_at": self.written_at,
        }


# --- hysteresis (pure) -------------------------------------------------------------------


class Hysteresis:
    """Turns probe results into link states: one bad probe is not an outage.

    ======== ============================ ===================
    state    after `DOWN_AFTER` failures   after `UP_AFTER` successes
    ======== ============================ ===================
    unknown  down                         up
    up       down                         (stays up)
    down     (stays down)                 up
    ======== ============================ ===================

    A success resets the failure count and a failure the success count, so only
    *consecutive* results count.
    """

    def __init__(
        self, target: str, *, down_after: int = DOWN_AFTER, up_after: int = UP_AFTER
    ) -> None:
        if down_after < 1 or up_after < 1:
            raise ValueError("down_after and up_after must be at least 1")
        self.down_after = down_after
        self.up_after = up_after
        self.reading = LinkReading(target=target)
        self._failures = 0
        self._successes = 0

    def observe(self, ok: bool, now: float, error: str | None = None) -> LinkReading | None:
        """Take one probe result; return the new reading if the state changed."""
        if ok:
            self._failures, self._successes = 0, self._successes + 1
            if self.reading.state is not LinkState.UP and self._successes >= self.up_after:
                return self._become(LinkState.UP, now, None)
        else:
            self._successes, self._failures = 0, self._failures + 1
            if self.reading.state is not LinkState.DOWN and self._failures >= self.down_after:
                return self._become(LinkState.DOWN, now, error)
            if self.reading.state is LinkState.DOWN:
                # Keep the newest reason without calling it a change.
                self.reading = replace(self.reading, error=error)
        return None

    def _become(self, state: LinkState, now: float, error: str | None) -> LinkReading:
        self.reading = replace(self.reading, state=state, since=now, error=error)
        return self.reading


# --- probes ------------------------------------------------------------------------------


async def probe_tcp(host: str, port: int) -> None:
    """Open a TCP connection and close it."""
    stream = await trio.open_tcp_stream(host, port)
    await stream.aclose()


async def probe_tls(host: str, port: int, context: ssl.SSLContext) -> None:
    """Complete a TLS handshake (certificate and host name checked) and close."""
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=context, https_compatible=True
    )
    try:
        await stream.do_handshake()
    finally:
        await trio.aclose_forcefully(stream)


async def probe_greeting(host: str, port: int, goodbye: bytes) -> None:
    """Wait for a server's greeting line, say *goodbye* and close.

    The greeting proves the server itself answered, not only some box on the path.
    """
    stream = await trio.open_tcp_stream(host, port)
    try:
        received = b""
        while b"\n" not in received and len(received) < 4096:
            data = await stream.receive_some(1024)
            if not data:
                raise ConnectionError("closed before its greeting")
            received += data
        # Polite end, so the server logs a session rather than a lost connection.
        await stream.send_all(goodbye)
    finally:
        await trio.aclose_forcefully(stream)


#: What to say after a STARTTLS server's greeting: RFC 5321 §4.1.1.10, RFC 9051 §6.1.3.
_GOODBYE: Final = {"smtp": b"QUIT\r\n", "imap": b"z LOGOUT\r\n"}


@dataclass(frozen=True)
class _Link:
    name: LinkName
    target: str
    probe: Probe | None
    #: Why *probe* is None (not configured, bad setting).
    reason: str | None = None


def gin_link(config: Config) -> _Link:
    """The centre's probe: the hub when enrolled, else the central SMTP, else IMAP."""
    keys_dir = config.data_dir / "keys"
    for setting, schemes in (
        ("hub_url", ("https",)),
        ("central_smtp", ("smtp", "smtps")),
        ("central_imap", ("imap", "imaps")),
    ):
        url = getattr(config, setting)
        if not url:
            continue
        try:
            endpoint = parse_endpoint(url, schemes)
        except CentralError as exc:
            return _Link("gin", url, None, f"{setting}: {exc}")
        return _Link("gin", str(endpoint), _endpoint_probe(endpoint, keys_dir))
    return _Link("gin", "", None, "not enrolled: no hub or central server configured")


def _endpoint_probe(endpoint: Endpoint, keys_dir: Path) -> Probe:
    host, port = endpoint.host, endpoint.port
    if endpoint.implicit_tls:

        async def tls() -> None:
            # Built per probe: enrolment may install a new CA or client certificate.
            await probe_tls(host, port, central_client_context(keys_dir))

        return tls
    goodbye = _GOODBYE[endpoint.scheme]

    async def greeting() -> None:
        await probe_greeting(host, port, goodbye)

    return greeting


def international_link(config: Config) -> _Link:
    """The international probe: a TCP connect to ``config.international_probe``."""
    text = config.international_probe.strip()
    if not text:
        return _Link("international", "", None, "not probed (international_probe is empty)")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        return _Link("international", text, None, f"international_probe {text!r}: not host:port")
    number = int(port)

    async def tcp() -> None:
        await probe_tcp(host, number)

    return _Link("international", text, tcp)


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason for a failed probe."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # trio wraps what went wrong: "all attempts to connect failed" from a group of
    # per-address errors, BrokenResourceError from the socket's own error.
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    if cause is not None and isinstance(exc, OSError | trio.BrokenResourceError):
        return _reason(cause)
    return str(exc) or type(exc).__name__


# --- the service -------------------------------------------------------------------------


class LinkMonitor:
    """Probes gin and international, keeps their state, and tells who asked."""

    name = "link-monitor"

    def __init__(
        self,
        config: Config,
        status: SyncStatus,
        clock: Clock,
        *,
        probe_timeout: float = PROBE_TIMEOUT,
        down_after: int = DOWN_AFTER,
        up_after: int = UP_AFTER,
        watch: LinkWatch | None = None,
        recovery_interval: float = RECOVERY_INTERVAL,
    ) -> None:
        self.sync_status = status
        self.clock = clock
        self.interval = max(0.1, config.link_probe_interval)
        self.probe_timeout = probe_timeout
        #: The replicators' waits, cut short when the link returns (`LinkWatch`).
        self.watch = watch or LinkWatch()
        self.recovery_interval = max(0.1, recovery_interval)
        #: Gin is in trouble since this trio time (None: it is not): a probe failed or
        #: hung, so the next success is the link's return.
        self._trouble_since: float | None = None
        #: How long gin's last trouble lasted (seconds), set as it returns; 0 before any.
        self.last_cut = 0.0
        #: Probes running, per link: number -> trio time started.
        self._in_flight: dict[LinkName, dict[int, float]] = {"gin": {}, "international": {}}
        #: Start (trio time) of the newest probe whose result was counted; an older
        #: probe finishing later (a black hole held it) is not counted.
        self._counted: dict[LinkName, float] = {"gin": -math.inf, "international": -math.inf}
        self._last_start: dict[LinkName, float] = {"gin": -math.inf, "international": -math.inf}
        self._numbers = itertools.count()
        self._down_after, self._up_after = down_after, up_after
        self.path = config.data_dir / LINK_FILE
        self._links: dict[LinkName, _Link] = {
            "gin": gin_link(config),
            "international": international_link(config),
        }
        self._trackers: dict[LinkName, Hysteresis] = {
            name: Hysteresis(link.target, down_after=down_after, up_after=up_after)
            for name, link in self._links.items()
        }
        for name, link in self._links.items():
            if link.probe is None:
                self._trackers[name].reading = LinkReading(target=link.target, error=link.reason)
        self._on_up: list[Callable[[], None]] = []
        #: Probes completed per link since start (tests wait on it).
        self.probes: dict[LinkName, int] = {"gin": 0, "international": 0}
        self._probed = trio.Event()

    @property
    def state(self) -> LinkSnapshot:
        """Both links now."""
        return LinkSnapshot(
            gin=self._trackers["gin"].reading,
            international=self._trackers["international"].reading,
            written_at=None,
        )

    @property
    def sync_streams(self) -> dict[str, dict[str, Any]]:
        """The last report of every sync stream (the same `SyncStatus` the replicators use)."""
        return dict(self.sync_status.streams)

    def on_up(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* each time gin comes back after trouble; return an unsubscribe.

        Trouble is a failed or hung probe (gin need not have been declared down: a
        short black hole is hidden by the hysteresis but still kills connections).
        Not at start-up (unknown → up): replicators start a round then anyway. The
        callback runs in the monitor's task and must not block (set an event, a
        replicator's ``wake()``).
        """
        self._on_up.append(callback)
        return lambda: self._on_up.remove(callback) if callback in self._on_up else None

    async def wait_for_probes(self, link: LinkName, count: int) -> None:
        """Return once *link* has been probed *count* times since start."""
        while self.probes[link] < count:
            await self._probed.wait()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Whatever an earlier run wrote is stale: start from unknown.
        self._write()
        try:
            async with trio.open_nursery() as nursery:
                for name, link in self._links.items():
                    if link.probe is not None:
                        nursery.start_soon(self._watch, name, link.probe)
                    else:
                        log.info("%s link not probed: %s", name, link.reason)
                task_status.started([])
                # Nothing to probe is a state too: stay, so the supervisor sees a
                # running service rather than one that keeps ending.
                await trio.sleep_forever()
        finally:
            # A clean stop says "unknown" rather than leaving an old "up" behind.
            # A restart (the supervisor's, after a crash) begins with fresh counts.
            for name, link in self._links.items():
                if link.probe is not None:
                    tracker = Hysteresis(
                        link.target, down_after=self._down_after, up_after=self._up_after
                    )
                    tracker.reading = replace(tracker.reading, error="monitor stopped")
                    self._trackers[name] = tracker
            self._write()

    async def _watch(self, name: LinkName, probe: Probe) -> None:
        async with trio.open_nursery() as running:
            while True:  # a probe per interval (or per look) until cancelled
                if len(self._in_flight[name]) < MAX_IN_FLIGHT:
                    number, started = next(self._numbers), trio.current_time()
                    self._in_flight[name][number] = started
                    self._last_start[name] = started
                    running.start_soon(self._probe, name, probe, number, started)
                await self._pause(name)

    async def _pause(self, name: LinkName) -> None:
        """Wait for the next probe: the interval, or sooner while gin is in trouble."""
        if name != "gin":
            await self.clock.sleep(self.interval)
            return
        async with trio.open_nursery() as pause:

            async def interval() -> None:
                await self.clock.sleep(self.interval)
                pause.cancel_scope.cancel()

            async def look() -> None:
                # In trio time, the time of the waits and of the probes in flight.
                while True:
                    if self._probe_now():
                        pause.cancel_scope.cancel()
                        return
                    await trio.sleep(_LOOK_EVERY)

            pause.start_soon(interval)
            pause.start_soon(look)

    def _probe_now(self) -> bool:
        """Whether gin should be probed before its interval is over."""
        if self.watch.busy_for() > 0:
            # The hub said "busy, come back in N s": it is up, and every probe is a TLS
            # handshake it pays for. No recovery probing of a hub shedding load (600
            # boxes probing each second would be a storm of their own): the interval.
            return False
        now = trio.current_time()
        for started in self._in_flight["gin"].values():
            if now - started >= SLOW_PROBE:
                # A probe this slow is in a black hole (or the hub is swamped).
                self._troubled(started)
        last = self._last_start["gin"]
        if self._trouble_since is not None:
            return now - last >= self.recovery_interval
        failed = self.watch.failed_at
        if failed is not None and failed >= last:
            return True  # a replicator's connection was refused, reset or timed out
        silent = self.watch.stalled_since(SUSPECT_AFTER)
        # A replicator's wait went silent after the last probe began: ask the link now.
        return silent is not None and silent + SUSPECT_AFTER > last

    def _troubled(self, since: float) -> None:
        if self._trouble_since is None or since < self._trouble_since:
            self._trouble_since = since

    async def _probe(self, name: LinkName, probe: Probe, number: int, started: float) -> None:
        ok, error = True, None
        try:
            with trio.fail_after(self.probe_timeout):
                await probe()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            ok, error = False, _reason(exc)
        except Exception as exc:
            # Anything else (a malformed CA file, an odd host name) is still a
            # failed probe with a reason, not a dead monitor.
            log.debug("%s probe failed", name, exc_info=True)
            ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            del self._in_flight[name][number]
        self.probes[name] += 1
        self._probed.set()
        self._probed = trio.Event()
        if started < self._counted[name]:
            return  # a newer probe has spoken already; this one is old news
        self._counted[name] = started
        if not ok and name == "gin" and self.watch.busy_for() > 0:
            # The hub answered "busy, come back in N s" (a 503 with Retry-After) to one
            # of the replicators: it is there, so the link is up. A handshake it was
            # too busy to finish is not a cut, and not counted towards one: no "GIN
            # down" warning and no cut of the waits for a hub that asked for patience.
            log.debug("gin probe failed while the hub said it is busy: %s", error)
            return
        tracker = self._trackers[name]
        before = tracker.reading.state
        changed = tracker.observe(ok, self.clock.now(), error)
        if changed is not None:
            self._announce(name, changed)
        if name != "gin":
            return
        if not ok:
            self._troubled(started)
            if changed is not None and changed.state is LinkState.DOWN:
                assert self._trouble_since is not None
                cut = self.watch.link_down(self._trouble_since)
                if cut:
                    log.info("gin link down: %d wait(s) on the uplink cut short", cut)
            return
        returned = self._trouble_since is not None or before is LinkState.DOWN
        if self._trouble_since is not None:
            self.last_cut = max(0.0, started - self._trouble_since)
        self._trouble_since = None
        cut = self.watch.probe_succeeded(started, after_trouble=returned)
        if cut:
            log.info("gin link back: %d silent wait(s) on the uplink cut short", cut)
        if returned or cut:
            # A cut round fails; its replicator must not then sit out a back-off.
            self._wake_subscribers()

    def _announce(self, name: LinkName, reading: LinkReading) -> None:
        if reading.state is LinkState.UP:
            log.info("%s link up (%s)", name, reading.target)
        else:
            log.warning("%s link down (%s): %s", name, reading.target, reading.error)
        self._write()

    def _wake_subscribers(self) -> None:
        for callback in list(self._on_up):
            try:
                callback()
            except Exception:
                # One subscriber's bug must not keep the others asleep.
                log.exception("link-up subscriber failed")

    def _write(self) -> None:
        snapshot = replace(self.state, written_at=self.clock.now())
        body = json.dumps(snapshot.to_json(), ensure_ascii=False, sort_keys=True).encode()
        try:
            # Small and rare (changes only), so written inline: readers see either the
            # old file or the new one, never a mix.
            write_atomically(self.path, body, mode=0o644)
        except OSError as exc:
            log.error("cannot write %s: %s", self.path, exc.strerror or exc)


def read_link_state(data_dir: Path) -> LinkSnapshot | None:
    """Return what the monitor last wrote, or None if it never ran here."""
    try:
        data = json.loads((Path(data_dir) / LINK_FILE).read_text("utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    written = data.get("written_at")
    return LinkSnapshot(
        gin=LinkReading.from_json(data.get("gin")),
        international=LinkReading.from_json(data.get("international")),
        written_at=float(written) if isinstance(written, int | float) else None,
    )


__all__ = [
    "DOWN_AFTER",
    "LINK_FILE",
    "UP_AFTER",
    "Hysteresis",
    "LinkMonitor",
    "LinkReading",
    "LinkSnapshot",
    "LinkState",
    "gin_link",
    "international_link",
    "read_link_state",
]
