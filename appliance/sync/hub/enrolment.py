"""Enrolment on the hub: one-time tokens, and the boxes they enrolled.

A technician runs ``edgebox hub token --agency moe.go.th`` on the hub and carries the
printed token to the box, where ``edgebox enroll`` redeems it once. The hub database
``DATA/db/hub.sqlite`` keeps:

- ``tokens``: only a SHA-256 of each token's secret (a copy of the file must not let
  anyone enrol a box), the agency it is for, its expiry (24 h by default) and when it
  was used. Redeeming is one transaction that checks "unused and not expired" and marks
  it used, so two boxes racing with one token cannot both get in.
- ``boxes``: each enrolled box, its agency, the serial of the certificate it holds now
  and its service account at the hub's mail server. A box is known to the sync API only
  while its row says so: re-enrolment replaces the serial (the old certificate stops
  working), revocation sets ``revoked_at``. Renewal (`renew`) installs a new serial
  and keeps the one the box renewed with as ``previous_serial`` until the next renewal.

Times are Unix seconds from the hub's `Clock`, so expiry is tested by moving a
`ManualClock`, not by waiting a day.

The token format (`EnrolmentToken`) is ``eb1.<secret>.<ca>``: 18 random bytes and the
SHA-256 fingerprint of the hub's box CA (the one that signs its server certificate),
both base64url. The fingerprint lets the box check, before it sends the secret, that it
talks to the real hub and not to someone in between (see `appliance.provisioning.enrol`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from appliance.store.database import Database, open_database
from appliance.store.postgres import PgMigration, PgStore, open_pg_database
from appliance.store.schema import Migration
from appliance.sync.clock import Clock, SystemClock
from appliance.sync.transport import Peer

HUB_DB: Final = Path("db") / "hub.sqlite"
DEFAULT_TOKEN_TTL: Final = 24 * 3600.0
#: A token longer-lived than this is refused at issue: it is a password on paper.
MAX_TOKEN_TTL: Final = 30 * 24 * 3600.0

_TOKEN_VERSION: Final = "eb1"  # noqa: S105 -- a format tag, not a secret
_SECRET_BYTES: Final = 18

HUB_MIGRATIONS: Final = (
    Migration(
        1,
        "enrolment tokens and enrolled boxes",
        """
        CREATE TABLE tokens (
            token_hash     BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
            agency_domain  TEXT NOT NULL,
            created_at     REAL NOT NULL,
            expires_at     REAL NOT NULL,
            used_at        REAL,
            used_by        TEXT
        ) WITHOUT ROWID;

        CREATE TABLE boxes (
            box_id           TEXT PRIMARY KEY,
            agency_domain    TEXT NOT NULL,
            -- Lower-case hex of the serial of the one certificate that is valid now.
            cert_serial      TEXT NOT NULL,
            service_account  TEXT NOT NULL,
            enrolled_at      REAL NOT NULL,
            revoked_at       REAL
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        2,
        "a renewed box's previous certificate stays valid until the box uses the new one",
        """
        -- Lower-case hex of the certificate the box renewed with: accepted beside
        -- cert_serial, so a renewal whose answer was lost strands nobody.
        ALTER TABLE boxes ADD COLUMN previous_serial TEXT;
        """,
    ),
)


class EnrolmentRefused(Exception):
    """A token that cannot be redeemed; *code* is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenFormatError(ValueError):
    """Text that is not an enrolment token."""


@dataclass(frozen=True)
class EnrolmentToken:
    """What a token carries: the one-time secret and the hub CA's fingerprint."""

    secret: bytes
    ca_fingerprint: bytes

    def __str__(self) -> str:
        return ".".join((_TOKEN_VERSION, _b64(self.secret), _b64(self.ca_fingerprint)))

    def __repr__(self) -> str:  # never the secret, even in a traceback
        return f"EnrolmentToken(ca_fingerprint={self.ca_fingerprint.hex()})"

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.secret).digest()

    @classmethod
    def parse(cls, text: str) -> EnrolmentToken:
        """Parse a printed token; `TokenFormatError` if it is not one."""
        parts = text.strip().split(".") if isinstance(text, str) else []
        if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
            raise TokenFormatError("not an edgebox enrolment token (eb1.<secret>.<ca>)")
        try:
            secret, ca = _unb64(parts[1]), _unb64(parts[2])
        except (ValueError, binascii.Error):
            raise TokenFormatError("the enrolment token is damaged (bad base64)") from None
        if len(secret) != _SECRET_BYTES or len(ca) != 32:
            raise TokenFormatError("the enrolment token is damaged (wrong length)")
        return cls(secret, ca)


