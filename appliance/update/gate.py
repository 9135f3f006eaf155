"""The health gate a freshly updated system must pass before it commits its slot.

The gate is the box's OWN health, and only that: the box is running and every LAN
listener answers, every database opened at its newest schema (the migrations ran), the
store writes, fsyncs and reads back, and the front panel's device is there when the board
has one. The uplink is deliberately absent: a GIN cut during the check is what the box
is built to ride out (DESIGN.md principle 2), and a gate that needs the network rolls
back good updates whenever the link is down (meta-seapath#287). The uplink services
(link monitor, replicators) bind no LAN port, so "every LAN listener" leaves them out
too; a replicator failing against a dead link never fails the gate.

Pure: `judge` takes a `GateReading` and returns findings; `read_gate` (in
appliance.update.confirm) gathers the reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.health import Finding, Level
from appliance.health.checks import services as services_check
from appliance.health.snapshot import ServiceState, Snapshot


@dataclass(frozen=True)
class GateReading:
    """Everything the gate judges, gathered once."""

    data_dir: Path
    now: float
    box_running: bool
    services: Mapping[str, ServiceState] = field(default_factory=dict)
    #: Database name -> (schema version found, newest this release knows); found may be
    #: newer after a rollback (additive steps only, appliance.store.schema).
    schemas: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: Why the store's write-and-read-back failed ("" when it worked; None: not tried,
    #: because the box could not be opened).
    store_error: str | None = None
    #: Why the box's data could not be opened (a migration that failed, say).
    open_error: str = ""
    #: The panel's device path when the board has one; `panel_present` says if it is there.
    panel_device: str = ""
    panel_present: bool = True


def judge(reading: GateReading) -> list[Finding]:
    """The gate's findings; the gate passes when none is an error."""
    return [
        *_services(reading),
        *_migrations(reading),
        *_store(reading),
        *_panel(reading),
    ]


def passed(findings: list[Finding]) -> bool:
    return not any(f.level is Level.ERROR for f in findings)


def _services(reading: GateReading) -> list[Finding]:
    lan = {name: s for name, s in reading.services.items() if s.addresses}
    if reading.box_running and not lan:
        return [Finding("services", Level.ERROR, "edgebox runs but serves no listener yet",
                        "edgebox ทำงานแต่ยังไม่เปิดให้บริการ")]  # fmt: skip
    snapshot = Snapshot(now=reading.now, data_dir=reading.data_dir,
                        box_running=reading.box_running, services=lan)  # fmt: skip
    # Restart warnings stay warnings: a service that came back is serving.
    return services_check.run(snapshot)


def _migrations(reading: GateReading) -> list[Finding]:
    if reading.open_error:
        why = reading.open_error
        return [Finding("migrations", Level.ERROR, f"the data cannot be opened: {why}",
                        f"เปิดข้อมูลไม่ได้: {why}")]  # fmt: skip
    schemas = sorted(reading.schemas.items())
    # Newer than this release is fine once the box opened it: only a file whose newer
    # steps are all additive gets that far (appliance.store.schema), which is how a
    # release that was rolled back to serves the data the failed one migrated.
    behind = [f"{name} {found}/{newest}" for name, (found, newest) in schemas if found < newest]
    if behind or not reading.schemas:
        what = ", ".join(behind) or "no database read"
        return [Finding("migrations", Level.ERROR, f"schema not at this release's version: {what}",
                        f"โครงสร้างฐานข้อมูลไม่ตรงกับรุ่นนี้: {what}")]  # fmt: skip
    return [Finding("migrations", Level.OK, "every database at this release's schema",
                    "ฐานข้อมูลทุกชุดตรงกับรุ่นนี้")]  # fmt: skip


def _store(reading: GateReading) -> list[Finding]:
    if reading.store_error is None:
        return []  # the box could not be opened: `_migrations` already said why
    if reading.store_error:
        why = reading.store_error
        return [Finding("store", Level.ERROR, f"the store cannot write and read back: {why}",
                        f"ที่เก็บข้อมูลเขียนและอ่านกลับไม่ได้: {why}")]  # fmt: skip
    return [Finding("store", Level.OK, "the store writes and reads back",
                    "ที่เก็บข้อมูลเขียนและอ่านได้")]  # fmt: skip


def _panel(reading: GateReading) -> list[Finding]:
    if not reading.panel_device:
        return []  # no front panel on this board
    if not reading.panel_present:
        return [Finding("panel", Level.ERROR, f"front panel device {reading.panel_device} missing",
                        f"ไม่พบอุปกรณ์แผงหน้าเครื่อง {reading.panel_device}")]  # fmt: skip
    return [Finding("panel", Level.OK, "front panel present", "พบแผงหน้าเครื่อง")]
