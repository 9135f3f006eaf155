"""Signature sets over the sync API: the hub's two routes and the box's `SignatureUpdater`.

Wire format (``POST``, mutual TLS like every sync stream; bytes travel as base64)::

    /sync/v1/signatures/manifest   → {}
                                   ← {"manifest": b64, "signature": b64, "signer": b64}
                                     or {"manifest": null} (the hub publishes none)
    /sync/v1/signatures/file       → {"set_id", "name", "offset"}
                                   ← {"data": b64 of at most CHUNK bytes, "size": total}

A box asks for the manifest every ``protection_signatures_interval`` (and when the link
comes back), verifies it (appliance.protection.signatures.manifest), then fetches only
the files that changed since the set it holds, chunk by chunk with a pause between
chunks (a daily ClamAV update must not crowd out mail on a thin provincial line). Once
every file is whole and matches the signed manifest, it installs them atomically and
asks the engines to reload: clamd ``RELOAD`` over its socket, rspamd SIGHUP to its main
process (rspamd(8): re-read the configuration) — on the image, where rspamd is systemd's
and runs as its own user, through a request file and a path unit (`RELOAD_REQUEST`). A
bad or unsigned set changes nothing, and the reason is in ``run/signatures.json`` for
the health check and the console.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Final

import trio

from appliance.config import Config
from appliance.protection.engines import clamd_socket, engine_dir
from appliance.protection.engines import read_state as read_engine_state
from appliance.protection.scanner import ClamdClient, ScannerUnavailable
from appliance.protection.signatures.manifest import (
    MANIFEST,
    MAX_MANIFEST,
    SIGNATURE,
    SIGNER,
    SignatureSet,
    SignatureSetError,
    Targets,
    changed_files,
    install_set,
    parse_manifest,
    read_installed,
    verify_set,
)
from appliance.provisioning.usb import known_crls, trust_anchors
from appliance.security.provisioning_ca import CA_CERT, install_published, published
from appliance.store.files import write_atomically
from appliance.sync.clock import Clock
from appliance.sync.hub.errors import bad_request
from appliance.sync.status import SyncStatus
from appliance.sync.transport import JSON, HubCall, HubRefused, HubUnavailable, Peer, SyncRoute

log = logging.getLogger("edgebox.protection.signatures")

MANIFEST_PATH: Final = "/sync/v1/signatures/manifest"
FILE_PATH: Final = "/sync/v1/signatures/file"
STREAM: Final = "signatures"
#: The hub's mirror: what ``edgebox hub signatures publish`` wrote (DATA/<this>).
MIRROR_DIR: Final = Path("signatures")
#: The box's last round: its result and reason (DATA/<this>).
STATE_FILE: Final = Path("run") / "signatures.json"
#: One answer carries this much of a file; ~1.4 MB of JSON, seconds on a thin line.
CHUNK: Final = 1024 * 1024
#: Pause between chunks: a throttle, so mail and chat keep most of the link.
CHUNK_PAUSE: Final = 0.5
#: On the image the root and /etc/rspamd are read-only: a set's rspamd files go to the
#: data partition (/data/rspamd/local.d, writable by edgebox), which the image's own
#: /etc/rspamd/local.d/<module>.conf files include (image_build/build.py,
#: `RSPAMD_SET_MODULES`).
SYSTEM_RSPAMD_LOCAL: Final = Path("/var/lib/rspamd/local.d")
#: Written into that folder to ask for a reload: rspamd runs as _rspamd, so edgebox may
#: not signal it; edgebox-rspamd-reload.path sees the file change and has systemd run
#: rspamd.service's ExecReload (SIGHUP, as root).
RELOAD_REQUEST: Final = ".reload-request"
#: The rspamd modules whose local.d file a signature set may replace on the image: the
#: image ships an include for each (rspamd merges local.d/<module>.conf into the
#: module). Other files (maps, rules read by path) land beside them and are used where
#: one of these names them, as ``${DBDIR}/local.d/<file>``.
RSPAMD_SET_MODULES: Final = (
    "multimap", "regexp", "rbl", "phishing", "spamassassin", "mime_types", "groups",
    "actions", "force_actions", "settings",
)  # fmt: skip


# --- the hub ---------------------------------------------------------------------------------


def signature_routes(data_dir: Path) -> list[SyncRoute]:
    """The hub's routes that hand out the published set."""
    mirror = data_dir / MIRROR_DIR

    async def manifest(peer: Peer, body: JSON) -> JSON:
        files = await trio.to_thread.run_sync(_published, mirror)
        if files is None:
            return {"manifest": None}
        return {
            **{name: base64.b64encode(data).decode() for name, data in files.items()},
            # The CA that signs the sets, for a box enrolled before this hub had one.
            **published(data_dir / "keys"),
        }

    async def file(peer: Peer, body: JSON) -> JSON:
        if not isinstance(body, dict):
            raise bad_request("expected an object")
        set_id, name, offset = body.get("set_id"), body.get("name"), body.get("offset")
        if not isinstance(set_id, str) or not isinstance(name, str) or type(offset) is not int:
            raise bad_request("set_id, name and offset are required")
        return await trio.to_thread.run_sync(_chunk, mirror, set_id, name, offset)

    return [
        SyncRoute(MANIFEST_PATH, manifest, max_body=4096),
        SyncRoute(FILE_PATH, file, max_body=4096),
    ]


