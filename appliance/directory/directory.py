"""The directory: which agencies this box serves, their org charts, users and admins.

Everything that needs to know "who is this?" asks `Directory`: SMTP for local
recipients and AUTH, IMAP and the web for logins, chat for ranks and the org chart, the
admin pages for who may manage whom (REQUIREMENTS.md §2 "per-agency administrators
manage their own users", §3 ranks and org chart).

The rules kept here:

- Addresses and domains are normalised once, on the way in (`normalise_address`): NFC,
  then lower case. Thai local parts are allowed (RFC 6531); Thai has no letter case, so
  only the ASCII and other cased parts change. Lookups normalise the same way, so
  ``Somchai@MOPH.go.th`` and ``somchai@moph.go.th`` are one user.
- A user belongs to the agency that serves the domain of their address.
- Passwords are hashed with `appliance.security.passwords` in a worker thread, never on
  the event loop, and never leave this module: `User` carries no hash.
- Every write is one `Database.write` job, so its checks and its change happen in one
  transaction; every read is one `Database.read`.

- Agencies another box serves (``remote``) hold copies of that box's users, written only
  by `apply_entries` (directory replication): they are in `users()` and `user()` for the
  address book and chat, but not in `agencies()` or `local_domains()`, cannot sign in
  (`authenticate`, `act_as`), cannot be edited here, and nobody can be added to them.

What this is not: sessions, lock-out or rate limiting (security/), permission checks of
the web API (it asks `is_admin` / `admin_scope`), or the replication protocol itself
(appliance.sync.directory; here are only the reads and writes it needs).
"""

from __future__ import annotations

import encodings.idna
import os
import sqlite3
import unicodedata
from collections.abc import Sequence
from typing import Any, Final

import trio

from appliance.directory.models import Agency, DirectoryEntry, OrgUnit, User
from appliance.directory.schema import DEFAULT_QUOTA_BYTES
from appliance.security import passwords
from appliance.security.credential_cache import VerifiedCredentials
from appliance.security.untrusted import display_text
from appliance.store.database import SQLiteDatabase

#: Password hashes computed at once. Each scrypt call holds 16 MiB; trio's default
#: thread limit (40) would let a login storm take 640 MiB on a small ARM box. Logins
#: beyond this wait their turn, which also slows password guessing.
HASH_WORKERS: Final = max(1, min(4, os.cpu_count() or 1))

#: RFC 5321 §4.5.3.1: local part at most 64 octets, domain 255, whole path (with the
#: angle brackets) 256, so an address is at most 254 octets.
MAX_LOCAL_OCTETS: Final = 64
MAX_DOMAIN_OCTETS: Final = 255
MAX_ADDRESS_OCTETS: Final = 254

#: Longest name, position or phone text accepted; these end up in mail headers.
MAX_TEXT_CHARS: Final = 256

# RFC 5322 §3.2.3 atext, the ASCII characters a dot-atom local part may hold.
_ATEXT: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
# Unicode categories never allowed in an address: controls, invisible format
# characters (e.g. ZERO WIDTH SPACE, common in Thai text, which would let two
# addresses look identical), surrogates, private use, unassigned, and separators.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})

_USER_COLUMNS: Final = """
    SELECT u.id, u.address, a.domain, u.name_th, u.name_en, u.position, u.rank,
           n.name_th, u.phone, u.disabled, u.quota_bytes, a.remote
    FROM users u
    JOIN agencies a ON a.id = u.agency_id
    LEFT JOIN units n ON n.id = u.unit_id
"""

_NOW: Final = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

#: The password hash of users who cannot sign in on this box (remote agencies' users,
#: and at the hub the users pushed by boxes): no scrypt hash ever equals it.
NO_PASSWORD: Final = "!"  # noqa: S105 -- the absence of a password, not one

#: What replication reads of a user (`DirectoryEntry`), in its field order.
_ENTRY_COLUMNS: Final = """
    SELECT u.change_seq, u.address, a.domain, a.name_th, a.name_en, u.name_th, u.name_en,
           u.position, u.rank, n.name_th, u.phone, u.disabled
    FROM users u
    JOIN agencies a ON a.id = u.agency_id
    LEFT JOIN units n ON n.id = u.unit_id
"""


class DirectoryError(Exception):
    """A directory request that cannot be done; the message is for the operator."""


# --- normalisation -----------------------------------------------------------------


def normalise_address(address: str) -> str:
    """Return *address* in the form the directory stores, or raise DirectoryError.

    Accepts dot-atom local parts of ASCII atext and UTF-8 characters (RFC 6531 §3.3);
    quoted local parts are refused, since nobody needs one for a new account.
    """
    if not isinstance(address, str):
        raise DirectoryError(f"a mail address must be text, not {type(address).__name__}")
    shown = repr(address)
    if "@" not in address:
        raise DirectoryError(f"not a valid mail address: {shown} has no @")
    local, _, domain = address.rpartition("@")
    if not local:
        raise DirectoryError(f"not a valid mail address: {shown} has nothing before the @")
    if not domain:
        raise DirectoryError(f"not a valid mail address: {shown} has nothing after the @")
    local = _fold(local)
    _check_local_part(local, shown)
    domain = normalise_domain(domain)
    normalised = f"{local}@{domain}"
    if len(normalised.encode("utf-8")) > MAX_ADDRESS_OCTETS:
        raise DirectoryError(
            f"not a valid mail address: {shown} is longer than {MAX_ADDRESS_OCTETS} bytes"
        )
    return normalised


