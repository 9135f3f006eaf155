"""The message search index: an encrypted SQLite FTS5 database for IMAP SEARCH and webmail.

Thai is written without spaces between words, so a word tokenizer finds nothing useful;
the index uses FTS5's ``trigram`` tokenizer, which answers *substring* queries of three
or more characters from the index. Shorter queries (one or two characters) scan the
mailbox's rows with ``instr()``, which is exact and needs no wildcard escaping.

What it is:

- A cache. The mail database is the truth; after a crash, a wrong key or a schema this
  code does not know, the caller compares `SearchIndex.indexed_uids` with the mailbox
  or deletes the file and rebuilds (`delete_search_index`, ``recreate_if_unreadable``).
- Encrypted at rest (DESIGN.md principle 5): the whole file, its WAL and shared memory
  are encrypted by SQLite3 Multiple Ciphers (the ``apsw-sqlite3mc`` build of apsw) with
  ChaCha20-Poly1305 under a key derived from the box data key. Temporary tables and
  sorts stay in memory, so no plaintext spills into temp files either.
- Written by one writer with group commit (principle 4), following the rules of
  `appliance.store.database`: jobs queued at the same moment share one transaction, each
  job in its own SAVEPOINT, and ``await add(...)`` returns after the COMMIT. Readers run
  in worker threads on their own connections.

Layout: one FTS5 row (a *document*) per distinct message text, and an ``entries`` table
mapping ``(mailbox_id, uid)`` to a document. COPY adds an entry that points at the same
document (no re-parse, no re-tokenizing); a document is deleted with its last entry.

Matching rules (RFC 3501 §6.4.4: SEARCH strings match as case-insensitive substrings):
both the indexed text and the query are NFC-normalised and case-folded (`fold`), so
Latin matches regardless of case and Thai (which has no case) matches exactly. The
query is always passed to FTS5 as one quoted phrase, so ``"``, ``*``, ``OR``, ``NEAR``
or ``{col}:`` in a user's query are searched for literally and never widen it.

What it is not: a ranking engine (results are plain UID sets) or the owner of any
message data (it keeps folded copies of text, to be thrown away and rebuilt at will).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import apsw
import trio

from appliance.mail import mime
from appliance.store import encrypted
from appliance.store.database import Database, DatabaseClosed, running
from appliance.store.files import fsync_dir

T = TypeVar("T")

#: HKDF ``info`` for the index key; a new version means a new key and a rebuild.
KEY_INFO = b"edgebox search index v1"


#: Body text indexed per message, in UTF-8 bytes of folded text. Text parts beyond the
#: first MiB are almost always logs, dumps or pasted tables, not what people search for;
#: the cap keeps a single huge message from holding the writer (and every other
#: delivery's index update) for seconds and bounds the index at a few times this per
#: message. Thai is 3 bytes a character, so this is ~350,000 Thai characters.
BODY_CAP_BYTES = 1024 * 1024

#: The fields `SearchIndex.search` accepts besides ``HEADER:<name>``.
FIELDS = ("SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT")

#: Header fields that have a column of their own (values of repeated fields are joined).
_HEADER_COLUMNS = {"subject": "subject", "from": "from_", "to": "to_", "cc": "cc", "bcc": "bcc"}

#: Which FTS5 columns each search field looks in. TEXT is RFC 3501's "header or body".
_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "SUBJECT": ("subject",),
    "FROM": ("from_",),
    "TO": ("to_",),
    "CC": ("cc",),
    "BCC": ("bcc",),
    "BODY": ("body",),
    "TEXT": ("header", "body"),
    "HEADER": ("header",),
}

#: The trigram tokenizer indexes substrings of this many characters.
_TRIGRAM = 3


class SearchIndexError(Exception):
    """The search index cannot be used; when `rebuild_needed`, delete it and re-index."""

    def __init__(self, message: str, *, rebuild_needed: bool = True) -> None:
        super().__init__(message)
        self.rebuild_needed = rebuild_needed


class SearchIndexClosed(SearchIndexError):
    """A write was queued after (or while) the index shut down; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rebuild_needed=False)


