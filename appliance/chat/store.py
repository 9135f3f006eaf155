"""The chat domain of one box: a thin `Chat` façade over the parts that do the work.

Everything users and sync do in chat goes through `Chat`, whose methods are those
of its parts, each a class in its own module given only what it uses:

- `writer.ChatWriter`: the one writer, event ids, recording events, publishing them
  to the live streams (`stream.Fanout`) after the commit, blobs.
- `apply.EventApplier`: the one write path of each event type. A local command
  checks its rules, then records its event and applies it with the code that
  applies the same event replicated from another box.
- `rooms.Rooms`, `posts.Posts` (messages, receipts, search), `files.SharedFiles`
  (file contents here and between boxes), `extras.Extras` (invitations, alerts,
  stickers, people), `settings.AgencySettings`, `feed.EventFeed` (what streams read).
- `edge_sync.EdgeSync` and `hub_sync.HubSync`: the two sides of chat sync.

The rules of each change: every change is one `Database.write` job that reads what
it needs, asks `RoomPolicy` (pure rules), writes the rows *and* the event recording
the change, all in one transaction. A refused request raises `ChatError` from inside
the job, whose SAVEPOINT is then rolled back: a refusal changes nothing. Every event
gets a global id ``"{origin box}:{seq}"`` and this box's ``cursor``; rooms, messages
and invitations take the id of the event that created them. Chat text is personal
data: the database is encrypted as a whole (`appliance.store.encrypted`) and file
contents are `BlobStore` blobs.

What this is not: HTTP (`appliance.chat.api`), or the rules themselves (`rules.py`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import trio

from appliance.chat.apply import Authority, EventApplier
from appliance.chat.edge_sync import EdgeSync
from appliance.chat.extras import Extras
from appliance.chat.feed import EventFeed
from appliance.chat.files import SharedFiles
from appliance.chat.hub_sync import HubSync
from appliance.chat.posts import MAX_UNREAD, Posts, RoomActivity
from appliance.chat.rooms import Rooms
from appliance.chat.schema import CHAT_MIGRATIONS, CHAT_PG_MIGRATIONS
from appliance.chat.settings import AgencySettings
from appliance.chat.stream import Fanout
from appliance.chat.tables import MAX_UPLOAD, Conn, parse_options, read_room, scalar
from appliance.chat.writer import ChatWriter
from appliance.directory import Directory
from appliance.store.blobs import BlobStore
from appliance.store.database import Database, running
from appliance.store.encrypted import derive_key, open_encrypted_database
from appliance.store.postgres import PgStore, pg_database

__all__ = [
    "KEY_INFO",
    "MAX_UNREAD",
    "MAX_UPLOAD",
    "Authority",
    "Chat",
    "RoomActivity",
    "open_chat",
    "parse_options",
]

#: The PostgreSQL schema of a hub's chat tables.
CHAT_SCHEMA = "chat"

#: The channel a hub's chat commits notify on PostgreSQL (`CommitFollower`).
CHAT_NOTIFY = "edgebox_chat"

#: HKDF ``info`` of the chat database key.
KEY_INFO = b"edgebox chat database v1"


class Chat:
    """The chat service of one box; open it with `open_chat`."""

    def __init__(
        self,
        db: Database[Conn],
        blobs: BlobStore,
        directory: Directory,
        box_id: str,
        fanout: Fanout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Tests and benchmarks reach the database and blobs under these names.
        self._db = db
        self._blobs = blobs
        self._directory = directory
        self.box_id = box_id
        #: The in-process fan-out of published events to live streams.
        self.fanout = fanout
        self._writer = writer = ChatWriter(db, blobs, box_id, fanout, clock)
        applier = EventApplier(writer)
        settings = AgencySettings(db, directory)
        rooms = Rooms(writer, applier, directory, settings)
        posts = Posts(writer, applier)
        self._files = files = SharedFiles(writer)
        self._feed = feed = EventFeed(db, fanout)
        edge = EdgeSync(writer, applier)
        hub = HubSync(writer, applier)
        extras = Extras(writer, applier, directory)

        # Settings of agencies.
        self.public_mode = settings.public_mode
        self.broadcast_by_everyone = settings.broadcast_by_everyone
        self.set_broadcast_creators = settings.set_broadcast_creators
        self.set_public_mode = settings.set_public_mode
        self.agency_settings = settings.agency_settings
        self.record_agency_settings = settings.record_agency_settings
        self.declared_settings = settings.declared_settings
        # Rooms and their members.
        self.create_room = rooms.create_room
        self.open_direct = rooms.open_direct
        self.room = rooms.room
        self.rooms = rooms.rooms
        self.update_room = rooms.update_room
        self.delete_room = rooms.delete_room
        self.transfer_ownership = rooms.transfer_ownership
        self.add_members = rooms.add_members
        self.join_audiences = rooms.join_audiences
        self.remove_member = rooms.remove_member
        self.leave = rooms.leave
        self.members_of = rooms.members_of
        # Messages, receipts, search, and the secret sweeper.
        self.upload = posts.upload
        self.post = posts.post
        self.message = posts.message
        self.messages = posts.messages
        self.edit = posts.edit
        self.delete_message = posts.delete_message
        self.mark_read = posts.mark_read
        self.receipts = posts.receipts
        self.hide = posts.hide
        self.media = posts.media
        self.activity = posts.activity
        self.readers = posts.readers
        self.search = posts.search
        self.sweep_secrets = posts.sweep_secrets
        # Files of file messages, here and between boxes.
        self.file = files.file
        self.files_to_share = files.files_to_share
        self.own_file = files.own_file
        self.file_shared = files.file_shared
        self.attach_shared_file = files.attach_shared_file
        self.shared_file = files.shared_file
        # What streams read.
        self.events_for = feed.events_for
        self.wait = feed.wait
        self.subscribe = feed.subscribe
        self.unsubscribe = feed.unsubscribe
        self.typing = feed.typing
        # The edge side of sync.
        self.add_push_listener = writer.add_push_listener
        self.publish_committed = writer.publish_committed
        self.apply_remote = edge.apply_remote
        self.outbox = edge.outbox
        self.sync_cursor = edge.sync_cursor
        self.sync_backlog = edge.sync_backlog
        self.settle = edge.settle
        self.apply_pulled = edge.apply_pulled
        self.rooms_needing_history = edge.rooms_needing_history
        # The hub side of sync.
        self.accept_pushed = hub.accept_pushed
        self.hub_pull = hub.hub_pull
        self.room_history = hub.room_history
        # Invitations, alerts, stickers, people.
        self.invite = extras.invite
        self.answer = extras.answer
        self.invitation = extras.invitation
        self.room_invitations = extras.room_invitations
        self.set_location = extras.set_location
        self.sharing_location = extras.sharing_location
        self.send_alert = extras.send_alert
        self.create_sticker_pack = extras.create_sticker_pack
        self.add_sticker = extras.add_sticker
        self.sticker_packs = extras.sticker_packs
        self.sticker_image = extras.sticker_image
        self.find_people = extras.find_people

    #: Read a room by id inside a job (deleted too; None if never held here).
    _room = staticmethod(read_room)

    @property
    def directory(self) -> Directory:
        return self._directory

    @property
    def clock(self) -> Callable[[], float]:
        return self._writer.clock

    @property
    def head_cursor(self) -> int:
        """The cursor of the last event handed to streams (see `EventFeed.head_cursor`)."""
        return self._feed.head_cursor

    @property
    def fetch_shared_file(self) -> Callable[[str], Awaitable[bytes]] | None:
        """How a file posted on another box is fetched from the hub (`SharedFiles`)."""
        return self._files.fetch_shared_file

    @fetch_shared_file.setter
    def fetch_shared_file(self, fetch: Callable[[str], Awaitable[bytes]] | None) -> None:
        self._files.fetch_shared_file = fetch


# --- opening -----------------------------------------------------------------------


@asynccontextmanager
async def open_chat(
    path: Path,
    data_key: bytes,
    blobs: BlobStore,
    directory: Directory,
    box_id: str,
    *,
    clock: Callable[[], float] = time.time,
    database_url: str = "",
) -> AsyncIterator[Chat]:
    """Open (creating, migrating) the chat database at *path* and yield the `Chat`.

    With a PostgreSQL *database_url* (a hub's ``hub_database``) the tables live in
    that server's ``chat`` schema instead, and *path* and *data_key* only name it.
    """
    if database_url:
        store = PgStore(database_url, CHAT_SCHEMA, notify=CHAT_NOTIFY)
        pg_writer, pg_reader = await trio.to_thread.run_sync(
            pg_database, store, CHAT_PG_MIGRATIONS, "chat"
        )
        # Same shape as apsw's connection (appliance.store.postgres): one code path.
        writer = cast(Conn, pg_writer)
        connect_reader = cast(Callable[[], Conn], pg_reader)
        path = Path(f"{CHAT_SCHEMA}@postgresql")
    else:
        key = derive_key(data_key, KEY_INFO)
        writer, connect_reader = await trio.to_thread.run_sync(
            open_encrypted_database, path, key, CHAT_MIGRATIONS
        )

    def load(conn: Conn) -> tuple[int, list[tuple[str, str]]]:
        head = scalar(conn, "SELECT coalesce(max(cursor), 0) FROM events")
        members = [(r[0], r[1]) for r in conn.execute("SELECT address, room_id FROM members")]
        return int(head), members

    head, memberships = await trio.to_thread.run_sync(load, writer)
    db: Database[Conn] = Database(path, writer, connect_reader=connect_reader)
    async with running(db):
        yield Chat(db, blobs, directory, box_id, Fanout(head, memberships), clock=clock)
