"""The box's side of the signed USB stick: watch, mount read-only, verify, apply, answer.

A stick is any block device the settings allow (``usb_provisioning``) that carries an
``edgebox-provisioning`` folder (appliance.provisioning.bundle). For each one:

1. mount it read-only (``ro,nosuid,nodev,noexec``) on a private folder;
2. read and verify the bundle: signature and chain to a provisioning CA the box trusts
   (`trust_anchors`), revocation, not-after, the box-id allow-list, and the bundle id
   never applied before on this box (`APPLIED_FILE`, kept across factory resets);
3. apply it: on an unprovisioned box through `provision()` (atomic: the old state or the
   new), then its users and enrolment; on a provisioned box only adding users and
   rotating the enrolment — a bundle that provisions is refused there, never applied;
   last, on either, a system update the manifest names (its size and SHA-256 checked as
   it is read, then appliance.update.install: RAUC's signature check, a newer release
   only), with its progress on the panel's UPDATE page; the box reboots into it
   (``update_reboot``) after the result is on the stick;
4. write a result signed with the device key to ``edgebox-results/`` on the stick,
   remounting it read-write just for that, then unmount.

A refused bundle changes nothing on the box; the reason is in the result file (Thai and
English) and the log. Sources of sticks sit behind `BlockDevices`: `UdevBlockDevices`
reads the kernel's uevents through pyudev (no udevd needed), `FolderSticks` is the twin
that hands over already mounted folders.

The panel follows each stick: every phase and the result go to `Lifecycle.stick_news`,
which the panel service shows as notices (appliance.panel), the result for a minute.

What this is not: the panel itself, or how an update installs (appliance.update).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.box import BoxError, add_user, open_box
from appliance.directory import DirectoryError
from appliance.identity import read_identity
from appliance.provisioning.bundle import (
    BUNDLE_DIR,
    Bundle,
    BundleError,
    Payload,
    UpdateFile,
    check_update_file,
    parse_bundle,
    read_bundle_files,
    read_payload,
    verify_bundle,
)
from appliance.provisioning.device import DEVICE_DIR, certificate_fingerprint
from appliance.provisioning.enrol import EnrolError, enroll
from appliance.provisioning.lifecycle import BoxState, Lifecycle, box_state
from appliance.provisioning.provision import ProvisioningError, provision
from appliance.provisioning.system_files import system_root, write_system_files
from appliance.security.provisioning_ca import CA_CERT, CRL_FILE
from appliance.store.files import fsync_dir, write_atomically

log = logging.getLogger("edgebox.usb")

#: Bundle ids applied on this box, one a line; in ``device/`` so a factory reset keeps
#: it and an old stick cannot provision the box again after a reset.
APPLIED_FILE: Final = "applied-bundles"
RESULTS_DIR: Final = "edgebox-results"


# --- where sticks come from -----------------------------------------------------------------


class Stick(Protocol):
    """One inserted medium: mounted read-only, made writable for the result, unmounted."""

    name: str

    async def mount(self) -> Path: ...

    async def make_writable(self) -> None: ...

    async def unmount(self) -> None: ...


class BlockDevices(Protocol):
    """The sticks inserted from now on, one at a time."""

    async def next_stick(self) -> Stick:
        """Wait for the next stick inserted."""
        ...


@dataclass
class FolderStick:
    """The twin's stick: a folder that is already mounted (or just a folder)."""

    folder: Path
    name: str = "folder"

    async def mount(self) -> Path:
        return self.folder

    async def make_writable(self) -> None:
        pass

    async def unmount(self) -> None:
        pass


@dataclass
class FolderSticks:
    """The twin of `UdevBlockDevices`: a test inserts folders with `insert`."""

    _send: trio.MemorySendChannel[Stick] = field(init=False)
    _receive: trio.MemoryReceiveChannel[Stick] = field(init=False)

    def __post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Stick](16)

    async def insert(self, stick: Stick) -> None:
        await self._send.send(stick)

    async def next_stick(self) -> Stick:
        return await self._receive.receive()


