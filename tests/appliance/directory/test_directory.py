"""Tests of the directory: agencies, org units, users, passwords and admin scopes."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.directory import (
    DEFAULT_QUOTA_BYTES,
    DIRECTORY_MIGRATIONS,
    Directory,
    DirectoryError,
    User,
    normalise_address,
    normalise_domain,
)
from appliance.security import passwords
from appliance.store.database import Database, open_database
from appliance.store.schema import schema_version

A = "a.go.th"
B = "b.go.th"
PASSWORD = "ลับมาก-2567"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(tmp_path / "directory.sqlite", DIRECTORY_MIGRATIONS) as database:
        yield database


@pytest.fixture
async def directory(db: Database) -> Directory:
    directory = Directory(db)
    await directory.add_agency(A, "กรมเอ", "Department A")
    await directory.add_agency(B, "กรมบี", "Department B")
    return directory


async def _add(directory: Directory, address: str, **kwargs: object) -> User:
    kwargs.setdefault("password", PASSWORD)
    kwargs.setdefault("name_th", "สมชาย ใจดี")
    return await directory.add_user(address, **kwargs)  # type: ignore[arg-type]


# --- schema ------------------------------------------------------------------------


async def test_migrations_reach_the_latest_version(db: Database) -> None:
    def tables(conn: sqlite3.Connection) -> tuple[int, set[str]]:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return schema_version(conn), names

    version, names = await db.read(tables)
    assert version == len(DIRECTORY_MIGRATIONS)
    assert {"agencies", "units", "users", "admins", "delegations"} <= names


async def test_box_wide_admin_row_is_unique(directory: Directory, db: Database) -> None:
    user = await _add(directory, f"boss@{A}")

    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO admins (user_id, agency_id) VALUES (?, NULL)", (user.id,))

    await db.write(insert)
    with pytest.raises(sqlite3.IntegrityError):
        await db.write(insert)


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite"
    async with open_database(path, DIRECTORY_MIGRATIONS) as db:
        directory = Directory(db)
        await directory.add_agency(A)
        user = await _add(directory, f"somchai@{A}")
    async with open_database(path, DIRECTORY_MIGRATIONS) as db:
        assert await Directory(db).authenticate(f"somchai@{A}", PASSWORD) == user


# --- agencies ----------------------------------------------------------------------


async def test_add_agency_and_look_it_up(directory: Directory) -> None:
    agency = await directory.agency("A.GO.TH")
    assert agency is not None
    assert (agency.domain, agency.name_th, agency.name_en) == (A, "กรมเอ", "Department A")
    assert await directory.agency("c.go.th") is None
    assert await directory.agency("not a domain") is None
    assert [a.domain for a in await directory.agencies()] == [A, B]
    assert await directory.local_domains() == frozenset({A, B})


async def test_add_agency_is_idempotent(directory: Directory) -> None:
    first = await directory.agency(A)
    again = await directory.add_agency("A.Go.Th")
    assert again == first
    assert len(await directory.agencies()) == 2


async def test_add_agency_again_updates_given_names_only(directory: Directory) -> None:
    renamed = await directory.add_agency(A, name_en="Department of A")
    assert (renamed.name_th, renamed.name_en) == ("กรมเอ", "Department of A")
    assert await directory.agency(A) == renamed


async def test_thai_domain_in_either_spelling(db: Database) -> None:
    directory = Directory(db)
    thai = await directory.add_agency("กรม.ไทย")
    assert thai.domain == "กรม.ไทย"
    a_label = "กรม.ไทย".encode("idna").decode()
    assert await directory.add_agency(a_label.upper()) == thai
    assert await directory.agency(a_label) == thai
    await _add(directory, f"สมหญิง@{a_label}")
    assert await directory.user("สมหญิง@กรม.ไทย") is not None


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("", "empty"),
        ("a..go.th", "empty label"),
        ("-a.go.th", "starts or ends with -"),
        ("a b.go.th", "a space"),
        ("a_b.go.th", "LOW LINE"),
        ("xn--zz-.go.th", "bad xn-- label"),
        ("x" * 64 + ".go.th", "longer than 63"),
    ],
)
async def test_invalid_domain_is_refused(directory: Directory, domain: str, why: str) -> None:
    with pytest.raises(DirectoryError, match=why):
        await directory.add_agency(domain)


# --- org units ---------------------------------------------------------------------


async def test_ensure_unit_get_or_create(directory: Directory) -> None:
    office = await directory.ensure_unit(A, "สำนักงานเลขานุการกรม", "Office of the Secretary")
    again = await directory.ensure_unit(A.upper(), "สำนักงานเลขานุการกรม")
    assert again == office
    assert office.parent_id is None
    assert office.agency_domain == A
    it = await directory.ensure_unit(A, "ศูนย์เทคโนโลยีสารสนเทศ", parent="สำนักงานเลขานุการกรม")
    assert it.parent_id == office.id
    # Same name in another agency is another unit.
    other = await directory.ensure_unit(B, "สำนักงานเลขานุการกรม")
    assert other.id != office.id
    assert [u.name_th for u in await directory.units(A)] == [office.name_th, it.name_th]
    assert [u.id for u in await directory.units(B)] == [other.id]


async def test_ensure_unit_fills_in_english_name(directory: Directory) -> None:
    unit = await directory.ensure_unit(A, "กองคลัง")
    assert unit.name_en is None
    named = await directory.ensure_unit(A, "กองคลัง", "Finance Division")
    assert (named.id, named.name_en) == (unit.id, "Finance Division")


async def test_ensure_unit_errors(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"no agency serves domain c\.go\.th; .*edgebox init"):
        await directory.ensure_unit("c.go.th", "กองคลัง")
    with pytest.raises(DirectoryError, match=r"no unit 'กองไม่มี' in a\.go\.th"):
        await directory.ensure_unit(A, "ฝ่ายบัญชี", parent="กองไม่มี")
    with pytest.raises(DirectoryError, match="must not be empty"):
        await directory.ensure_unit(A, "  ")
    await directory.ensure_unit(A, "กองคลัง")
    await directory.ensure_unit(A, "กองแผน")
    await directory.ensure_unit(A, "ฝ่ายบัญชี", parent="กองคลัง")
    with pytest.raises(DirectoryError, match="already exists under another parent"):
        await directory.ensure_unit(A, "ฝ่ายบัญชี", parent="กองแผน")
    with pytest.raises(DirectoryError, match="no agency serves"):
        await directory.units("c.go.th")


# --- users -------------------------------------------------------------------------


async def test_add_user_with_every_field(directory: Directory) -> None:
    await directory.ensure_unit(A, "กองคลัง", "Finance Division")
    user = await directory.add_user(
        f"Somchai.J@{A.upper()}",
        password=PASSWORD,
        name_th="สมชาย ใจดี",
        name_en="Somchai Jaidee",
        rank=7,
        unit="กองคลัง",
        position="นักวิชาการเงินและบัญชี",
        phone="02 123 4567",
        quota_bytes=5 * 1024**3,
    )
    assert user == User(
        id=user.id,
        address=f"somchai.j@{A}",
        agency_domain=A,
        name_th="สมชาย ใจดี",
        name_en="Somchai Jaidee",
        position="นักวิชาการเงินและบัญชี",
        rank=7,
        unit="กองคลัง",
        phone="02 123 4567",
        disabled=False,
        quota_bytes=5 * 1024**3,
    )
    assert await directory.user(f"SOMCHAI.J@{A}") == user


async def test_add_user_defaults(directory: Directory) -> None:
    user = await _add(directory, f"somsri@{A}")
    assert user.rank == 0
    assert user.quota_bytes == DEFAULT_QUOTA_BYTES == 10 * 1024**3
    assert (user.unit, user.position, user.phone, user.name_en) == (None, None, None, None)
    assert not user.disabled


async def test_add_user_needs_an_agency(directory: Directory) -> None:
    with pytest.raises(
        DirectoryError, match=r"^no agency serves domain x\.go\.th; create it with `edgebox init`$"
    ):
        await _add(directory, "someone@x.go.th")


async def test_add_user_twice_is_refused(directory: Directory) -> None:
    await _add(directory, f"somchai@{A}")
    with pytest.raises(DirectoryError, match=r"^user somchai@a\.go\.th already exists$"):
        await _add(directory, f"SomChai@{A.upper()}")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name_th": ""}, "Thai name of .* must not be empty"),
        ({"name_th": "สมชาย\nBcc: x@evil"}, "control characters"),
        ({"name_th": "ก" * 257}, "longer than 256"),
        ({"position": "\ud800"}, "broken text"),
        ({"password": ""}, "password for somchai@a.go.th: password must not be empty"),
        ({"password": "x" * 1025}, "at most 1024 allowed"),
        ({"rank": -1}, "rank must be a whole number"),
        ({"quota_bytes": -5}, "quota_bytes must be a whole number"),
        ({"unit": "กองไม่มี"}, "no unit 'กองไม่มี' in a.go.th"),
    ],
)
async def test_add_user_refuses_bad_fields(
    directory: Directory, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(DirectoryError, match=message):
        await _add(directory, f"somchai@{A}", **kwargs)
    assert await directory.user(f"somchai@{A}") is None


async def test_unit_of_another_agency_is_not_found(directory: Directory) -> None:
    await directory.ensure_unit(B, "กองคลัง")
    with pytest.raises(DirectoryError, match=r"no unit 'กองคลัง' in a\.go\.th"):
        await _add(directory, f"somchai@{A}", unit="กองคลัง")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("no-at-sign", "has no @"),
        ("@a.go.th", "nothing before the @"),
        ("somchai@", "nothing after the @"),
        ("som chai@a.go.th", "a space"),
        ("somchai @a.go.th", "a space"),
        ("tab\t@a.go.th", "CHARACTER TABULATION|U\\+0009"),
        ("nul\x00@a.go.th", "U\\+0000"),
        ("\ud800@a.go.th", "U\\+D800"),  # a lone surrogate from a broken client
        ("zw\u200bsp@a.go.th", "ZERO WIDTH SPACE"),
        ("nb\u00a0sp@a.go.th", "NO-BREAK SPACE"),
        ("a..b@a.go.th", "dots"),
        (".a@a.go.th", "dots"),
        ("a.@a.go.th", "dots"),
        ('"quoted"@a.go.th', "QUOTATION MARK"),
        ("a@b@a.go.th", "COMMERCIAL AT"),
        ("x" * 65 + "@a.go.th", "longer than 64 bytes"),
        ("ก" * 22 + "@a.go.th", "longer than 64 bytes"),  # 22 Thai letters = 66 bytes
        ("somchai@a go.th", "a space"),
    ],
)
def test_invalid_address_is_refused(address: str, why: str) -> None:
    with pytest.raises(DirectoryError, match=f"not a valid (mail address|domain).*({why})"):
        normalise_address(address)


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("SomChai@A.GO.TH", "somchai@a.go.th"),
        ("first.last+tag@a.go.th", "first.last+tag@a.go.th"),
        ("o'brien@a.go.th", "o'brien@a.go.th"),
        ("สมชาย@a.go.th", "สมชาย@a.go.th"),
        ("สมชาย.ใจดี@กรม.ไทย", "สมชาย.ใจดี@กรม.ไทย"),
        ("สมชาย@XN--O3CW4H", "สมชาย@ไทย"),
        # ปู่ with tone mark and below-vowel in either typing order: one address.
        ("\u0e1b\u0e48\u0e39@a.go.th", "\u0e1b\u0e39\u0e48@a.go.th"),
        ("Cafe\u0301@a.go.th", "caf\u00e9@a.go.th"),
        ("straße@a.go.th", "straße@a.go.th"),  # lower(), not casefold()
    ],
)
def test_address_normalisation(address: str, normalised: str) -> None:
    assert normalise_address(address) == normalised
    assert normalise_address(normalised) == normalised


_ADDRESS_CHARS = st.sampled_from("aZ9.-_+'!Ééกขปู่่ำ\u0301 @\x00\u200b\ud800")


@settings(max_examples=200, deadline=None)
@given(st.text(_ADDRESS_CHARS, max_size=30), st.text(_ADDRESS_CHARS, max_size=20))
def test_normalise_address_is_idempotent_or_refuses(local: str, domain: str) -> None:
    try:
        once = normalise_address(f"{local}@{domain}")
    except DirectoryError:
        return
    assert normalise_address(once) == once
    assert normalise_domain(once.rpartition("@")[2]) == once.rpartition("@")[2]


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=40))
def test_normalise_address_only_raises_directory_error(text: str) -> None:
    try:
        normalise_address(text)
    except DirectoryError:
        pass


async def test_thai_address_user(directory: Directory) -> None:
    user = await _add(directory, "\u0e1b\u0e48\u0e39@a.go.th", name_th="ปู่")
    assert user.address == "\u0e1b\u0e39\u0e48@a.go.th"
    assert await directory.user("\u0e1b\u0e48\u0e39@A.GO.TH") == user
    assert await directory.authenticate("\u0e1b\u0e48\u0e39@a.go.th", PASSWORD) == user
    with pytest.raises(DirectoryError, match="already exists"):
        await _add(directory, "\u0e1b\u0e39\u0e48@a.go.th")


async def test_user_lookup_misses(directory: Directory) -> None:
    assert await directory.user(f"nobody@{A}") is None
    assert await directory.user("not an address") is None


async def test_users_lists_by_agency(directory: Directory) -> None:
    await _add(directory, f"zed@{A}")
    await _add(directory, f"amy@{A}")
    await _add(directory, f"bob@{B}")
    assert [u.address for u in await directory.users()] == [f"amy@{A}", f"bob@{B}", f"zed@{A}"]
    assert [u.address for u in await directory.users(A.upper())] == [f"amy@{A}", f"zed@{A}"]
    assert [u.address for u in await directory.users(B)] == [f"bob@{B}"]
    with pytest.raises(DirectoryError, match=r"no agency serves domain c\.go\.th"):
        await directory.users("c.go.th")


async def test_many_users_added_at_once(directory: Directory) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(8):
            nursery.start_soon(_add, directory, f"user{n}@{A}")
    assert len(await directory.users(A)) == 8


def test_user_carries_no_password_hash() -> None:
    assert not [f.name for f in dataclasses.fields(User) if "pass" in f.name or "hash" in f.name]


async def test_user_is_safe_to_log_and_serialise(directory: Directory) -> None:
    user = await _add(directory, f"somchai@{A}")
    dumped = json.dumps(dataclasses.asdict(user), ensure_ascii=False) + repr(user)
    assert "scrypt" not in dumped
    assert PASSWORD not in dumped


def test_display_name() -> None:
    user = User(1, f"s@{A}", A, "สมชาย", "Somchai", None, 0, None, None, False, 0)
    assert user.display_name() == "สมชาย"
    assert user.display_name("en") == "Somchai"
    thai_only = dataclasses.replace(user, name_en=None)
    assert thai_only.display_name("en") == "สมชาย"
    nameless = dataclasses.replace(user, name_th="", name_en=None)
    assert nameless.display_name() == f"s@{A}"


# --- passwords and login -----------------------------------------------------------


async def test_authenticate(directory: Directory) -> None:
    user = await _add(directory, f"somchai@{A}")
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) == user
    assert await directory.authenticate(f"SomChai@{A.upper()}", PASSWORD) == user
    assert await directory.authenticate(f"somchai@{A}", "wrong") is None
    assert await directory.authenticate(f"somchai@{A}", "") is None
    assert await directory.authenticate(f"nobody@{A}", PASSWORD) is None
    assert await directory.authenticate("garbage", PASSWORD) is None


async def test_set_password(directory: Directory) -> None:
    await _add(directory, f"somchai@{A}")
    await directory.set_password(f"SOMCHAI@{A}", "รหัสใหม่")
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is None
    assert await directory.authenticate(f"somchai@{A}", "รหัสใหม่") is not None
    with pytest.raises(DirectoryError, match="must not be empty"):
        await directory.set_password(f"somchai@{A}", "")
    with pytest.raises(DirectoryError, match=r"^no user nobody@a\.go\.th on this box$"):
        await directory.set_password(f"nobody@{A}", "x")


async def test_disabled_user_cannot_log_in(directory: Directory) -> None:
    await _add(directory, f"somchai@{A}")
    await directory.set_disabled(f"somchai@{A}", True)
    user = await directory.user(f"somchai@{A}")
    assert user is not None
    assert user.disabled
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is None
    await directory.set_disabled(f"somchai@{A}", False)
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is not None
    with pytest.raises(DirectoryError, match=r"no user nobody@a\.go\.th"):
        await directory.set_disabled(f"nobody@{A}", True)


async def test_set_quota(directory: Directory) -> None:
    await _add(directory, f"somchai@{A}")
    await directory.set_quota(f"somchai@{A}", 3 * 1024**3)
    user = await directory.user(f"somchai@{A}")
    assert user is not None
    assert user.quota_bytes == 3 * 1024**3
    with pytest.raises(DirectoryError, match="quota_bytes must be a whole number"):
        await directory.set_quota(f"somchai@{A}", -1)
    with pytest.raises(DirectoryError, match=r"no user nobody@a\.go\.th"):
        await directory.set_quota(f"nobody@{A}", 1)


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the stored hash each password check runs against."""
    calls: list[str] = []
    real = passwords.verify_password

    def counting(password: str, stored: str) -> bool:
        calls.append(stored)
        return real(password, stored)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return calls


