"""One box's data directory, opened: settings, keys, databases and the domain objects.

`init_box` makes a data directory for an agency; `open_box` opens one for the CLI and the
supervisor alike, so `edgebox user add` and a running server see the same objects.
Layout (DESIGN.md "Roles and ports")::

    DATA/config.json        TinyDB: the box's identity and configuration overrides
    DATA/keys/              provisioning secret, wrapped data key, TLS CA and server cert
    DATA/db/directory.sqlite agencies, units, users, administrators
    DATA/db/mail.sqlite     mailboxes, messages, blob references, outbound queue
    DATA/db/search.sqlite   full-text index (FTS5 trigram), encrypted as a whole file
    DATA/db/chat.sqlite     chat rooms, messages, events and their index, encrypted as a whole
    DATA/blobs/             encrypted message blobs
    DATA/log/traffic/       the traffic log: who sent to whom, when, from where (90 days)
    DATA/run/status.json    what a running box listens on (for `edgebox status`)
"""

from __future__ import annotations

import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from appliance.chat import Chat, open_chat
from appliance.compliance.traffic_log import TrafficLog
from appliance.config import Config, load_config
from appliance.directory import DIRECTORY_MIGRATIONS, Directory, User, normalise_domain
from appliance.directory.sessions import Sessions
from appliance.directory.signin import SignIn
from appliance.health.disk_guard import DiskGuard
from appliance.health.metrics import BoxMetrics
from appliance.health.readings import PsutilReadings
from appliance.identity import Identity, read_identity
from appliance.mail.accounts import create_account
from appliance.mail.delivery import Delivery
from appliance.mail.mailstore import MAIL_MIGRATIONS, Mailstore
from appliance.mail.search_index import open_search_index
from appliance.protection import Protection
from appliance.protection.engines import protection_from_config
from appliance.security.guard import AuthGuard, GuardPolicy
from appliance.security.keys import create_box_keys, load_data_key
from appliance.security.tls import ensure_tls_material, server_ssl_context
from appliance.store.blobs import BlobStore
from appliance.store.database import SQLiteDatabase, open_database, open_readonly_database
from appliance.store.settings import Settings


class BoxError(Exception):
    """The data directory is missing, for another domain, or otherwise unusable."""


@dataclass
class Box:
    """The opened data directory; lives as long as the `open_box` block."""

    config: Config
    identity: Identity
    hostname: str
    settings: Settings
    directory_db: SQLiteDatabase
    mail_db: SQLiteDatabase
    directory: Directory
    mailstore: Mailstore
    delivery: Delivery
    tls: ssl.SSLContext
    traffic: TrafficLog
    chat: Chat
    sessions: Sessions
    #: Every password check of every protocol goes through `signin`, under `guard`.
    guard: AuthGuard
    signin: SignIn
    #: Asked before SMTP, IMAP APPEND and chat accept new data (appliance.health).
    disk_guard: DiskGuard
    #: The counters behind `/metrics`.
    metrics: BoxMetrics
    #: Anti-virus and anti-spam scanning (appliance.protection); None when it is off.
    protection: Protection | None = None

    @property
    def status_file(self) -> Path:
        return self.config.data_dir / "run" / "status.json"

    @property
    def tls_names(self) -> list[str]:
        """The names the box's server certificate carries."""
        return tls_names(self.hostname, self.identity.domain)


def tls_names(hostname: str, domain: str) -> list[str]:
    """Return the host names for the server certificate of a box of *domain*."""
    # Mail clients look for their settings at autoconfig.<domain> (Thunderbird) and
    # autodiscover.<domain> (Outlook); the certificate must name those hosts too.
    return [hostname, f"autoconfig.{domain}", f"autodiscover.{domain}"]


def configured(data_dir: Path, environ: Mapping[str, str], flags: Mapping[str, Any]) -> Config:
    """Load the configuration layers for *data_dir* (file values from config.json)."""
    file_values: dict[str, Any] = {}
    if (data_dir / "config.json").exists():
        settings = Settings(data_dir / "config.json")
        try:
            file_values = settings.get("config")
        finally:
            settings.close()
    return load_config(data_dir, file_values=file_values, environ=environ, flags=flags)


