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
from typing import Final

import trio

from appliance.store.files import fsync_dir, write_atomically
from appliance.sync.hub.errors import bad_request
from appliance.sync.transport import JSON, Peer, SyncDownload, SyncRoute
from appliance.update.download import sha256_of

OFFER_PATH: Final = "/sync/v1/update/offer"
BUNDLE_PREFIX: Final = "/sync/v1/update/bundle/"
CHANNEL_DIR: Final = Path("update-channel")
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
    now: float | None = None,
) -> Published:  # fmt: skip
    """Copy *bundle* into the hub's store and make it what *channel* offers."""
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
    # The channel file last: boxes are offered only a bundle that is whole on disk.
    write_atomically(channel_file(data_dir, channel), json.dumps(asdict(published)).encode(),
                     mode=0o644)  # fmt: skip
    return published


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
