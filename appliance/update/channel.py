"""The hub's update channel: what the operator publishes, what boxes are offered, and the
bundle files they fetch.

The hub operator publishes a signed bundle into a channel (``edgebox hub update publish
FILE --channel stable``); a box following that channel learns of it in its sync round
(appliance.update.follow) as a small offer and fetches the bundle over the same mutual
TLS as every sync stream. The hub holds no signing key and needs none: RAUC on each box
checks the signature against the box's own keyring. The hub only reads the bundle's
manifest (``rauc info --no-verify``) to say what it offers, or checks it against a
keyring when the operator names one.

On the hub's data partition::

    update-channel/bundles/<sha256>.raucb     each published bundle, by content
    update-channel/<channel>.json             {"version", "compatible", "size",
                                               "sha256", "published_at"}
    update-channel/published.json             every publication still held: the
                                               above plus "channel", oldest first

Garbage collection (`collect_bundles`, after every publish): a bundle file stays while
it is among the newest *keep* publications of a channel, is what a channel offers now,
or is the release a box last reported as installed or good (``update-reports/``,
appliance.update.report) — a box that rolls back or is re-installed from the hub may
still need it. A bundle the history does not know (published before it was kept) is
never removed: what cannot be accounted for is not deleted.

Wire format (mutual TLS, like every sync stream)::

    POST /sync/v1/update/offer   → {"channel", "compatible"}
                                 ← {"offer": {"version", "size", "sha256"} | null}
    GET  /sync/v1/update/bundle/<sha256>.raucb   (ranges allowed; appliance.net.ranges)

An offer is whatever the channel holds now, for the box's ``compatible``; whether it is
newer than what the box runs is the box's question (appliance.update.version).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio

from appliance.store.files import fsync_dir, write_atomically
from appliance.sync.hub.errors import bad_request
from appliance.sync.transport import JSON, Peer, SyncDownload, SyncRoute
from appliance.update.download import sha256_of
from appliance.update.report import REPORTS_DIR, read_reports

OFFER_PATH: Final = "/sync/v1/update/offer"
BUNDLE_PREFIX: Final = "/sync/v1/update/bundle/"
CHANNEL_DIR: Final = Path("update-channel")
HISTORY_FILE: Final = CHANNEL_DIR / "published.json"
#: Publications kept per channel by default (`collect_bundles`).
DEFAULT_KEEP: Final = 3
_CHANNEL: Final = re.compile(r"^[a-z0-9-]{1,32}$")
_BUNDLE_NAME: Final = re.compile(r"^([0-9a-f]{64})\.raucb$")


class PublishError(Exception):
    """The bundle was not published; the message says why."""


@dataclass(frozen=True)
class Published:
    """What a channel offers now."""

    version: str
    compatible: str
    size: int
    sha256: str
    published_at: float

    def offer(self) -> dict[str, object]:
        """The small offer a box hears."""
        return {"version": self.version, "size": self.size, "sha256": self.sha256}


def valid_channel(name: str) -> bool:
    """Whether *name* may name a channel (it names a file)."""
    return bool(_CHANNEL.match(name))


def bundle_info(bundle: Path, keyring: Path | None = None) -> tuple[str, str]:
    """The bundle's (compatible, version) from its manifest; with *keyring*, verified
    as a box checks it (the codeSigning purpose, appliance.update.system_conf)."""
    with tempfile.TemporaryDirectory(prefix="edgebox-publish-") as tmp:
        if keyring is None:
            check = ["--no-verify"]
        else:
            # `rauc info` takes the purpose only from a system.conf: a minimal one.
            conf = Path(tmp) / "system.conf"
            conf.write_text("[system]\ncompatible=publish-check\nbootloader=noop\n\n"
                            f"[keyring]\npath={keyring}\ncheck-purpose=codesign\n")  # fmt: skip
            check = [f"--conf={conf}"]
        # Fixed argv, no shell; rauc from the system PATH.
        done = subprocess.run(  # noqa: S603
            ["rauc", *check, "info", "--output-format=json", str(bundle)],  # noqa: S607
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise PublishError(f"not a RAUC bundle rauc can read: {lines[-1] if lines else '?'}")
    raw = json.loads(done.stdout)
    return str(raw.get("compatible") or ""), str(raw.get("version") or "")


def publish(
    data_dir: Path, bundle: Path, channel: str, *, keyring: Path | None = None,
    now: float | None = None, keep: int = DEFAULT_KEEP,
) -> Published:  # fmt: skip
    """Copy *bundle* into the hub's store and make it what *channel* offers; then remove
    the bundles nothing needs any more (`collect_bundles`, *keep* per channel)."""
    if not valid_channel(channel):
        raise PublishError(f"bad channel name {channel!r}: a-z, 0-9 and '-' only")
    compatible, version = bundle_info(bundle, keyring)
    if not version or not compatible:
        raise PublishError("the bundle's manifest names no version or compatible")
    store = data_dir / CHANNEL_DIR / "bundles"
    store.mkdir(parents=True, exist_ok=True)
    digest = sha256_of(bundle)
    target = store / f"{digest}.raucb"
    if not target.exists():
        tmp = store / f".{digest}.tmp"
        shutil.copyfile(bundle, tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        if sha256_of(tmp) != digest:
            tmp.unlink()
            raise PublishError(f"{bundle} changed while it was being copied")
        os.replace(tmp, target)
        fsync_dir(store)
    published = Published(version, compatible, target.stat().st_size, digest,
                          time.time() if now is None else now)  # fmt: skip
    history = [*read_history(data_dir), {**asdict(published), "channel": channel}]
    write_atomically(data_dir / HISTORY_FILE, json.dumps(history).encode(), mode=0o644)
    # The channel file last: boxes are offered only a bundle that is whole on disk.
    write_atomically(channel_file(data_dir, channel), json.dumps(asdict(published)).encode(),
                     mode=0o644)  # fmt: skip
    collect_bundles(data_dir, keep)
    return published


def read_history(data_dir: Path) -> list[dict[str, Any]]:
    """Every publication whose bundle the hub still holds, oldest first."""
    try:
        raw = json.loads((data_dir / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []


def reported_versions(data_dir: Path) -> set[str]:
    """The release each box last reported as installed or good (what it runs or will)."""
    found: set[str] = set()
    folder = data_dir / REPORTS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        events = read_reports(data_dir, path.stem)
        landed = [e for e in events if e.get("event") in ("installed", "good")]
        if landed:
            found.add(str(landed[-1].get("version", "")))
    return found


def collect_bundles(data_dir: Path, keep: int = DEFAULT_KEEP) -> list[str]:
    """Remove the bundle files nothing needs (module docstring); return their SHA-256s."""
    history = read_history(data_dir)
    needed: set[str] = set()
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for record in history:
        by_channel.setdefault(str(record.get("channel")), []).append(record)
    for channel, records in by_channel.items():
        records.sort(key=lambda r: float(r.get("published_at", 0)))
        needed.update(str(r.get("sha256")) for r in records[-max(keep, 1) :])
        offered = read_channel(data_dir, channel)
        if offered is not None:
            needed.add(offered.sha256)
    in_use = reported_versions(data_dir)
    needed.update(str(r.get("sha256")) for r in history if r.get("version") in in_use)
    known = {str(r.get("sha256")) for r in history}
    doomed = known - needed
    if not doomed:
        return []
    # The history first: a crash between the two leaves files it no longer names, which
    # are then kept for good (unknown) rather than named and missing.
    kept = [r for r in history if r.get("sha256") not in doomed]
    write_atomically(data_dir / HISTORY_FILE, json.dumps(kept).encode(), mode=0o644)
    store = data_dir / CHANNEL_DIR / "bundles"
    for digest in sorted(doomed):
        if _BUNDLE_NAME.match(f"{digest}.raucb"):
            (store / f"{digest}.raucb").unlink(missing_ok=True)
    fsync_dir(store)
    return sorted(doomed)


def channel_file(data_dir: Path, channel: str) -> Path:
    return data_dir / CHANNEL_DIR / f"{channel}.json"


def read_channel(data_dir: Path, channel: str) -> Published | None:
    """What *channel* offers now, or None."""
    if not valid_channel(channel):
        return None
    try:
        return Published(**json.loads(channel_file(data_dir, channel).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def channel_routes(data_dir: Path) -> list[SyncRoute]:
    """The hub's offer route."""

    async def offer(peer: Peer, body: JSON) -> JSON:
        channel, compatible = body.get("channel"), body.get("compatible")
        if not isinstance(channel, str) or not valid_channel(channel):
            raise bad_request("channel must name a channel (a-z, 0-9, '-')", "bad_channel")
        if not isinstance(compatible, str):
            raise bad_request("compatible must be a string", "bad_compatible")
        published = await trio.to_thread.run_sync(read_channel, data_dir, channel)
        if published is None or published.compatible != compatible:
            return {"offer": None}
        return {"offer": published.offer()}

    return [SyncRoute(OFFER_PATH, offer, max_body=4096)]


def channel_downloads(data_dir: Path) -> list[SyncDownload]:
    """The hub's bundle files, by their SHA-256."""
    store = data_dir / CHANNEL_DIR / "bundles"

    def locate(peer: Peer, name: str) -> Path | None:
        # The name is checked whole against the pattern: no "/" or ".." gets through.
        if not _BUNDLE_NAME.match(name):
            return None
        path = store / name
        return path if path.is_file() else None

    return [SyncDownload(BUNDLE_PREFIX, locate)]