def normalise_domain(domain: str) -> str:
    """Return *domain* as stored: NFC, lower case, Thai labels as U-labels (not xn--)."""
    if not isinstance(domain, str):
        raise DirectoryError(f"a domain must be text, not {type(domain).__name__}")
    shown = repr(domain)
    folded = _fold(domain)
    if not folded:
        raise DirectoryError("the domain is empty")
    labels = [_domain_label(label, shown) for label in folded.split(".")]
    normalised = ".".join(labels)
    ascii_length = sum(len(encodings.idna.ToASCII(label)) + 1 for label in labels) - 1
    if ascii_length > MAX_DOMAIN_OCTETS:
        raise DirectoryError(f"not a valid domain: {shown} is too long")
    return normalised


def _fold(text: str) -> str:
    # NFC, lower, NFC again: lower() can leave a combining sequence that NFC composes
    # (and vice versa), and normalising twice must give the same answer as once.
    # lower(), not casefold(): casefold turns "ß" into "ss", which would change the
    # address mail is delivered to, not just how it is matched.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).lower())


def _check_local_part(local: str, shown: str) -> None:
    problem = None
    # Characters first: a lone surrogate must be reported, not crash the byte count.
    for char in local:
        if char == "." or char in _ATEXT:
            continue
        if char.isascii() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            problem = f"it contains {_describe(char)}"
            break
    else:
        if local.startswith(".") or local.endswith(".") or ".." in local:
            problem = "dots must sit between other characters, one at a time"
        elif len(local.encode("utf-8")) > MAX_LOCAL_OCTETS:
            problem = f"the part before the @ is longer than {MAX_LOCAL_OCTETS} bytes"
    if problem is not None:
        raise DirectoryError(f"not a valid mail address: {shown}: {problem}")


def _domain_label(label: str, shown: str) -> str:
    """Check one label of a folded domain; return its U-label form."""
    if not label:
        raise DirectoryError(f"not a valid domain: {shown} has an empty label")
    if label.startswith("xn--"):
        # An A-label: store its Thai form, so "xn--o3cw4h" and "ไทย" are one domain.
        try:
            label = _fold(encodings.idna.ToUnicode(label))
        except UnicodeError:
            raise DirectoryError(f"not a valid domain: {shown}: bad xn-- label") from None
    if label.startswith("-") or label.endswith("-"):
        raise DirectoryError(f"not a valid domain: {shown}: a label starts or ends with -")
    for char in label:
        if char.isascii():
            ok = char.isalnum() or char == "-"
        else:
            ok = unicodedata.category(char)[0] in "LMN"
        if not ok:
            raise DirectoryError(f"not a valid domain: {shown}: it contains {_describe(char)}")
    if not label.isascii():
        # IDNA must map the label to itself, or the xn-- form and this form would be
        # two spellings of the domain that normalise differently.
        try:
            round_trip = _fold(encodings.idna.ToUnicode(encodings.idna.ToASCII(label)))
        except UnicodeError:
            raise DirectoryError(f"not a valid domain: {shown}: label {label!r}") from None
        if round_trip != label:
            raise DirectoryError(f"not a valid domain: {shown}: label {label!r} is not canonical")
    elif len(label) > 63:
        raise DirectoryError(f"not a valid domain: {shown}: a label is longer than 63")
    return label


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    name = unicodedata.name(char, f"U+{ord(char):04X}")
    return f"{name} ({char!r})" if char.isprintable() else name


