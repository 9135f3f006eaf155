"""The agency's recovery sheet: the backup key as words and a QR code, to print.

The backup key lives on the box sealed under the provisioning secret; a box that dies
takes it along. The sheet is the agency's copy (the hub's escrow is the other,
`appliance.backup.escrow`): the key as 17 groups of hex digits with a checksum
(`appliance.backup.crypto.key_to_words`), the same words as a QR code (segno, rendered
as SVG, so it prints sharp and needs nothing but the browser), and what a restore also
needs: the box's id and domain, and the hub it was enrolled with.

What this is not: who may see it (the admin console asks for the password again) or the
command-line form (``edgebox backup key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import segno

from appliance.backup.crypto import ensure_backup_key, key_id, key_to_words
from appliance.identity import Identity


@dataclass(frozen=True)
class RecoverySheet:
    """What the printed sheet says."""

    box_id: str
    domain: str
    hub_url: str
    key_id: str
    words: str
    #: The QR code of *words*, as an SVG ``data:`` URI for an ``<img>``.
    qr_svg: str


def recovery_sheet(data_dir: Path, identity: Identity, hub_url: str) -> RecoverySheet:
    """Return the box's recovery sheet (making the backup key the first time)."""
    key = ensure_backup_key(data_dir / "keys")
    words = key_to_words(key)
    return RecoverySheet(
        box_id=identity.box_id,
        domain=identity.domain,
        hub_url=hub_url,
        key_id=key_id(key),
        words=words,
        qr_svg=qr_data_uri(words),
    )


def qr_data_uri(text: str) -> str:
    """Return *text* as a QR code (error correction M), an SVG ``data:`` URI."""
    # Error correction M survives a crease or a coffee ring on the paper; scale 6
    # prints about 4 cm wide for the 84 characters of the words.
    return str(segno.make(text, error="m").svg_data_uri(scale=6, border=4))