async def test_unknown_user_still_costs_a_password_check(
    directory: Directory, verify_calls: list[str]
) -> None:
    assert await directory.authenticate(f"nobody@{A}", PASSWORD) is None
    assert await directory.authenticate("not an address", PASSWORD) is None
    assert verify_calls == [passwords.DUMMY_HASH, passwords.DUMMY_HASH]


async def test_disabled_and_known_users_check_their_own_hash(
    directory: Directory, verify_calls: list[str]
) -> None:
    await _add(directory, f"somchai@{A}")
    await directory.set_disabled(f"somchai@{A}", True)
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is None
    assert await directory.authenticate(f"somchai@{A}", "wrong") is None
    assert len(verify_calls) == 2
    assert passwords.DUMMY_HASH not in verify_calls


async def test_a_repeated_login_skips_the_hash_until_the_password_changes(
    directory: Directory, verify_calls: list[str]
) -> None:
    await _add(directory, f"somchai@{A}")
    for _ in range(3):
        assert await directory.authenticate(f"somchai@{A}", PASSWORD) is not None
    assert len(verify_calls) == 1
    # A wrong password always pays (and never enters the cache).
    for _ in range(2):
        assert await directory.authenticate(f"somchai@{A}", "wrong") is None
    assert len(verify_calls) == 3
    # Disabling refuses a cached password at once; so does changing it.
    await directory.set_disabled(f"somchai@{A}", True)
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is None
    await directory.set_disabled(f"somchai@{A}", False)
    await directory.set_password(f"somchai@{A}", "รหัสใหม่")
    verify_calls.clear()
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is None
    assert len(verify_calls) == 1


