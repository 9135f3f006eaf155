"""The panel service: shows the box's state on the front panel and hears its button.

It runs for the box's whole life, beside discovery in the runner (appliance.cli
``_run_box``), across the switch between the setup path and the provisioned services:
the `Lifecycle` says which state the box is in and gives the setup code; while
provisioned, the running service set publishes a `BoxView` (health findings, outbound
queue, host name) in a `BoxViewSlot` and clears it when it stops. The service turns
that into the panel's STATE fields (`panel_fields`, a pure function) and hands them to
`hw.panel.PanelClient`, which owns the serial link.

The button's factory-reset request (the firmware timed the 10-s hold) arms
``lifecycle.panel_reset``; the panel shows a confirm prompt and a short press within
the window resets the box through `Lifecycle.request_reset`, the admin console's path.
Requests the box cannot act on yet (recovery) and the panel's reports of a host reset
are logged and appended to ``DATA/run/panel-requests.jsonl``.

Not started when there is no panel: no ``panel_device`` setting and no board profile
that has one (`panel_service` returns None).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from appliance.compliance.classification import Urgency
from appliance.config import Config, ConfigError
from appliance.health import Finding, Level
from appliance.provisioning.lifecycle import BoxState, Lifecycle, SetupStatus
from appliance.sync.link import LinkSnapshot, LinkState, read_link_state
from appliance.update.progress import UpdateView, update_view
from hw import panel_link
from hw.boards import UnknownBoard, detect_board
from hw.panel import ButtonPressed, HostWasReset, PanelClient, PanelEvent, TTYPort

log = logging.getLogger("edgebox.panel")

#: Where the panel's recovery requests and host-reset reports are kept (JSON a line).
REQUESTS_FILE = "run/panel-requests.jsonl"
#: Seconds between looks at the outbound queue (a database read in a worker thread; the
#: link state file is read every ``panel_refresh``, as a link change is what is urgent).
QUEUE_INTERVAL = 2.0
#: Seconds before a panel that cannot be opened is tried again.
REOPEN_DELAY = 5.0
#: Seconds between repeats of the reset prompt: the firmware shows a host's notice
#: for 5 s, and the prompt must stay up for the whole confirm window.
PROMPT_REPEAT = 4.0
RESET_PROMPT = "erase ALL mail and reset? press button = yes"
#: Seconds a USB stick's result stays on the display (repeated every PROMPT_REPEAT).
STICK_RESULT_HOLD = 60.0

#: What an update's fields may take of the STATE frame (255 bytes for every field):
#: the release fits the page's title line, the reason its last three lines.
UPDATE_VERSION_CHARS = 9
UPDATE_REASON_CHARS = 48

QueueGroups = list[tuple[int, str, int, int]]

_URGENCY_WORDS = {
    Urgency.MOST_URGENT: "most urgent",
    Urgency.VERY_URGENT: "very urgent",
    Urgency.URGENT: "urgent",
    Urgency.NORMAL: "normal",
}


def panel_fields(
    *,
    name: str,
    lan: str,
    link: LinkSnapshot | None,
    queue_groups: Iterable[tuple[int, str, int, int]],
    findings: Iterable[Finding],
    provisioned: bool = True,
    setup_code: str = "",
    fingerprint: str = "",
    update_percent: int | None = None,
    update: UpdateView | None = None,
) -> dict[str, str]:
    """Return the panel's STATE fields for the box's state (firmware/pages.py reads them).

    An update adds ``uphase`` (downloading, verifying, installing, rebooting, installed,
    good, rolled-back, refused), ``update`` (the percentage, while busy), ``uver`` and
    ``uwhy`` (why it was refused or rolled back, cut to fit one frame).
    """
    count = 0
    most = None
    for urgency, _sender, waiting, _oldest in queue_groups:
        count += int(waiting)
        level = Urgency(min(max(int(urgency), 0), max(Urgency)))
        most = level if most is None else max(most, level)
    failing = [f for f in findings if f.level is not Level.OK]
    worst = max((f.level for f in failing), default=Level.OK)
    first = max(failing, key=lambda f: f.level, default=None)
    fields = {
        "name": name,
        "lan": lan,
        "prov": "yes" if provisioned else "no",
        "gin": _link_word(link.gin.state if link else None),
        "intl": _link_word(link.international.state if link else None),
        "queue": str(count),
        "urgent": _URGENCY_WORDS[most] if most is not None else "",
        "health": {Level.OK: "ok", Level.WARN: "warn", Level.ERROR: "error"}[worst],
        # The panel's font is ASCII: the English text, the check's name first.
        "check": f"{first.check}: {first.en}" if first else "",
    }
    if not provisioned:
        fields["setup"] = setup_code
        # The certificate the setup page presents: checked before the code is typed.
        fields["fp"] = fingerprint
    if update is not None:
        fields["uphase"] = update.phase
        if update.percent is not None:
            update_percent = update.percent
        if update.version:
            fields["uver"] = update.version[:UPDATE_VERSION_CHARS]
        if update.reason:
            fields["uwhy"] = update.reason[:UPDATE_REASON_CHARS]
    if update_percent is not None:
        fields["update"] = str(update_percent)
    return _fit_frame(fields)


def _fit_frame(fields: dict[str, str]) -> dict[str, str]:
    """Shorten the longest free texts until every field fits one STATE frame.

    `encode_state` leaves out whole lines that overflow, the last keys first (the
    update's ``u…`` fields): cutting the health check's text (the HEALTH page wraps it
    anyway) and then the update's reason keeps every field on the panel.
    """
    for name in ("check", "uwhy"):
        size = sum(len(f"{k}={v[: panel_link.MAX_VALUE]}\n".encode()) for k, v in fields.items())
        over = size - panel_link.MAX_BODY
        if over <= 0:
            break
        if name in fields:
            text = fields[name][: panel_link.MAX_VALUE]
            fields[name] = text[: max(16, len(text) - over)]
    return fields


def _link_word(state: LinkState | None) -> str:
    return state.value if state is not None else "unknown"


def lan_address(bind: str) -> str:
    """Return the address LAN clients reach the box at (the first non-loopback IPv4)."""
    if bind not in ("0.0.0.0", "::", ""):  # noqa: S104 (a comparison, not a bind)
        return bind
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not address.address.startswith("127."):
                return str(address.address)
    return "127.0.0.1"


@dataclass(frozen=True)
class BoxView:
    """What a running provisioned box offers the panel (published by ``cli._serve``)."""

    hostname: str
    #: The health monitor's last round (appliance.health.monitor), in registry order.
    findings: Callable[[], list[Finding]]
    #: The outbound queue by urgency and sender (`MailStore.outbound_groups`).
    outbound_groups: Callable[[], Awaitable[QueueGroups]]


class BoxViewSlot:
    """Where the provisioned service set publishes its `BoxView` while it runs."""

    def __init__(self) -> None:
        self.current: BoxView | None = None

    @contextmanager
    def published(self, view: BoxView) -> Iterator[None]:
        """Publish *view* for the block: cleared before the box's databases close."""
        self.current = view
        try:
            yield
        finally:
            self.current = None


class PanelService:
    """Keep the front panel showing the box's state; hear its button."""

    name = "panel"

    def __init__(
        self, config: Config, device: Path, lifecycle: Lifecycle, views: BoxViewSlot
    ) -> None:
        self.config = config
        self.device = device
        self.lifecycle = lifecycle
        self.views = views
        self.client: PanelClient | None = None
        self._queue: QueueGroups = []
        self._status: SetupStatus | None = None
        self._prompted_at: float | None = None
        #: The USB stick news last shown: its number, when first shown, when repeated.
        self._stick_shown = (0, 0.0, 0.0)

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Started before the device opens: a missing panel must never keep mail down.
        task_status.started([])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_lifecycle)
            nursery.start_soon(self._watch_queue)
            while True:
                try:
                    port = TTYPort(self.device)
                except OSError as exc:
                    log.error("front panel %s: %s; retrying", self.device, exc.strerror or exc)
                    await trio.sleep(REOPEN_DELAY)
                    continue
                try:
                    await self._drive(port)
                except Exception:
                    # Outside any supervisor (it outlives the service sets): a fault in
                    # the panel's link is logged and the panel opened afresh, and mail
                    # never stops for it.
                    log.exception("front panel link failed; opening it again")
                    await trio.sleep(REOPEN_DELAY)
                finally:
                    port.close()

    async def _drive(self, port: TTYPort) -> None:
        client = PanelClient(
            port,
            self._on_event,
            heartbeat_s=self.config.panel_heartbeat,
            watchdog_s=self.config.panel_watchdog,
        )
        self.client = client
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            while True:
                self._prompt(trio.current_time())
                self._stick(trio.current_time())
                client.show(self._fields())
                await trio.sleep(self.config.panel_refresh)

    def _fields(self) -> dict[str, str]:
        status = self._status
        view = self.views.current
        lan = lan_address(self.config.bind)
        if status is not None and status.state is BoxState.UNPROVISIONED:
            # The setup path: no agency, no queue, no link monitor, no health monitor.
            return panel_fields(
                name=status.hostname,
                lan=lan,
                link=None,
                queue_groups=[],
                findings=[],
                provisioned=False,
                setup_code=status.setup_code or "",
                fingerprint=status.fingerprint,
                update=update_view(self.config.data_dir, time.time()),
            )
        return panel_fields(
            name=view.hostname if view else (status.hostname if status else "edgebox"),
            lan=lan,
            link=read_link_state(self.config.data_dir),
            queue_groups=self._queue if view else [],
            findings=view.findings() if view else [],
            # Written by whoever installs (the channel, a stick, `edgebox update install`).
            update=update_view(self.config.data_dir, time.time()),
        )

    async def _watch_lifecycle(self) -> None:
        while True:
            changed = self.lifecycle.changed()
            try:
                self._status = self.lifecycle.status()
            except OSError as exc:
                # Mid-reset the device certificate may be gone for a moment.
                log.warning("panel: cannot read the box's status: %s", exc.strerror or exc)
                with trio.move_on_after(REOPEN_DELAY):
                    await changed.wait()
                continue
            await changed.wait()

    async def _watch_queue(self) -> None:
        while True:
            view = self.views.current
            try:
                self._queue = await view.outbound_groups() if view else []
            except Exception:
                # The service set is stopping under us (its database closing): the
                # next look sees the new view.
                log.debug("panel: outbound queue not readable now", exc_info=True)
                self._queue = []
            await trio.sleep(QUEUE_INTERVAL)

    def _prompt(self, now: float) -> None:
        """Keep the reset prompt on the display for the confirm window, then drop it."""
        hold = self.lifecycle.panel_reset
        if hold.lapse(now):
            log.warning("front panel factory reset not confirmed in time; nothing done")
            self._prompted_at = None
            self._confirm("reset not confirmed; nothing changed")
            return
        if not hold.awaiting_confirmation:
            self._prompted_at = None
            return
        if self._prompted_at is None or now - self._prompted_at >= PROMPT_REPEAT:
            self._prompted_at = now
            self._confirm(RESET_PROMPT)

    def _stick(self, now: float) -> None:
        """Show a USB stick's progress once per step, and its result for a minute."""
        news = self.lifecycle.stick
        if news is None:
            return
        number, first, last = self._stick_shown
        if news.number != number:
            self._stick_shown = (news.number, now, now)
            self._confirm(news.text)
        elif news.final and now - first < STICK_RESULT_HOLD and now - last >= PROMPT_REPEAT:
            # The firmware shows a host's notice for 5 s: repeated, the result stays up
            # until the technician has looked (and pulled the stick).
            self._stick_shown = (number, first, now)
            self._confirm(news.text)

    def _confirm(self, text: str) -> None:
        if self.client is not None:
            self.client.confirm(text)

    def _on_event(self, event: PanelEvent) -> None:
        now = trio.current_time()
        hold = self.lifecycle.panel_reset
        if isinstance(event, HostWasReset):
            log.warning("the front panel reset this box: %s", event.reason)
            self._record({"what": "host-was-reset", "reason": event.reason})
        elif isinstance(event, ButtonPressed) and event.what == "factory-reset":
            log.warning("front panel asks for factory-reset")
            if hold.held(now):
                self._prompted_at = None
                self._prompt(now)
            else:
                self._confirm("box is unprovisioned already; nothing to reset")
        elif isinstance(event, ButtonPressed) and event.what == "next":
            if hold.awaiting_confirmation and hold.confirm(now):
                # The same request as the admin console's reset after its password:
                # the runner stops every service, erases, and serves the setup path.
                log.warning("front panel confirmed the factory reset: resetting the box")
                self._prompted_at = None
                self._confirm("factory reset: erasing, wait")
        elif isinstance(event, ButtonPressed) and event.what == "recovery":
            # No recovery image yet: the box says it heard and keeps the request.
            log.warning("front panel asks for %s (recorded in %s)", event.what, REQUESTS_FILE)
            self._record({"what": event.what})
            self._confirm(f"{event.what} request noted")

    def _record(self, entry: dict[str, str]) -> None:
        path = self.config.data_dir / REQUESTS_FILE
        entry = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc.strerror or exc)


def panel_service(config: Config, lifecycle: Lifecycle, views: BoxViewSlot) -> PanelService | None:
    """Return the panel service if the box has a front panel, else None."""
    device = config.panel_device
    if not device:
        try:
            board = detect_board(override=config.board)
        except UnknownBoard as exc:
            raise ConfigError(str(exc)) from None
        device = str(board.panel_device) if board and board.panel_device else ""
        if not device or not Path(device).exists():
            return None
    return PanelService(config, Path(device), lifecycle, views)
