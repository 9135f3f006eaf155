"""One user of the replicated directory on the wire: `DirectoryEntry` and its JSON form.

Directory replication (`appliance.sync.directory` on the box, `appliance.sync.hub.directory`
on the hub) sends only what the address book and chat show of a user: names, rank,
unit, position, phone, disabled. Never a password hash, a quota or a service account.
This module is the sans-I/O part: the entry, its wire form, and the check of an
untrusted one (`entry_from_json` raises `ValueError` naming the field that is wrong).

Wire format (``POST /sync/v1/directory/push`` and ``/pull``)::

    push  → {"entries": [ENTRY, ...]}              ← {"accepted": N}
    pull  → {"after": CURSOR, "limit": N}           ← {"entries": [...], "cursor": C, "more": B}
    ENTRY = {"seq", "address", "agency": {"domain", "name_th", "name_en"}, "name_th",
             "name_en", "position", "rank", "unit", "phone", "disabled"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

PUSH_PATH: Final = "/sync/v1/directory/push"
PULL_PATH: Final = "/sync/v1/directory/pull"

#: Largest batch a hub hands out or accepts.
MAX_BATCH: Final = 500

#: Longest text field of an entry; real names and units are a few dozen characters.
_MAX_TEXT: Final = 1024


@dataclass(frozen=True)
class DirectoryEntry:
    """What directory replication sends of one user: never a password hash or quota.

    *seq* is the sender's change number (`users.change_seq`), the replication cursor.
    """

    seq: int
    address: str
    agency_domain: str
    agency_name_th: str | None
    agency_name_en: str | None
    name_th: str
    name_en: str | None
    position: str | None
    rank: int
    unit: str | None
    phone: str | None
    disabled: bool


def entry_to_json(entry: DirectoryEntry) -> dict[str, Any]:
    """Return the wire form of *entry*."""
    return {
        "seq": entry.seq,
        "address": entry.address,
        "agency": {
            "domain": entry.agency_domain,
            "name_th": entry.agency_name_th,
            "name_en": entry.agency_name_en,
        },
        "name_th": entry.name_th,
        "name_en": entry.name_en,
        "position": entry.position,
        "rank": entry.rank,
        "unit": entry.unit,
        "phone": entry.phone,
        "disabled": entry.disabled,
    }


def entry_from_json(value: Any) -> DirectoryEntry:
    """Parse one wire entry; ValueError naming the field that is wrong."""
    if not isinstance(value, dict):
        raise ValueError("an entry must be an object")
    agency = value.get("agency")
    if not isinstance(agency, dict):
        raise ValueError("agency must be an object")
    seq: Any = value.get("seq")
    rank: Any = value.get("rank")
    disabled: Any = value.get("disabled")
    if not is_count(seq):
        raise ValueError("seq must be a whole number >= 0")
    if not is_count(rank):
        raise ValueError("rank must be a whole number >= 0")
    if not isinstance(disabled, bool):
        raise ValueError("disabled must be true or false")
    return DirectoryEntry(
        seq=seq,
        address=_text(value, "address", required=True),
        agency_domain=_text(agency, "domain", required=True),
        agency_name_th=_text(agency, "name_th"),
        agency_name_en=_text(agency, "name_en"),
        name_th=_text(value, "name_th", required=True),
        name_en=_text(value, "name_en"),
        position=_text(value, "position"),
        rank=rank,
        unit=_text(value, "unit"),
        phone=_text(value, "phone"),
        disabled=disabled,
    )


def is_count(value: Any) -> bool:
    """Return whether *value* is a change number or cursor: a whole number in 0..2**63."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _text(value: dict[str, Any], name: str, *, required: bool = False) -> Any:
    found = value.get(name)
    if found is None and not required:
        return None
    if not isinstance(found, str) or len(found) > _MAX_TEXT:
        raise ValueError(f"{name} must be text")
    return found
