"""``edgebox hub signatures publish DIR`` (the hub) and ``edgebox signatures stick`` (a
technician's offline set); docs/protection.md "Signature updates".

Errors print as one line and exit 2; nothing is written unless every step worked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

from appliance.protection.signatures.manifest import (
    STICK_DIR,
    collect_mirror,
    make_manifest,
    write_set,
)
from appliance.protection.signatures.sync import MIRROR_DIR
from appliance.security.provisioning_ca import issue_technician_certificate

#: The hub's own signing certificate for a set lives this long: a box cut off for
#: months must still accept the last set it was sent (issue 23, "during a cut").
PUBLISH_DAYS = 365
#: The largest set a publish takes (a full ClamAV main.cvd is ~170 MB).
MAX_SET = 2 * 1024 * 1024 * 1024


def add(commands: Any, hub_command: Any) -> None:
    """Add ``edgebox hub signatures publish`` and ``edgebox signatures stick``."""
    hub = hub_command("signatures", None, "signature sets the hub serves to boxes")
    publish = hub.add_subparsers(required=True, metavar="ACTION").add_parser(
        "publish",
        help="sign a mirror folder of ClamAV databases and rspamd rules; serve it to boxes",
        description="sign a mirror folder of ClamAV databases and rspamd rules; serve it",
    )
    publish.set_defaults(handler=_publish)
    publish.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
    publish.add_argument("folder", type=Path, help="the mirror folder (freshclam's, or by hand)")
    stick = commands.add_parser(
        "signatures", help="signature sets for boxes cut off from the hub",
    ).add_subparsers(required=True, metavar="ACTION")  # fmt: skip
    what = "write a signed signature set onto a USB stick"
    make = stick.add_parser("stick", help=what, description=what)
    make.set_defaults(handler=_stick)
    make.add_argument("folder", type=Path, help="the mirror folder")
    make.add_argument("--key", type=Path, required=True, help="the technician's key")
    make.add_argument(
        "--cert", type=Path, required=True,
        help="its certificate chain (from `edgebox hub provisioning-cert`)",
    )  # fmt: skip
    make.add_argument("--out", type=Path, required=True, help="the stick's mount point")


def _read(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    found = collect_mirror(folder)
    if not found:
        raise ValueError(f"{folder} holds no ClamAV database or rspamd file")
    if sum(path.stat().st_size for path in found.values()) > MAX_SET:
        raise ValueError(f"{folder} is larger than {MAX_SET} bytes")
    return {name: path.read_bytes() for name, path in found.items()}


def _sign_into(out: Path, files: dict[str, bytes], key: bytes, chain: bytes) -> str:
    raw, signature = make_manifest(files, key, now=dt.datetime.now(dt.UTC))
    # Into a fresh folder beside the old one, then swapped: the hub never serves a
    # manifest whose files are half replaced.
    staging = out.with_name(out.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_set(staging, files, raw, signature, chain)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
    return f"{len(files)} files, {sum(map(len, files.values()))} bytes"


def _publish(args: argparse.Namespace) -> int:
    try:
        files = _read(args.folder)
        key, chain = issue_technician_certificate(
            args.data / "keys", "edgebox hub signature mirror", PUBLISH_DAYS
        )
        summary = _sign_into(args.data / MIRROR_DIR, files, key, chain)
    except (OSError, ValueError) as exc:
        print(f"edgebox: {exc}")
        return 2
    print(f"published {summary}; boxes fetch it in their next round")
    return 0


def _stick(args: argparse.Namespace) -> int:
    try:
        files = _read(args.folder)
        summary = _sign_into(
            args.out / STICK_DIR, files, args.key.read_bytes(), args.cert.read_bytes()
        )
    except (OSError, ValueError) as exc:
        print(f"edgebox: {exc}")
        return 2
    print(f"wrote {summary} to {args.out / STICK_DIR}")
    return 0