@dataclass
class KernelStick:
    """A block device, mounted with mount(8) on a private folder."""

    devnode: str
    name: str = ""
    _folder: Path | None = None

    async def mount(self) -> Path:
        self._folder = Path(tempfile.mkdtemp(prefix="edgebox-stick-"))
        options = "ro,nosuid,nodev,noexec"
        await trio.run_process(["mount", "-o", options, self.devnode, str(self._folder)],
                               capture_stdout=True, capture_stderr=True)  # fmt: skip
        return self._folder

    async def make_writable(self) -> None:
        assert self._folder is not None
        await trio.run_process(["mount", "-o", "remount,rw", str(self._folder)],
                               capture_stdout=True, capture_stderr=True)  # fmt: skip

    async def unmount(self) -> None:
        if self._folder is None:
            return
        folder, self._folder = self._folder, None
        await trio.run_process(["umount", str(folder)], check=False,
                               capture_stdout=True, capture_stderr=True)  # fmt: skip
        folder.rmdir()


def accepts(setting: str) -> Callable[[Any], bool]:
    """Return the device filter for the ``usb_provisioning`` *setting* (pyudev devices)."""
    names = [n.strip() for n in setting.split(",") if n.strip()]
    if names == ["removable"]:

        def removable(device: Any) -> bool:
            disk = device if device.device_type == "disk" else device.find_parent("block")
            try:
                return disk is not None and disk.attributes.asstring("removable") == "1"
            except KeyError:
                return False

        return removable
    return lambda device: any(fnmatch.fnmatchcase(device.sys_name, n) for n in names)


class UdevBlockDevices:
    """Sticks from the kernel's block-device uevents (netlink; no udevd needed).

    A stick appears as ``add`` (a USB disk or partition) or as ``change`` to a non-zero
    size (a loop device attached to an image). A device is handled once until it goes
    away (``remove``, or a change to size 0).
    """

    def __init__(self, accept: Callable[[Any], bool]) -> None:
        import pyudev  # the box's dependency; not needed by the twin

        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source="kernel")
        self._monitor.filter_by("block")
        self._monitor.start()
        self._accept = accept
        self._seen: set[str] = set()

    async def next_stick(self) -> Stick:
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                await trio.lowlevel.wait_readable(self._monitor.fileno())
                continue
            stick = self._stick(device)
            if stick is not None:
                return stick

    def _stick(self, device: Any) -> KernelStick | None:
        devnode = device.device_node or f"/dev/{device.sys_name}"
        try:
            size = int(device.attributes.asstring("size"))
        except (KeyError, ValueError):
            size = 0
        if device.action == "remove" or size == 0:
            self._seen.discard(devnode)
            return None
        if device.action not in ("add", "change") or devnode in self._seen:
            return None
        if not self._accept(device):
            return None
        self._seen.add(devnode)
        return KernelStick(devnode, name=device.sys_name)


# --- trust ----------------------------------------------------------------------------------


def trust_anchors(data_dir: Path) -> list[x509.Certificate]:
    """The provisioning CAs this box trusts.

    ``device/provisioning-ca.pem`` ships in the image (and survives a factory reset);
    ``keys/provisioning-ca.pem`` is the hub's, installed at enrolment or by the operator.
    """
    anchors: list[x509.Certificate] = []
    for path in (data_dir / DEVICE_DIR / CA_CERT, data_dir / "keys" / CA_CERT):
        if path.exists():
            anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
    return anchors


def known_crls(data_dir: Path) -> list[x509.CertificateRevocationList]:
    """The revocation lists the box has seen (installed, or the newest a stick brought)."""
    crls = []
    for path in (data_dir / DEVICE_DIR / CRL_FILE, data_dir / "keys" / CRL_FILE):
        if path.exists():
            try:
                crls.append(x509.load_pem_x509_crl(path.read_bytes()))
            except ValueError:
                log.warning("unreadable revocation list %s ignored", path)
    return crls


def applied_bundles(data_dir: Path) -> set[str]:
    path = data_dir / DEVICE_DIR / APPLIED_FILE
    if not path.exists():
        return set()
    return set(path.read_text(encoding="ascii").split())


