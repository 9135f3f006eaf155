"""Agencies, org charts, users, ranks and administrators of the box (see directory.py)."""

from appliance.directory.directory import (
    Directory,
    DirectoryError,
    normalise_address,
    normalise_domain,
)
from appliance.directory.models import Agency, DirectoryEntry, OrgUnit, User
from appliance.directory.schema import DEFAULT_QUOTA_BYTES, DIRECTORY_MIGRATIONS

__all__ = [
    "DEFAULT_QUOTA_BYTES",
    "DIRECTORY_MIGRATIONS",
    "Agency",
    "Directory",
    "DirectoryEntry",
    "DirectoryError",
    "OrgUnit",
    "User",
    "normalise_address",
    "normalise_domain",
]
