"""What the directory hands out: agencies, org units and users, as frozen values.

These are snapshots read from the directory database; changing one means asking
`Directory` to change the database and reading again. They are safe to log and to
serialise to JSON: on purpose, `User` has no password-hash field, so a hash cannot leak
through a debug print, a log line or an API response.

What this is not: the database rows (see `schema`), or the rules (see `directory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What directory replication sends of a user is defined with the sync wire format (a
# pure module below the domain) and is one of the directory's values all the same.
from appliance.sync.codec.directory import DirectoryEntry

__all__ = ["Agency", "DirectoryEntry", "Language", "OrgUnit", "User"]

Language = Literal["th", "en"]


@dataclass(frozen=True)
class Agency:
    """A government agency served by this box, known by its mail domain."""

    id: int
    #: Normalised mail domain, e.g. ``"moph.go.th"``.
    domain: str
    name_th: str | None
    name_en: str | None


@dataclass(frozen=True)
class OrgUnit:
    """One box of an agency's organisation chart (กอง, ฝ่าย, งาน ...)."""

    id: int
    agency_domain: str
    name_th: str
    name_en: str | None
    #: The unit above this one, or None for a top-level unit.
    parent_id: int | None


@dataclass(frozen=True)
class User:
    """A person with a mailbox and chat account on this box."""

    id: int
    #: Normalised address (NFC, lower case), also the login name.
    address: str
    agency_domain: str
    name_th: str
    name_en: str | None
    position: str | None
    #: Higher is more senior; in normal chat mode nobody opens a 1:1 chat upwards.
    rank: int
    #: Thai name of the user's org unit, or None if not placed in the chart.
    unit: str | None
    phone: str | None
    disabled: bool
    quota_bytes: int
    #: A user of an agency another box serves, copied here by directory replication:
    #: shown in the address book and chat, but cannot sign in or be edited here.
    remote: bool = False

    def display_name(self, lang: Language = "th") -> str:
        """Return the name to show, in *lang* if the user has one in it."""
        if lang == "en":
            return self.name_en or self.name_th or self.address
        return self.name_th or self.name_en or self.address
