"""``edgebox update …``: make keyrings and bundles (build machine), install and confirm
updates (the box); ``edgebox hub update publish`` (the hub's update channel).
Documented in docs/cli.md and docs/updates.md.

Each handler returns the exit code and prints one line for a refusal (exit 1); RAUC's
own reason is part of it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from appliance.box import configured
from appliance.sync.central import central_client_context
from appliance.update import outcome, progress
from appliance.update.bundle import BundleError, make_bundle
from appliance.update.channel import DEFAULT_KEEP, PublishError, publish
from appliance.update.confirm import DEFAULT_WAIT, Action, boot_id, confirm_boot, read_gate
from appliance.update.download import DownloadError, Expected, discard_part, download
from appliance.update.install import UpdateError, install_bundle
from appliance.update.keyring import CHANNELS, KeyringError, ensure_keyring, open_keyring
from appliance.update.manifest import Manifest
from appliance.update.rauc import RaucCommand, RaucError
from appliance.update.system_conf import box_system_conf


def add(commands: Any, hub_command: Any) -> None:
    """Add ``edgebox update`` and its actions to the top-level *commands*, and ``hub
    update publish`` through *hub_command* (the ``edgebox hub`` actions' maker)."""
    update = commands.add_parser("update", help="signed A/B system updates (RAUC)")
    actions = update.add_subparsers(required=True, metavar="ACTION")

    def action(name: str, handler: Any, help: str, *, box: bool = True) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        if box:
            default = Path(os.environ.get("EDGEBOX_DATA", "var"))
            sub.add_argument("--data", type=Path, default=default,
                             help="data directory (default: $EDGEBOX_DATA or ./var)")  # fmt: skip
            sub.add_argument("--rauc-conf", type=Path,
                             help="RAUC system.conf (default /etc/rauc/system.conf)")  # fmt: skip
            # A sandbox (tests, a technician's bench) plays the reboots itself.
            sub.add_argument("--boot-id", default="", help=argparse.SUPPRESS)
        return sub

    keyring = action("keyring", _keyring, "make a channel's update signing keyring (build machine)",
                     box=False)  # fmt: skip
    keyring.add_argument("--dir", type=Path, required=True, help="the keyrings' folder")
    keyring.add_argument("--channel", choices=CHANNELS, required=True)

    bundle = action("bundle", _bundle, "sign a root filesystem image into a RAUC bundle",
                    box=False)  # fmt: skip
    bundle.add_argument("--rootfs", type=Path, required=True, help="the root filesystem (ext4)")
    bundle.add_argument("--keyring", type=Path, required=True, help="the keyrings' folder")
    bundle.add_argument("--channel", choices=CHANNELS, required=True)
    bundle.add_argument("--version", required=True, help="the release, e.g. 2026.12.1")
    bundle.add_argument("--compatible", default="edgebox-amd64")
    bundle.add_argument("--format", choices=("verity", "plain"), default="verity",
                        help="verity (boxes) or plain (no device-mapper)")  # fmt: skip
    bundle.add_argument("--out", type=Path, required=True, help="the bundle file to write")

    conf = action("system-conf", _system_conf, "print the box's RAUC system.conf (image build)",
                  box=False)  # fmt: skip
    conf.add_argument("--compatible", default="edgebox-amd64")

    install = action("install", _install, "install a signed bundle into the other slot")
    install.add_argument("source", help="a bundle file or an https:// URL (fetched with the "
                         "box's sync certificate, resumable)")  # fmt: skip
    install.add_argument("--sha256", help="with a URL: the bundle's SHA-256, checked before RAUC")
    install.add_argument("--size", type=int, help="with a URL: the bundle's size in bytes")
    install.add_argument("--reboot", action="store_true", help="reboot into it when written")

    confirm = action(
        "confirm", _confirm, "after boot: keep this slot if its health gate passes, else fall back"
    )
    confirm.add_argument(
        "--wait", type=float, default=DEFAULT_WAIT,
        help=f"seconds to retry a failing gate (default {DEFAULT_WAIT:.0f})",
    )  # fmt: skip
    confirm.add_argument("--no-reboot", action="store_true",
                         help="mark a failing slot bad, do not reboot")  # fmt: skip

    action("status", _status, "show the pending update and the update history")

    hub_update = hub_command("update", None, "the hub's update channel")
    hub_actions = hub_update.add_subparsers(required=True, metavar="ACTION")
    published = hub_actions.add_parser(
        "publish", help="offer a signed bundle to the boxes of a channel",
        description="offer a signed bundle to the boxes of a channel",
    )  # fmt: skip
    published.set_defaults(handler=_publish)
    published.add_argument("bundle", type=Path, help="the .raucb file")
    published.add_argument("--channel", default="stable", help="the channel (default stable)")
    published.add_argument(
        "--keyring", type=Path, help="check the signature against this CA first (recommended)"
    )
    published.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")),
                           help="the hub's data directory")  # fmt: skip
    published.add_argument(
        "--keep", type=int, default=DEFAULT_KEEP,
        help=f"bundles kept per channel; older ones no box reports go (default {DEFAULT_KEEP})",
    )  # fmt: skip


def _keyring(args: argparse.Namespace) -> int:
    try:
        keyring = ensure_keyring(args.dir, args.channel)
    except KeyringError as exc:
        return _fail(str(exc))
    print(f"{args.channel} keyring: boxes trust {keyring.ca_cert}; "
          f"bundles are signed with {keyring.signing_cert}")  # fmt: skip
    return 0


