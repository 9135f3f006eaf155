"""The panel service: shows the box's state on the front panel and hears its button.

It reads what other parts already keep (the link monitor's state file, the outbound
queue, the health checks), turns it into the panel's STATE fields (`panel_fields`, a
pure function) and hands them to `hw.panel.PanelClient`, which owns the serial link.
Button requests that the box cannot act on yet (factory reset and recovery: the
provisioning issue builds them) are logged, acknowledged on the panel and appended to
``DATA/run/panel-requests.jsonl``, the documented hook a later service reads.

Not started when there is no panel: no ``panel_device`` setting and no board profile
that has one (`panel_services` returns nothing).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import trio

from appliance.box import Box
from appliance.compliance.classification import Urgency
from appliance.config import ConfigError
from appliance.health import Finding, Level
from appliance.supervisor import Service
from appliance.sync.link import LinkSnapshot, LinkState, read_link_state
from hw.boards import UnknownBoard, detect_board
from hw.panel import ButtonPressed, HostWasReset, PanelClient, PanelEvent, TTYPort

log = logging.getLogger("edgebox.panel")

#: The hook file for requests from the panel's button (one JSON object a line).
REQUESTS_FILE = "run/panel-requests.jsonl"
#: Seconds between looks at the outbound queue (a database read in a worker thread; the
#: link state file is read every ``panel_refresh``, as a link change is what is urgent).
QUEUE_INTERVAL = 2.0
#: Seconds before a panel that cannot be opened is tried again.
REOPEN_DELAY = 5.0

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
    update_percent: int | None = None,
) -> dict[str, str]:
    """Return the panel's STATE fields for the box's state (firmware/pages.py reads them)."""
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
    if update_percent is not None:
        fields["update"] = str(update_percent)
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


class PanelService:
    """Keep the front panel showing the box's state; hear its button."""

    name = "panel"

    def __init__(self, box: Box, device: Path, findings: Callable[[], list[Finding]]) -> None:
        self.box = box
        self.device = device
        self.config = box.config
        self.client: PanelClient | None = None
        #: The health monitor's last round (appliance.health.monitor), in registry order.
        self.findings = findings
        self._queue: list[tuple[int, str, int, int]] = []

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Started before the device opens: a missing panel must never keep mail down.
        task_status.started([])
        while True:
            try:
                port = TTYPort(self.device)
            except OSError as exc:
                log.error("front panel %s: %s; retrying", self.device, exc.strerror or exc)
                await trio.sleep(REOPEN_DELAY)
                continue
            try:
                await self._drive(port)
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
            nursery.start_soon(self._watch_queue)
            while True:
                client.show(await self._fields())
                await trio.sleep(self.config.panel_refresh)

    async def _fields(self) -> dict[str, str]:
        return panel_fields(
            name=self.box.hostname,
            lan=lan_address(self.config.bind),
            link=read_link_state(self.config.data_dir),
            queue_groups=self._queue,
            findings=self.findings(),
        )

    async def _watch_queue(self) -> None:
        while True:
            self._queue = await self.box.mailstore.outbound_groups()
            await trio.sleep(QUEUE_INTERVAL)

    def _on_event(self, event: PanelEvent) -> None:
        if isinstance(event, HostWasReset):
            log.warning("the front panel reset this box: %s", event.reason)
            self._record({"what": "host-was-reset", "reason": event.reason})
        elif isinstance(event, ButtonPressed) and event.what in ("factory-reset", "recovery"):
            # The provisioning issue acts on these; until then the box says it heard.
            log.warning("front panel asks for %s (recorded in %s)", event.what, REQUESTS_FILE)
            self._record({"what": event.what})
            if self.client is not None:
                self.client.confirm(f"{event.what} request noted")

    def _record(self, entry: dict[str, str]) -> None:
        path = self.config.data_dir / REQUESTS_FILE
        entry = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc.strerror or exc)


def panel_services(box: Box, findings: Callable[[], list[Finding]]) -> list[Service]:
    """Return the panel service if the box has a front panel, else nothing."""
    device = box.config.panel_device
    if not device:
        try:
            board = detect_board(override=box.config.board)
        except UnknownBoard as exc:
            raise ConfigError(str(exc)) from None
        device = str(board.panel_device) if board and board.panel_device else ""
        if not device or not Path(device).exists():
            return []
    return [PanelService(box, Path(device), findings)]
