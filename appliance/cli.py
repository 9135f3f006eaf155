"""The `edgebox` command: the box's admin surface for technicians and scripts.

Every sub-command is documented in docs/cli.md; scripts and later tools rely on that
contract, so change both together. Exit codes: 0 success, 1 failure or unhealthy,
2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import segno
import trio
from cryptography import x509

from appliance.backup.crypto import (
    BackupDamaged,
    BadRecoveryKey,
    ensure_backup_key,
    key_id,
    key_to_words,
    load_backup_key,
    words_to_key,
)
from appliance.backup.escrow import EscrowError, unwrap_key
from appliance.backup.hub_restore import restore_from_hub
from appliance.backup.hubstore import box_folder, boxes_with_backups, read_escrow
from appliance.backup.hubstore import list_sets as hub_sets
from appliance.backup.offsite.upload import OffsiteReport, create_offsite_backup
from appliance.backup.restore import RestoreError, restore_backup, verify_backup
from appliance.backup.service import backup_and_record
from appliance.backup.service import record as backup_record
from appliance.backup.snapshot import BackupError
from appliance.box import (
    Box,
    BoxError,
    add_user,
    configured,
    guard_policy,
    init_box,
    open_box,
)
from appliance.compliance import traffic_log
from appliance.config import DEV_PORTS, ConfigError
from appliance.directory import DirectoryError, User, normalise_domain
from appliance.health import Finding, Level, worst
from appliance.health.checks import UNPROVISIONED_CHECKS, run_checks
from appliance.health.monitor import gather_snapshot
from appliance.health.readings import PsutilReadings
from appliance.health.snapshot import (
    Limits,
    Snapshot,
    read_machine,
    read_status_file,
    services_from_status_file,
)
from appliance.identity import read_identity
from appliance.panel import BoxViewSlot
from appliance.protection import dkim_commands
from appliance.protection.commands import add_threshold_command
from appliance.protection.signatures import commands as signature_commands
from appliance.provisioning import commands as provisioning_commands
from appliance.provisioning.device import ensure_device, read_device
from appliance.provisioning.enrol import EnrolError, enroll
from appliance.provisioning.lifecycle import BoxState, Lifecycle, box_state
from appliance.provisioning.provision import (
    SETUP_LOCK_FILE,
    ProvisioningError,
    box_lock,
    discard_unfinished,
)
from appliance.provisioning.reset import factory_reset
from appliance.registry import (
    lifelong_services,
    provisioned_services,
    setup_services,
    uplink_services,
)
from appliance.security.guard import AuthGuard
from appliance.security.keys import KeyMaterialError
from appliance.store.database import limit_allocator_retention
from appliance.store.postgres import PostgreSQLUnavailable, is_postgresql_url, redact
from appliance.store.sqlite_memory import limit_sqlite_memory
from appliance.supervisor import Supervisor
from appliance.sync.hub.admission_report import admission_lines, read_admission
from appliance.sync.hub.ca import fingerprint
from appliance.sync.hub.enrolment import DEFAULT_TOKEN_TTL, Enrolment, open_hub_database
from appliance.sync.hub.move import MoveRefused, move_hub_to_postgresql
from appliance.sync.hub_client import HubClient
from appliance.sync.transport import HubRefused, HubUnavailable
from appliance.sync.uplink import link_report
from appliance.update import commands as update_commands

DEMO_DOMAIN = "demo.go.th"
#: The demo agency's users; README.md lists the same addresses and passwords.
DEMO_USERS = (
    # address, Thai name, English name, rank, unit, password, agency admin
    ("somchai@demo.go.th", "สมชาย ใจดี", "Somchai Jaidee", 8, "สำนักงานเลขานุการ",
     "somchai-demo-2026", True),
    ("malee@demo.go.th", "มาลี ศรีสุข", "Malee Srisuk", 5, "กองคลัง", "malee-demo-2026", False),
    ("director@demo.go.th", "อำนวย การดี", "Amnuay Kandee", 10, "สำนักงานผู้อำนวยการ",
     "director-demo-2026", False),
)  # fmt: skip


class CommandError(Exception):
    """A command that cannot be carried out; the message is for the operator."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Mail, keys and databases are for this process only; nothing it creates is shared.
    os.umask(0o077)
    # Before any worker thread exists: bounds the memory glibc keeps per thread heap.
    limit_allocator_retention()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        try:
            result: int = args.handler(args)
        except BaseExceptionGroup as group:
            raise _sole_exception(group) from None
    except (
        BoxError, DirectoryError, ConfigError, KeyMaterialError, CommandError, EnrolError,
        ProvisioningError,
    ) as exc:  # fmt: skip
        print(f"edgebox: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edgebox: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return result


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Unwrap nested single-member groups from trio nurseries to the error inside."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgebox", description="Agency mail and chat box.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")),
                         help="data directory (default: $EDGEBOX_DATA or ./var)")  # fmt: skip
        return sub

    init = command("init", _init, "create a data directory for an agency")
    init.add_argument("--domain", required=True, help="the agency's mail domain, e.g. moe.go.th")
    init.add_argument("--agency-name", help="the agency's name (Thai)")

    run = command("run", _run, "start every service and serve until SIGINT/SIGTERM")
    run.add_argument(
        "--demo",
        action="store_true",
        help=f"on an empty data directory, create agency {DEMO_DOMAIN} with demo users",
    )
    run.add_argument(
        "--port-offset", type=int, help="add N to every port (several boxes on one host)"
    )
    run.add_argument("--role", choices=("edge", "hub"), help="edge (default) or hub")
    run.add_argument("--bind", help="address to listen on (default 127.0.0.1)")

    reset = command(
        "factory-reset",
        _factory_reset,
        "erase the agency's data and keys; the box comes back unprovisioned",
    )
    reset.add_argument("--yes", action="store_true", help="do not ask for the typed confirmation")

    status = command(
        "status", _status, "show services, queue, store size and disk; exit 1 if unhealthy"
    )
    status.add_argument("--lang", choices=("th", "en"), default="en")

    log_commands = commands.add_parser("log", help="the traffic log").add_subparsers(
        required=True, metavar="ACTION"
    )
    verify = log_commands.add_parser(
        "verify", help="check the traffic log's hash chain; exit 1 if it was altered"
    )
    verify.set_defaults(handler=_log_verify)
    verify.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))

    agency = commands.add_parser("agency", help="manage the agencies the box serves")
    agency_commands = agency.add_subparsers(required=True, metavar="ACTION")
    agency_add = agency_commands.add_parser(
        "add", help="serve one more agency (mail domain) on this box",
        description="serve one more agency (mail domain) on this box",
    )  # fmt: skip
    agency_add.set_defaults(handler=_agency_add)
    agency_add.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var"))
    )
    agency_add.add_argument("domain", help="the agency's mail domain, e.g. moph.go.th")
    agency_add.add_argument("--name", help="the agency's name (Thai)")
    agency_add.add_argument("--name-en", help="the agency's name (English)")
    add_threshold_command(agency_commands)
    agency_list = agency_commands.add_parser("list", help="list the agencies the box serves")
    agency_list.set_defaults(handler=_agency_list)
    agency_list.add_argument(
        "--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var"))
    )

    hub = commands.add_parser("hub", help="the hub role: enrolment of boxes")
    hub_commands = hub.add_subparsers(required=True, metavar="ACTION")

    def hub_command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = hub_commands.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
        return sub

    token = hub_command("token", _hub_token, "print a one-time enrolment token (last line)")
    token.add_argument("--agency", required=True, help="the agency (mail domain) of the box")
    token.add_argument("--ttl-hours", type=float, default=DEFAULT_TOKEN_TTL / 3600,
                       help="hours the token stays valid (default 24)")  # fmt: skip
    hub_command("boxes", _hub_boxes, "list the boxes enrolled at this hub")
    revoke = hub_command("revoke", _hub_revoke, "stop accepting a box's certificate")
    revoke.add_argument("box_id")
    worker = hub_command(
        "worker",
        _hub_worker,
        "serve the hub sync API as one more worker process (a hub on PostgreSQL)",
    )
    worker.add_argument("--worker", type=int, default=1, metavar="N",
                        help="this worker's number, for its status file and logs")  # fmt: skip
    worker.add_argument("--port-offset", type=int, dest="port_offset", help=argparse.SUPPRESS)
    worker.add_argument("--bind", help="address to listen on (default: the setting)")
    move = hub_commands.add_parser(
        "migrate-to-postgresql",
        help="move a stopped hub's chat and enrolment from SQLite to PostgreSQL",
        description="Copy the hub's chat and enrolment stores from DATA's SQLite files"
        " into PostgreSQL and verify counts and content hashes (docs/hub-postgresql.md).",
    )
    move.set_defaults(handler=_hub_migrate_to_postgresql)
    move.add_argument("--from", dest="source", type=Path, required=True, metavar="DATA",
                      help="the hub's data directory (stop the hub first)")  # fmt: skip
    move.add_argument("--to", dest="url", required=True, metavar="URL",
                      help="postgresql://user@host/dbname (an empty database)")  # fmt: skip
    hub_command("backups", _hub_backups, "list the boxes' offsite backup sets at this hub")
    escrow = hub_command(
        "escrow", _hub_escrow, "recover a box's backup key from the hub's escrow (an operator)"
    )
    escrow.add_argument("box_id")
    escrow.add_argument("--key-id", help="which escrowed key (default: the newest)")
    escrow.add_argument("--qr", type=Path, help="also write the words as a QR code (.svg)")

    provisioning_commands.add(commands, hub_command)
    signature_commands.add(commands, hub_command)
    dkim_commands.add(commands)

    enrol = command("enroll", _enroll, "join this box to its hub with a one-time token")
    enrol.add_argument("--hub", required=True, help="the hub's sync URL, https://host:port")
    enrol.add_argument("--token", required=True, help="the token from `edgebox hub token`")

    _backup_parser(commands)
    update_commands.add(commands, hub_command)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        required=True, metavar="ACTION"
    )

    def user_command(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub = user.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
        return sub

    add = user_command("add", _user_add, "add a user to one of the box's agencies")
    add.add_argument("email")
    add.add_argument("--name", required=True, help="display name (Thai)")
    add.add_argument("--name-en", help="display name (English)")
    add.add_argument("--rank", type=int, default=0, help="rank; a higher number is more senior")
    add.add_argument("--unit", help="org unit (created if new)")
    add.add_argument("--position", help="position title")
    add.add_argument("--phone")
    add.add_argument("--quota-mb", type=int, help="mailbox quota in MB (default 10 GB)")
    add.add_argument("--admin", action="store_true", help="make the user an admin of their agency")
    add.add_argument("--box-admin", action="store_true",
                     help="make the user an admin of every agency on the box")  # fmt: skip
    add.add_argument(
        "--service",
        action="store_true",
        help="a service account (sync replicator) that may act for every user of the box",
    )
    add.add_argument("--password-stdin", action="store_true", required=True,
                     help="read the password from standard input")  # fmt: skip

    lst = user_command("list", _user_list, "list users")
    lst.add_argument("--agency", help="only this agency's domain")

    passwd = user_command("passwd", _user_passwd, "set a user's password")
    passwd.add_argument("email")
    passwd.add_argument("--password-stdin", action="store_true", required=True)

    disable = user_command("disable", _user_disable, "stop a user from signing in and receiving")
    disable.add_argument("email")
    enable = user_command("enable", _user_enable, "let a disabled user in again")
    enable.add_argument("email")
    quota = user_command("quota", _user_quota, "set a user's mailbox quota")
    quota.add_argument("email")
    quota.add_argument("--mb", type=int, required=True, help="quota in MB")
    return parser


def _backup_parser(commands: Any) -> None:
    backup = commands.add_parser("backup", help="encrypted backups of the data directory")
    actions = backup.add_subparsers(required=True, metavar="ACTION")

    def action(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
        return sub

    create = action("create", _backup_create, "back the data directory up (the box may run)")
    create.add_argument(
        "--to",
        help="backup target folder, or the hub: https://host:port or "
        "'hub' for the enrolled hub (default: backup_target)",
    )
    create.add_argument(
        "--rate", type=int, help="offsite: bytes a second on average (default backup_offsite_rate)"
    )
    restore = action("restore", _backup_restore, "restore a backup onto a blank data directory")
    restore.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a backup target (its newest), one backup's folder, or the hub (https://host:port)",
    )
    restore.add_argument("--key", help="the recovery key's words (default: read from stdin)")
    restore.add_argument("--token", help="from the hub: an enrolment token of the box's agency")
    restore.add_argument("--box", help="from the hub: the box id (on the recovery sheet)")
    restore.add_argument("--domain", help="from the hub: the box's agency domain")
    restore.add_argument("--set", help="from the hub: which backup set (default: the newest)")
    key = action("key", _backup_key, "print the backup key for the agency's recovery sheet")
    key.add_argument("--qr", type=Path, help="also write the key as a QR code (.svg or .png)")
    verify = action("verify", _backup_verify, "check every file of a backup; exit 1 if damaged")
    verify.add_argument("--from", dest="source", type=Path, required=True)
    verify.add_argument("--key", help="the recovery key's words (default: this box's key)")


def _config(args: argparse.Namespace) -> Any:
    flags = {
        "port_offset": getattr(args, "port_offset", None),
        "role": getattr(args, "role", None),
        "bind": getattr(args, "bind", None),
    }
    return configured(args.data, os.environ, flags)


def _password_from_stdin() -> str:
    password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise CommandError("no password on standard input")
    return password


async def _with_box(args: argparse.Namespace, action: Any) -> Any:
    async with open_box(_config(args)) as box:
        return await action(box)


# -- commands ------------------------------------------------------------------------


async def _init_scripted(data_dir: Path, domain: str, agency_name: str | None) -> bool:
    """Provision *data_dir* for *domain* without a first admin (`edgebox init`, --demo).

    The same steps as the setup path: the device's box id, leftovers of an unfinished
    provisioning discarded, the identity written last (appliance.provisioning).
    """
    device = await trio.to_thread.run_sync(ensure_device, data_dir)
    if read_identity(data_dir) is None:
        await trio.to_thread.run_sync(discard_unfinished, data_dir)
    return await init_box(data_dir, domain, agency_name, box_id=device.box_id)


def _init(args: argparse.Namespace) -> int:
    with box_lock(args.data, exclusive=True):
        created = trio.run(_init_scripted, args.data, args.domain, args.agency_name)
    identity = read_identity(args.data)
    assert identity is not None
    if created:
        print(f"initialised {args.data} for {identity.domain} (box {identity.box_id})")
    else:
        print(f"{args.data} is already initialised for {identity.domain}; nothing to do")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    password = _password_from_stdin()

    async def action(box: Box) -> User:
        return await add_user(
            box, args.email, password, name_th=args.name, name_en=args.name_en, rank=args.rank,
            unit=args.unit, position=args.position, phone=args.phone, admin=args.admin,
            box_admin=args.box_admin, service=args.service,
            quota_bytes=args.quota_mb * 1024 * 1024 if args.quota_mb else None,
        )  # fmt: skip

    user = trio.run(_with_box, args, action)
    print(f"added {user.address}")
    return 0


def _agency_add(args: argparse.Namespace) -> int:
    async def action(box: Box) -> None:
        await box.directory.add_agency(args.domain, name_th=args.name, name_en=args.name_en)

    trio.run(_with_box, args, action)
    print(f"the box now serves {args.domain}")
    return 0


def _agency_list(args: argparse.Namespace) -> int:
    for agency in trio.run(_with_box, args, lambda box: box.directory.agencies()):
        print(f"{agency.domain}\t{agency.name_th or '-'}\t{agency.name_en or '-'}")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    async def action(box: Box) -> tuple[list[User], dict[str, bool]]:
        users = await box.directory.users(args.agency)
        admins = {
            u.address: await box.directory.is_admin(u.address, u.agency_domain) for u in users
        }
        return users, admins

    users, admins = trio.run(_with_box, args, action)
    for user in users:
        flags = ",".join(
            f for f, on in (("disabled", user.disabled), ("admin", admins[user.address])) if on
        )
        print(
            f"{user.address}\t{user.name_th}\trank={user.rank}\t{user.unit or '-'}\t{flags or '-'}"
        )
    return 0


def _user_passwd(args: argparse.Namespace) -> int:
    password = _password_from_stdin()

    async def action(box: Box) -> None:
        await box.directory.set_password(args.email, password)
        # Whoever signed in with the old password is signed out (a running box's
        # session cache forgets them within seconds).
        await box.sessions.revoke_all(args.email)

    trio.run(_with_box, args, action)
    print(f"password changed for {args.email}; their web and app sessions are signed out")
    return 0


def _user_disable(args: argparse.Namespace) -> int:
    async def action(box: Box) -> None:
        await box.directory.set_disabled(args.email, True)
        await box.sessions.revoke_all(args.email)

    trio.run(_with_box, args, action)
    print(f"disabled {args.email}")
    return 0


def _user_enable(args: argparse.Namespace) -> int:
    trio.run(_with_box, args, lambda box: box.directory.set_disabled(args.email, False))
    print(f"enabled {args.email}")
    return 0


def _user_quota(args: argparse.Namespace) -> int:
    quota = args.mb * 1024 * 1024
    trio.run(_with_box, args, lambda box: box.directory.set_quota(args.email, quota))
    print(f"quota of {args.email} set to {args.mb} MB")
    return 0


def _hub_token(args: argparse.Namespace) -> int:
    domain = normalise_domain(args.agency)

    async def action(box: Box) -> str:
        # The token pins the CA that signs the hub's server certificate (open_box made
        # sure it exists); see appliance.provisioning.enrol.
        ca = x509.load_pem_x509_certificate((args.data / "keys" / "ca.pem").read_bytes())
        async with open_hub_database(args.data, box.config.hub_store()) as db:
            try:
                token = await Enrolment(db).issue_token(
                    domain, fingerprint(ca), args.ttl_hours * 3600
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        return str(token)

    token = trio.run(_with_box, args, action)
    print(f"enrolment token for a box of {domain}, valid {args.ttl_hours:g} h, usable once:")
    print(token)
    return 0


def _hub_boxes(args: argparse.Namespace) -> int:
    async def action(box: Box) -> Any:
        async with open_hub_database(args.data, box.config.hub_store()) as db:
            return await Enrolment(db).boxes()

    for each in trio.run(_with_box, args, action):
        state = "revoked" if each.revoked_at is not None else "enrolled"
        print(f"{each.box_id}\t{each.agency_domain}\t{state}\t{each.service_account}")
    return 0


def _hub_worker(args: argparse.Namespace) -> int:
    """Serve only the hub-sync listener, beside `edgebox run` and the other workers.

    Every worker shares the one port (SO_REUSEPORT) and the PostgreSQL store; the
    directory, mail and blobs under DATA are shared through SQLite's file locks. The
    main `edgebox run --role hub` process runs everything else (and hub-sync too).
    """
    args.role = "hub"
    config = _config(args)
    if not config.hub_store():
        raise CommandError(
            "hub workers share a PostgreSQL store; set hub_database = postgresql://… first"
            " (a hub on SQLite is one process: `edgebox run --role hub`)"
        )
    trio.run(_run_hub_worker, config, args.worker)
    return 0


async def _run_hub_worker(config: Any, number: int) -> None:
    _raise_open_files_limit()
    with box_lock(config.data_dir, exclusive=False):
        async with open_box(config) as box:
            services = uplink_services(box)
            status = box.status_file.with_name(f"hub-worker-{number}.json")
            supervisor = Supervisor(services, status)

            def announce(listeners: dict[str, list[str]]) -> None:
                for name, addresses in listeners.items():
                    for address in addresses:
                        print(f"{name} worker {number} listening on {address}")
                print("ready", flush=True)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                nursery.start_soon(supervisor.run, announce)


def _hub_migrate_to_postgresql(args: argparse.Namespace) -> int:
    if not is_postgresql_url(args.url):
        raise CommandError("--to must be a postgresql:// URL")
    try:
        moved = move_hub_to_postgresql(args.source, args.url)
    except (MoveRefused, PostgreSQLUnavailable) as exc:
        raise CommandError(str(exc)) from None
    for store in moved:
        for table in store.tables:
            print(f"{store.schema}.{table.table}\t{table.rows} rows\t{table.digest[:16]}")
    print(f"moved and verified; set hub_database = {redact(args.url)} and start the hub")
    return 0


def _hub_revoke(args: argparse.Namespace) -> int:
    async def action(box: Box) -> bool:
        async with open_hub_database(args.data, box.config.hub_store()) as db:
            return await Enrolment(db).revoke(args.box_id)

    if not trio.run(_with_box, args, action):
        raise CommandError(f"no enrolled box {args.box_id} (or already revoked)")
    print(f"revoked {args.box_id}; its certificate is refused from now on")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    done = trio.run(enroll, args.data, args.hub, args.token)
    print(f"enrolled box {done.box_id} ({done.domain}) with hub {done.hub_url}")
    print(f"central SMTP relay: {done.central_smtp}")
    print(f"central IMAP: {done.central_imap}")
    print(f"service account: {done.username}")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    # Process-wide, before any database opens: one figure bounds SQLite's caches.
    limit_sqlite_memory(config.sqlite_memory_mib * 1024 * 1024)
    if args.demo and read_identity(args.data) is None:
        trio.run(_create_demo, args)
    trio.run(_run_box, config)
    return 0


#: Seconds the runner lets a last answer leave (the provisioning request's 200, the
#: reset page) before it closes the listener that is sending it.
ANSWER_GRACE = 1.0


async def _run_box(config: Any) -> None:
    """Serve the box in its state until SIGINT/SIGTERM, switching state as asked.

    Unprovisioned: only the setup path (and discovery, and the panel). Provisioned by
    the setup path: every service starts, no restart needed. Reset from the admin
    console or the panel: every service stops, the data is erased, setup again.
    """
    _raise_open_files_limit()
    with box_lock(config.data_dir, exclusive=False):
        device = await trio.to_thread.run_sync(ensure_device, config.data_dir)
        lifecycle = Lifecycle(config.data_dir, device, reset_window=config.panel_reset_window)
        views = BoxViewSlot()
        # Made outside the nursery: a bad board setting is a plain ConfigError.
        lifelong = lifelong_services(config, lifecycle, views)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            # Discovery, the panel, the watchdog, the USB stick: across both states.
            for service in lifelong:
                await nursery.start(service.serve)
            while True:
                if box_state(config.data_dir) is BoxState.UNPROVISIONED:
                    await _serve_setup(config, lifecycle)
                    continue
                # Read again: the wizard may have enrolled the box (hub_url and the
                # central servers are in config.json now).
                config = _reloaded(config)
                await _serve(config, lifecycle, views)
                logging.getLogger("edgebox").warning("factory reset: erasing the agency's data")
                await trio.to_thread.run_sync(factory_reset, config.data_dir)
                await trio.to_thread.run_sync(ensure_device, config.data_dir)  # a new code
                print("factory reset done; the box is unprovisioned", flush=True)
    print("edgebox stopped", flush=True)


def _reloaded(config: Any) -> Any:
    """*config* read again from config.json, the environment and the same flags."""
    flags = {"port_offset": config.port_offset, "role": config.role, "bind": config.bind}
    return configured(config.data_dir, os.environ, flags)


async def _serve_setup(config: Any, lifecycle: Lifecycle) -> None:
    """Serve the setup path until the box is provisioned through it."""
    with box_lock(config.data_dir, exclusive=True, name=SETUP_LOCK_FILE):
        await _serve_setup_locked(config, lifecycle)


async def _serve_setup_locked(config: Any, lifecycle: Lifecycle) -> None:
    if await trio.to_thread.run_sync(discard_unfinished, config.data_dir):
        logging.getLogger("edgebox").warning("discarded an unfinished provisioning")
    guard = AuthGuard(guard_policy(config), clock=trio.current_time)
    services = setup_services(config, guard, lifecycle)
    supervisor = Supervisor(services, config.data_dir / "run" / "status.json")

    def announce(listeners: dict[str, list[str]]) -> None:
        lifecycle.serving(BoxState.UNPROVISIONED, {"https": config.port("https")})
        status = lifecycle.status()
        print(f"edgebox unprovisioned: box {status.box_id} ({status.hostname})"
              f" data={config.data_dir}")  # fmt: skip
        print(f"setup code: {status.setup_code}")
        print(f"certificate fingerprint: {status.fingerprint}")
        for name, addresses in listeners.items():
            for address in addresses:
                print(f"{name} listening on {address}")
        print("ready", flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run, announce)
        await lifecycle.wait_provisioned()
        await trio.sleep(ANSWER_GRACE)
        nursery.cancel_scope.cancel()
    print("provisioned; starting every service", flush=True)


async def _create_demo(args: argparse.Namespace) -> None:
    await _init_scripted(args.data, DEMO_DOMAIN, "หน่วยงานสาธิต (Demo Agency)")
    async with open_box(_config(args)) as box:
        for address, name_th, name_en, rank, unit, password, admin in DEMO_USERS:
            await add_user(box, address, password, name_th=name_th, name_en=name_en, rank=rank,
                           unit=unit, admin=admin)  # fmt: skip
    print(f"created demo agency {DEMO_DOMAIN}; users are listed in README.md", flush=True)


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one (systemd starts us at 1,024).

    Each client connection is a file descriptor; thousands of chat streams need more
    than the usual soft limit, and the hard limit is what the operator allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            logging.getLogger("edgebox").warning("cannot raise the open-files limit")


async def _serve(config: Any, lifecycle: Lifecycle, views: BoxViewSlot) -> None:
    """Serve every service of a provisioned box until a factory reset is asked for."""
    async with open_box(config) as box:
        removed = await box.mail_db.write(box.mailstore.remove_orphan_blobs)
        if removed:
            logging.getLogger("edgebox").info("removed %d unreferenced blob files", removed)
        composed = provisioned_services(box, lifecycle)
        supervisor = Supervisor(composed.services, box.status_file)
        composed.health.service_states = supervisor.service_states

        def announce(listeners: dict[str, list[str]]) -> None:
            print(f"edgebox {box.identity.domain} ({config.role}) data={config.data_dir}")
            for name, addresses in listeners.items():
                for address in addresses:
                    print(f"{name} listening on {address}")
                if not addresses:
                    print(f"{name} running")
            print("ready", flush=True)
            lifecycle.serving(BoxState.PROVISIONED, {
                name: config.port(name) for name in ("https", "imaps", "smtp-submissions")
            })  # fmt: skip

        with views.published(composed.view):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervisor.run, announce)
                await lifecycle.wait_reset_requested()
                await trio.sleep(ANSWER_GRACE)
                nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logging.getLogger("edgebox").info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def _factory_reset(args: argparse.Namespace) -> int:
    data: Path = args.data
    device = read_device(data)
    identity = read_identity(data)
    if device is None and identity is None and not (data / "keys").exists():
        # A mistyped path must not become a new, empty box directory.
        raise CommandError(f"{data} is not an edgebox data directory")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("confirm with --yes, or run it on a terminal to type the box id")
        shown = device.short_id if device else "RESET"
        print(f"This erases every mail, chat, user and key of "
              f"{identity.domain if identity else 'this box'} in {data}.")  # fmt: skip
        print(f"Type {shown} to go on:", end=" ", flush=True)
        if sys.stdin.readline().strip() != shown:
            raise CommandError("not confirmed; nothing was changed")
    with box_lock(data, exclusive=True):
        factory_reset(data)
        kept = ensure_device(data)
    print(f"factory reset done: box {kept.box_id} is unprovisioned;"
          " `edgebox run` serves the setup path")  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    identity = read_identity(args.data)
    device = read_device(args.data)
    if identity is None and device is None:
        raise CommandError(f"{args.data} is not an edgebox data directory")
    config = _config(args)
    status_file = config.data_dir / "run" / "status.json"
    running, services = services_from_status_file(status_file)
    status = read_status_file(status_file) or {}
    pid = status.get("pid") if running else None
    if identity is None:
        assert device is not None
        # No store yet: the services and the disk are all there is to judge.
        machine = read_machine(PsutilReadings(), config.data_dir, pid or os.getpid())
        bare = Snapshot(
            now=time.time(), data_dir=config.data_dir, limits=Limits.from_config(config),
            box_running=running, services=services, errors=machine.pop("errors"), **machine,
        )  # fmt: skip
        findings = run_checks(bare, UNPROVISIONED_CHECKS)
        return _status_unprovisioned(device.box_id, findings, args.lang)

    async def action(box: Box) -> tuple[list[Finding], list[tuple[int, str, int, int]], int]:
        # The same snapshot and checks as the running box's health monitor and console.
        snapshot = await gather_snapshot(
            box.config, box.mailstore.outbound_groups, PsutilReadings(), services=services,
            box_running=running,
            pid=pid if isinstance(pid, int) else None,
        )  # fmt: skip
        groups = await box.mailstore.outbound_groups()
        size = box.mailstore.blobs.disk_usage() + _db_size(config.data_dir / "db")
        return run_checks(snapshot), groups, size

    findings, groups, store_bytes = trio.run(_with_box, args, action)
    lang = args.lang
    print(f"box {identity.box_id} · {identity.domain}")
    _print_findings(findings, lang)
    # The uplink's state is shown, never counted against health: a cut link is what the
    # box is built to ride out (issue 5), not a fault of the box.
    for line in link_report(config.data_dir, groups, time.time(), lang):
        print(f"  {line}")
    # A hub's fair admission: the queue and the boxes that waited longest (issue 22).
    admission = read_admission(config.data_dir / "run", time.time())
    for line in admission_lines(admission) if admission is not None else []:
        print(f"  {line}")
    print(f"  store size: {store_bytes / 1024**2:.1f} MB")
    return _verdict(findings)


def _print_findings(findings: list[Finding], lang: str) -> None:
    """One line per finding, and what to do under a warning or an error."""
    for finding in findings:
        print(f"  [{finding.level.name.lower():5}] {finding.check}: {finding.text(lang)}")
        if finding.level is not Level.OK and finding.todo(lang):
            print(f"          → {finding.todo(lang)}")


def _verdict(findings: list[Finding]) -> int:
    """Print the last line of `edgebox status`; its exit code (1 on any error)."""
    unhealthy = worst(findings) is Level.ERROR
    print("unhealthy" if unhealthy else "healthy")
    return 1 if unhealthy else 0


def _status_unprovisioned(box_id: str, findings: list[Finding], lang: str) -> int:
    """`edgebox status` of a box that serves only its setup path (no store to read)."""
    print(f"box {box_id} · unprovisioned: serves the setup path (docs/provisioning.md)")
    _print_findings(findings, lang)
    return _verdict(findings)


def _log_verify(args: argparse.Namespace) -> int:
    result = traffic_log.verify(args.data / "log" / "traffic")
    if result.ok:
        print(f"traffic log intact: {result.records} records in {result.files} files")
        print(f"chain head: {result.head}")
        return 0
    print(f"traffic log ALTERED: {result.problem}")
    return 1


def _backup_create(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.to == "hub" or (args.to or "").startswith("https://"):
        return _backup_create_offsite(args, config)
    target = Path(args.to) if args.to else (
        Path(config.backup_target) if config.backup_target else None
    )  # fmt: skip
    if target is None:
        raise CommandError("no --to given and no backup_target configured")
    try:
        name = backup_and_record(args.data, target, config.backup_keep)
    except (BackupError, BackupDamaged) as exc:
        raise CommandError(f"backup failed: {exc}") from None
    print(f"backup {name} complete in {target}")
    return 0


def _backup_create_offsite(args: argparse.Namespace, config: Any) -> int:
    hub_url = config.hub_url if args.to == "hub" else args.to
    if not hub_url:
        raise CommandError("this box is not enrolled with a hub (edgebox enroll)")

    async def run() -> OffsiteReport:
        client = HubClient(args.data / "keys", hub_url, timeout=120)
        try:
            return await create_offsite_backup(
                args.data, client, rate=args.rate or config.backup_offsite_rate
            )
        finally:
            await client.aclose()

    try:
        report = trio.run(run)
    except (BackupError, BackupDamaged, HubUnavailable, HubRefused, OSError) as exc:
        backup_record(
            args.data,
            offsite_last_error=f"{type(exc).__name__}: {exc}",
            offsite_last_error_at=time.time(),
        )
        raise CommandError(
            f"offsite backup failed: {exc} (run it again: it goes on where it stopped)"
        ) from None
    print(
        f"backup {report.name} complete at {hub_url}: {report.files} files "
        f"({report.files_sent} sent), {report.blobs} blobs ({report.blobs_sent} sent), "
        f"{report.bytes_sent / 1e6:.1f} MB sent"
    )
    if report.escrowed:
        print("the backup key was escrowed at the hub")
    if report.removed:
        print(f"the hub removed older sets: {', '.join(report.removed)}")
    return 0


def _backup_key(args: argparse.Namespace) -> int:
    if read_identity(args.data) is None:
        raise CommandError(f"{args.data} is not an edgebox data directory")
    key = ensure_backup_key(args.data / "keys")
    print("edgebox backup recovery key — keep this sheet in the agency's safe")
    print(f"box {read_identity(args.data).box_id}  key id {key_id(key)}")  # type: ignore[union-attr]
    words = key_to_words(key)
    print(words)
    if args.qr is not None:
        # The QR code holds the same words (error correction M), for a phone or scanner
        # at restore time; segno writes SVG or PNG by the file's extension.
        segno.make(words, error="m").save(str(args.qr), scale=8, border=4)
        print(f"QR code written to {args.qr}")
    return 0


def _recovery_key(args: argparse.Namespace) -> bytes:
    if args.key is None and sys.stdin.isatty():
        print("recovery key (17 groups): ", end="", file=sys.stderr, flush=True)
    words = args.key if args.key is not None else sys.stdin.readline()
    try:
        return words_to_key(words)
    except BadRecoveryKey as exc:
        raise CommandError(f"recovery key: {exc}") from None


def _backup_restore(args: argparse.Namespace) -> int:
    if args.source.startswith("https://"):
        return _backup_restore_from_hub(args)
    key = _recovery_key(args)
    try:
        done = restore_backup(args.data, Path(args.source), key)
    except BackupDamaged as exc:
        raise CommandError(
            f"restore refused, {args.data} left untouched: damaged backup: {exc}"
        ) from None
    except RestoreError as exc:
        raise CommandError(f"restore refused, {args.data} left untouched: {exc}") from None
    print(f"restored backup {done.name} into {args.data}: {done.files} files, "
          f"{done.blobs} blobs, {done.bytes / 1e6:.1f} MB")  # fmt: skip
    return 0


def _backup_restore_from_hub(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("token", "box", "domain") if not getattr(args, n)]
    if missing:
        raise CommandError(
            f"a restore from the hub needs {', '.join(missing)} "
            "(the box id and domain are on the recovery sheet)"
        )
    key = _recovery_key(args)
    try:
        done = trio.run(
            lambda: restore_from_hub(args.data, args.source, args.token, args.box,
                                     normalise_domain(args.domain), key, set_name=args.set)
        )  # fmt: skip
    except BackupDamaged as exc:
        raise CommandError(
            f"restore refused, {args.data} left untouched: damaged backup: {exc}"
        ) from None
    except RestoreError as exc:
        raise CommandError(f"restore refused, {args.data} left untouched: {exc}") from None
    restored = done.restored
    print(
        f"restored backup {restored.name} from {args.source} into {args.data}: "
        f"{restored.files} files, {restored.blobs} blobs, {restored.bytes / 1e6:.1f} MB"
    )
    print(
        f"box {done.enrolled.box_id} ({done.enrolled.domain}) re-enrolled with the hub: "
        "its old certificate no longer works"
    )
    return 0


def _hub_backups(args: argparse.Namespace) -> int:
    for box_id, folder in boxes_with_backups(args.data):
        sets = hub_sets(folder)
        escrowed = ", ".join(e.get("key_id", "?") for e in read_escrow(folder)) or "none"
        newest = sets[-1].name if sets else "none"
        size = sum(s.bytes for s in sets)
        print(
            f"{box_id}\t{len(sets)} sets\tnewest {newest}\t{size / 1e6:.1f} MB in sets"
            f"\tkeys escrowed: {escrowed}"
        )
    return 0


def _hub_escrow(args: argparse.Namespace) -> int:
    try:
        held = read_escrow(box_folder(args.data, args.box_id))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if not held:
        raise CommandError(f"no backup key of box {args.box_id} is escrowed at this hub")
    entry = held[0] if args.key_id is None else next(
        (e for e in held if e.get("key_id") == args.key_id), None
    )  # fmt: skip
    if entry is None:
        raise CommandError(f"no escrowed key {args.key_id} for box {args.box_id}")
    try:
        key = unwrap_key(
            args.data / "keys", args.box_id, str(entry["key_id"]), str(entry["wrapped"])
        )
    except (EscrowError, KeyMaterialError) as exc:
        raise CommandError(f"the escrowed key does not unwrap: {exc}") from None
    print(f"edgebox backup recovery key of box {args.box_id}, from the hub's escrow")
    print(f"key id {key_id(key)}; hand it to the agency in person, never by e-mail")
    words = key_to_words(key)
    print(words)
    if args.qr is not None:
        segno.make(words, error="m").save(str(args.qr), scale=8, border=4)
        print(f"QR code written to {args.qr}")
    return 0


def _backup_verify(args: argparse.Namespace) -> int:
    key = _recovery_key(args) if args.key is not None else load_backup_key(args.data / "keys")
    try:
        name, files, blobs = verify_backup(args.source, key)
    except (BackupDamaged, RestoreError) as exc:
        print(f"backup DAMAGED or unreadable: {exc}")
        return 1
    print(f"backup {name} intact: {files} files, {blobs} blobs")
    return 0


def _db_size(db_dir: Path) -> int:
    return sum(p.stat().st_size for p in db_dir.glob("*.sqlite*"))


__all__ = ["DEMO_USERS", "DEV_PORTS", "main"]
