"""Small settings documents in TinyDB, written atomically.

TinyDB holds only what is small and changes rarely: the box's identity (id, domain,
agency) and the operator's configuration overrides. Its default JSON storage rewrites
the file in place, so a power cut mid-write leaves half a file; `AtomicJSONStorage`
writes a temporary file, fsyncs it, renames it over the old one and fsyncs the folder
(DESIGN.md principle 4), so a reader sees the old document or the new one, never a mix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage

from appliance.store.files import write_atomically


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces the whole file atomically on every write."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return json.loads(text) if text.strip() else None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        payload = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True)
        write_atomically(self.path, payload.encode("utf-8"), mode=0o640)

    def close(self) -> None:
        pass


class Settings:
    """Named sections of settings (``box``, ``config``, ...), one document each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = TinyDB(str(path), storage=AtomicJSONStorage)

    def get(self, section: str) -> dict[str, Any]:
        """Return a copy of *section* (empty if it was never written)."""
        document = self._db.table(section).get(doc_id=1)
        return dict(document) if document else {}

    def update(self, section: str, values: dict[str, Any]) -> None:
        """Merge *values* into *section* and write the file atomically."""
        table = self._db.table(section)
        if table.get(doc_id=1) is None:
            table.insert(values)
        else:
            table.update(values, doc_ids=[1])

    def close(self) -> None:
        self._db.close()
