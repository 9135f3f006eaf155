"""Provisioning: turn an unprovisioned box into an agency's box, atomically.

The box is *provisioned* exactly when ``DATA/config.json`` holds its identity (the
``box`` section; appliance.identity.read_identity). `provision` makes everything else first —
keys, databases, the agency, the first admin — and writes the identity last, in one
atomic replace of config.json (temp file, fsync, rename, fsync the folder;
appliance.store.settings). A crash at any point therefore leaves either the old state
(no identity: whatever was made is discarded by `discard_unfinished` at the next start
or the next attempt) or the new one (identity, agency and admin all there).

The web setup path, `edgebox init` and, later, the USB stick all call `provision`.

What this is not: the HTTP routes (setup_api.py) or the running box's switch from the
setup path to the full service set (lifecycle.py, appliance.cli).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from appliance.box import FirstAdmin, init_box
from appliance.directory import DirectoryError, normalise_address, normalise_domain
from appliance.identity import Identity, read_identity
from appliance.provisioning.device import DEVICE_DIR, ensure_device
from appliance.provisioning.reset import erase_agency_data
from appliance.security import passwords

LOCK_FILE = "box.lock"
#: Held exclusive while a process serves the setup path: a second `edgebox run` on the
#: same blank directory must not discard what the first is provisioning.
SETUP_LOCK_FILE = "setup.lock"

#: The first admin administers the whole box from anywhere on the LAN: a password a
#: guesser behind the sign-in guard cannot reach (the console's forms ask for none).
MIN_ADMIN_PASSWORD = 10


class ProvisioningError(Exception):
    """A provisioning request the box refuses; nothing was changed."""

    def __init__(self, message_en: str, message_th: str) -> None:
        super().__init__(message_en)
        self.message_en = message_en
        self.message_th = message_th


@dataclass(frozen=True)
class ProvisioningRequest:
    """What provisioning needs: the agency and its first admin (the wizard's answers)."""

    domain: str
    agency_name_th: str
    agency_name_en: str | None
    admin_address: str
    admin_name_th: str
    admin_name_en: str | None
    #: Exactly one of the two: the password (`edgebox init`, the USB stick) or its hash
    #: (`passwords.hash_password`; the setup wizard, whose draft must not hold the
    #: password, checked its length before hashing it).
    admin_password: str | None = None
    admin_password_hash: str | None = None

    def checked(self) -> ProvisioningRequest:
        """Return the request with its domain and address normalised, or raise."""
        try:
            domain = normalise_domain(self.domain)
            address = normalise_address(self.admin_address)
        except DirectoryError as exc:
            raise ProvisioningError(str(exc), f"ข้อมูลไม่ถูกต้อง: {exc}") from None
        if address.rpartition("@")[2] != domain:
            raise ProvisioningError(
                f"the first admin's address must be in {domain}",
                f"ที่อยู่อีเมลของผู้ดูแลระบบคนแรกต้องอยู่ในโดเมน {domain}",
            )
        if not self.agency_name_th.strip() or not self.admin_name_th.strip():
            raise ProvisioningError(
                "the agency's and the admin's Thai names are required",
                "ต้องระบุชื่อภาษาไทยของหน่วยงานและของผู้ดูแลระบบ",
            )
        if (self.admin_password is None) == (self.admin_password_hash is None):
            raise ProvisioningError(
                "give the first admin's password or its hash, not both",
                "ต้องระบุรหัสผ่านของผู้ดูแลระบบคนแรก หรือค่าแฮชของรหัสผ่าน อย่างใดอย่างหนึ่ง",
            )
        if self.admin_password_hash is not None:
            if not passwords.is_password_hash(self.admin_password_hash):
                raise ProvisioningError(
                    "the first admin's password hash is not in the box's format",
                    "ค่าแฮชรหัสผ่านของผู้ดูแลระบบคนแรกไม่อยู่ในรูปแบบของเครื่อง",
                )
        elif len(self.admin_password or "") < MIN_ADMIN_PASSWORD:
            raise ProvisioningError(
                f"the first admin's password needs at least {MIN_ADMIN_PASSWORD} characters",
                f"รหัสผ่านของผู้ดูแลระบบคนแรกต้องยาวอย่างน้อย {MIN_ADMIN_PASSWORD} ตัวอักษร",
            )
        return ProvisioningRequest(
            domain=domain,
            agency_name_th=self.agency_name_th.strip(),
            agency_name_en=(self.agency_name_en or "").strip() or None,
            admin_address=address,
            admin_name_th=self.admin_name_th.strip(),
            admin_name_en=(self.admin_name_en or "").strip() or None,
            admin_password=self.admin_password,
            admin_password_hash=self.admin_password_hash,
        )


async def provision(data_dir: Path, request: ProvisioningRequest) -> Identity:
    """Provision the box at *data_dir* with *request*; return its new identity.

    Raises `ProvisioningError` if the box is already provisioned or the request is
    refused (bad domain, short password ...); the box then stays unprovisioned.
    """
    request = request.checked()
    # The setup path and a USB stick may ask at the same moment: one at a time, so the
    # second sees the first's identity and is refused.
    async with _ONE_AT_A_TIME:
        return await _provision(data_dir, request)


#: Provisioning in this process, serialised (the box lock keeps other processes out).
_ONE_AT_A_TIME: Final = trio.Lock()


async def _provision(data_dir: Path, request: ProvisioningRequest) -> Identity:
    if read_identity(data_dir) is not None:
        raise ProvisioningError(
            "the box is already provisioned; only a factory reset makes it new again",
            "เครื่องนี้ตั้งค่าแล้ว ต้องล้างเครื่องเป็นค่าโรงงานก่อนจึงจะตั้งค่าใหม่ได้",
        )
    device = await trio.to_thread.run_sync(ensure_device, data_dir)
    # Whatever an earlier attempt made and did not finish goes first: a half-made
    # directory is never reused, so every provisioned box was made in one go.
    await trio.to_thread.run_sync(discard_unfinished, data_dir)
    admin = FirstAdmin(
        request.admin_address, request.admin_password, request.admin_name_th,
        request.admin_name_en, request.admin_password_hash,
    )  # fmt: skip
    try:
        await init_box(
            data_dir, request.domain, request.agency_name_th,
            agency_name_en=request.agency_name_en, box_id=device.box_id, first_admin=admin,
        )  # fmt: skip
    except DirectoryError as exc:
        # Refused by the directory's own checks (e.g. a short password): the identity
        # was not written, and what was made is discarded now rather than at next start.
        await trio.to_thread.run_sync(discard_unfinished, data_dir)
        raise ProvisioningError(str(exc), f"ตั้งค่าไม่ได้: {exc}") from None
    identity = read_identity(data_dir)
    assert identity is not None  # written by init_box, just now
    return identity


def discard_unfinished(data_dir: Path) -> bool:
    """Erase what an unfinished provisioning left; return whether there was any.

    Only on an unprovisioned box (no identity); on a provisioned one it does nothing.
    ``config.json`` (the operator's settings, no identity) and the device stay.
    """
    if read_identity(data_dir) is not None or not data_dir.is_dir():
        return False
    return erase_agency_data(data_dir, keep_settings=True)


@contextmanager
def box_lock(data_dir: Path, *, exclusive: bool, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold the data directory's lock: shared while a box runs, exclusive to change state.

    `edgebox run` holds it shared (so a second `run` still reaches its port clash);
    `edgebox init` and `edgebox factory-reset` need it exclusive and refuse at once when
    a box is running on the directory.
    """
    path = data_dir / DEVICE_DIR
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisioningError(
                f"a box is running on {data_dir}; stop it first",
                f"มีเครื่องแม่ข่ายกำลังทำงานกับ {data_dir} อยู่ กรุณาหยุดก่อน",
            ) from None
        yield
    finally:
        os.close(fd)
