"""Who this box is: the identity `init_box` writes once into ``DATA/config.json``.

A small record below every capability, so a page that names the agency or a mail
client's settings can know the box's domain and id without being handed the opened
box (appliance.box). What this is not: opening the data directory (appliance.box).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.store.settings import Settings


@dataclass(frozen=True)
class Identity:
    """Who this box is; written once by `appliance.box.init_box`."""

    box_id: str
    domain: str
    agency_name: str
    created_at: int


def read_identity(data_dir: Path) -> Identity | None:
    """Return the box's identity, or None if *data_dir* was never initialised."""
    if not (data_dir / "config.json").exists():
        return None
    settings = Settings(data_dir / "config.json")
    try:
        box = settings.get("box")
    finally:
        settings.close()
    return Identity(**box) if box else None
