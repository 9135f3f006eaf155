"""Factory reset: crypto-erase first, then remove the data; the identity stays.

Order, and why:

1. forget the setup code — whoever read the old one off the panel must not claim the
   box again;
2. remove the identity (``config.json``): from here the box is *unprovisioned*, so a
   crash at any later step is finished by the next start (`discard_unfinished` runs
   this same erase on every unprovisioned start);
3. crypto-erase: overwrite and unlink the wrapped data key, then the provisioning
   secret, the CA key, the server key and the sync credentials — every file of
   ``DATA/keys``. Blobs, the search index and the chat database are encrypted under
   the data key (DESIGN.md principle 5), so copies of them taken before the reset can
   no longer be read by anything left on the box;
4. remove everything else under the data directory except ``device/`` (box id, device
   certificate) and ``run/`` (the running process's status).

What stays is the box's identity: its id and its device certificate, so a technician's
notes and the mDNS fingerprint still match. The OS is not touched.

Overwriting in place is best effort on journalling file systems and flash (see
appliance.security.keys.destroy_data_key); the erase rests on the key being gone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.provisioning.device import DEVICE_DIR, forget_setup_code
from appliance.security.keys import destroy_data_key
from appliance.store.files import fsync_dir

#: Entries of the data directory a reset keeps.
KEPT = frozenset({DEVICE_DIR, "run"})


def factory_reset(data_dir: Path) -> None:
    """Reset the box at *data_dir* to its factory state (see the module docstring)."""
    forget_setup_code(data_dir)
    erase_agency_data(data_dir, keep_settings=False)


def erase_agency_data(data_dir: Path, *, keep_settings: bool) -> bool:
    """Crypto-erase ``keys/`` then remove all agency data; return whether any was there.

    *keep_settings* keeps ``config.json`` (only for an unprovisioned box, whose
    config.json holds operator settings and no identity).
    """
    if not data_dir.is_dir():
        return False
    found = False
    config = data_dir / "config.json"
    if not keep_settings and config.exists():
        config.unlink()
        fsync_dir(data_dir)
        found = True
    keys = data_dir / "keys"
    if keys.is_dir():
        found = True
        destroy_data_key(keys)
        for path in sorted(keys.rglob("*"), key=_secret_first):
            if path.is_file() and not path.is_symlink():
                _shred(path)
        fsync_dir(keys)
    for entry in sorted(data_dir.iterdir()):
        if entry.name in KEPT or (keep_settings and entry.name == "config.json"):
            continue
        found = True
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    fsync_dir(data_dir)
    return found


def _secret_first(path: Path) -> tuple[int, str]:
    # The provisioning secret unwraps the data key; it goes right after the key itself.
    return (0 if path.name == "provisioning.secret" else 1, str(path))


def _shred(path: Path) -> None:
    """Overwrite *path* with zeros, fsync, unlink."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with open(fd, "wb", closefd=True) as f:
        f.write(bytes(os.fstat(f.fileno()).st_size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink(missing_ok=True)
