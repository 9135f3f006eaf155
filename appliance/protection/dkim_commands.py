"""The command line of DKIM: ``edgebox dkim show | rotate | retire --agency DOMAIN``.

``show`` makes the agency's first key if it has none and prints the DNS TXT records to
publish, in zone-file form: the DKIM keys, then the SPF and DMARC records every agency
domain should have (appliance.protection.publish: ``-all`` and ``p=reject``).
``rotate`` makes a new signing key beside the old one, which stays published until
``retire --selector`` is run for it (docs/protection.md).

What this is not: the keys themselves (appliance.protection.dkim).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from appliance.box import Box, configured, open_box
from appliance.protection.dkim import DkimKeyError, DkimKeyring, TxtRecord
from appliance.protection.publish import sender_records

#: RFC 1035 §3.3.14 / RFC 6376 §3.6.2.2: one TXT string holds at most 255 octets; a
#: longer record is several strings, which the verifier joins.
TXT_STRING = 255


def add(commands: Any) -> None:
    """Add ``dkim show``, ``dkim rotate`` and ``dkim retire`` to *commands*."""
    dkim = commands.add_parser("dkim", help="DKIM keys of the agencies and their DNS records")
    actions = dkim.add_subparsers(required=True, metavar="ACTION")

    def action(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
        sub.add_argument("--agency", required=True, help="the agency's mail domain")
        return sub

    action(
        "show",
        _show,
        "print the DNS TXT records to publish: DKIM (makes the first key), SPF, DMARC",
    )
    action("rotate", _rotate, "make a new signing key; the old one stays published")
    retire = action("retire", _retire, "stop publishing an old selector and destroy its key")
    retire.add_argument("--selector", required=True)


def zone_lines(record: TxtRecord, note: str | None = None) -> str:
    """Format *record* as a zone-file line, the value cut into 255-octet strings."""
    value = record.value
    strings = " ".join(f'"{value[i : i + TXT_STRING]}"' for i in range(0, len(value), TXT_STRING))
    if note is None:
        note = "signs now" if record.active else "old key, still published"
    return f"{record.name}. IN TXT ( {strings} ) ; {note}"


def _run(args: argparse.Namespace, change: Any, *, sender: bool = False) -> int:
    async def act() -> tuple[list[TxtRecord], list[TxtRecord]]:
        async with open_box(configured(args.data, os.environ, {})) as box:
            domain = await _agency(box, args.agency)
            keyring = DkimKeyring(box.config.data_dir / "keys")
            await trio.to_thread.run_sync(change, keyring, domain)
            keys = await trio.to_thread.run_sync(keyring.records, domain)
            return keys, sender_records(domain, box.config.central_smtp) if sender else []

    try:
        records, others = trio.run(act)
    except DkimKeyError as exc:
        print(f"edgebox: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(zone_lines(record))
    for record in others:
        print(zone_lines(record, "DMARC" if record.name.startswith("_dmarc.") else "SPF"))
    return 0


async def _agency(box: Box, domain: str) -> str:
    agency = await box.directory.agency(domain)
    if agency is None:
        raise DkimKeyError(f"the box does not serve {domain}")
    return agency.domain


def _today() -> Any:
    return datetime.now(UTC).date()


def _show(args: argparse.Namespace) -> int:
    return _run(args, lambda keyring, domain: keyring.ensure(domain, _today()), sender=True)


def _rotate(args: argparse.Namespace) -> int:
    return _run(args, lambda keyring, domain: keyring.rotate(domain, _today()))


def _retire(args: argparse.Namespace) -> int:
    return _run(args, lambda keyring, domain: keyring.retire(domain, args.selector))