async def test_hashing_runs_off_the_event_loop(
    directory: Directory, monkeypatch: pytest.MonkeyPatch, verify_calls: list[str]
) -> None:
    threads: list[threading.Thread] = []
    real = passwords.hash_password

    def recording(password: str) -> str:
        threads.append(threading.current_thread())
        return real(password)

    monkeypatch.setattr(passwords, "hash_password", recording)
    await _add(directory, f"somchai@{A}")
    await directory.set_password(f"somchai@{A}", "ใหม่")
    assert len(threads) == 2
    assert all(t is not threading.main_thread() for t in threads)


async def test_old_hash_is_upgraded_at_login(directory: Directory, db: Database) -> None:
    await _add(directory, f"somchai@{A}")
    old = _weak_hash(PASSWORD)

    def store_old(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE users SET password_hash = ?", (old,))

    def stored_hash(conn: sqlite3.Connection) -> str:
        return str(conn.execute("SELECT password_hash FROM users").fetchone()[0])

    await db.write(store_old)
    assert await directory.authenticate(f"somchai@{A}", PASSWORD) is not None
    upgraded = await db.read(stored_hash)
    assert upgraded != old
    assert not passwords.needs_rehash(upgraded)
    assert passwords.verify_password(PASSWORD, upgraded)


def _weak_hash(password: str) -> str:
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**10, r=8, p=1, dklen=32)
    return f"scrypt$10$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


