"""Helpers for the USB-stick tests: a hub's provisioning CA, a technician, bundles."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from appliance.provisioning.bundle import ANSWERS, USERS, create_bundle
from appliance.security.provisioning_ca import (
    CA_CERT,
    CRL_FILE,
    issue_technician_certificate,
)

DOMAIN = "usb.go.th"
ADMIN = f"admin@{DOMAIN}"
PASSWORD = "แฟลชไดรฟ์-2569-ok"

ANSWERS_TOML = f"""
[agency]
domain = "{DOMAIN}"
name_th = "สำนักงานทดสอบแฟลชไดรฟ์"
name_en = "USB Test Office"

[admin]
address = "{ADMIN}"
name_th = "ผู้ดูแล ระบบ"
password = "{PASSWORD}"
""".encode()

USERS_CSV = (
    "email,name_th,name_en,unit,password,admin\n"
    f"somchai@{DOMAIN},สมชาย ใจดี,Somchai,ฝ่ายบริหาร,รหัสผ่าน-ยาวพอ-1,no\n"
    f"suda@{DOMAIN},สุดา รักงาน,,,รหัสผ่าน-ยาวพอ-2,yes\n"
).encode()


@dataclass
class Technician:
    """A hub's provisioning CA and one technician's key and chain."""

    hub_keys: Path
    key: bytes
    chain: bytes

    @property
    def ca_pem(self) -> bytes:
        return (self.hub_keys / CA_CERT).read_bytes()

    @property
    def crl_pem(self) -> bytes:
        return (self.hub_keys / CRL_FILE).read_bytes()

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.chain).serial_number


def technician(folder: Path, name: str = "ช่างสมศักดิ์", days: int = 30) -> Technician:
    keys_dir = folder / "keys"
    key, chain = issue_technician_certificate(keys_dir, name, days)
    return Technician(keys_dir, key, chain)


def write_bundle(
    stick: Path,
    tech: Technician,
    *,
    answers: bytes | None = ANSWERS_TOML,
    users: bytes | None = None,
    days: float = 7,
    box_ids: tuple[str, ...] = (),
    now: dt.datetime | None = None,
    update: Path | None = None,
) -> str:
    payload = {}
    if answers is not None:
        payload[ANSWERS] = answers
    if users is not None:
        payload[USERS] = users
    return create_bundle(
        stick, payload=payload, key_pem=tech.key, chain_pem=tech.chain,
        not_after=(now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=days),
        box_ids=box_ids, now=now, update=update,
    )  # fmt: skip
