"""Tables of the directory database: agencies, their org chart, users and admins.

Only the SQL lives here; the rules (normalisation, who may be added where) live in
`appliance.directory.directory`, which is the only code that writes these tables.

Conventions:

- ``agencies.domain`` and ``users.address`` hold the normalised form (NFC, lower case;
  see `directory.normalise_address`), so a plain UNIQUE index is a case-insensitive one.
- Timestamps are ISO 8601 UTC text, readable by an operator in the ``sqlite3`` shell.
- ``users.rank``: a higher number is more senior (chat rule: no private chat upwards).
- ``admins.agency_id IS NULL`` means an administrator of the whole box.
- ``agencies.remote = 1``: an agency served by another box, known here only through
  directory replication (v5); its users have the unusable password hash ``!``.
"""

from __future__ import annotations

from typing import Final

from appliance.store.schema import Migration

#: 10 GiB, the per-user mailbox size of the central service (REQUIREMENTS.md §2).
DEFAULT_QUOTA_BYTES: Final = 10 * 1024**3

_NOW: Final = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"

DIRECTORY_MIGRATIONS: Final = (
    Migration(
        1,
        "agencies, units, users, admins",
        f"""
        CREATE TABLE agencies (
            id          INTEGER PRIMARY KEY,
            domain      TEXT NOT NULL UNIQUE CHECK (domain <> '' AND domain = lower(domain)),
            name_th     TEXT,
            name_en     TEXT,
            created_at  TEXT NOT NULL DEFAULT {_NOW}
        );

        CREATE TABLE units (
            id          INTEGER PRIMARY KEY,
            agency_id   INTEGER NOT NULL REFERENCES agencies(id) ON DELETE CASCADE,
            parent_id   INTEGER REFERENCES units(id) ON DELETE RESTRICT,
            name_th     TEXT NOT NULL CHECK (name_th <> ''),
            name_en     TEXT,
            UNIQUE (agency_id, name_th)
        );
        CREATE INDEX units_parent ON units(parent_id);

        CREATE TABLE users (
            id             INTEGER PRIMARY KEY,
            agency_id      INTEGER NOT NULL REFERENCES agencies(id) ON DELETE RESTRICT,
            unit_id        INTEGER REFERENCES units(id) ON DELETE SET NULL,
            address        TEXT NOT NULL UNIQUE CHECK (address = lower(address)),
            name_th        TEXT NOT NULL,
            name_en        TEXT,
            position       TEXT,
            rank           INTEGER NOT NULL DEFAULT 0 CHECK (rank >= 0),
            phone          TEXT,
            password_hash  TEXT NOT NULL,
            disabled       INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
            quota_bytes    INTEGER NOT NULL DEFAULT {DEFAULT_QUOTA_BYTES}
                           CHECK (quota_bytes >= 0),
            created_at     TEXT NOT NULL DEFAULT {_NOW},
            updated_at     TEXT NOT NULL DEFAULT {_NOW}
        );
        CREATE INDEX users_agency ON users(agency_id);
        CREATE INDEX users_unit ON users(unit_id);

        CREATE TABLE admins (
            user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            agency_id  INTEGER REFERENCES agencies(id) ON DELETE CASCADE,
            UNIQUE (user_id, agency_id)
        );
        -- SQLite treats NULLs as distinct in UNIQUE, so the constraint above would let
        -- one user be made box-wide admin twice; this partial index closes that gap.
        CREATE UNIQUE INDEX admins_box_wide ON admins(user_id) WHERE agency_id IS NULL;
        CREATE INDEX admins_agency ON admins(agency_id);
        """,
    ),
    Migration(
        2,
        "delegations: service accounts that may act for users (SASL authzid)",
        """
        -- RFC 4616 lets a client sign in as one identity and act as another. Only the
        -- accounts listed here may: the sync replicator and the hub open users'
        -- mailboxes this way; people never can. agency_id NULL: every agency.
        CREATE TABLE delegations (
            user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            agency_id  INTEGER REFERENCES agencies(id) ON DELETE CASCADE,
            UNIQUE (user_id, agency_id)
        );
        CREATE UNIQUE INDEX delegations_box_wide ON delegations(user_id)
            WHERE agency_id IS NULL;
        """,
    ),
    Migration(
        3,
        "sessions: web and app sign-ins (appliance.directory.sessions)",
        f"""
        -- Only a SHA-256 of each token is kept: a copy of this file (a backup, a
        -- stolen disk) must not let anyone act as a signed-in user. Times are ISO 8601
        -- UTC text in one fixed format, so they compare correctly as text.
        CREATE TABLE sessions (
            token_hash  BLOB PRIMARY KEY CHECK (length(token_hash) = 32),
            user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at  TEXT NOT NULL DEFAULT {_NOW},
            expires_at  TEXT NOT NULL,
            client_ip   TEXT,
            user_agent  TEXT
        ) WITHOUT ROWID;
        CREATE INDEX sessions_user ON sessions(user_id);
        CREATE INDEX sessions_expires ON sessions(expires_at);
        """,
    ),
    Migration(
        4,
        "preferences: each user's language, theme and font size for the web pages",
        """
        -- A missing row means the defaults (Thai, light, medium); only choices made
        -- on the settings page are stored.
        CREATE TABLE preferences (
            user_id    INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            language   TEXT NOT NULL CHECK (language IN ('th', 'en')),
            theme      TEXT NOT NULL CHECK (theme IN ('light', 'dark')),
            font_size  TEXT NOT NULL CHECK (font_size IN ('small', 'medium', 'large'))
        );
        """,
    ),
    Migration(
        5,
        "directory replication: change sequence, remote agencies, sync cursors",
        """
        -- remote = 1: an agency another box serves. Its users are copied here from the
        -- hub so the address book and chat know them; they cannot sign in here, get
        -- no mailboxes, and mail to them leaves through the central relay.
        ALTER TABLE agencies ADD COLUMN remote INTEGER NOT NULL DEFAULT 0
            CHECK (remote IN (0, 1));

        -- Every change of what other boxes see of a user (not the password, quota or
        -- timestamps) gives the row the next number; replication sends the rows past
        -- a cursor. Triggers, so every write path (CLI, admin console, replication)
        -- is covered without anyone remembering to bump it. Numbers are assigned
        -- inside the single writer's transaction, so they commit in order and a
        -- reader never sees a later number before an earlier one.
        ALTER TABLE users ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
        -- Users made before this version have never been sent anywhere.
        UPDATE users SET change_seq = id;
        CREATE INDEX users_change_seq ON users(change_seq);
        CREATE TRIGGER users_seq_insert AFTER INSERT ON users BEGIN
            UPDATE users SET change_seq = (SELECT max(change_seq) FROM users) + 1
            WHERE id = NEW.id;
        END;
        CREATE TRIGGER users_seq_update
            AFTER UPDATE OF agency_id, unit_id, name_th, name_en, position, rank, phone,
                            disabled ON users
        BEGIN
            UPDATE users SET change_seq = (SELECT max(change_seq) FROM users) + 1
            WHERE id = NEW.id;
        END;

        -- Durable replication cursors (appliance.sync.directory): the last change
        -- the hub acknowledged ("push"), the last hub change applied here ("pull").
        -- A cursor moves in the same transaction as the data it covers, or after the
        -- hub said it committed.
        CREATE TABLE sync_cursors (
            stream      TEXT PRIMARY KEY,
            position    INTEGER NOT NULL CHECK (position >= 0),
            updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        6,
        "an index for the foreign key from delegations to agencies",
        """
        -- Removing an agency cascades to its delegations; without this index SQLite
        -- finds them with a scan of the whole table.
        CREATE INDEX delegations_agency ON delegations(agency_id);
        """,
    ),
)