def record_applied(data_dir: Path, bundle_id: str) -> None:
    """Remember *bundle_id* (atomically, fsynced) so the same stick never applies twice."""
    ids = sorted(applied_bundles(data_dir) | {bundle_id})
    write_atomically(data_dir / DEVICE_DIR / APPLIED_FILE, "\n".join(ids).encode() + b"\n")


def keep_newer_crl(data_dir: Path, bundle: Bundle, anchors: list[x509.Certificate]) -> None:
    """Keep the stick's revocation list if a trusted CA signed it and it is newer."""
    crl = bundle.crl
    if crl is None or not any(
        crl.issuer == a.subject and crl.is_signature_valid(a.public_key())  # type: ignore[arg-type]
        for a in anchors
    ):
        return
    path = data_dir / DEVICE_DIR / CRL_FILE
    if path.exists():
        try:
            old = x509.load_pem_x509_crl(path.read_bytes())
            if _crl_number(old) >= _crl_number(crl):
                return
        except ValueError:
            pass
    write_atomically(path, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


# --- a stick's system update -------------------------------------------------------------------


class SystemUpdates(Protocol):
    """The box's installer (appliance.update.installer.UpdateInstaller, handed over by the
    registry: the stick's path and the hub channel's install the same way)."""

    def install(self, bundle: Path, news: Callable[[str], None]) -> tuple[bool, str]:
        """Install *bundle* (blocking): (True, its release) or (False, why not)."""
        ...

    def refuse(self, reason: str) -> None:
        """Record a bundle refused before the installer saw it."""
        ...

    def reboot(self) -> None:
        """Reboot into what was installed (if the settings say to)."""
        ...


# --- the result -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one stick; becomes the result file."""

    bundle_id: str | None = None
    signer: str | None = None
    applied: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    #: A short word: applied, partial, or the refusal's reason (tampered, expired ...).
    status: str = "refused"

    def refuse(self, reason: str, en: str, th: str) -> None:
        self.status = reason
        self.errors.append({"reason": reason, "en": en, "th": th})


def panel_result(outcome: Outcome) -> str:
    """The stick's result as one ASCII line for the panel (its font has no Thai)."""
    if outcome.status in ("applied", "partial"):
        done = ", ".join(outcome.applied)
        word = "done" if outcome.status == "applied" else "partly done"
        return f"USB {word}: {done}; remove stick"
    if outcome.status == "update-refused" and outcome.errors:
        # Why, in the panel's English: the UPDATE page and the console say it too.
        return f"USB update refused: {outcome.errors[-1]['en']}; nothing changed"
    return f"USB refused: {outcome.status}; nothing changed"


def signed_result(lifecycle: Lifecycle, outcome: Outcome, now: dt.datetime) -> tuple[bytes, bytes]:
    """Return the result (JSON) and its signature (DER ECDSA) made with the device key."""
    device = lifecycle.device
    cert_pem = device.cert_file.read_bytes()
    # The state on disk, not the runner's: the runner switches only after this stick.
    state = box_state(device.path.parent)
    server = device.path.parent / "keys" / "server.pem"
    presented = server if state is BoxState.PROVISIONED and server.exists() else device.cert_file
    body = {
        "format": "edgebox-provisioning-result/1",
        "box_id": device.box_id,
        "hostname": device.hostname,
        # The certificate the box presents now (the agency's once provisioned) ...
        "fingerprint": certificate_fingerprint(presented.read_bytes()),
        # ... and the device certificate that signed this file.
        "device_fingerprint": certificate_fingerprint(cert_pem),
        "device_certificate": cert_pem.decode("ascii"),
        "at": now.isoformat(timespec="seconds"),
        "state": state.value,
        "bundle_id": outcome.bundle_id,
        "signer": outcome.signer,
        "status": outcome.status,
        "applied": outcome.applied,
        "errors": outcome.errors,
    }
    data = json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    key = serialization.load_pem_private_key(device.key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return data, key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify_result(data: bytes, signature: bytes) -> dict[str, Any]:
    """Check a result file against the device certificate it names; return its body."""
    body: dict[str, Any] = json.loads(data)
    cert = x509.load_pem_x509_certificate(body["device_certificate"].encode())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature
    return body


# --- the service ----------------------------------------------------------------------------


#: A stick's signature set (appliance.protection.signatures, handed in by the registry):
#: install the set in the folder; return what was applied, or the refusal as a result
#: error entry (``reason``, ``en``, ``th``).
SignatureStick = Callable[[Path], Awaitable["str | dict[str, str]"]]
#: Beside ``edgebox-provisioning``: a signed set of anti-virus signatures and spam rules.
SIGNATURES_DIR: Final = "edgebox-signatures"


class UsbProvisioning:
    """Apply the bundles on the sticks *devices* reports to the running box."""

    def __init__(
        self, config: Any, lifecycle: Lifecycle, devices: BlockDevices,
        updates: SystemUpdates | None = None,
        signatures: SignatureStick | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.data_dir: Path = config.data_dir
        self.lifecycle = lifecycle
        self.devices = devices
        #: Installs a stick's system update; None: this box refuses them.
        self.updates = updates
        self._reboot_after = False
        #: Installs a stick's signature set; None where scanning is off.
        self.signatures = signatures
        #: Every stick's outcome, in order (tests; the panel later).
        self.outcomes: list[Outcome] = []

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            # One stick at a time: two sticks at once must not race to provision.
            await self.handle(await self.devices.next_stick())

    async def handle(self, stick: Stick) -> Outcome | None:
        """Read, verify and apply one stick; write its result. None: no bundle on it."""
        try:
            folder = await stick.mount()
        except (OSError, subprocess.CalledProcessError) as exc:
            # Not a file system this kernel reads, or no medium: not a stick for us.
            log.info("stick %s not mounted: %s", stick.name, exc)
            await stick.unmount()
            return None
        try:
            has_set = self.signatures is not None and (folder / SIGNATURES_DIR).is_dir()
            if not (folder / BUNDLE_DIR).is_dir() and not has_set:
                log.info("stick %s carries no %s folder; ignored", stick.name, BUNDLE_DIR)
                return None
            self.lifecycle.stick_news("USB: checking bundle")
            now = dt.datetime.now(dt.UTC)
            if (folder / BUNDLE_DIR).is_dir():
                outcome = await self._check_and_apply(folder / BUNDLE_DIR, now)
            else:
                outcome = Outcome(status="nothing")
            if has_set and self.signatures is not None:
                # The offline path for signatures (a box cut off from the hub): the set
                # carries its own signature under the same provisioning CA.
                self.lifecycle.stick_news("USB: installing signatures")
                result = await self.signatures(folder / SIGNATURES_DIR)
                if isinstance(result, str):
                    outcome.applied.append(result)
                    outcome.status = "applied" if not outcome.errors else "partial"
                else:
                    outcome.errors.append(result)
                    if outcome.applied:
                        outcome.status = "partial"
                    elif outcome.status == "nothing":
                        outcome.status = result.get("reason", "refused")
            self.outcomes.append(outcome)
            self.lifecycle.stick_news("USB: writing result")
            try:
                await stick.make_writable()
                await trio.to_thread.run_sync(self._write_result, folder, outcome, now)
                self.lifecycle.stick_news(panel_result(outcome), final=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                # A write-protected or full stick: the box's change stands, and the
                # result is kept on the box instead (docs/provisioning.md).
                kept = self.data_dir / "log" / RESULTS_DIR
                await trio.to_thread.run_sync(self._write_result, kept.parent, outcome, now)
                log.warning("result not written to stick %s (%s); kept in %s",
                            stick.name, exc, kept)  # fmt: skip
                self.lifecycle.stick_news(panel_result(outcome) + "; result kept on box",
                                          final=True)  # fmt: skip
            return outcome
        finally:
            await stick.unmount()
            if self._reboot_after and self.updates is not None:
                # After the result is on the stick and the stick is unmounted.
                self._reboot_after = False
                self.updates.reboot()
            if box_state(self.data_dir) is BoxState.PROVISIONED and (
                self.lifecycle.state is BoxState.UNPROVISIONED
            ):
                # After the result is on the stick: the runner starts every service.
                self.lifecycle.provisioned()

    async def _check_and_apply(self, folder: Path, now: dt.datetime) -> Outcome:
        outcome = Outcome()
        try:
            files = await trio.to_thread.run_sync(read_bundle_files, folder)
            bundle = parse_bundle(files)
            outcome.bundle_id = bundle.manifest.bundle_id
            anchors = trust_anchors(self.data_dir)
            signer = verify_bundle(
                bundle, anchors=anchors, crls=known_crls(self.data_dir), now=now,
                box_id=self.lifecycle.device.box_id, applied=applied_bundles(self.data_dir),
            )  # fmt: skip
            outcome.signer = signer.subject.rfc4514_string()
            payload = read_payload(bundle)
            keep_newer_crl(self.data_dir, bundle, anchors)
        except BundleError as exc:
            outcome.refuse(exc.reason, exc.message_en, exc.message_th)
            log.warning("USB bundle %s refused (%s): %s", outcome.bundle_id, exc.reason, exc)
            return outcome
        except OSError as exc:
            outcome.refuse("unreadable", f"the stick could not be read: {exc}",
                           f"อ่านแฟลชไดรฟ์ไม่ได้: {exc}")  # fmt: skip
            log.warning("USB stick unreadable: %s", exc)
            return outcome
        self.lifecycle.stick_news("USB: applying, keep stick in")
        await self._apply(payload, outcome)
        # Last, and only if the rest was not refused as a whole: the slowest step.
        if payload.update is not None and (outcome.applied or not outcome.errors):
            await self._install_update(folder, payload.update, outcome)
        if outcome.applied:
            # Recorded only once something changed: a bundle refused as a whole (a
            # wrong password length, say) may be fixed at the desk and brought again.
            await trio.to_thread.run_sync(record_applied, self.data_dir, bundle.manifest.bundle_id)
        log.warning("USB bundle %s: %s (applied: %s)", outcome.bundle_id, outcome.status,
                    ", ".join(outcome.applied) or "nothing")  # fmt: skip
        return outcome

    async def _apply(self, payload: Payload, outcome: Outcome) -> None:
        provisioned = read_identity(self.data_dir) is not None
        system = payload.network is not None or payload.time is not None
        if provisioned and (payload.request is not None or system):
            outcome.refuse(
                "already-provisioned",
                "the box is already provisioned; a stick may only add users or rotate the"
                " enrolment here, never provision again (a factory reset comes first)",
                "เครื่องนี้ตั้งค่าแล้ว แฟลชไดรฟ์ทำได้เพียงเพิ่มผู้ใช้หรือลงทะเบียนกับศูนย์ใหม่"
                " จะตั้งค่าซ้ำไม่ได้ (ต้องล้างเครื่องเป็นค่าโรงงานก่อน)",
            )  # fmt: skip
            return
        if not provisioned and payload.request is None and payload.update is None:
            outcome.refuse(
                "not-provisioned",
                "the box is not provisioned yet; the bundle needs [agency] and [admin] answers",
                "เครื่องยังไม่ได้ตั้งค่า ชุดข้อมูลต้องมีคำตอบ [agency] และ [admin]",
            )  # fmt: skip
            return
        if payload.request is not None:
            try:
                await provision(self.data_dir, payload.request)
            except ProvisioningError as exc:
                outcome.refuse("refused", exc.message_en, exc.message_th)
                return
            outcome.applied.append("provision")
            if system:
                # The wizard's network and time steps, the same files (system_files.py).
                try:
                    root = system_root(self.config)
                    await trio.to_thread.run_sync(
                        write_system_files, root, payload.network, payload.time
                    )
                    outcome.applied.append("system")
                except OSError as exc:
                    outcome.errors.append({"reason": "system",
                                           "en": f"network and time files not written: {exc}",
                                           "th": f"เขียนไฟล์เครือข่ายและเวลาไม่ได้: {exc}"})  # fmt: skip
        if payload.users:
            await self._add_users(payload, outcome)
        if payload.token and payload.hub_url:
            try:
                await enroll(self.data_dir, payload.hub_url, payload.token)
                outcome.applied.append("enrol")
            except (EnrolError, OSError) as exc:
                outcome.errors.append({"reason": "enrol", "en": f"enrolment failed: {exc}",
                                       "th": f"ลงทะเบียนกับศูนย์ไม่สำเร็จ: {exc}"})  # fmt: skip
        if outcome.applied:
            outcome.status = "applied" if not outcome.errors else "partial"

    async def _install_update(self, folder: Path, update: UpdateFile, outcome: Outcome) -> None:
        """Check the stick's update against the manifest and install it; say why if not."""
        self.lifecycle.stick_news("USB: checking update, keep stick in")
        updates = self.updates
        if updates is None:
            en = "this box does not install system updates from a stick"
            th = "เครื่องนี้ไม่รับการปรับรุ่นระบบจากแฟลชไดรฟ์"
            installed, said = False, en
        else:

            def install() -> tuple[bool, str]:
                try:
                    bundle = check_update_file(folder, update)
                except BundleError as exc:
                    updates.refuse(exc.message_en)
                    return False, exc.message_en
                return updates.install(bundle, lambda text: self.lifecycle.stick_news(
                    f"USB: {text}, keep stick in"))  # fmt: skip

            installed, said = await trio.to_thread.run_sync(install)
            en, th = f"update not installed: {said}", f"ไม่ได้ติดตั้งการปรับรุ่น: {said}"
        if not installed:
            log.warning("USB update refused: %s", said)
            if outcome.applied:
                outcome.errors.append({"reason": "update", "en": en, "th": th})
                outcome.status = "partial"
            else:
                outcome.refuse("update-refused", en, th)
            return
        outcome.applied.append(f"update:{said}")
        outcome.status = "applied" if not outcome.errors else "partial"
        self._reboot_after = True

    async def _add_users(self, payload: Payload, outcome: Outcome) -> None:
        """Add every user, or none if any is refused up front (exists, wrong domain)."""
        try:
            async with open_box(self.config) as box:
                problems = []
                for entry in payload.users:
                    if await box.directory.user(entry.address) is not None:
                        problems.append(entry.address)
                if problems:
                    outcome.refuse("users-exist", f"users already exist: {', '.join(problems)}",
                                   f"มีผู้ใช้เหล่านี้อยู่แล้ว: {', '.join(problems)}")  # fmt: skip
                    return
                added = 0
                for entry in payload.users:
                    try:
                        await add_user(box, entry.address, entry.password, name_th=entry.name_th,
                                       name_en=entry.name_en, unit=entry.unit,
                                       admin=entry.admin)  # fmt: skip
                        added += 1
                    except DirectoryError as exc:
                        th = f"เพิ่มผู้ใช้ {entry.address} ไม่ได้: {exc}"
                        en = f"{entry.address}: {exc}"
                        outcome.errors.append({"reason": "user", "en": en, "th": th})
        except BoxError as exc:
            outcome.refuse("refused", str(exc), f"เปิดข้อมูลของเครื่องไม่ได้: {exc}")
            return
        if added:
            outcome.applied.append(f"add-users:{added}")

    def _write_result(self, folder: Path, outcome: Outcome, now: dt.datetime) -> None:
        data, signature = signed_result(self.lifecycle, outcome, now)
        results = folder / RESULTS_DIR
        results.mkdir(parents=True, exist_ok=True)
        # One file per insertion: a later (say, replayed) insertion never hides an
        # earlier result.
        stem = f"{self.lifecycle.device.short_id}-{now.strftime('%Y%m%dT%H%M%S%f')}"
        write_atomically(results / f"{stem}.json", data, mode=0o644)
        write_atomically(results / f"{stem}.json.sig", signature, mode=0o644)
        fsync_dir(results)
        os.sync()  # the technician pulls the stick as soon as the panel says done


def usb_service(
    config: Any,
    lifecycle: Lifecycle,
    updates: SystemUpdates | None = None,
    signatures: SignatureStick | None = None,
) -> UsbProvisioning | None:
    """The stick service the settings ask for (``usb_provisioning``), or None (off)."""
    if not config.usb_provisioning:
        return None
    devices = UdevBlockDevices(accepts(config.usb_provisioning))
    return UsbProvisioning(config, lifecycle, devices, updates, signatures)
