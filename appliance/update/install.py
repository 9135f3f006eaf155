"""``edgebox update install FILE|URL``: fetch a bundle, let RAUC write the other slot.

RAUC checks the CMS signature against the box's one keyring and the ``compatible``
string before it writes anything; what it refuses is recorded as ``refused`` with RAUC's
reason, what it writes as ``installed`` with the `Pending` update the next boot judges
(appliance.update.confirm). A URL is fetched over HTTPS into ``update/incoming.raucb``
first: the plain bundle format cannot be streamed, and a partial download must never
reach RAUC (it would refuse it anyway: the signature covers every byte).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from appliance.store.files import fsync_dir
from appliance.update import outcome
from appliance.update.outcome import Pending
from appliance.update.rauc import Rauc, RaucError

INCOMING: Final = Path("update") / "incoming.raucb"
#: A bundle bigger than this is refused while downloading (a root slot is smaller).
MAX_BUNDLE: Final = 2 * 1024**3


class UpdateError(Exception):
    """An update that was not installed; the message says why, for the operator."""


@dataclass(frozen=True)
class Installed:
    version: str
    to_slot: str


def fetch(url: str, data_dir: Path, context: ssl.SSLContext | None = None) -> Path:
    """Download *url* (https only) into ``update/incoming.raucb``, fsynced."""
    if not url.startswith("https://"):
        raise UpdateError(f"only https:// URLs are fetched, not {url!r}")
    target = data_dir / INCOMING
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=60, context=context) as answer,  # noqa: S310 - https only, checked above
            target.open("wb") as out,
        ):
            while chunk := answer.read(1 << 20):
                size += len(chunk)
                if size > MAX_BUNDLE:
                    raise UpdateError(f"bundle at {url} is larger than {MAX_BUNDLE} bytes")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise UpdateError(f"cannot download {url}: {exc}") from None
    fsync_dir(target.parent)
    return target


def install_bundle(
    data_dir: Path, rauc: Rauc, bundle: Path, *, now: Callable[[], float], this_boot: str
) -> Installed:
    """Install *bundle* into the other slot and record it; raise `UpdateError` if refused."""
    status = rauc.status()
    target = status.other().bootname
    try:
        version = rauc.info(bundle)
        rauc.install(bundle)
    except RaucError as exc:
        outcome.record(data_dir, "refused", "", target, now(), str(exc))
        raise UpdateError(f"RAUC refused {bundle.name}: {exc}") from None
    pending = Pending(version, _sha256(bundle), status.booted, target, this_boot, now())
    outcome.record(data_dir, "installed", version, target, now(), pending=pending)
    return Installed(version, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
