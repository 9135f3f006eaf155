"""Fixtures for chat tests: a directory of two agencies and an opened chat over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.chat import Chat, open_chat
from appliance.directory import DIRECTORY_MIGRATIONS, Directory, User
from appliance.store.blobs import BlobStore
from appliance.store.database import open_database

DATA_KEY = bytes(range(32))
A = "a.go.th"
B = "b.go.th"
BOX_ID = "box1"

#: A Monday, 10:00 Bangkok time (03:00 UTC): inside ordinary office hours.
MONDAY_10 = 1_704_686_400.0  # 2024-01-08T03:00:00Z


class Clock:
    """A settable clock: rules that depend on time are tested without waiting."""

    def __init__(self, now: float = MONDAY_10) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    chat: Chat
    directory: Directory
    blobs: BlobStore
    clock: Clock
    path: Path
    #: boss (rank 9), lead (rank 5), staff (rank 1), peer (rank 1), other (agency B, rank 1)
    boss: User
    lead: User
    staff: User
    peer: User
    other: User


@pytest.fixture
async def world(tmp_path: Path, hub_store: str) -> AsyncIterator[World]:
    """The chat of a box, or of a hub on PostgreSQL (``hub_store``): one code path."""
    async with open_database(tmp_path / "directory.sqlite", DIRECTORY_MIGRATIONS) as db:
        directory = Directory(db)
        await directory.add_agency(A, "กรมเอ", "Department A")
        await directory.add_agency(B, "กรมบี", "Department B")
        await directory.ensure_unit(A, "กองคลัง", "Finance")
        await directory.ensure_unit(A, "กองช่าง", "Works")

        async def add(address: str, rank: int, unit: str | None, name: str) -> User:
            return await directory.add_user(
                address, password="ลับมาก-2567", name_th=name, rank=rank, unit=unit
            )

        boss = await add(f"boss@{A}", 9, "กองคลัง", "อธิบดี ใหญ่")
        lead = await add(f"lead@{A}", 5, "กองคลัง", "หัวหน้า กลาง")
        staff = await add(f"staff@{A}", 1, "กองช่าง", "สมชาย ใจดี")
        peer = await add(f"peer@{A}", 1, "กองช่าง", "สมหญิง รักงาน")
        other = await add(f"other@{B}", 1, None, "คนนอก กรมบี")
        blobs = BlobStore(tmp_path / "blobs", DATA_KEY)
        clock = Clock()
        path = tmp_path / "chat.sqlite"
        async with open_chat(
            path, DATA_KEY, blobs, directory, BOX_ID, clock=clock, database_url=hub_store
        ) as chat:
            yield World(chat, directory, blobs, clock, path, boss, lead, staff, peer, other)