def _published(mirror: Path) -> dict[str, bytes] | None:
    try:
        return {
            "manifest": (mirror / MANIFEST).read_bytes(),
            "signature": (mirror / SIGNATURE).read_bytes(),
            "signer": (mirror / SIGNER).read_bytes(),
        }
    except FileNotFoundError:
        return None


def _chunk(mirror: Path, set_id: str, name: str, offset: int) -> JSON:
    try:
        current = parse_manifest((mirror / MANIFEST).read_bytes())
    except (OSError, SignatureSetError):
        raise bad_request("the hub publishes no signature set", "no_set") from None
    if current.set_id != set_id:
        # Published again meanwhile: the box starts over with the new manifest.
        raise bad_request("the signature set changed; fetch the manifest again", "stale_set")
    entry = current.files.get(name)
    if entry is None or not 0 <= offset <= entry.size:
        raise bad_request("no such file or offset in the set", "no_file")
    with (mirror / name).open("rb") as handle:
        handle.seek(offset)
        data = handle.read(CHUNK)
    return {"data": base64.b64encode(data).decode(), "size": entry.size}


# --- the box ---------------------------------------------------------------------------------


def targets(config: Config, system_local: Path = SYSTEM_RSPAMD_LOCAL) -> Targets:
    """clamd's DatabaseDirectory and rspamd's local.d on this box (on the image, the
    data partition's folder that /etc/rspamd/local.d includes: *system_local*)."""
    if config.protection_engines == "box":
        return Targets(Path(config.protection_clamd_database), engine_dir(config) / "local.d")
    return Targets(Path(config.protection_clamd_database), system_local)


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """``run/signatures.json``: the last round's result, or None."""
    try:
        document = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def write_state(data_dir: Path, **fields: Any) -> None:
    path = data_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # The last round only: a refusal's reason must not linger beside a later install.
    document = {"time": time.time(), **fields}
    write_atomically(path, json.dumps(document, ensure_ascii=False).encode())


async def reload_engines(
    config: Config, clamd: ClamdClient, engines: set[str],
    system_local: Path = SYSTEM_RSPAMD_LOCAL,
) -> list[str]:  # fmt: skip
    """Ask the engines whose files changed to read them again; return what failed."""
    failed = []
    if "clamd" in engines:
        try:
            await clamd.reload()
        except ScannerUnavailable as exc:
            # Not fatal: clamd's SelfCheck finds the new files by itself within minutes.
            failed.append(str(exc))
    if "rspamd" in engines and config.protection_engines != "box":
        # systemd's rspamd: ask through the path unit (RELOAD_REQUEST says why).
        stamp = f"{time.time():.3f}\n".encode()
        try:
            await trio.to_thread.run_sync(write_atomically, system_local / RELOAD_REQUEST, stamp)
        except OSError as exc:
            failed.append(f"rspamd: cannot ask for a reload: {exc}")
    elif "rspamd" in engines:
        try:
            os.kill(_rspamd_pid(config), signal.SIGHUP)
        except (OSError, ValueError) as exc:
            failed.append(f"rspamd: cannot reload: {exc}")
    return failed


def _rspamd_pid(config: Config) -> int:
    """The main process of the rspamd the box runs itself."""
    # The box runs rspamd in the foreground (-f), and rspamd writes its pid file only
    # when it daemonises; the engine watch records the pid it started.
    state = read_engine_state(config.data_dir) or {}
    rspamd = state.get("rspamd")
    if isinstance(rspamd, dict) and isinstance(rspamd.get("pid"), int):
        return int(rspamd["pid"])
    return int((engine_dir(config) / "rspamd.pid").read_text().strip())


async def apply_set(
    config: Config,
    clamd: ClamdClient,
    raw: bytes,
    signature: bytes,
    chain: bytes,
    fetch: Any,
    *,
    now: dt.datetime | None = None,
) -> SignatureSet:
    """Verify a set, get its changed files with *fetch(set, name)*, install and reload.

    Raise `SignatureSetError` (nothing changed) when the set or a file is refused.
    """
    data_dir = config.data_dir
    installed = read_installed(data_dir)
    signature_set = verify_set(
        raw, signature, chain,
        anchors=trust_anchors(data_dir), crls=known_crls(data_dir),
        now=now or dt.datetime.now(dt.UTC), installed=installed,
    )  # fmt: skip
    names = changed_files(signature_set, installed)
    files = {name: await fetch(signature_set, name) for name in names}
    written = await trio.to_thread.run_sync(
        install_set, data_dir, signature_set, files, targets(config)
    )
    failed = await reload_engines(config, clamd, {name.split("/", 1)[0] for name in written})
    write_state(
        data_dir, result="installed", set_id=signature_set.set_id,
        created_at=signature_set.created_at, files=written, error="; ".join(failed),
    )  # fmt: skip
    log.info("signature set %s installed: %s", signature_set.set_id, ", ".join(written))
    return signature_set


