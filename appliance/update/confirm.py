"""After a boot: commit the running slot, or fall back, and write down which and why.

Runs once per boot (``edgebox update confirm``, from ``edgebox-update-confirm.service``
after ``edgebox.service``). `decide` is the pure rule; `confirm_boot` gathers the gate
reading, retries it while the box is still coming up, tells RAUC and records the outcome
in ``update/state.json`` (appliance.update.outcome).

The rule, for an update installed on an earlier boot (`Pending`):

- booted into the new slot and the gate passes → mark it good (RAUC: the bootloader
  stops counting its tries), record ``good``;
- booted into the new slot and the gate still fails after the wait → mark it bad and
  reboot: the bootloader starts the old slot; record ``rolled_back`` with the findings;
- booted into the OLD slot → the new system never got as far as committing (it hung,
  crashed or rebooted until the bootloader's try counter ran out): record
  ``rolled_back`` so the old release tells the admin and the hub what happened.

With nothing pending the running slot is marked good when the gate passes (so a box
that was rolled back keeps its good slot good) and nothing is ever marked bad: without
an update there is no other slot worth falling back to.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.box import Box, open_box
from appliance.config import Config
from appliance.directory.schema import DIRECTORY_MIGRATIONS
from appliance.health import Finding, Level
from appliance.health.snapshot import services_from_status_file
from appliance.mail.mailstore import MAIL_MIGRATIONS
from appliance.update import outcome
from appliance.update.gate import GateReading, judge, passed
from appliance.update.outcome import Pending
from appliance.update.rauc import Rauc

#: How long a new system may take to come up before its gate failures count.
DEFAULT_WAIT = 300.0
RETRY_INTERVAL = 5.0


class Action(enum.Enum):
    #: Not rebooted since the install: nothing to judge yet.
    WAIT_FOR_REBOOT = "wait-for-reboot"
    #: New slot passed: mark good, record "good".
    COMMIT = "commit"
    #: New slot failed: mark bad, record "rolled_back", reboot.
    FALL_BACK = "fall-back"
    #: Running the old slot after an install: record "rolled_back".
    FELL_BACK = "fell-back"
    #: No update pending and healthy: mark the running slot good.
    KEEP = "keep"
    #: No update pending and unhealthy: leave the slots alone (the health check reports it).
    NOTHING = "nothing"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str = ""


def decide(pending: Pending | None, booted: str, boot_id: str, findings: list[Finding]) -> Verdict:
    """What to do after this boot; see the module docstring."""
    ok = passed(findings)
    failed = "; ".join(f"{f.check}: {f.en}" for f in findings if f.level is Level.ERROR)
    if pending is None:
        return Verdict(Action.KEEP if ok else Action.NOTHING)
    if pending.boot_id == boot_id:
        return Verdict(Action.WAIT_FOR_REBOOT)
    if booted == pending.to_slot:
        if ok:
            return Verdict(Action.COMMIT)
        return Verdict(Action.FALL_BACK, f"health gate failed: {failed}")
    return Verdict(
        Action.FELL_BACK,
        f"slot {pending.to_slot} never passed its health gate; the bootloader started "
        f"slot {booted} again",
    )


def boot_id() -> str:
    """This boot's id (a new one at every kernel start)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


async def read_gate(config: Config, now: float) -> GateReading:
    """Gather what the gate judges from the running box (blocking probes in threads)."""
    data_dir = config.data_dir
    running, services = await trio.to_thread.run_sync(
        services_from_status_file, data_dir / "run" / "status.json"
    )
    panel_device = config.panel_device
    present = not panel_device or await trio.Path(panel_device).exists()
    reading = GateReading(
        data_dir=data_dir, now=now, box_running=running, services=services,
        panel_device=panel_device, panel_present=present,
    )  # fmt: skip
    try:
        async with open_box(config) as box:
            # Opening runs the migrations; reading the versions back proves they ran.
            schemas: dict[str, tuple[int, int]] = {}
            for name, db, newest in (
                ("directory", box.directory_db, len(DIRECTORY_MIGRATIONS)),
                ("mail", box.mail_db, len(MAIL_MIGRATIONS)),
            ):
                found = await db.read(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]))
                schemas[name] = (found, newest)
            store_error = await _write_and_read_back(box)
    except Exception as exc:  # the finding says why; the gate never crashes
        return dataclasses.replace(reading, open_error=str(exc) or type(exc).__name__)
    return dataclasses.replace(reading, schemas=schemas, store_error=store_error)


async def _write_and_read_back(box: Box) -> str:
    """Commit a transaction and put, read and delete a probe blob; "" when all worked."""
    try:
        # A job through the one writer: a real transaction and fsync.
        await box.mail_db.write(lambda c: c.execute("PRAGMA user_version").fetchone())
        probe = b"edgebox update gate " + secrets.token_bytes(16)
        blobs = box.mailstore.blobs
        blob_id = await trio.to_thread.run_sync(blobs.put, probe)
        try:
            back = await trio.to_thread.run_sync(blobs.get, blob_id)
        finally:
            await trio.to_thread.run_sync(blobs.delete, blob_id)
        return "" if back == probe else "the probe blob read back differently"
    except Exception as exc:  # reported as the store finding
        return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Confirmed:
    verdict: Verdict
    findings: list[Finding]
    rebooting: bool = False


async def confirm_boot(
    data_dir: Path,
    rauc: Rauc,
    gather: Callable[[float], Awaitable[GateReading]],
    *,
    now: Callable[[], float],
    this_boot: str,
    wait: float = DEFAULT_WAIT,
    reboot: Callable[[], None] | None = None,
) -> Confirmed:
    """Judge this boot, tell RAUC, record the outcome; see the module docstring."""
    state = outcome.read_state(data_dir)
    pending = state.pending
    booted = rauc.status().booted
    deadline = trio.current_time() + wait
    while True:
        findings = judge(await gather(now()))
        verdict = decide(pending, booted, this_boot, findings)
        # Only a failing new slot is worth waiting for: it may still be starting.
        if verdict.action is not Action.FALL_BACK or trio.current_time() >= deadline:
            break
        await trio.sleep(min(RETRY_INTERVAL, max(0.0, deadline - trio.current_time())))
    version = pending.version if pending else ""
    if verdict.action is Action.COMMIT:
        rauc.mark("good")
        outcome.record(data_dir, "good", version, booted, now(), pending=None)
    elif verdict.action is Action.FALL_BACK:
        rauc.mark("bad")
        outcome.record(
            data_dir, "rolled_back", version, booted, now(), verdict.reason, pending=None
        )
        if reboot is not None:
            reboot()
            return Confirmed(verdict, findings, rebooting=True)
    elif verdict.action is Action.FELL_BACK:
        if passed(findings):
            rauc.mark("good")
        outcome.record(
            data_dir, "rolled_back", version, booted, now(), verdict.reason, pending=None
        )
    elif verdict.action is Action.KEEP:
        rauc.mark("good")
    return Confirmed(verdict, findings)
