"""The directory's edits for the admin console: names, rank, unit, position, phone,
user counts and every grant a user holds (`granted_domains`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.directory import DIRECTORY_MIGRATIONS, Directory, DirectoryError, User
from appliance.store.database import open_database

A = "a.go.th"
B = "b.go.th"
PASSWORD = "ลับมาก-2567"


@pytest.fixture
async def directory(tmp_path: Path) -> AsyncIterator[Directory]:
    async with open_database(tmp_path / "directory.sqlite", DIRECTORY_MIGRATIONS) as db:
        directory = Directory(db)
        await directory.add_agency(A, "กรมเอ")
        await directory.add_agency(B, "กรมบี")
        yield directory


async def _add(directory: Directory, address: str, **kwargs: object) -> User:
    kwargs.setdefault("password", PASSWORD)
    kwargs.setdefault("name_th", "สมชาย ใจดี")
    return await directory.add_user(address, **kwargs)  # type: ignore[arg-type]


async def _get(directory: Directory, address: str) -> User:
    user = await directory.user(address)
    assert user is not None
    return user


async def test_set_names_replaces_both_and_clears_english(directory: Directory) -> None:
    await _add(directory, "somchai@a.go.th", name_en="Somchai")

    await directory.set_names("Somchai@A.go.th", "  สมชาย ใจงาม ", "Somchai Jai-ngam")
    assert (await _get(directory, "somchai@a.go.th")).name_en == "Somchai Jai-ngam"
    await directory.set_names("somchai@a.go.th", "สมชาย ใจงาม", " ")

    user = await _get(directory, "somchai@a.go.th")
    assert (user.name_th, user.name_en) == ("สมชาย ใจงาม", None)


@pytest.mark.parametrize("name_th", ["", "  ", "สอง\nบรรทัด", "x" * 300])
async def test_set_names_refuses_bad_thai_names_and_changes_nothing(
    directory: Directory, name_th: str
) -> None:
    await _add(directory, "somchai@a.go.th", name_en="Somchai")

    with pytest.raises(DirectoryError):
        await directory.set_names("somchai@a.go.th", name_th, "Changed")

    user = await _get(directory, "somchai@a.go.th")
    assert (user.name_th, user.name_en) == ("สมชาย ใจดี", "Somchai")


async def test_set_rank_position_phone(directory: Directory) -> None:
    await _add(directory, "somchai@a.go.th")

    await directory.set_rank("somchai@a.go.th", 9)
    await directory.set_position("somchai@a.go.th", " นักวิเคราะห์ ")
    await directory.set_phone("somchai@a.go.th", "02-123-4567")
    user = await _get(directory, "somchai@a.go.th")
    assert (user.rank, user.position, user.phone) == (9, "นักวิเคราะห์", "02-123-4567")

    await directory.set_position("somchai@a.go.th", None)
    await directory.set_phone("somchai@a.go.th", "")
    user = await _get(directory, "somchai@a.go.th")
    assert (user.position, user.phone) == (None, None)
    with pytest.raises(DirectoryError):
        await directory.set_rank("somchai@a.go.th", -1)
    with pytest.raises(DirectoryError):
        await directory.set_phone("somchai@a.go.th", "02\r\nBcc: x")
    assert (await _get(directory, "somchai@a.go.th")).rank == 9


async def test_set_unit_only_within_the_users_agency(directory: Directory) -> None:
    await directory.ensure_unit(A, "กองคลัง")
    await directory.ensure_unit(B, "กองบี")
    await _add(directory, "somchai@a.go.th")

    await directory.set_unit("somchai@a.go.th", "กองคลัง")
    assert (await _get(directory, "somchai@a.go.th")).unit == "กองคลัง"
    with pytest.raises(DirectoryError, match="no unit"):
        await directory.set_unit("somchai@a.go.th", "กองบี")
    assert (await _get(directory, "somchai@a.go.th")).unit == "กองคลัง"
    await directory.set_unit("somchai@a.go.th", None)
    assert (await _get(directory, "somchai@a.go.th")).unit is None


async def test_edits_of_unknown_users_are_refused(directory: Directory) -> None:
    for edit in (
        directory.set_names("ghost@a.go.th", "ผี", None),
        directory.set_rank("ghost@a.go.th", 1),
        directory.set_unit("ghost@a.go.th", None),
        directory.set_position("ghost@a.go.th", "x"),
        directory.set_phone("ghost@a.go.th", "1"),
    ):
        with pytest.raises(DirectoryError, match="no user"):
            await edit


async def test_count_users_per_agency(directory: Directory) -> None:
    await _add(directory, "one@a.go.th")
    await _add(directory, "two@a.go.th")
    await directory.set_disabled("two@a.go.th", True)

    assert await directory.count_users() == {A: (2, 1), B: (0, 0)}


async def test_granted_domains_counts_admin_and_delegation_even_when_disabled(
    directory: Directory,
) -> None:
    await _add(directory, "plain@a.go.th")
    await _add(directory, "admin@a.go.th")
    await _add(directory, "root@a.go.th")
    await _add(directory, "sync@a.go.th")
    await directory.grant_admin("admin@a.go.th", A)
    await directory.grant_admin("admin@a.go.th", B)
    await directory.grant_admin("root@a.go.th", None)
    await directory.grant_delegation("sync@a.go.th", None)

    assert await directory.granted_domains("plain@a.go.th") == frozenset()
    assert await directory.granted_domains("admin@a.go.th") == frozenset({A, B})
    assert await directory.granted_domains("root@a.go.th") is None
    assert await directory.granted_domains("sync@a.go.th") is None
    await directory.set_disabled("root@a.go.th", True)
    # admin_scope forgets a disabled admin's rights; granted_domains must not.
    assert await directory.admin_scope("root@a.go.th") == frozenset()
    assert await directory.granted_domains("root@a.go.th") is None