# --- administrators ----------------------------------------------------------------


async def test_agency_admin_scope(directory: Directory) -> None:
    await _add(directory, f"admin@{A}")
    await directory.grant_admin(f"admin@{A}", A)
    assert await directory.is_admin(f"admin@{A}", A)
    assert await directory.is_admin(f"ADMIN@{A}", A.upper())
    assert not await directory.is_admin(f"admin@{A}", B)
    assert not await directory.is_admin(f"admin@{A}", None)
    assert await directory.admin_scope(f"admin@{A}") == frozenset({A})


async def test_box_admin_administers_every_agency(directory: Directory) -> None:
    await _add(directory, f"root@{A}")
    await directory.grant_admin(f"root@{A}", None)
    assert await directory.admin_scope(f"root@{A}") is None
    for domain in (A, B, None, "agency-added-later.go.th"):
        assert await directory.is_admin(f"root@{A}", domain)


async def test_admin_of_another_agency(directory: Directory) -> None:
    # Central IT staff of agency A may be made admin of agency B as well.
    await _add(directory, f"it@{A}")
    await directory.grant_admin(f"it@{A}", B)
    await directory.grant_admin(f"it@{A}", A)
    await directory.grant_admin(f"it@{A}", B)  # twice is once
    assert await directory.admin_scope(f"it@{A}") == frozenset({A, B})


