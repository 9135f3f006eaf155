"""Which edgebox release runs, and whether a bundle's release is newer. Pure but for
`running_version`, which reads what RAUC and the root filesystem say.

A box never installs a bundle whose release is not newer than the running one: an old
bundle replayed from a stick, a channel that was rolled back by mistake or a stale
download must never take a box backwards (the data may already be migrated past what
the old release opens, docs/updates.md "Data compatibility").

Releases are compared piece by piece: ``2026.12.10`` is newer than ``2026.12.9``
(numbers as numbers), a piece of letters is older than a number (``2.0~rc1`` <
``2.0.1``), and a release that only adds pieces is newer (``2.0.1`` > ``2.0``).
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Final

#: The release the image build writes into every root filesystem.
RELEASE_FILE: Final = Path("/etc/edgebox-release")
_PIECE = re.compile(r"\d+|[A-Za-z]+")


def release_key(release: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for *release*; see the module docstring."""
    # (1, n) for numbers, (0, s) for letters: letters sort below numbers.
    return tuple((1, int(p)) if p.isdigit() else (0, p.lower()) for p in _PIECE.findall(release))


def is_newer(candidate: str, running: str) -> bool:
    """Whether *candidate* is a later release than *running* ("" is older than any)."""
    return release_key(candidate) > release_key(running)


def running_version(booted_bundle_version: str = "", release_file: Path = RELEASE_FILE) -> str:
    """The release this box runs: what RAUC installed into the booted slot, else the
    image's release file, else the installed package's version."""
    if booted_bundle_version:
        return booted_bundle_version
    try:
        text = release_file.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text
    try:
        return version("edgebox")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0"
