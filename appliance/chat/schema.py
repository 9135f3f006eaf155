"""Tables of the chat database (``DATA/db/chat.sqlite``, encrypted as a whole file).

Only the SQL lives here; `appliance.chat.store` is the only code that writes these
tables and `appliance.chat.rules` says what may be written.

Conventions:

- Ids of rooms, messages and invitations are the global id of the event that created
  them (``"{origin box}:{seq}"``), so they stay unique when events are replicated.
- ``events.cursor`` is this box's order of every event it holds (AUTOINCREMENT: a
  cursor is never reused, so a client's cursor can never point at another event).
- Times are Unix seconds (REAL), UTC.
- ``message_text`` (FTS5 trigram) sits in the same database as ``messages``, so a
  message and its index row commit, and are deleted, in one transaction. Its rowid is
  ``messages.seq``; it holds folded text (`appliance.chat.store.fold`).
- Membership rows of a deleted room are kept: its members still see the room's last
  event (``room.deleted``) on their streams.
- Sync (migration 2, `appliance.sync.codec.chat`): ``events.room_order`` is the hub's
  one order of the room's shared events, NULL until the hub has ordered the event (or
  for events that never leave the box); ``events.pending`` marks this box's own events
  the hub has not answered yet (the push queue); ``events.refusal`` keeps the hub's
  reason for an event it refused. ``messages.position`` is how a room's messages are
  listed: by the hub's order, with messages the hub has not ordered yet after all
  ordered ones, in local order. ``sync_cursors`` holds the pull cursor, committed in
  the same transaction as the events it covers.
"""

from __future__ import annotations

from typing import Final

from appliance.store.postgres import SQLITE_FUNCTIONS, PgMigration
from appliance.store.schema import Migration

#: Every pull a box makes asks the hub for the rooms with a member of the box's domain
#: (`Chat.hub_pull`, `Chat.room_history`, the file check), by this very expression;
#: without an index on it each pull read every membership of the nation (111,000 rows
#: in issue 22's 600-box load). The same SQL on SQLite and PostgreSQL (``instr`` is the
#: PostgreSQL function `appliance.store.postgres.SQLITE_FUNCTIONS` makes).
MEMBERS_BY_DOMAIN: Final = """
CREATE INDEX members_by_domain ON members (substr(address, instr(address, '@') + 1), room_id);
"""