@dataclass(frozen=True)
class FirstAdmin:
    """The account provisioning makes: an admin of the agency and of the box."""

    address: str
    #: None when *password_hash* is given (the setup wizard keeps only the hash).
    password: str | None
    name_th: str
    name_en: str | None = None
    password_hash: str | None = None


async def init_box(
    data_dir: Path,
    domain: str,
    agency_name: str | None = None,
    *,
    agency_name_en: str | None = None,
    box_id: str | None = None,
    first_admin: FirstAdmin | None = None,
) -> bool:
    """Create a data directory for *domain*; return False if it already existed.

    Running it again for the same domain changes nothing; for another domain it raises
    `BoxError`, because a box's agency is fixed when it is provisioned. *box_id* is the
    device's own id (appliance.provisioning.device) when there is one; *first_admin*
    is made before the identity is written, so a box that has an identity has its admin.
    """
    domain = normalise_domain(domain)
    existing = read_identity(data_dir)
    if existing is not None:
        if existing.domain != domain:
            raise BoxError(
                f"{data_dir} already belongs to {existing.domain}; refusing to re-initialise"
                f" it for {domain} (use a new data directory, or factory-reset this one)"
            )
        return False
    await trio.to_thread.run_sync(_prepare_data_dir, data_dir)
    identity = Identity(
        box_id=box_id or uuid.uuid4().hex,
        domain=domain,
        agency_name=agency_name or domain,
        created_at=int(time.time()),
    )
    config = load_config(data_dir)
    async with _open_parts(config, identity) as box:
        await box.directory.add_agency(domain, name_th=identity.agency_name, name_en=agency_name_en)
        if first_admin is not None:
            await add_user(
                box, first_admin.address, first_admin.password, name_th=first_admin.name_th,
                name_en=first_admin.name_en, admin=True, box_admin=True,
                password_hash=first_admin.password_hash,
            )  # fmt: skip
    # The identity is written last, in one atomic replace of config.json: it is the
    # moment the box becomes provisioned. A directory without it is "not initialised";
    # provisioning discards what such a directory holds and starts again.
    settings = Settings(data_dir / "config.json")
    try:
        settings.update("box", identity.__dict__)
    finally:
        settings.close()
    return True


def _prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    # Mail, keys and user data: nobody but the box's own user reads this tree.
    os.chmod(data_dir, 0o700)
    create_box_keys(data_dir / "keys")


@asynccontextmanager
async def open_box(config: Config) -> AsyncIterator[Box]:
    """Open an initialised data directory; raise `BoxError` if it is not one."""
    identity = read_identity(config.data_dir)
    if identity is None:
        raise BoxError(
            f"{config.data_dir} is not an edgebox data directory;"
            " create it with `edgebox init --data DIR --domain DOMAIN`"
        )
    async with _open_parts(config, identity) as box:
        yield box