def _clean_text(value: str | None, what: str) -> str | None:
    """Return optional free text NFC-normalised and stripped; None if blank."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise DirectoryError(f"{what} must be text, not {type(value).__name__}")
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        return None
    if len(value) > MAX_TEXT_CHARS:
        raise DirectoryError(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    # Names go into mail headers and logs: a newline there would forge a header line.
    # A lone surrogate (Cs) is not text at all and SQLite could not store it.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise DirectoryError(
            f"{what} must not contain control characters (line breaks, tabs) or broken text"
        )
    # Bidi overrides (format characters, not controls) would make a name read as
    # another: they go, as in mail and chat.
    return display_text(value).strip() or None


def _required_text(value: str | None, what: str) -> str:
    cleaned = _clean_text(value, what)
    if cleaned is None:
        raise DirectoryError(f"{what} must not be empty")
    return cleaned


def _check_count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DirectoryError(f"{what} must be a whole number 0 or more, not {value!r}")
    return value


# --- row helpers (run inside db.read / db.write jobs) ------------------------------


def _shown(value: str | None) -> str | None:
    return None if value is None else display_text(value)


def _user_from_row(row: Sequence[Any]) -> User:
    return User(
        id=row[0],
        address=row[1],
        agency_domain=row[2],
        # Shown to everyone: a name stored before bidi overrides were removed loses them.
        name_th=display_text(row[3]),
        name_en=_shown(row[4]),
        position=_shown(row[5]),
        rank=row[6],
        unit=_shown(row[7]),
        phone=row[8],
        disabled=bool(row[9]),
        quota_bytes=row[10],
        remote=bool(row[11]),
    )


def _select_user(conn: sqlite3.Connection, address: str) -> User | None:
    row = conn.execute(_USER_COLUMNS + " WHERE u.address = ?", (address,)).fetchone()
    return None if row is None else _user_from_row(row)


def _agency_id(conn: sqlite3.Connection, domain: str, *, remote_ok: bool = False) -> int:
    """The id of the agency of *domain*; a remote agency only for reads (*remote_ok*)."""
    row = conn.execute("SELECT id, remote FROM agencies WHERE domain = ?", (domain,)).fetchone()
    if row is None or (row[1] and not remote_ok):
        raise DirectoryError(f"no agency serves domain {domain}; create it with `edgebox init`")
    return int(row[0])


def _user_id(conn: sqlite3.Connection, address: str) -> int:
    row = conn.execute("SELECT id FROM users WHERE address = ?", (address,)).fetchone()
    if row is None:
        raise DirectoryError(f"no user {address} on this box")
    return int(row[0])


def _unit_id(conn: sqlite3.Connection, agency_id: int, domain: str, name_th: str) -> int:
    row = conn.execute(
        "SELECT id FROM units WHERE agency_id = ? AND name_th = ?", (agency_id, name_th)
    ).fetchone()
    if row is None:
        raise DirectoryError(f"no unit {name_th!r} in {domain}; create the unit first")
    return int(row[0])


def _update_user(conn: sqlite3.Connection, address: str, column: str, value: object) -> None:
    # *column* is always a literal from this module, never user input.
    cursor = conn.execute(
        f"UPDATE users SET {column} = ?, updated_at = {_NOW} WHERE address = ?"  # noqa: S608
        " AND agency_id IN (SELECT id FROM agencies WHERE remote = 0)",
        (value, address),
    )
    if cursor.rowcount == 0:
        if conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone():
            raise DirectoryError(
                f"{address} belongs to an agency served by another box; change it there"
            )
        raise DirectoryError(f"no user {address} on this box")


# --- the directory -----------------------------------------------------------------


class Directory:
    """Agencies, org units, users and admins of this box, over the directory database."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db
        self._hash_limiter = trio.CapacityLimiter(HASH_WORKERS)
        #: Clients reconnecting with the same password skip scrypt for a while.
        self._verified = VerifiedCredentials()

    # agencies

    async def add_agency(
        self, domain: str, name_th: str | None = None, name_en: str | None = None
    ) -> Agency:
        """Start serving *domain*; for a domain already served, update the names given."""
        domain = normalise_domain(domain)
        name_th = _clean_text(name_th, "the agency's Thai name")
        name_en = _clean_text(name_en, "the agency's English name")

        def job(conn: sqlite3.Connection) -> Agency:
            row = conn.execute(
                "SELECT id, name_th, name_en, remote FROM agencies WHERE domain = ?", (domain,)
            ).fetchone()
            if row is not None and row[3]:
                # Its users here are copies without passwords or mailboxes; serving it
                # would strand them. Another box serves it (directory replication).
                raise DirectoryError(
                    f"{domain} is served by another box (known here through the hub);"
                    " it cannot also be served here"
                )
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO agencies (domain, name_th, name_en) VALUES (?, ?, ?)",
                    (domain, name_th, name_en),
                )
                assert cursor.lastrowid is not None
                return Agency(cursor.lastrowid, domain, name_th, name_en)
            # Running `edgebox init` again with a corrected name fixes the name;
            # leaving a name out keeps the one already stored.
            agency = Agency(int(row[0]), domain, name_th or row[1], name_en or row[2])
            conn.execute(
                "UPDATE agencies SET name_th = ?, name_en = ? WHERE id = ?",
                (agency.name_th, agency.name_en, agency.id),
            )
            return agency

        return await self._db.write(job)

    async def agency(self, domain: str) -> Agency | None:
        """Return the agency serving *domain*, or None."""
        try:
            domain = normalise_domain(domain)
        except DirectoryError:
            return None

        def query(conn: sqlite3.Connection) -> Agency | None:
            row = conn.execute(
                "SELECT id, domain, name_th, name_en FROM agencies WHERE domain = ? AND remote = 0",
                (domain,),
            ).fetchone()
            return None if row is None else Agency(*row)

        return self._db.read_now(query)

    async def agencies(self) -> list[Agency]:
        """Return every agency served by this box, by domain."""

        def query(conn: sqlite3.Connection) -> list[Agency]:
            rows = conn.execute(
                "SELECT id, domain, name_th, name_en FROM agencies WHERE remote = 0 ORDER BY domain"
            ).fetchall()
            return [Agency(*row) for row in rows]

        return await self._db.read(query)

    async def local_domains(self) -> frozenset[str]:
        """Return the mail domains this box delivers to locally."""

        def query(conn: sqlite3.Connection) -> frozenset[str]:
            rows = conn.execute("SELECT domain FROM agencies WHERE remote = 0")
            return frozenset(row[0] for row in rows)

        # Indexed one-row look-ups like this run inline (`Database.read_now`): SMTP asks
        # them several times per message, and a thread hop each costs more than SQLite.
        return self._db.read_now(query)

    # org chart

    async def ensure_unit(
        self,
        agency_domain: str,
        name_th: str,
        name_en: str | None = None,
        parent: str | None = None,
    ) -> OrgUnit:
        """Return the unit *name_th* of the agency, creating it (under *parent*) if new.

        *parent* is the Thai name of an existing unit of the same agency. Asking for an
        existing unit under a different parent is an error: units are not moved here.
        """
        domain = normalise_domain(agency_domain)
        name_th = _required_text(name_th, "the unit's Thai name")
        name_en = _clean_text(name_en, "the unit's English name")
        parent = None if parent is None else _required_text(parent, "the parent unit's name")

        def job(conn: sqlite3.Connection) -> OrgUnit:
            agency_id = _agency_id(conn, domain)
            parent_id = None if parent is None else _unit_id(conn, agency_id, domain, parent)
            row = conn.execute(
                "SELECT id, name_en, parent_id FROM units WHERE agency_id = ? AND name_th = ?",
                (agency_id, name_th),
            ).fetchone()
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO units (agency_id, parent_id, name_th, name_en)"
                    " VALUES (?, ?, ?, ?)",
                    (agency_id, parent_id, name_th, name_en),
                )
                assert cursor.lastrowid is not None
                return OrgUnit(cursor.lastrowid, domain, name_th, name_en, parent_id)
            unit_id, stored_en, stored_parent = int(row[0]), row[1], row[2]
            if parent is not None and stored_parent != parent_id:
                raise DirectoryError(
                    f"unit {name_th!r} of {domain} already exists under another parent;"
                    f" it was not moved under {parent!r}"
                )
            if name_en is not None and name_en != stored_en:
                conn.execute("UPDATE units SET name_en = ? WHERE id = ?", (name_en, unit_id))
                stored_en = name_en
            return OrgUnit(unit_id, domain, name_th, stored_en, stored_parent)

        return await self._db.write(job)

    async def units(self, agency_domain: str) -> list[OrgUnit]:
        """Return the agency's org units, in the order they were created."""
        domain = normalise_domain(agency_domain)

        def query(conn: sqlite3.Connection) -> list[OrgUnit]:
            agency_id = _agency_id(conn, domain, remote_ok=True)
            rows = conn.execute(
                "SELECT id, name_th, name_en, parent_id FROM units WHERE agency_id = ? ORDER BY id",
                (agency_id,),
            ).fetchall()
            return [OrgUnit(row[0], domain, row[1], row[2], row[3]) for row in rows]

        return await self._db.read(query)

    # users

    async def add_user(
        self,
        address: str,
        *,
        password: str | None = None,
        password_hash: str | None = None,
        name_th: str,
        name_en: str | None = None,
        rank: int = 0,
        unit: str | None = None,
        position: str | None = None,
        phone: str | None = None,
        quota_bytes: int | None = None,
    ) -> User:
        """Create a user in the agency serving the address's domain.

        Exactly one of *password* (hashed here) and *password_hash* (made earlier by
        `passwords.hash_password`, e.g. in the setup wizard, so its draft never held the
        password) is given. A given hash is checked to be in our format, never trusted.
        """
        address = normalise_address(address)
        if (password is None) == (password_hash is None):
            raise DirectoryError(f"user {address}: give a password or its hash, not both")
        domain = address.rpartition("@")[2]
        name_th = _required_text(name_th, f"the Thai name of {address}")
        name_en = _clean_text(name_en, f"the English name of {address}")
        position = _clean_text(position, f"the position of {address}")
        phone = _clean_text(phone, f"the phone number of {address}")
        unit = None if unit is None else _required_text(unit, "the unit's name")
        rank = _check_count(rank, "rank")
        quota = DEFAULT_QUOTA_BYTES if quota_bytes is None else quota_bytes
        quota = _check_count(quota, "quota_bytes")
        if password is not None:
            password_hash = await self._hash(address, password)
        elif not passwords.is_password_hash(password_hash):
            raise DirectoryError(f"password hash for {address} is not in the box's format")

        def job(conn: sqlite3.Connection) -> User:
            agency_id = _agency_id(conn, domain)
            unit_id = None if unit is None else _unit_id(conn, agency_id, domain, unit)
            if conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone():
                raise DirectoryError(f"user {address} already exists")
            conn.execute(
                "INSERT INTO users (agency_id, unit_id, address, name_th, name_en, position,"
                " rank, phone, password_hash, quota_bytes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agency_id,
                    unit_id,
                    address,
                    name_th,
                    name_en,
                    position,
                    rank,
                    phone,
                    password_hash,
                    quota,
                ),
            )
            user = _select_user(conn, address)
            assert user is not None
            return user

        return await self._db.write(job)

    async def user(self, address: str) -> User | None:
        """Return the user with *address* (any case), or None."""
        try:
            address = normalise_address(address)
        except DirectoryError:
            return None
        return self._db.read_now(lambda conn: _select_user(conn, address))

    async def users(self, agency_domain: str | None = None) -> list[User]:
        """Return the users of one agency, or of the whole box, by address.

        The whole box includes the copies of other agencies' users (``User.remote``),
        so the address book and chat find them.
        """
        domain = None if agency_domain is None else normalise_domain(agency_domain)

        def query(conn: sqlite3.Connection) -> list[User]:
            if domain is None:
                rows = conn.execute(_USER_COLUMNS + " ORDER BY u.address").fetchall()
            else:
                agency_id = _agency_id(conn, domain, remote_ok=True)
                rows = conn.execute(
                    _USER_COLUMNS + " WHERE u.agency_id = ? ORDER BY u.address", (agency_id,)
                ).fetchall()
            return [_user_from_row(row) for row in rows]

        return await self._db.read(query)

    async def set_password(self, address: str, password: str) -> None:
        """Replace the user's password (a user's own change, or an admin's reset)."""
        address = normalise_address(address)
        password_hash = await self._hash(address, password)
        await self._db.write(
            lambda conn: _update_user(conn, address, "password_hash", password_hash)
        )

    async def set_disabled(self, address: str, disabled: bool) -> None:
        """Disable (no login, kept mail) or re-enable the user."""
        address = normalise_address(address)
        await self._db.write(lambda conn: _update_user(conn, address, "disabled", int(disabled)))

    async def set_quota(self, address: str, quota_bytes: int) -> None:
        """Set the user's mailbox size limit in bytes."""
        address = normalise_address(address)
        quota = _check_count(quota_bytes, "quota_bytes")
        await self._db.write(lambda conn: _update_user(conn, address, "quota_bytes", quota))

    async def authenticate(self, address: str, password: str) -> User | None:
        """Return the user if *password* is theirs and they are enabled, else None.

        Takes the same time whether or not the address exists: an unknown address is
        checked against `passwords.DUMMY_HASH`, so response times do not reveal which
        accounts exist. A password verified in the last few minutes against the same
        stored hash is accepted without hashing again (`VerifiedCredentials`); only a
        correct password can be that fast.
        """
        try:
            address = normalise_address(address)
        except DirectoryError:
            address = ""

        def query(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE address = ?", (address,)
            ).fetchone()
            user = _select_user(conn, address) if row is not None else None
            # A user of an agency another box serves signs in there, never here; at the
            # hub, a user pushed by their box has no password here at all. Both take
            # the unknown-address path, in the same time.
            if user is None or user.remote or row[0] == NO_PASSWORD:
                return None
            return user, str(row[0])

        found = await self._db.read(query) if address else None
        if found is not None and self._verified.matches(address, password, found[1]):
            return None if found[0].disabled else found[0]
        stored = passwords.DUMMY_HASH if found is None else found[1]
        matches = await trio.to_thread.run_sync(
            passwords.verify_password, password, stored, limiter=self._hash_limiter
        )
        if found is None or not matches or found[0].disabled:
            return None
        user = found[0]
        self._verified.remember(address, password, stored)
        if passwords.needs_rehash(stored):
            # The only moment the plain password is at hand: move this user to today's
            # scrypt parameters. Guarded by the old hash, so a password changed
            # meanwhile is not overwritten.
            fresh = await self._hash(address, password)

            def rehash(conn: sqlite3.Connection) -> None:
                conn.execute(
                    f"UPDATE users SET password_hash = ?, updated_at = {_NOW}"  # noqa: S608
                    " WHERE address = ? AND password_hash = ?",
                    (fresh, address, stored),
                )

            await self._db.write(rehash)
        return user

    # administrators

    async def grant_admin(self, address: str, agency_domain: str | None) -> None:
        """Make the user an admin of one agency, or of the whole box if *agency_domain*
        is None. Granting twice is the same as once."""
        await self._write_grant(
            "INSERT OR IGNORE INTO admins (user_id, agency_id) VALUES (?, ?)",
            address,
            agency_domain,
        )

    async def revoke_admin(self, address: str, agency_domain: str | None) -> None:
        """Take back one grant made by `grant_admin` (other grants stay)."""
        await self._write_grant(
            "DELETE FROM admins WHERE user_id = ? AND agency_id IS ?", address, agency_domain
        )

    async def _write_grant(self, sql: str, address: str, agency_domain: str | None) -> None:
        """Run *sql* with (the user's id, the agency's id or NULL for every agency)."""
        address = normalise_address(address)
        domain = None if agency_domain is None else normalise_domain(agency_domain)

        def job(conn: sqlite3.Connection) -> None:
            user_id = _user_id(conn, address)
            agency_id = None if domain is None else _agency_id(conn, domain)
            conn.execute(sql, (user_id, agency_id))

        await self._db.write(job)

    # service accounts

    async def grant_delegation(self, address: str, agency_domain: str | None) -> None:
        """Let the account act for every user of one agency (None: of every agency).

        This is what a SASL authorisation identity (RFC 4616) is checked against: the
        sync replicator signs in as itself and opens a user's mailbox as that user.
        """
        await self._write_grant(
            "INSERT OR IGNORE INTO delegations (user_id, agency_id) VALUES (?, ?)",
            address,
            agency_domain,
        )

    async def act_as(self, actor: User, target_address: str) -> User | None:
        """Return *target_address*'s user if *actor* may act for them, else None.

        Acting as oneself is always allowed; acting for someone else needs a delegation
        covering the target's agency. Disabled actors and targets get None.
        """
        try:
            target_address = normalise_address(target_address)
        except DirectoryError:
            return None
        if target_address == actor.address:
            return None if actor.disabled else actor

        def query(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM delegations d JOIN users u ON u.id = d.user_id"
                " WHERE d.user_id = ? AND u.disabled = 0 AND (d.agency_id IS NULL OR"
                " d.agency_id = (SELECT id FROM agencies WHERE domain = ?)) LIMIT 1",
                (actor.id, target_address.rpartition("@")[2]),
            ).fetchone()
            return row is not None

        if not self._db.read_now(query):
            return None
        target = await self.user(target_address)
        return None if target is None or target.disabled or target.remote else target

    async def is_admin(self, address: str, agency_domain: str | None) -> bool:
        """Return whether the user may administer the agency (None: the whole box).

        A box-wide admin administers every agency. A disabled user administers nothing.
        """
        scope = await self.admin_scope(address)
        if scope is None:
            return True
        if agency_domain is None:
            return False
        try:
            return normalise_domain(agency_domain) in scope
        except DirectoryError:
            return False

    async def agency_admins(
        self, agency_domain: str, *, include_box_wide: bool = False
    ) -> list[str]:
        """Return the enabled admins of the agency, or the box's own admins if it has none.

        The agency's postmaster (RFC 5321 §4.5.1) is delivered to these addresses.
        With *include_box_wide*, everyone who administers the agency: both kinds.
        """
        domain = normalise_domain(agency_domain)

        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT u.address, ad.agency_id IS NULL FROM admins ad"
                " JOIN users u ON u.id = ad.user_id"
                " LEFT JOIN agencies a ON a.id = ad.agency_id"
                " WHERE u.disabled = 0 AND (a.domain = ? OR ad.agency_id IS NULL)"
                " ORDER BY u.address",
                (domain,),
            ).fetchall()
            own = [address for address, box_wide in rows if not box_wide]
            if include_box_wide or not own:
                return [address for address, _ in rows]
            return own

        return self._db.read_now(query)

    async def admin_scope(self, address: str) -> frozenset[str] | None:
        """Return the domains the user administers; None means every agency on the box.

        An unknown, disabled or ordinary user gets the empty set.
        """
        try:
            address = normalise_address(address)
        except DirectoryError:
            return frozenset()

        def query(conn: sqlite3.Connection) -> frozenset[str] | None:
            rows = conn.execute(
                "SELECT ad.agency_id, a.domain FROM admins ad"
                " JOIN users u ON u.id = ad.user_id"
                " LEFT JOIN agencies a ON a.id = ad.agency_id"
                " WHERE u.address = ? AND u.disabled = 0",
                (address,),
            ).fetchall()
            if any(agency_id is None for agency_id, _ in rows):
                return None
            return frozenset(domain for _, domain in rows)

        return self._db.read_now(query)

    # helpers

    async def _hash(self, address: str, password: str) -> str:
        try:
            return await trio.to_thread.run_sync(
                passwords.hash_password, password, limiter=self._hash_limiter
            )
        except (ValueError, TypeError) as exc:
            raise DirectoryError(f"password for {address}: {exc}") from None

    # --- edits for the admin console (appliance.admin) ------------------------------
    #
    # One method per field, so each change is one small transaction and one line in
    # the admin log. Each refuses an unknown user with DirectoryError and changes
    # nothing; the admin console checks *who* may make the change before calling.

    async def set_names(self, address: str, name_th: str, name_en: str | None) -> None:
        """Replace the user's Thai name (required) and English name (None clears it)."""
        address = normalise_address(address)
        thai = _required_text(name_th, f"the Thai name of {address}")
        english = _clean_text(name_en, f"the English name of {address}")

        def job(conn: sqlite3.Connection) -> None:
            _update_user(conn, address, "name_th", thai)
            _update_user(conn, address, "name_en", english)

        await self._db.write(job)

    async def set_rank(self, address: str, rank: int) -> None:
        """Set the user's rank (a higher number is more senior)."""
        address = normalise_address(address)
        value = _check_count(rank, "rank")
        await self._db.write(lambda conn: _update_user(conn, address, "rank", value))

    async def set_unit(self, address: str, unit: str | None) -> None:
        """Place the user in *unit* (Thai name of a unit of their agency); None: no unit."""
        address = normalise_address(address)
        domain = address.rpartition("@")[2]
        name = None if unit is None else _required_text(unit, "the unit's name")

        def job(conn: sqlite3.Connection) -> None:
            unit_id = None
            if name is not None:
                unit_id = _unit_id(conn, _agency_id(conn, domain), domain, name)
            _update_user(conn, address, "unit_id", unit_id)

        await self._db.write(job)

    async def set_position(self, address: str, position: str | None) -> None:
        """Set the user's position title (None or blank clears it)."""
        address = normalise_address(address)
        value = _clean_text(position, f"the position of {address}")
        await self._db.write(lambda conn: _update_user(conn, address, "position", value))

    async def set_phone(self, address: str, phone: str | None) -> None:
        """Set the user's phone number (None or blank clears it)."""
        address = normalise_address(address)
        value = _clean_text(phone, f"the phone number of {address}")
        await self._db.write(lambda conn: _update_user(conn, address, "phone", value))

    async def count_users(self) -> dict[str, tuple[int, int]]:
        """Return, for every agency's domain, (users, of which disabled)."""

        def query(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            rows = conn.execute(
                "SELECT a.domain, count(u.id), coalesce(sum(u.disabled), 0)"
                " FROM agencies a LEFT JOIN users u ON u.agency_id = a.id"
                " WHERE a.remote = 0 GROUP BY a.id"
            ).fetchall()
            return {str(row[0]): (int(row[1]), int(row[2])) for row in rows}

        return await self._db.read(query)

    async def granted_domains(self, address: str) -> frozenset[str] | None:
        """Return every agency the user holds a grant over, enabled or not; None: all.

        Both kinds of grant count: administrator (`grant_admin`) and acting for users
        (`grant_delegation`). Unlike `admin_scope`, a disabled user's grants count too:
        whoever may re-enable an account must not be able to reset the password of one
        that would then hold more power than they do.
        """
        address = normalise_address(address)

        def query(conn: sqlite3.Connection) -> frozenset[str] | None:
            rows = conn.execute(
                "SELECT g.agency_id, a.domain FROM ("
                " SELECT user_id, agency_id FROM admins"
                " UNION ALL SELECT user_id, agency_id FROM delegations) g"
                " JOIN users u ON u.id = g.user_id"
                " LEFT JOIN agencies a ON a.id = g.agency_id"
                " WHERE u.address = ?",
                (address,),
            ).fetchall()
            if any(agency_id is None for agency_id, _ in rows):
                return None
            return frozenset(str(domain) for _, domain in rows)

        return await self._db.read(query)

    # --- directory replication (appliance.sync.directory) ------------------------------
    #
    # The reads and writes replication needs; the protocol (batches, cursors, who may
    # push what) lives in appliance.sync. Service accounts (anyone holding a
    # delegation) are never sent: they are this box's plumbing, not people.

    async def entries_after(
        self,
        after: int,
        limit: int,
        *,
        agency: str | None = None,
        except_agency: str | None = None,
    ) -> list[DirectoryEntry]:
        """Return up to *limit* users changed after change number *after*, in change order.

        *agency*: only that agency's users; *except_agency*: everyone else's.
        """
        # Only literals of this module are joined; values go in as parameters.
        where = " WHERE u.change_seq > ?"
        where += " AND NOT EXISTS (SELECT 1 FROM delegations d WHERE d.user_id = u.id)"
        sql = _ENTRY_COLUMNS + where
        params: list[Any] = [after]
        if agency is not None:
            sql += " AND a.domain = ?"
            params.append(normalise_domain(agency))
        if except_agency is not None:
            sql += " AND a.domain <> ?"
            params.append(normalise_domain(except_agency))
        sql += " ORDER BY u.change_seq LIMIT ?"
        params.append(limit)

        def query(conn: sqlite3.Connection) -> list[DirectoryEntry]:
            rows = conn.execute(sql, params).fetchall()
            return [_entry_from_row(row) for row in rows]

        return await self._db.read(query)

    async def apply_entries(
        self,
        entries: Sequence[DirectoryEntry],
        *,
        remote: bool,
        cursor: tuple[str, int] | None = None,
    ) -> list[str]:
        """Store users sent by replication, in one transaction; return addresses created.

        *remote* True (a box pulling from the hub): the entries' agencies become remote
        agencies here, and entries of an agency this box serves are ignored: the box is
        the authority for its own users. *remote* False (the hub storing a box's push):
        the agency is served here (the hub is its central mail server). Either way a
        new user gets no usable password (`NO_PASSWORD`), an existing one keeps theirs,
        and service accounts are never touched. A row is rewritten only if something
        changed, so applying a batch twice has the effect of once. *cursor*, if given,
        is stored in the same transaction: the data and the position that covers it
        commit together.
        """
        cleaned = [_clean_entry(entry) for entry in entries]

        def job(conn: sqlite3.Connection) -> list[str]:
            created: list[str] = []
            for entry in cleaned:
                if _apply_entry(conn, entry, remote=remote):
                    created.append(entry.address)
            if cursor is not None:
                _store_cursor(conn, *cursor)
            return created

        return await self._db.write(job)

    async def sync_cursor(self, stream: str) -> int:
        """Return replication cursor *stream* (0 before the first round)."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT position FROM sync_cursors WHERE stream = ?", (stream,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.read(query)

    async def set_sync_cursor(self, stream: str, position: int) -> None:
        """Move replication cursor *stream* forward to *position* (never back)."""
        await self._db.write(lambda conn: _store_cursor(conn, stream, position))


def _entry_from_row(row: Sequence[Any]) -> DirectoryEntry:
    return DirectoryEntry(
        seq=row[0],
        address=row[1],
        agency_domain=row[2],
        agency_name_th=row[3],
        agency_name_en=row[4],
        name_th=row[5],
        name_en=row[6],
        position=row[7],
        rank=row[8],
        unit=row[9],
        phone=row[10],
        disabled=bool(row[11]),
    )


def _store_cursor(conn: sqlite3.Connection, stream: str, position: int) -> None:
    conn.execute(
        f"INSERT INTO sync_cursors (stream, position) VALUES (?, ?)"  # noqa: S608
        f" ON CONFLICT (stream) DO UPDATE SET position = max(position, excluded.position),"
        f" updated_at = {_NOW}",
        (stream, _check_count(position, "cursor")),
    )


def _clean_entry(entry: DirectoryEntry) -> DirectoryEntry:
    """Check a replicated entry by the rules of `add_user`; DirectoryError if it breaks one."""
    address = normalise_address(entry.address)
    domain = normalise_domain(entry.agency_domain)
    if address.rpartition("@")[2] != domain:
        raise DirectoryError(f"{address} is not an address of {domain}")
    if not isinstance(entry.disabled, bool):
        raise DirectoryError(f"disabled of {address} must be true or false")
    unit = entry.unit
    return DirectoryEntry(
        seq=_check_count(entry.seq, "seq"),
        address=address,
        agency_domain=domain,
        agency_name_th=_clean_text(entry.agency_name_th, f"the Thai name of {domain}"),
        agency_name_en=_clean_text(entry.agency_name_en, f"the English name of {domain}"),
        name_th=_required_text(entry.name_th, f"the Thai name of {address}"),
        name_en=_clean_text(entry.name_en, f"the English name of {address}"),
        position=_clean_text(entry.position, f"the position of {address}"),
        rank=_check_count(entry.rank, f"the rank of {address}"),
        unit=None if unit is None else _required_text(unit, f"the unit of {address}"),
        phone=_clean_text(entry.phone, f"the phone number of {address}"),
        disabled=entry.disabled,
    )


def _apply_entry(conn: sqlite3.Connection, entry: DirectoryEntry, *, remote: bool) -> bool:
    """Store one cleaned entry; return whether the user was created."""
    row = conn.execute(
        "SELECT id, remote, name_th, name_en FROM agencies WHERE domain = ?",
        (entry.agency_domain,),
    ).fetchone()
    if row is None:
        cursor = conn.execute(
            "INSERT INTO agencies (domain, name_th, name_en, remote) VALUES (?, ?, ?, ?)",
            (entry.agency_domain, entry.agency_name_th, entry.agency_name_en, int(remote)),
        )
        assert cursor.lastrowid is not None
        agency_id = cursor.lastrowid
    else:
        agency_id = int(row[0])
        if bool(row[1]) != remote:
            return False  # this box serves the agency (or, at the hub, never happens)
        names = (entry.agency_name_th or row[2], entry.agency_name_en or row[3])
        if names != (row[2], row[3]):
            conn.execute(
                "UPDATE agencies SET name_th = ?, name_en = ? WHERE id = ?", (*names, agency_id)
            )
    unit_id = None
    if entry.unit is not None:
        found = conn.execute(
            "SELECT id FROM units WHERE agency_id = ? AND name_th = ?", (agency_id, entry.unit)
        ).fetchone()
        if found is None:
            cursor = conn.execute(
                "INSERT INTO units (agency_id, name_th) VALUES (?, ?)", (agency_id, entry.unit)
            )
            unit_id = cursor.lastrowid
        else:
            unit_id = int(found[0])
    values = (
        unit_id,
        entry.name_th,
        entry.name_en,
        entry.position,
        entry.rank,
        entry.phone,
        int(entry.disabled),
    )
    user = conn.execute(
        "SELECT id, unit_id, name_th, name_en, position, rank, phone, disabled,"
        " EXISTS (SELECT 1 FROM delegations d WHERE d.user_id = users.id)"
        " FROM users WHERE address = ?",
        (entry.address,),
    ).fetchone()
    if user is None:
        conn.execute(
            "INSERT INTO users (agency_id, unit_id, name_th, name_en, position, rank, phone,"
            " disabled, address, password_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agency_id, *values, entry.address, NO_PASSWORD),
        )
        return True
    if user[8] or tuple(user[1:8]) == values:
        return False  # a service account, or nothing new: no write, no new change number
    conn.execute(
        f"UPDATE users SET unit_id = ?, name_th = ?, name_en = ?, position = ?, rank = ?,"  # noqa: S608
        f" phone = ?, disabled = ?, updated_at = {_NOW} WHERE id = ?",
        (*values, user[0]),
    )
    return False