# --- Schema ---------------------------------------------------------------------------
#
# Versions live in PRAGMA user_version, as in `appliance.store.schema`. That module's
# `migrate` is typed for `sqlite3.Connection` (and splits scripts with
# `sqlite3.complete_statement`), so this index keeps a tiny equivalent for apsw: each
# step is a list of statements run in one transaction with the version bump. Unlike the
# mail database, a file newer than this code is not a reason to refuse to start: the
# index is a cache, so it is reported with ``rebuild_needed`` and may be recreated.

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Version 1.
    (
        # case_sensitive 1: the text is already folded by `fold`, exactly as queries are,
        # so FTS5 must not fold again (its own folding differs from str.casefold and
        # would make MATCH disagree with the instr() fallback).
        """
        CREATE VIRTUAL TABLE docs USING fts5(
            subject, from_, to_, cc, bcc, header, body,
            tokenize = 'trigram case_sensitive 1'
        )
        """,
        """
        CREATE TABLE entries (
            mailbox_id INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            doc INTEGER NOT NULL,
            PRIMARY KEY (mailbox_id, uid)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX entries_by_doc ON entries (doc, mailbox_id)",
    ),
    # Version 2: the five header columns again, in narrow rows of their own. A 1–2
    # character SUBJECT/FROM/TO/CC/BCC query, which trigrams cannot answer, scans
    # these instead of FTS5's content rows, which hold the body too: on 100,000
    # messages ~150 bytes a row instead of kilobytes (overflow pages included), ~20×
    # fewer pages to read and decrypt. Filled from the documents already indexed.
    (
        """
        CREATE TABLE fields (
            doc INTEGER PRIMARY KEY,
            subject TEXT NOT NULL, from_ TEXT NOT NULL, to_ TEXT NOT NULL,
            cc TEXT NOT NULL, bcc TEXT NOT NULL
        )
        """,
        "INSERT INTO fields SELECT rowid, subject, from_, to_, cc, bcc FROM docs",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)


def _migrate(conn: apsw.Connection) -> None:
    current = _user_version(conn)
    if current > SCHEMA_VERSION:
        raise SearchIndexError(
            f"search index schema is version {current}, this edgebox knows only up to "
            f"{SCHEMA_VERSION}; it must be rebuilt"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[version - 1]:
                conn.execute(statement)
            # PRAGMA takes no parameters; the value is an int we control.
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _user_version(conn: apsw.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return 0 if row is None else int(row[0])


# --- Text -----------------------------------------------------------------------------

_SURROGATES = re.compile("[\ud800-\udfff]")


def fold(text: str) -> str:
    """Return *text* as the index stores and compares it: NFC, case-folded, valid UTF-8.

    Lone surrogates (undecodable bytes kept by ``surrogateescape``) and NUL cannot be
    stored as SQLite text; both become U+FFFD on both sides of every comparison.
    """
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())
    return _SURROGATES.sub("\ufffd", text).replace("\x00", "\ufffd")


@dataclass(frozen=True)
class Document:
    """The folded text of one message, one value per FTS5 column."""

    subject: str
    from_: str
    to_: str
    cc: str
    bcc: str
    header: str
    body: str

    def values(self) -> tuple[str, ...]:
        return (self.subject, self.from_, self.to_, self.cc, self.bcc, self.header, self.body)


def extract(message: bytes) -> Document:
    """Return the searchable text of a raw RFC 5322 *message* (CPU-bound: call in a thread)."""
    fields: dict[str, list[str]] = {name: [] for name in _HEADER_COLUMNS}
    for name, value in mime.decoded_headers(message):
        if name in fields:
            fields[name].append(value if name == "subject" else mime.address_search_text(value))
    body = fold(mime.body_text_for_search(message))
    if len(body) > BODY_CAP_BYTES // 3:  # cheap test first: a char is at most 4 bytes
        body = body.encode("utf-8")[:BODY_CAP_BYTES].decode("utf-8", "ignore")
    return Document(
        subject=fold("\n".join(fields["subject"])),
        from_=fold("\n".join(fields["from"])),
        to_=fold("\n".join(fields["to"])),
        cc=fold("\n".join(fields["cc"])),
        bcc=fold("\n".join(fields["bcc"])),
        header=fold(mime.header_text_for_search(message)),
        body=body,
    )


def _phrase(query: str) -> str:
    """Quote *query* as one FTS5 phrase: inside quotes every character is literal."""
    return '"' + query.replace('"', '""') + '"'


# --- Connections ----------------------------------------------------------------------


def derive_key(data_key: bytes) -> bytes:
    """Return the index's 256-bit key, derived from the box data key with HKDF-SHA256."""
    return encrypted.derive_key(data_key, KEY_INFO)


def _connect(path: Path, key: bytes) -> apsw.Connection:
    try:
        return encrypted.connect_encrypted(path, key)
    except encrypted.EncryptionUnavailable as exc:
        raise SearchIndexError(str(exc), rebuild_needed=False) from exc
    except encrypted.Undecryptable as exc:
        raise SearchIndexError(
            f"search index cannot be decrypted ({path.name}: wrong key or damaged file)"
        ) from exc


def _open_writer(path: Path, key: bytes, recreate: bool) -> tuple[apsw.Connection, bool]:
    """Open (creating, migrating, or if allowed recreating) the index; say if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open_existing(path, key)
    except SearchIndexError as exc:
        if not (recreate and exc.rebuild_needed):
            raise
    delete_search_index(path)
    return _open_existing(path, key)


def _open_existing(path: Path, key: bytes) -> tuple[apsw.Connection, bool]:
    conn = _connect(path, key)
    try:
        created = _user_version(conn) == 0
        # WAL: readers never block the writer. synchronous=NORMAL, not FULL as in the
        # mail database: the index is a cache, a power cut can lose only its last
        # commits (never corrupt it), and reconciliation against the mail database
        # repairs that. Skipping the per-commit fsync keeps index bursts from competing
        # with the mail database's fsyncs, which carry SMTP's and IMAP's promises.
        conn.pragma("journal_mode", "wal")
        conn.pragma("synchronous", "normal")
        conn.pragma("cache_size", -16384)  # 16 MiB: FTS5 segment merges reread pages
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn, created


def delete_search_index(path: Path) -> None:
    """Delete the index file and its WAL and shared-memory files (the index must be closed)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if path.parent.is_dir():
        fsync_dir(path.parent)


# --- The index ------------------------------------------------------------------------


class SearchIndex:
    """The encrypted search index of one box; open it with `open_search_index`."""

    def __init__(self, path: Path, key: bytes, writer: apsw.Connection, created: bool) -> None:
        self.path = path
        # The same single writer with group commit as the mail databases, on an
        # encrypted apsw connection; readers open with the same key.
        self._db: Database[apsw.Connection] = Database(
            path, writer, connect_reader=lambda: _connect(path, key)
        )
        #: True when the file was created (or recreated) by this open: it is empty and
        #: the caller should index every message.
        self.rebuild_needed = created

    @property
    def commits(self) -> int:
        """Transactions committed since open (how well group commit batches)."""
        return self._db.commits

    @property
    def jobs(self) -> int:
        """Write jobs run since open."""
        return self._db.jobs

    # --- writes ---

    async def add(self, mailbox_id: int, uid: int, message: bytes) -> None:
        """Index *message* as (mailbox_id, uid), replacing any earlier one; return after commit."""
        doc = await trio.to_thread.run_sync(extract, message)
        await self._write(lambda conn: _put(conn, mailbox_id, uid, doc))

    async def add_many(self, items: Iterable[tuple[int, int, bytes]]) -> None:
        """Index many ``(mailbox_id, uid, message)`` in one job; return once committed."""
        batch = list(items)
        docs = await trio.to_thread.run_sync(
            lambda: [(m, u, extract(message)) for m, u, message in batch]
        )

        def job(conn: apsw.Connection) -> None:
            for mailbox_id, uid, doc in docs:
                _put(conn, mailbox_id, uid, doc)

        await self._write(job)

    async def remove(self, mailbox_id: int, uids: Iterable[int]) -> None:
        """Forget the given UIDs of *mailbox_id* (absent ones are ignored)."""
        keys = [(mailbox_id, uid) for uid in uids]
        await self._write(lambda conn: _remove(conn, keys))

    async def remove_mailbox(self, mailbox_id: int) -> None:
        """Forget every message of *mailbox_id*."""

        def job(conn: apsw.Connection) -> None:
            docs = {
                int(row[0])
                for row in conn.execute(
                    "SELECT DISTINCT doc FROM entries WHERE mailbox_id = ?", (mailbox_id,)
                )
            }
            conn.execute("DELETE FROM entries WHERE mailbox_id = ?", (mailbox_id,))
            _drop_orphans(conn, docs)

        await self._write(job)

    async def copy(self, src_mailbox: int, src_uid: int, dst_mailbox: int, dst_uid: int) -> bool:
        """Index (dst_mailbox, dst_uid) with the text of the source; False if it is not indexed.

        The new entry points at the source's document: nothing is parsed or tokenized.
        """

        def job(conn: apsw.Connection) -> bool:
            if (src_mailbox, src_uid) == (dst_mailbox, dst_uid):
                return _doc_of(conn, src_mailbox, src_uid) is not None
            _remove(conn, [(dst_mailbox, dst_uid)])
            conn.execute(
                "INSERT INTO entries (mailbox_id, uid, doc)"
                " SELECT ?, ?, doc FROM entries WHERE mailbox_id = ? AND uid = ?",
                (dst_mailbox, dst_uid, src_mailbox, src_uid),
            )
            return conn.changes() == 1

        return await self._write(job)

    async def _write(self, job: Callable[[apsw.Connection], T]) -> T:
        try:
            return await self._db.write(job)
        except DatabaseClosed as exc:
            raise SearchIndexClosed(str(exc)) from None

    # --- reads ---

    async def search(self, mailbox_id: int, field: str, text: str) -> set[int]:
        """Return the UIDs of *mailbox_id* whose *field* contains *text* (see module rules).

        *field* is one of `FIELDS` or ``HEADER:<name>`` (any header field; an empty
        *text* then means "has that field", RFC 3501 §6.4.4).
        """
        name = ""
        columns: tuple[str, ...]
        upper = field.upper()
        if upper.startswith("HEADER:"):
            name = fold(field[len("HEADER:") :].strip())
            if not name:
                raise ValueError("HEADER search needs a field name")
            column = _HEADER_COLUMNS.get(name)
            if column and text:
                columns, name = (column,), ""  # its own column answers exactly
            else:
                columns = _FIELD_COLUMNS["HEADER"]
        elif upper in _FIELD_COLUMNS and upper != "HEADER":
            columns = _FIELD_COLUMNS[upper]
        else:
            raise ValueError(f"unknown search field {field!r}")
        query = fold(text)
        return await self._read(lambda conn: _search(conn, mailbox_id, columns, query, name))

    async def indexed_uids(self, mailbox_id: int) -> set[int]:
        """Return every UID of *mailbox_id* the index holds (to reconcile after a crash)."""
        return await self._read(
            lambda conn: {
                int(row[0])
                for row in conn.execute(
                    "SELECT uid FROM entries WHERE mailbox_id = ?", (mailbox_id,)
                )
            }
        )

    async def _read(self, query: Callable[[apsw.Connection], T]) -> T:
        return await self._db.read(query)


# --- Jobs and queries (run in worker threads) -----------------------------------------


def _doc_of(conn: apsw.Connection, mailbox_id: int, uid: int) -> int | None:
    row = conn.execute(
        "SELECT doc FROM entries WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
    ).fetchone()
    return None if row is None else int(row[0])


def _put(conn: apsw.Connection, mailbox_id: int, uid: int, doc: Document) -> None:
    _remove(conn, [(mailbox_id, uid)])
    conn.execute(
        "INSERT INTO docs (subject, from_, to_, cc, bcc, header, body)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        doc.values(),
    )
    doc_id = conn.last_insert_rowid()
    conn.execute(
        "INSERT INTO fields (doc, subject, from_, to_, cc, bcc) VALUES (?, ?, ?, ?, ?, ?)",
        (doc_id, *doc.values()[:5]),
    )
    conn.execute(
        "INSERT INTO entries (mailbox_id, uid, doc) VALUES (?, ?, ?)", (mailbox_id, uid, doc_id)
    )


def _remove(conn: apsw.Connection, keys: Sequence[tuple[int, int]]) -> None:
    docs: set[int] = set()
    for mailbox_id, uid in keys:
        doc = _doc_of(conn, mailbox_id, uid)
        if doc is not None:
            docs.add(doc)
            conn.execute("DELETE FROM entries WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid))
    _drop_orphans(conn, docs)


def _drop_orphans(conn: apsw.Connection, docs: Iterable[int]) -> None:
    """Delete each of *docs* that no entry points at any more."""
    for doc in docs:
        if conn.execute("SELECT 1 FROM entries WHERE doc = ? LIMIT 1", (doc,)).fetchone() is None:
            conn.execute("DELETE FROM docs WHERE rowid = ?", (doc,))
            conn.execute("DELETE FROM fields WHERE doc = ?", (doc,))


# Column names come only from _FIELD_COLUMNS (never from the request), so the SQL below
# is built from a closed set of strings; the user's text is always a bound parameter.
_ALL_COLUMN_SETS = {*_FIELD_COLUMNS.values(), *((c,) for c in _HEADER_COLUMNS.values())}


def _match_sql(select: str) -> str:
    return (
        f"SELECT {select} FROM docs JOIN entries AS e ON e.doc = docs.rowid"  # noqa: S608 (fixed strings)
        " WHERE docs MATCH ?1 AND e.mailbox_id = ?2"
    )


def _scan_sql(select: str, columns: tuple[str, ...]) -> str:
    if "docs." not in select and set(columns) <= _NARROW_COLUMNS:
        # Header columns only: the narrow `fields` rows answer (schema version 2).
        test = " OR ".join(f"instr(f.{column}, ?1) > 0" for column in columns)
        return (
            f"SELECT {select} FROM entries AS e JOIN fields AS f ON f.doc = e.doc"  # noqa: S608 (fixed strings)
            f" WHERE e.mailbox_id = ?2 AND ({test})"
        )
    test = " OR ".join(f"instr(docs.{column}, ?1) > 0" for column in columns)
    return (
        f"SELECT {select} FROM entries AS e JOIN docs ON docs.rowid = e.doc"  # noqa: S608 (fixed strings)
        f" WHERE e.mailbox_id = ?2 AND ({test})"
    )


#: The columns the `fields` table repeats.
_NARROW_COLUMNS = frozenset(_HEADER_COLUMNS.values())


#: (with header text?, columns) -> (MATCH query, scan query)
_SQL = {
    (with_header, columns): (
        _match_sql("e.uid, docs.header" if with_header else "e.uid, NULL"),
        _scan_sql("e.uid, docs.header" if with_header else "e.uid, NULL", columns),
    )
    for with_header in (False, True)
    for columns in _ALL_COLUMN_SETS
}


def _search(
    conn: apsw.Connection, mailbox_id: int, columns: tuple[str, ...], query: str, header: str
) -> set[int]:
    match_sql, scan_sql = _SQL[bool(header), columns]
    if len(query) >= _TRIGRAM:
        # An FTS5 column filter, then the whole query as one phrase: the trigram
        # tokenizer turns the phrase into consecutive trigrams, i.e. a substring match.
        expression = "{" + " ".join(columns) + "} : " + _phrase(query)
        rows = conn.execute(match_sql, (expression, mailbox_id))
    else:
        # Trigrams cannot answer 1–2 characters: scan this mailbox's rows.
        rows = conn.execute(scan_sql, (query, mailbox_id))
    if not header:
        return {int(uid) for uid, _ in rows}
    # HEADER <name> without a column of its own (or with an empty string, which means
    # "has the field"): the match above was anywhere in the header text; keep the rows
    # where it is inside a "<name>: value" line.
    prefix = header + ": "
    found: set[int] = set()
    for uid, text in rows:
        for line in str(text).split("\n"):
            if line.startswith(prefix) and query in line[len(prefix) :]:
                found.add(int(uid))
                break
    return found


@asynccontextmanager
async def open_search_index(
    path: Path, data_key: bytes, *, recreate_if_unreadable: bool = False
) -> AsyncIterator[SearchIndex]:
    """Open (creating and migrating as needed) the search index at *path* with its writer.

    Raises `SearchIndexError` ("search index cannot be decrypted") for a wrong key or a
    damaged file, unless *recreate_if_unreadable*, in which case the file is deleted and
    recreated empty and `SearchIndex.rebuild_needed` is true.
    """
    key = derive_key(data_key)
    writer, created = await trio.to_thread.run_sync(_open_writer, path, key, recreate_if_unreadable)
    index = SearchIndex(path, key, writer, created)
    async with running(index._db):
        yield index
