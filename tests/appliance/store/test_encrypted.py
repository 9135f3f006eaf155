"""Tests of `appliance.store.encrypted`: how an encrypted database is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.store.encrypted import WRITER_CACHE_KIB, open_encrypted_database
from appliance.store.schema import Migration, SchemaTooNew

KEY = bytes(range(32))
STEPS = [Migration(1, "one table", "CREATE TABLE notes (text TEXT NOT NULL);")]


def test_the_writer_gets_the_larger_page_cache_and_readers_the_default(tmp_path: Path) -> None:
    writer, connect_reader = open_encrypted_database(tmp_path / "x.sqlite", KEY, STEPS)
    reader = connect_reader()
    try:
        assert writer.pragma("cache_size") == -WRITER_CACHE_KIB
        assert writer.pragma("journal_mode") == "wal"
        assert writer.pragma("synchronous") == 2  # FULL
        # A reader per thread: the large cache only where every insert lands.
        assert reader.pragma("cache_size") == -2000
        writer.execute("INSERT INTO notes VALUES ('ข้อความ')")
        assert reader.execute("SELECT text FROM notes").fetchall() == [("ข้อความ",)]
    finally:
        reader.close()
        writer.close()
    # Encrypted on disk: the text is in none of the files (database, WAL).
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"CREATE TABLE" not in on_disk
    assert "ข้อความ".encode() not in on_disk


def test_an_older_release_opens_an_encrypted_file_whose_newer_step_is_additive(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chat.sqlite"
    newer = (
        Migration(1, "base", "CREATE TABLE base (x);"),
        Migration(2, "extra", "CREATE TABLE extra (y);", older_releases_may_open=True),
        Migration(3, "rewrite", "CREATE TABLE rewritten (z);"),
    )
    writer, _ = open_encrypted_database(path, KEY, newer[:2])
    writer.close()
    writer, _ = open_encrypted_database(path, KEY, newer[:1])
    writer.execute("INSERT INTO base (x) VALUES (1)")
    assert writer.execute("PRAGMA user_version").fetchone()[0] == 2
    writer.close()
    writer, _ = open_encrypted_database(path, KEY, newer)
    writer.close()
    with pytest.raises(SchemaTooNew):
        open_encrypted_database(path, KEY, newer[:2])
