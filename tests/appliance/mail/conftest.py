"""A real mail store in tmp_path: box keys, encrypted blobs, the mail and directory databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from appliance.directory import DIRECTORY_MIGRATIONS, Directory
from appliance.mail.delivery import Delivery
from appliance.mail.mailstore import MAIL_MIGRATIONS, Mailstore
from appliance.security.keys import create_box_keys, load_data_key
from appliance.store.blobs import BlobStore
from appliance.store.database import open_database

DOMAIN = "test.go.th"
HOSTNAME = "mail.test.go.th"
#: Five ordinary users with the default (10 GiB) quota.
USERS = tuple(f"user{n}@{DOMAIN}" for n in range(1, 6))
#: A user whose mailbox holds almost nothing.
SMALL = f"small@{DOMAIN}"
SMALL_QUOTA = 2000


@dataclass
class MailBox:
    """Everything a delivery touches, built on disk under *root*."""

    root: Path
    blobs: BlobStore
    directory: Directory
    mailstore: Mailstore
    delivery: Delivery
    domain: str = DOMAIN
    hostname: str = HOSTNAME
    users: tuple[str, ...] = USERS
    small: str = SMALL
    small_quota: int = SMALL_QUOTA

    def blob_files(self) -> list[str]:
        return list(self.blobs.iter_ids())

    def files(self) -> Iterator[Path]:
        return (path for path in self.root.rglob("*") if path.is_file())


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[MailBox]:
    keys = tmp_path / "keys"
    create_box_keys(keys)
    blobs = BlobStore(tmp_path / "blobs", load_data_key(keys))
    async with (
        open_database(tmp_path / "directory.sqlite", DIRECTORY_MIGRATIONS) as directory_db,
        open_database(tmp_path / "mail.sqlite", MAIL_MIGRATIONS) as mail_db,
    ):
        directory = Directory(directory_db)
        await directory.add_agency(DOMAIN, "กรมทดสอบ", "Test Department")
        async with trio.open_nursery() as nursery:
            for address in USERS:
                nursery.start_soon(_add_user, directory, address, None)
            nursery.start_soon(_add_user, directory, SMALL, SMALL_QUOTA)
        mailstore = Mailstore(mail_db, blobs)
        yield MailBox(
            root=tmp_path,
            blobs=blobs,
            directory=directory,
            mailstore=mailstore,
            delivery=Delivery(directory, mailstore, HOSTNAME),
        )


async def _add_user(directory: Directory, address: str, quota: int | None) -> None:
    await directory.add_user(address, password="ทดสอบ-2567", name_th="ผู้ทดสอบ", quota_bytes=quota)