@dataclass(frozen=True)
class EnrolledBox:
    box_id: str
    agency_domain: str
    cert_serial: str
    service_account: str
    enrolled_at: float
    revoked_at: float | None


#: The same tables on PostgreSQL (schema ``hub``), for a hub whose ``hub_database``
#: names a server: version 1 is SQLite's version 2.
HUB_PG_MIGRATIONS: Final = (
    PgMigration(
        1,
        "enrolment tokens and enrolled boxes, as of SQLite schema 2",
        """
        CREATE TABLE tokens (
            token_hash     bytea PRIMARY KEY CHECK (length(token_hash) = 32),
            agency_domain  text NOT NULL,
            created_at     double precision NOT NULL,
            expires_at     double precision NOT NULL,
            used_at        double precision,
            used_by        text
        );

        CREATE TABLE boxes (
            box_id           text PRIMARY KEY,
            agency_domain    text NOT NULL,
            cert_serial      text NOT NULL,
            service_account  text NOT NULL,
            enrolled_at      double precision NOT NULL,
            revoked_at       double precision,
            previous_serial  text
        );
        """,
    ),
)

#: The PostgreSQL schema of the enrolment tables.
HUB_SCHEMA: Final = "hub"


@asynccontextmanager
async def open_hub_database(data_dir: Path, database_url: str = "") -> AsyncIterator[Database[Any]]:
    """Open (creating as needed) the hub's enrolment database.

    ``DATA/db/hub.sqlite``, or the ``hub`` schema of the PostgreSQL server at
    *database_url* (a hub's ``hub_database``): every worker of the hub then sees one
    set of tokens and boxes, so any of them can enrol, renew or refuse a box.
    """
    if database_url:
        async with open_pg_database(PgStore(database_url, HUB_SCHEMA), HUB_PG_MIGRATIONS) as pg:
            yield pg
        return
    async with open_database(Path(data_dir) / HUB_DB, HUB_MIGRATIONS) as db:
        yield db