def _bundle(args: argparse.Namespace) -> int:
    try:
        keyring = open_keyring(args.keyring, args.channel)
        manifest = Manifest(args.compatible, args.version, bundle_format=args.format)
        make_bundle(args.rootfs, keyring, args.out, manifest)
    except (KeyringError, BundleError, ValueError) as exc:
        return _fail(str(exc))
    print(f"bundle {args.out}: edgebox {args.version} for {args.compatible}, "
          f"signed by the {args.channel} keyring")  # fmt: skip
    return 0


def _system_conf(args: argparse.Namespace) -> int:
    sys.stdout.write(box_system_conf(args.compatible).render())
    return 0


def _install(args: argparse.Namespace) -> int:
    data: Path = args.data
    fetched = "://" in args.source

    def moved(phase: str, percent: int) -> None:
        progress.write_progress(data, progress.Progress(phase, percent, "", time.time()))

    try:
        bundle = _fetch(args, data) if fetched else Path(args.source)
        done = install_bundle(data, _rauc(args), bundle, now=time.time,
                              this_boot=args.boot_id or boot_id(), progress=moved)  # fmt: skip
    except DownloadError as exc:
        # The part stays: the same command again goes on from where this one stopped.
        progress.clear_progress(data)
        return _fail(f"update not installed, nothing changed on this system: {exc}")
    except (UpdateError, RaucError) as exc:
        progress.clear_progress(data)
        if fetched:
            discard_part(data)  # refused: fetching it again would not help
        return _fail(f"update not installed, nothing changed on this system: {exc}")
    if fetched:
        discard_part(data)  # installed: the download's space back
    print(f"edgebox {done.version} written to slot {done.to_slot}; it runs after a reboot "
          "and is kept only if it passes its health checks")  # fmt: skip
    if args.reboot:
        progress.write_progress(data, progress.Progress(progress.REBOOTING, 100, done.version,
                                                        time.time()))  # fmt: skip
        _reboot()
    else:
        progress.clear_progress(data)
    return 0


def _fetch(args: argparse.Namespace, data: Path) -> Path:
    """Download the URL with the box's sync certificate; resumes a cut download."""
    if (args.sha256 is None) != (args.size is None):
        raise DownloadError("give --sha256 and --size together (or neither)")
    expected = Expected(args.size, args.sha256.lower()) if args.sha256 else None

    def moved(held: int, total: int) -> None:
        percent = int(held * 100 / total) if total else 0
        progress.write_progress(data, progress.Progress(progress.DOWNLOADING, percent, "",
                                                        time.time()))  # fmt: skip

    context = central_client_context(data / "keys")
    return trio.run(lambda: download(args.source, data, context, expected=expected,
                                     progress=moved))  # fmt: skip


def _publish(args: argparse.Namespace) -> int:
    try:
        done = publish(args.data, args.bundle, args.channel, keyring=args.keyring, keep=args.keep)
    except (PublishError, OSError) as exc:
        return _fail(f"not published: {exc}")
    print(f"channel {args.channel}: edgebox {done.version} for {done.compatible}, "
          f"{done.size} bytes, sha256 {done.sha256}")  # fmt: skip
    return 0


def _confirm(args: argparse.Namespace) -> int:
    config = configured(args.data, os.environ, {})

    async def gather(now: float) -> Any:
        return await read_gate(config, now)

    this_boot = args.boot_id or boot_id()
    try:
        done = trio.run(
            lambda: confirm_boot(
                config.data_dir, _rauc(args), gather, now=time.time, this_boot=this_boot,
                wait=args.wait, reboot=None if args.no_reboot else _reboot,
            )
        )  # fmt: skip
    except RaucError as exc:
        # Exit 2, not 1: the unit reboots on failure (FailureAction=reboot), and a RAUC
        # that cannot be asked is no reason to reboot; the boot counter still decides.
        _fail(f"RAUC: {exc}")
        return 2
    for finding in done.findings:
        print(f"  [{finding.level.name.lower():5}] {finding.check}: {finding.en}")
    print(
        f"{done.verdict.action.value}" + (f": {done.verdict.reason}" if done.verdict.reason else "")
    )
    # Exit 1 only for a slot marked bad: edgebox-update-confirm.service then reboots
    # into the old slot (FailureAction=reboot). An unhealthy box with no update pending
    # is the health checks' business, not a reason to reboot.
    return 1 if done.verdict.action is Action.FALL_BACK else 0


def _status(args: argparse.Namespace) -> int:
    state = outcome.read_state(args.data)
    if state.pending:
        p = state.pending
        print(f"pending: edgebox {p.version} in slot {p.to_slot} (from {p.from_slot}), "
              "judged at the next boot")  # fmt: skip
    if not state.events:
        print("no update installed yet")
    for event in state.events[-10:]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(event.at))
        why = f" — {event.reason}" if event.reason else ""
        print(f"{when} UTC  {event.event:11} {event.version or '-':12} slot {event.slot}{why}")
    # The report queue (appliance.update.report): what the hub has not acknowledged yet,
    # so a technician sees whether the centre already knows of a rollback.
    if waiting := len(state.unreported()):
        print(f"not yet reported to the hub: {waiting} event{'s' if waiting > 1 else ''} "
              "(sent once the box is enrolled and the link is up)")  # fmt: skip
    return 0


def _rauc(args: argparse.Namespace) -> RaucCommand:
    return RaucCommand(args.rauc_conf)


def _reboot() -> None:
    print("rebooting")
    subprocess.run(["systemctl", "reboot"], check=False)  # noqa: S607 - systemd's own tool


def _fail(message: str) -> int:
    print(f"edgebox: {message}", file=sys.stderr)
    return 1