async def test_ordinary_and_unknown_users_administer_nothing(directory: Directory) -> None:
    await _add(directory, f"somchai@{A}")
    assert await directory.admin_scope(f"somchai@{A}") == frozenset()
    assert not await directory.is_admin(f"somchai@{A}", A)
    assert await directory.admin_scope(f"nobody@{A}") == frozenset()
    assert not await directory.is_admin(f"nobody@{A}", A)
    assert await directory.admin_scope("garbage") == frozenset()


async def test_disabled_admin_administers_nothing(directory: Directory) -> None:
    await _add(directory, f"root@{A}")
    await directory.grant_admin(f"root@{A}", None)
    await directory.set_disabled(f"root@{A}", True)
    assert await directory.admin_scope(f"root@{A}") == frozenset()
    assert not await directory.is_admin(f"root@{A}", A)


async def test_grant_admin_errors(directory: Directory) -> None:
    with pytest.raises(DirectoryError, match=r"no user nobody@a\.go\.th"):
        await directory.grant_admin(f"nobody@{A}", A)
    await _add(directory, f"somchai@{A}")
    with pytest.raises(DirectoryError, match=r"no agency serves domain c\.go\.th"):
        await directory.grant_admin(f"somchai@{A}", "c.go.th")


async def test_revoke_admin(directory: Directory) -> None:
    await _add(directory, f"it@{A}")
    await directory.grant_admin(f"it@{A}", None)
    await directory.grant_admin(f"it@{A}", A)
    await directory.revoke_admin(f"it@{A}", None)
    assert await directory.admin_scope(f"it@{A}") == frozenset({A})
    await directory.revoke_admin(f"it@{A}", A)
    assert await directory.admin_scope(f"it@{A}") == frozenset()