CHAT_MIGRATIONS: Final = (
    Migration(
        1,
        "rooms, members, messages, receipts, events, invitations, locations, stickers",
        """
        CREATE TABLE origins (
            origin  TEXT PRIMARY KEY,
            seq     INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE events (
            cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
            id          TEXT NOT NULL UNIQUE,
            type        TEXT NOT NULL,
            room_id     TEXT,
            -- The one person a personal event is for (alerts), or the member an event
            -- concerns who may no longer be in the room (member.removed).
            subject     TEXT,
            message_id  TEXT,
            payload     TEXT NOT NULL,
            created_at  REAL NOT NULL
        );
        CREATE INDEX events_room ON events(room_id, cursor);
        CREATE INDEX events_subject ON events(subject, cursor) WHERE subject IS NOT NULL;
        CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL;

        CREATE TABLE rooms (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('direct', 'group', 'broadcast', 'secret')),
            name        TEXT,
            owner       TEXT NOT NULL,
            created_by  TEXT NOT NULL,
            options     TEXT NOT NULL DEFAULT '{}',
            -- "a b" (sorted addresses) for direct rooms: one direct room per pair.
            pair        TEXT UNIQUE,
            created_at  REAL NOT NULL,
            deleted     INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;

        CREATE TABLE members (
            room_id   TEXT NOT NULL REFERENCES rooms(id),
            address   TEXT NOT NULL,
            added_at  REAL NOT NULL,
            PRIMARY KEY (room_id, address)
        ) WITHOUT ROWID;
        CREATE INDEX members_by_address ON members(address, room_id);

        CREATE TABLE uploads (
            id          TEXT PRIMARY KEY,
            uploader    TEXT NOT NULL,
            blob_id     TEXT NOT NULL,
            media_type  TEXT NOT NULL,
            name        TEXT NOT NULL,
            size        INTEGER NOT NULL,
            created_at  REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE messages (
            seq         INTEGER PRIMARY KEY,
            id          TEXT NOT NULL UNIQUE,
            room_id     TEXT NOT NULL REFERENCES rooms(id),
            sender      TEXT NOT NULL,
            kind        TEXT NOT NULL,
            content     TEXT NOT NULL,
            reply_to    TEXT,
            client_id   TEXT,
            blob_id     TEXT,
            created_at  REAL NOT NULL,
            edited_at   REAL,
            deleted     INTEGER NOT NULL DEFAULT 0,
            secret      INTEGER NOT NULL DEFAULT 0,
            expires_at  REAL,
            UNIQUE (sender, client_id)
        );
        CREATE INDEX messages_room ON messages(room_id, seq);
        CREATE INDEX messages_blob ON messages(blob_id) WHERE blob_id IS NOT NULL;
        CREATE INDEX messages_expiry ON messages(expires_at) WHERE expires_at IS NOT NULL;

        -- case_sensitive 1: text is folded before it is stored, exactly as queries are.
        CREATE VIRTUAL TABLE message_text USING fts5(
            text, tokenize = 'trigram case_sensitive 1'
        );

        CREATE TABLE receipts (
            message_id  TEXT NOT NULL,
            reader      TEXT NOT NULL,
            read_at     REAL NOT NULL,
            PRIMARY KEY (message_id, reader)
        ) WITHOUT ROWID;
        CREATE INDEX receipts_reader ON receipts(reader, message_id);

        -- Recipients of a secret message who have not read it yet; the message goes
        -- when the last row for it goes (or its TTL passes).
        CREATE TABLE secret_unread (
            message_id  TEXT NOT NULL,
            reader      TEXT NOT NULL,
            PRIMARY KEY (message_id, reader)
        ) WITHOUT ROWID;

        CREATE TABLE hidden (
            address     TEXT NOT NULL,
            message_id  TEXT NOT NULL,
            PRIMARY KEY (address, message_id)
        ) WITHOUT ROWID;

        CREATE TABLE invitations (
            id          TEXT PRIMARY KEY,
            room_id     TEXT NOT NULL REFERENCES rooms(id),
            organiser   TEXT NOT NULL,
            title       TEXT NOT NULL,
            starts_at   TEXT NOT NULL,
            ends_at     TEXT,
            place       TEXT,
            created_at  REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE invitees (
            invitation_id  TEXT NOT NULL REFERENCES invitations(id),
            address        TEXT NOT NULL,
            answer         TEXT CHECK (answer IN ('accept', 'decline')),
            answered_at    REAL,
            PRIMARY KEY (invitation_id, address)
        ) WITHOUT ROWID;

        -- Only people who opted in have a row; opting out deletes it.
        CREATE TABLE locations (
            address     TEXT PRIMARY KEY,
            lat         REAL NOT NULL,
            lon         REAL NOT NULL,
            updated_at  REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE sticker_packs (
            id          TEXT PRIMARY KEY,
            agency      TEXT NOT NULL,
            name        TEXT NOT NULL,
            created_by  TEXT NOT NULL,
            created_at  REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE stickers (
            id          TEXT PRIMARY KEY,
            pack_id     TEXT NOT NULL REFERENCES sticker_packs(id),
            name        TEXT NOT NULL,
            blob_id     TEXT NOT NULL,
            media_type  TEXT NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE agency_settings (
            agency       TEXT PRIMARY KEY,
            public_mode  INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        2,
        "sync with the hub: room order, push queue, refusals, pull cursor",
        """
        ALTER TABLE events ADD COLUMN room_order INTEGER;
        ALTER TABLE events ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE events ADD COLUMN refusal TEXT;
        -- Everything written before sync existed is this box's own, not yet pushed.
        UPDATE events SET pending = 1 WHERE room_id IS NOT NULL AND type IN (
            'room.created', 'room.renamed', 'room.updated', 'room.deleted',
            'room.owner_changed', 'member.added', 'member.removed', 'message.posted',
            'message.edited', 'message.deleted', 'receipt', 'invitation.created',
            'invitation.answered');
        CREATE INDEX events_pending ON events(cursor) WHERE pending = 1;
        CREATE UNIQUE INDEX events_room_order ON events(room_id, room_order)
            WHERE room_order IS NOT NULL;

        ALTER TABLE messages ADD COLUMN room_order INTEGER;
        -- 2^40: far above any room order, so unordered messages list after ordered ones.
        ALTER TABLE messages ADD COLUMN position INTEGER
            GENERATED ALWAYS AS (coalesce(room_order, 1099511627776 + seq)) VIRTUAL;
        CREATE INDEX messages_position ON messages(room_id, position);

        CREATE TABLE sync_cursors (
            name   TEXT PRIMARY KEY,
            value  INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        3,
        "files of file messages between boxes: which ones the hub still lacks",
        """
        -- 0: this box holds the content and has not yet handed it to the hub.
        ALTER TABLE messages ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX messages_to_share ON messages(seq)
            WHERE shared = 0 AND blob_id IS NOT NULL;
        """,
    ),
    Migration(
        4,
        "indexes for the foreign keys from invitations and stickers",
        """
        -- Deleting a room or a sticker pack makes SQLite look for the rows naming it;
        -- an index keeps that from being a scan of the whole child table.
        CREATE INDEX invitations_room ON invitations(room_id);
        CREATE INDEX stickers_pack ON stickers(pack_id);
        """,
    ),
    Migration(
        5,
        "who may create broadcast rooms; on the hub, each agency's settings as its box says",
        """
        -- 'admins' (the default, issue 16) or 'everyone'.
        ALTER TABLE agency_settings ADD COLUMN broadcast_creators TEXT NOT NULL
            DEFAULT 'admins' CHECK (broadcast_creators IN ('admins', 'everyone'));
        -- Hub only: the agency's admins (JSON list) as its box last declared them.
        ALTER TABLE agency_settings ADD COLUMN admins TEXT;
        """,
    ),
    Migration(
        6,
        "the hub finds an agency's rooms by the domain of their members",
        MEMBERS_BY_DOMAIN,
        # An index only: an older release opens, reads and writes the file as before
        # (SQLite keeps the index up to date whoever writes).
        older_releases_may_open=True,
    ),
)


#: The same tables on PostgreSQL, for a hub whose ``hub_database`` names a server
#: (`appliance.store.postgres`). Version 1 is SQLite's version 5 in PostgreSQL's
#: words; a later change to the tables adds a step to both lists. The differences:
#: ``INTEGER PRIMARY KEY`` rowids are identity columns (``BY DEFAULT``, so a move from
#: SQLite keeps every cursor and seq), REAL is double precision, ``message_text`` is a
#: plain table (full-text search with FTS5 trigram syntax is SQLite's alone; see
#: docs/hub-postgresql.md) and ``messages.position`` is a stored generated column.
CHAT_PG_MIGRATIONS: Final = (
    PgMigration(
        1,
        "the chat tables as of SQLite schema 5",
        SQLITE_FUNCTIONS
        + """
        CREATE TABLE origins (
            origin  text PRIMARY KEY,
            seq     bigint NOT NULL
        );

        CREATE TABLE events (
            cursor      bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            id          text NOT NULL UNIQUE,
            type        text NOT NULL,
            room_id     text,
            subject     text,
            message_id  text,
            payload     text NOT NULL,
            created_at  double precision NOT NULL,
            room_order  bigint,
            pending     integer NOT NULL DEFAULT 0,
            refusal     text
        );
        CREATE INDEX events_room ON events(room_id, cursor);
        CREATE INDEX events_subject ON events(subject, cursor) WHERE subject IS NOT NULL;
        CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL;
        CREATE INDEX events_pending ON events(cursor) WHERE pending = 1;
        CREATE UNIQUE INDEX events_room_order ON events(room_id, room_order)
            WHERE room_order IS NOT NULL;

        CREATE TABLE rooms (
            id          text PRIMARY KEY,
            kind        text NOT NULL CHECK (kind IN ('direct', 'group', 'broadcast', 'secret')),
            name        text,
            owner       text NOT NULL,
            created_by  text NOT NULL,
            options     text NOT NULL DEFAULT '{}',
            pair        text UNIQUE,
            created_at  double precision NOT NULL,
            deleted     integer NOT NULL DEFAULT 0
        );

        CREATE TABLE members (
            room_id   text NOT NULL REFERENCES rooms(id),
            address   text NOT NULL,
            added_at  double precision NOT NULL,
            PRIMARY KEY (room_id, address)
        );
        CREATE INDEX members_by_address ON members(address, room_id);

        CREATE TABLE uploads (
            id          text PRIMARY KEY,
            uploader    text NOT NULL,
            blob_id     text NOT NULL,
            media_type  text NOT NULL,
            name        text NOT NULL,
            size        bigint NOT NULL,
            created_at  double precision NOT NULL
        );

        CREATE TABLE messages (
            seq         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            id          text NOT NULL UNIQUE,
            room_id     text NOT NULL REFERENCES rooms(id),
            sender      text NOT NULL,
            kind        text NOT NULL,
            content     text NOT NULL,
            reply_to    text,
            client_id   text,
            blob_id     text,
            created_at  double precision NOT NULL,
            edited_at   double precision,
            deleted     integer NOT NULL DEFAULT 0,
            secret      integer NOT NULL DEFAULT 0,
            expires_at  double precision,
            room_order  bigint,
            position    bigint GENERATED ALWAYS AS (coalesce(room_order, 1099511627776 + seq))
                STORED,
            shared      integer NOT NULL DEFAULT 0,
            UNIQUE (sender, client_id)
        );
        CREATE INDEX messages_room ON messages(room_id, seq);
        CREATE INDEX messages_blob ON messages(blob_id) WHERE blob_id IS NOT NULL;
        CREATE INDEX messages_expiry ON messages(expires_at) WHERE expires_at IS NOT NULL;
        CREATE INDEX messages_position ON messages(room_id, position);
        CREATE INDEX messages_to_share ON messages(seq) WHERE shared = 0 AND blob_id IS NOT NULL;

        CREATE TABLE message_text (
            rowid  bigint PRIMARY KEY,
            text   text NOT NULL
        );

        CREATE TABLE receipts (
            message_id  text NOT NULL,
            reader      text NOT NULL,
            read_at     double precision NOT NULL,
            PRIMARY KEY (message_id, reader)
        );
        CREATE INDEX receipts_reader ON receipts(reader, message_id);

        CREATE TABLE secret_unread (
            message_id  text NOT NULL,
            reader      text NOT NULL,
            PRIMARY KEY (message_id, reader)
        );

        CREATE TABLE hidden (
            address     text NOT NULL,
            message_id  text NOT NULL,
            PRIMARY KEY (address, message_id)
        );

        CREATE TABLE invitations (
            id          text PRIMARY KEY,
            room_id     text NOT NULL REFERENCES rooms(id),
            organiser   text NOT NULL,
            title       text NOT NULL,
            starts_at   text NOT NULL,
            ends_at     text,
            place       text,
            created_at  double precision NOT NULL
        );
        CREATE INDEX invitations_room ON invitations(room_id);

        CREATE TABLE invitees (
            invitation_id  text NOT NULL REFERENCES invitations(id),
            address        text NOT NULL,
            answer         text CHECK (answer IN ('accept', 'decline')),
            answered_at    double precision,
            PRIMARY KEY (invitation_id, address)
        );

        CREATE TABLE locations (
            address     text PRIMARY KEY,
            lat         double precision NOT NULL,
            lon         double precision NOT NULL,
            updated_at  double precision NOT NULL
        );

        CREATE TABLE sticker_packs (
            id          text PRIMARY KEY,
            agency      text NOT NULL,
            name        text NOT NULL,
            created_by  text NOT NULL,
            created_at  double precision NOT NULL
        );

        CREATE TABLE stickers (
            id          text PRIMARY KEY,
            pack_id     text NOT NULL REFERENCES sticker_packs(id),
            name        text NOT NULL,
            blob_id     text NOT NULL,
            media_type  text NOT NULL
        );
        CREATE INDEX stickers_pack ON stickers(pack_id);

        CREATE TABLE agency_settings (
            agency              text PRIMARY KEY,
            public_mode         integer NOT NULL DEFAULT 0,
            broadcast_creators  text NOT NULL DEFAULT 'admins'
                CHECK (broadcast_creators IN ('admins', 'everyone')),
            admins              text
        );

        CREATE TABLE sync_cursors (
            name   text PRIMARY KEY,
            value  bigint NOT NULL
        );
        """,
    ),
    PgMigration(
        2, "the hub finds an agency's rooms by the domain of their members", MEMBERS_BY_DOMAIN
    ),
)