@asynccontextmanager
async def _open_parts(config: Config, identity: Identity) -> AsyncIterator[Box]:
    data_dir = config.data_dir
    hostname = config.hostname or f"mail.{identity.domain}"
    keys_dir = data_dir / "keys"
    # The CA may vouch for the agency's domain and the box's names only (name constraints).
    ensure_tls_material(keys_dir, tls_names(hostname, identity.domain), [identity.domain])
    data_key = load_data_key(keys_dir)
    blobs = BlobStore(data_dir / "blobs", data_key)
    settings = Settings(data_dir / "config.json")
    try:
        async with (
            open_database(data_dir / "db" / "directory.sqlite", DIRECTORY_MIGRATIONS) as dir_db,
            open_database(data_dir / "db" / "mail.sqlite", MAIL_MIGRATIONS) as mail_db,
            # A cache of the mail database: unreadable means rebuild, not refuse to boot.
            open_search_index(
                data_dir / "db" / "search.sqlite", data_key, recreate_if_unreadable=True
            ) as search,
        ):
            directory = Directory(dir_db)
            mailstore = Mailstore(mail_db, blobs, search)
            traffic = TrafficLog(data_dir / "log" / "traffic")
            # trio's clock: the guard's delays are trio sleeps (MockClock in tests).
            guard = AuthGuard(guard_policy(config), clock=trio.current_time)
            async with open_chat(
                data_dir / "db" / "chat.sqlite",
                data_key,
                blobs,
                directory,
                identity.box_id,
                database_url=config.hub_store(),
            ) as chat:
                yield Box(
                    config=config,
                    identity=identity,
                    hostname=hostname,
                    settings=settings,
                    directory_db=dir_db,
                    mail_db=mail_db,
                    directory=directory,
                    mailstore=mailstore,
                    delivery=Delivery(directory, mailstore, hostname),
                    tls=server_ssl_context(keys_dir),
                    traffic=traffic,
                    chat=chat,
                    sessions=Sessions(dir_db),
                    guard=guard,
                    signin=SignIn(directory, guard, traffic),
                    disk_guard=DiskGuard(data_dir, PsutilReadings(), config.disk_hard_free),
                    metrics=BoxMetrics(),
                    protection=(
                        protection_from_config(config, lambda: settings.get("protection"), hostname)
                        if config.protection
                        else None
                    ),
                )
    finally:
        settings.close()


@dataclass
class WorkerBox:
    """The parts of a box an MX worker process opens: read-only, never migrated."""

    config: Config
    hostname: str
    directory: Directory
    mailstore: Mailstore
    tls: ssl.SSLContext
    guard: AuthGuard
    disk_guard: DiskGuard
    protection: Protection | None


@asynccontextmanager
async def open_worker_box(config: Config) -> AsyncIterator[WorkerBox]:
    """Open what an MX worker reads (docs/architecture.md, "The process model").

    The main process (`open_box`) has made, migrated and owns everything; a worker
    reads the directory and the mail database (the policy's look-ups and the quota)
    and loads the TLS context. It writes nothing: its messages, traffic-log lines and
    counts go to the main process (appliance.mail.smtp.pool).
    """
    identity = read_identity(config.data_dir)
    if identity is None:
        raise BoxError(f"{config.data_dir} is not an edgebox data directory")
    data_dir = config.data_dir
    hostname = config.hostname or f"mail.{identity.domain}"
    keys_dir = data_dir / "keys"
    # The mail store's type wants its blobs; a worker never reads or writes one.
    blobs = BlobStore(data_dir / "blobs", load_data_key(keys_dir))
    settings = Settings(data_dir / "config.json")
    try:
        async with (
            open_readonly_database(data_dir / "db" / "directory.sqlite") as dir_db,
            open_readonly_database(data_dir / "db" / "mail.sqlite") as mail_db,
        ):
            yield WorkerBox(
                config=config,
                hostname=hostname,
                directory=Directory(dir_db),
                mailstore=Mailstore(mail_db, blobs),
                tls=server_ssl_context(keys_dir),
                guard=AuthGuard(guard_policy(config), clock=trio.current_time),
                disk_guard=DiskGuard(data_dir, PsutilReadings(), config.disk_hard_free),
                protection=(
                    protection_from_config(config, lambda: settings.get("protection"), hostname)
                    if config.protection
                    else None
                ),
            )
    finally:
        settings.close()


def guard_policy(config: Config) -> GuardPolicy:
    """The sign-in guard's numbers from the box's settings."""
    return GuardPolicy(
        delay=config.auth_delay,
        max_delay=config.auth_max_delay,
        source_limit=config.auth_source_limit,
        account_delay_after=config.auth_account_delay_after,
        account_max_delay=config.auth_account_max_delay,
        window=config.auth_window,
        refusal=config.auth_refusal,
        max_refusal=config.auth_max_refusal,
    )


async def add_user(box: Box, email: str, password: str | None, **details: Any) -> User:
    """Add a user with their org unit, mailboxes and grants (`create_account`).

    The one way an account is made: `edgebox user add`, the demo set-up and the admin
    console all come to `appliance.mail.accounts.create_account`, so an account is the
    same whoever made it.
    """
    return await create_account(box.directory, box.mailstore, email, password, **details)
