"""Each user's choices for the web pages: language, theme and font size.

REQUIREMENTS.md §2 asks for theme, language and font size; Thai is the default language
(the box serves Thai government offices). The choices live in the directory database
(migration 4), so they follow the user from one computer to another.

What this is not: how pages use them (appliance.web.pages).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final, Literal

from appliance.directory.directory import DirectoryError, normalise_address
from appliance.store.database import SQLiteDatabase

Language = Literal["th", "en"]
Theme = Literal["light", "dark"]
FontSize = Literal["small", "medium", "large"]

LANGUAGES: Final = ("th", "en")
THEMES: Final = ("light", "dark")
FONT_SIZES: Final = ("small", "medium", "large")


@dataclass(frozen=True)
class Preferences:
    language: Language = "th"
    theme: Theme = "light"
    font_size: FontSize = "medium"


DEFAULTS: Final = Preferences()


class PreferenceStore:
    """Reads and writes `Preferences` by user address."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def get(self, address: str) -> Preferences:
        """The user's preferences, or the defaults if they never chose."""
        address = normalise_address(address)

        def query(conn: sqlite3.Connection) -> Preferences:
            row = conn.execute(
                "SELECT p.language, p.theme, p.font_size FROM preferences p"
                " JOIN users u ON u.id = p.user_id WHERE u.address = ?",
                (address,),
            ).fetchone()
            return Preferences(*row) if row else DEFAULTS

        return await self._db.read(query)

    async def set(self, address: str, preferences: Preferences) -> None:
        """Store *preferences* for the user; raise `DirectoryError` on a bad value."""
        address = normalise_address(address)
        if (
            preferences.language not in LANGUAGES
            or preferences.theme not in THEMES
            or preferences.font_size not in FONT_SIZES
        ):
            raise DirectoryError(f"unknown preference value in {preferences}")

        def job(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT id FROM users WHERE address = ?", (address,)).fetchone()
            if row is None:
                raise DirectoryError(f"no such user: {address}")
            conn.execute(
                "INSERT INTO preferences (user_id, language, theme, font_size)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " language = excluded.language, theme = excluded.theme,"
                " font_size = excluded.font_size",
                (row[0], preferences.language, preferences.theme, preferences.font_size),
            )

        await self._db.write(job)
