"""The command line of the USB stick: ``edgebox provision bundle create`` (the technician's
tool) and ``edgebox hub provisioning-cert`` / ``provisioning-revoke`` (the hub's).

Errors are `ProvisioningError`s, which ``edgebox`` prints as one line.

What this is not: the box's side (appliance.provisioning.usb).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance.provisioning.bundle import (
    ANSWERS,
    TOKEN,
    USERS,
    BundleError,
    create_bundle,
)
from appliance.provisioning.provision import ProvisioningError
from appliance.security.provisioning_ca import (
    CRL_FILE,
    DEFAULT_DAYS,
    issue_technician_certificate,
    revoke_technician_certificate,
)
from appliance.store.files import write_atomically

#: A bundle is for a visit: a week unless the technician says otherwise.
DEFAULT_BUNDLE_DAYS = 7


def add(commands: Any, hub_command: Any) -> None:
    """Add ``provision bundle create`` to *commands* and the hub's two commands."""
    provision = commands.add_parser("provision", help="the signed USB provisioning stick")
    groups = provision.add_subparsers(required=True, metavar="WHAT")
    bundle = groups.add_parser("bundle", help="provisioning bundles").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = bundle.add_parser(
        "create",
        help="write a signed bundle onto a folder or a mounted stick",
        description="write a signed bundle onto a folder or a mounted stick",
    )
    create.set_defaults(handler=_bundle_create)
    create.add_argument("--answers", type=Path, help="the setup answers (TOML)")
    create.add_argument("--users", type=Path, help="users to add (CSV)")
    create.add_argument("--token", help="an enrolment token from `edgebox hub token`")
    create.add_argument("--update", type=Path,
                        help="a signed system update (.raucb) the box installs")  # fmt: skip
    create.add_argument("--key", type=Path, required=True, help="the provisioning key (PEM)")
    create.add_argument(
        "--cert",
        type=Path,
        required=True,
        help="its certificate chain (PEM, from `edgebox hub provisioning-cert`)",
    )
    create.add_argument("--crl", type=Path, help="the hub's newest provisioning-crl.pem")
    create.add_argument(
        "--box-id",
        action="append",
        default=[],
        help="only this box may apply it (repeatable; default: any box)",
    )
    create.add_argument(
        "--days",
        type=float,
        default=DEFAULT_BUNDLE_DAYS,
        help=f"days until the bundle expires (default {DEFAULT_BUNDLE_DAYS})",
    )
    create.add_argument("--out", type=Path, required=True, help="the stick's mount point")

    cert = hub_command(
        "provisioning-cert",
        _hub_provisioning_cert,
        "issue a technician's provisioning key and certificate",
    )
    cert.add_argument("--name", required=True, help="the technician's name")
    cert.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"days the certificate stays valid (default {DEFAULT_DAYS})",
    )
    cert.add_argument("--out", type=Path, default=Path("."), help="folder for the key and chain")
    revoke = hub_command(
        "provisioning-revoke",
        _hub_provisioning_revoke,
        "revoke a technician's provisioning certificate",
    )
    revoke.add_argument(
        "serial", help="the certificate's serial (hex, as provisioning-cert printed)"
    )


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _bundle_create(args: argparse.Namespace) -> int:
    payload = {}
    if args.answers is not None:
        payload[ANSWERS] = args.answers.read_bytes()
    if args.users is not None:
        payload[USERS] = args.users.read_bytes()
    if args.token:
        payload[TOKEN] = args.token.strip().encode() + b"\n"
    if not payload and args.update is None:
        raise ProvisioningError(
            "nothing to put in the bundle: give --answers, --users, --token or --update",
            "ไม่มีข้อมูลสำหรับชุดข้อมูล: ระบุ --answers, --users, --token หรือ --update",
        )
    now = dt.datetime.now(dt.UTC)
    try:
        bundle_id = create_bundle(
            args.out,
            payload=payload,
            key_pem=args.key.read_bytes(),
            chain_pem=args.cert.read_bytes(),
            crl_pem=_read(args.crl),
            not_after=now + dt.timedelta(days=args.days),
            box_ids=tuple(args.box_id),
            now=now,
            update=args.update,
        )
    except BundleError as exc:
        raise ProvisioningError(exc.message_en, exc.message_th) from None
    except ValueError as exc:
        raise ProvisioningError(str(exc), f"สร้างชุดข้อมูลไม่ได้: {exc}") from None
    print(f"bundle {bundle_id} written to {args.out}, valid {args.days:g} days")
    return 0


def _slug(name: str, serial: int) -> str:
    """A file name for *name*'s key: its ASCII letters, else the serial (Thai names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or f"{serial:x}"[:12]


def _hub_provisioning_cert(args: argparse.Namespace) -> int:
    keys_dir = args.data / "keys"
    try:
        key_pem, chain_pem = issue_technician_certificate(keys_dir, args.name, args.days)
    except ValueError as exc:
        raise ProvisioningError(str(exc), f"ออกใบรับรองไม่ได้: {exc}") from None
    cert = x509.load_pem_x509_certificate(chain_pem)
    stem = args.out / f"provisioning-{_slug(args.name, cert.serial_number)}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(stem.with_suffix(".key"), key_pem, mode=0o600)
    write_atomically(stem.with_suffix(".pem"), chain_pem, mode=0o644)
    print(f"provisioning key {stem.with_suffix('.key')} and chain {stem.with_suffix('.pem')}")
    print(f"for {args.name}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    print(f"CA certificate for boxes: {keys_dir / 'provisioning-ca.pem'}")
    print(f"serial (to revoke): {cert.serial_number:x}")
    return 0


def _hub_provisioning_revoke(args: argparse.Namespace) -> int:
    try:
        serial = int(args.serial.replace(":", ""), 16)
    except ValueError:
        raise ProvisioningError(
            f"not a serial number: {args.serial}", f"ไม่ใช่หมายเลขใบรับรอง: {args.serial}"
        ) from None
    revoke_technician_certificate(args.data / "keys", serial)
    print(f"revoked {serial:x}; give boxes the new {args.data / 'keys' / CRL_FILE}")
    print("(copy it onto sticks with `edgebox provision bundle create --crl`)")
    return 0