class SignatureUpdater:
    """The box's service: fetch newer signature sets from the hub, now and on an interval."""

    name = "signatures"

    def __init__(
        self, config: Config, clamd: ClamdClient, hub: HubCall, status: SyncStatus, clock: Clock,
        *, pause: float = CHUNK_PAUSE,
    ) -> None:  # fmt: skip
        self.config = config
        self.clamd = clamd
        self.hub = hub
        self.status = status
        self.clock = clock
        self.pause = pause
        self._wake = trio.Event()

    def wake(self) -> None:
        """Look now (the link came back)."""
        self._wake.set()

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        while True:
            self._wake = trio.Event()
            await self.update_round()
            with trio.move_on_after(self.config.protection_signatures_interval):
                await self._wake.wait()

    async def update_round(self) -> str:
        """One look at the hub; return what happened (installed, current, none, refused,
        unavailable)."""
        data_dir = self.config.data_dir
        try:
            answer = await self.hub(MANIFEST_PATH, {})
            if not isinstance(answer, dict) or answer.get("manifest") is None:
                self.status.success(STREAM)
                return "none"
            raw, signature, chain = (
                base64.b64decode(str(answer.get(k, "")), validate=True)
                for k in ("manifest", "signature", "signer")
            )
            if not (data_dir / "keys" / CA_CERT).exists():
                # Over the mutual-TLS connection pinned to the hub's CA, as at enrolment
                # (appliance.provisioning.enrol): the hub's own provisioning CA.
                await trio.to_thread.run_sync(install_published, data_dir / "keys", answer)
            installed = read_installed(data_dir)
            if installed is not None and raw == installed.manifest_bytes:
                self.status.success(STREAM)
                return "current"
            await apply_set(self.config, self.clamd, raw, signature, chain, self._fetch)
        except (HubUnavailable, HubRefused) as exc:
            self.status.failure(STREAM, f"{type(exc).__name__}: {exc}")
            log.info("signatures: %s", exc)
            return "unavailable"
        except SignatureSetError as exc:
            # Said where the admin looks (health, console); the hub is asked again later.
            write_state(data_dir, result="refused", reason=exc.reason,
                        error=exc.message_en, error_th=exc.message_th)  # fmt: skip
            self.status.failure(STREAM, f"signature set refused: {exc.message_en}")
            log.warning("signature set refused: %s", exc.message_en)
            return "refused"
        except ValueError as exc:
            write_state(data_dir, result="refused", reason="malformed", error=str(exc))
            self.status.failure(STREAM, f"bad answer from the hub: {exc}")
            return "refused"
        self.status.success(STREAM)
        return "installed"

    async def _fetch(self, signature_set: SignatureSet, name: str) -> bytes:
        size = signature_set.files[name].size
        data = bytearray()
        while True:
            answer = await self.hub(
                FILE_PATH, {"set_id": signature_set.set_id, "name": name, "offset": len(data)}
            )
            chunk = base64.b64decode(str(answer.get("data", "")) if isinstance(answer, dict)
                                     else "", validate=True)  # fmt: skip
            data += chunk
            if len(data) >= size or not chunk:
                return bytes(data)  # checked against the manifest before any install
            await trio.sleep(self.pause)


# --- the offline path: a set on a USB stick ---------------------------------------------------


def _read_stick_file(folder: Path, name: str, limit: int) -> bytes:
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise SignatureSetError(
            "tampered", f"{name} is missing from the stick", f"ไม่มีไฟล์ {name} ในแฟลชไดรฟ์"
        )
    with path.open("rb") as handle:
        return handle.read(limit + 1)  # a longer file fails its check, unread beyond


def stick_installer(config: Config) -> Any:
    """What the USB stick service calls with a stick's ``edgebox-signatures`` folder."""
    clamd = ClamdClient(clamd_socket(config), config.protection_scan_timeout)

    async def install(folder: Path) -> str | dict[str, str]:
        try:
            raw, signature, chain = await trio.to_thread.run_sync(
                lambda: tuple(
                    _read_stick_file(folder, name, MAX_MANIFEST)
                    for name in (MANIFEST, SIGNATURE, SIGNER)
                )
            )

            async def fetch(signature_set: SignatureSet, name: str) -> bytes:
                size = signature_set.files[name].size
                return await trio.to_thread.run_sync(_read_stick_file, folder, name, size)

            installed = await apply_set(config, clamd, raw, signature, chain, fetch)
        except SignatureSetError as exc:
            write_state(config.data_dir, result="refused", reason=exc.reason,
                        error=exc.message_en, error_th=exc.message_th)  # fmt: skip
            log.warning("signature set on a stick refused: %s", exc.message_en)
            return {"reason": exc.reason, "en": exc.message_en, "th": exc.message_th}
        except OSError as exc:
            return {"reason": "unreadable", "en": f"signatures not read: {exc}",
                    "th": f"อ่านชุดข้อมูลไวรัสไม่ได้: {exc}"}  # fmt: skip
        return f"signatures:{installed.set_id}"

    return install