class Enrolment:
    """Tokens and enrolled boxes of one hub, over ``hub.sqlite`` or PostgreSQL.

    Jobs take the connection of either store (`appliance.store.postgres`): the SQL
    here is written to read the same on both.
    """

    def __init__(self, db: Database[Any], clock: Clock | None = None) -> None:
        self._db = db
        self.clock = clock or SystemClock()

    async def issue_token(
        self, agency_domain: str, ca_fingerprint: bytes, ttl: float = DEFAULT_TOKEN_TTL
    ) -> EnrolmentToken:
        """Make a one-time token for a box of *agency_domain* (already normalised)."""
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"a token lives between 1 second and {MAX_TOKEN_TTL / 3600:.0f} h")
        token = EnrolmentToken(secrets.token_bytes(_SECRET_BYTES), ca_fingerprint)
        now = self.clock.now()

        def job(conn: Any) -> None:
            conn.execute(
                "INSERT INTO tokens (token_hash, agency_domain, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (token.hash, agency_domain, now, now + ttl),
            )

        await self._db.write(job)
        return token

    async def check_token(self, token: EnrolmentToken) -> str:
        """Return the agency *token* is for if it could be redeemed now; else refuse.

        A look without a change: the enrol route calls it before doing any work, then
        `redeem` checks again in the transaction that counts.
        """
        now = self.clock.now()
        return await self._db.read(lambda conn: _usable(conn, token.hash, now))

    async def redeem(
        self, token: EnrolmentToken, box_id: str, cert_serial: int, service_account: str
    ) -> str:
        """Mark *token* used and record *box_id* as enrolled, in one transaction.

        Returns the token's agency. Raises `EnrolmentRefused` (and changes nothing) if
        the token is unknown, used or expired. Enrolling a box id again replaces its
        certificate serial and clears a revocation: the technician's new token is the
        authority.
        """
        now = self.clock.now()

        def job(conn: Any) -> str:
            agency = _usable(conn, token.hash, now)
            conn.execute(
                "UPDATE tokens SET used_at = ?, used_by = ? WHERE token_hash = ?",
                (now, box_id, token.hash),
            )
            conn.execute(
                "INSERT INTO boxes (box_id, agency_domain, cert_serial, service_account,"
                " enrolled_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (box_id) DO UPDATE SET agency_domain = excluded.agency_domain,"
                " cert_serial = excluded.cert_serial,"
                " service_account = excluded.service_account,"
                " enrolled_at = excluded.enrolled_at, revoked_at = NULL,"
                " previous_serial = NULL",
                (box_id, agency, format(cert_serial, "x"), service_account, now),
            )
            return agency

        return await self._db.write(job)

    async def peer(self, box_id: str, cert_serial: int) -> Peer | None:
        """Return the enrolled, unrevoked box holding certificate *cert_serial*, or None."""

        def query(conn: Any) -> Peer | None:
            serial = format(cert_serial, "x")
            row = conn.execute(
                "SELECT agency_domain FROM boxes WHERE box_id = ?"
                " AND (cert_serial = ? OR previous_serial = ?) AND revoked_at IS NULL",
                (box_id, serial, serial),
            ).fetchone()
            return None if row is None else Peer(box_id, str(row[0]))

        return await self._db.read(query)

    async def renew(self, box_id: str, calling_serial: int, new_serial: int) -> bool:
        """Make *new_serial* the certificate of *box_id*, which called with *calling_serial*.

        The calling certificate stays valid beside the new one (``previous_serial``):
        the box switches only once it has the answer, and if that answer is lost it
        renews again with the same old certificate. A certificate older than the
        calling one stops working. False (nothing changed) if the box is revoked or
        *calling_serial* is not one of its certificates.
        """
        calling = format(calling_serial, "x")

        def job(conn: Any) -> bool:
            cursor = conn.execute(
                "UPDATE boxes SET previous_serial = ?, cert_serial = ? WHERE box_id = ?"
                " AND (cert_serial = ? OR previous_serial = ?) AND revoked_at IS NULL",
                (calling, format(new_serial, "x"), box_id, calling, calling),
            )
            return bool(cursor.rowcount > 0)

        return await self._db.write(job)

    async def revoke(self, box_id: str) -> bool:
        """Stop accepting *box_id*'s certificate; return False if no such box."""
        now = self.clock.now()

        def job(conn: Any) -> bool:
            cursor = conn.execute(
                "UPDATE boxes SET revoked_at = ? WHERE box_id = ? AND revoked_at IS NULL",
                (now, box_id),
            )
            return bool(cursor.rowcount > 0)

        return await self._db.write(job)

    async def boxes(self) -> list[EnrolledBox]:
        """Every box ever enrolled here, by agency and id."""

        def query(conn: Any) -> list[EnrolledBox]:
            rows = conn.execute(
                "SELECT box_id, agency_domain, cert_serial, service_account, enrolled_at,"
                " revoked_at FROM boxes ORDER BY agency_domain, box_id"
            ).fetchall()
            return [EnrolledBox(*row) for row in rows]

        return await self._db.read(query)


def _usable(conn: Any, token_hash: bytes, now: float) -> str:
    row = conn.execute(
        "SELECT agency_domain, expires_at, used_at FROM tokens WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        raise EnrolmentRefused("token_unknown", "this enrolment token is not known to the hub")
    agency, expires_at, used_at = str(row[0]), float(row[1]), row[2]
    if used_at is not None:
        raise EnrolmentRefused(
            "token_used", "this enrolment token was already used; ask for a new one"
        )
    if now >= expires_at:
        raise EnrolmentRefused(
            "token_expired", "this enrolment token has expired; ask for a new one"
        )
    return agency


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
