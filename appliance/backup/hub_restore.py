"""``edgebox backup restore --from https://hub``: a blank box brought back from the hub.

A blank box has no certificate, and the hub gives a box's backup sets only to that box
(`appliance.backup.offsite.routes`). So the restore first *re-enrols as the old box*:
with a one-time enrolment token of the box's agency (``edgebox hub token``) it asks the
hub for a certificate under the old box's id, exactly as ``edgebox enroll`` would
(`appliance.provisioning.enrol`: the hub's CA pinned by the token, a key made here).
The hub replaces the old box's certificate, so the dead box's copy stops working, and
from then on this box *is* that box to the hub: the box re-announces itself.

Then, in order:

1. the set (the newest, or the one named) is fetched into a work folder beside the
   data directory (`appliance.backup.offsite.download`), resumably: a restore cut off
   is run again with the same command, and neither the token (already spent) nor the
   pieces already fetched are needed again;
2. it is restored with the one restore (`appliance.backup.restore.restore_backup`):
   every file checked against the manifest under the recovery key, all or nothing;
3. the new certificate, its key and the hub's fresh service password replace the old
   ones in the restored ``keys/``, and the hub's URL is set in ``config.json``.

What this is not: an onsite restore (a folder: `restore_backup` alone).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from appliance.backup.offsite.download import fetch_set
from appliance.backup.restore import RestoreError, RestoreReport, restore_backup
from appliance.provisioning.enrol import EnrolError, Enrolled, enroll
from appliance.store.files import write_atomically
from appliance.store.settings import Settings
from appliance.sync.central import (
    CENTRAL_CA_FILE,
    CREDENTIALS_FILE,
    SYNC_CERT_FILE,
    SYNC_KEY_FILE,
)
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubRefused, HubUnavailable

#: What enrolment installs, and the restored box must hold instead of its old copies.
_ENROLMENT_FILES: Final = (SYNC_KEY_FILE, SYNC_CERT_FILE, CENTRAL_CA_FILE, CREDENTIALS_FILE)
_HUB_SETTINGS: Final = ("hub_url", "central_smtp", "central_imap")


@dataclass(frozen=True)
class HubRestore:
    """What a restore from the hub did."""

    restored: RestoreReport
    enrolled: Enrolled


def work_folder(data_dir: Path) -> Path:
    """The folder beside *data_dir* that a restore from the hub works in (kept if cut)."""
    return data_dir.parent / f".{data_dir.name}.from-hub"


async def restore_from_hub(
    data_dir: Path,
    hub_url: str,
    token: str,
    box_id: str,
    domain: str,
    key: bytes,
    *,
    set_name: str | None = None,
) -> HubRestore:
    """Restore box *box_id* of *domain* from the hub onto the blank *data_dir*."""
    # Checked before the token is spent.
    _check_blank(data_dir)
    work = work_folder(data_dir)
    stub = work / "enrolment"
    enrolled = _stub_enrolment(stub)
    if enrolled is None:
        await trio.to_thread.run_sync(_write_stub, stub, box_id, domain)
        try:
            enrolled = await enroll(stub, hub_url, token)
        except EnrolError as exc:
            raise RestoreError(f"the hub did not let this box in as {box_id}: {exc}") from None
    client = HubClient(stub / "keys", enrolled.hub_url, timeout=120)
    try:
        backup = await fetch_set(client, work / "target", set_name=set_name, box=box_id)
    except (HubUnavailable, HubRefused) as exc:
        raise RestoreError(
            f"fetching the backup from the hub failed ({exc}); run the same command "
            "again to go on where it stopped"
        ) from None
    except LookupError as exc:
        raise RestoreError(str(exc)) from None
    finally:
        await client.aclose()
    restored = await trio.to_thread.run_sync(restore_backup, data_dir, backup, key)
    await trio.to_thread.run_sync(_install_enrolment, stub, data_dir)
    shutil.rmtree(work, ignore_errors=True)
    return HubRestore(restored, enrolled)


def _check_blank(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RestoreError(f"{data_dir} is not empty; restore only onto a blank data directory")


def _write_stub(stub: Path, box_id: str, domain: str) -> None:
    # Just enough of a data directory for `enroll`: who the box is.
    shutil.rmtree(stub, ignore_errors=True)
    stub.mkdir(parents=True, mode=0o700)
    settings = Settings(stub / "config.json")
    try:
        settings.update("box", {"box_id": box_id, "domain": domain, "agency_name": "",
                                "created_at": 0})  # fmt: skip
    finally:
        settings.close()


def _stub_enrolment(stub: Path) -> Enrolled | None:
    """The enrolment a cut restore already made (its token is spent), or None."""
    if not all((stub / "keys" / name).is_file() for name in _ENROLMENT_FILES):
        return None
    settings = Settings(stub / "config.json")
    try:
        box, config = settings.get("box"), settings.get("config")
    finally:
        settings.close()
    if not box or not config.get("hub_url"):
        return None
    return Enrolled(str(box["box_id"]), str(box["domain"]), str(config["hub_url"]),
                    str(config.get("central_smtp", "")), str(config.get("central_imap", "")),
                    "")  # fmt: skip


def _install_enrolment(stub: Path, data_dir: Path) -> None:
    for name in _ENROLMENT_FILES:
        source = stub / "keys" / name
        mode = 0o600 if name in (SYNC_KEY_FILE, CREDENTIALS_FILE) else 0o644
        write_atomically(data_dir / "keys" / name, source.read_bytes(), mode=mode)
    stub_settings = Settings(stub / "config.json")
    try:
        fresh = {k: v for k, v in stub_settings.get("config").items() if k in _HUB_SETTINGS}
    finally:
        stub_settings.close()
    settings = Settings(data_dir / "config.json")
    try:
        settings.update("config", fresh)
    finally:
        settings.close()
