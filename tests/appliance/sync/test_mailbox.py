"""Mailbox replication against a real Dovecot (master user, IMAPS) on 127.0.0.1.

The box is opened in-process (`open_box`); the central side is driven and inspected
with the standard library's imaplib, logged in as the user themself: an independent
client, so the replicator is never checked against its own reading of IMAP.
"""

from __future__ import annotations

import hashlib
import imaplib
import re
import shutil
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.mailboxes import FlagMode, Mailboxes
from appliance.sync.central import CentralCredentials, save_credentials
from appliance.sync.clock import ManualClock
from appliance.sync.mailbox import MailboxReplicator, merge_flags
from appliance.sync.mailbox_state import MailboxSyncState
from appliance.sync.status import SyncStatus, read_sync_status
from tests.harness import start_box
from tests.peers import self_signed_cert
from tests.peers.dovecot import DovecotServer

DOMAIN = "sync.go.th"
USER = f"somchai@{DOMAIN}"
PASSWORD = "pw-somchai"
MASTER = ("edgebox-svc", "svc-secret")
BIG = 10 * 1024**3

pytestmark = pytest.mark.slow


def mail(n: int, tag: str = "m", size: int = 0) -> bytes:
    return (
        f"From: a@x.go.th\r\nTo: {USER}\r\nSubject: {tag}{n}\r\n"
        f"Message-ID: <{tag}{n}@x.go.th>\r\n\r\nbody {tag} {n}\r\n" + "x" * size
    ).encode()


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[DovecotServer]:
    with DovecotServer(tmp_path, users={USER: PASSWORD}, master_user=MASTER) as dc:
        yield dc


# -- the central side, through imaplib -------------------------------------------------


class Central:
    """Blocking imaplib calls, run in a thread from the trio tests."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, password: str = PASSWORD):
        self.port = port
        self.tls = tls
        self.password = password

    def _session(self) -> imaplib.IMAP4:
        # Bounded: a central server that stops answering fails the test, never hangs it.
        if self.tls is None:
            imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        else:
            imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.tls, timeout=60)
        imap.login(USER, self.password)
        return imap

    async def run(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            imap = self._session()
            try:
                return fn(imap, *args)
            finally:
                imap.logout()

        return await trio.to_thread.run_sync(call)

    async def append(self, mailbox: str, content: bytes, flags: str = "") -> None:
        def fn(imap: imaplib.IMAP4) -> None:
            imap.create(mailbox)  # NO if it exists: fine
            typ, _ = imap.append(mailbox, f"({flags})" if flags else None, None, content)
            assert typ == "OK"

        await self.run(fn)

    async def contents(self, mailbox: str) -> dict[int, tuple[str, set[str]]]:
        """UID -> (content hash, flags) of every message in *mailbox*."""

        def fn(imap: imaplib.IMAP4) -> dict[int, tuple[str, set[str]]]:
            typ, _ = imap.select(f'"{mailbox}"', readonly=True)  # imaplib does not quote
            if typ != "OK":
                return {}
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            out: dict[int, tuple[str, set[str]]] = {}
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(head.split("UID ")[1].split()[0])
                flags = set(head.split("FLAGS (")[1].split(")")[0].split())
                flags.discard("\\Recent")
                out[uid] = (hashlib.sha256(item[1]).hexdigest(), flags)
            return out

        result: dict[int, tuple[str, set[str]]] = await self.run(fn)
        return result

    async def store(self, mailbox: str, uid: int, op: str, flags: str) -> None:
        def fn(imap: imaplib.IMAP4) -> None:
            imap.select(mailbox)
            assert imap.uid("STORE", str(uid), op, f"({flags})")[0] == "OK"

        await self.run(fn)

    async def expunge(self, mailbox: str, uid: int) -> None:
        def fn(imap: imaplib.IMAP4) -> None:
            imap.select(mailbox)
            imap.uid("STORE", str(uid), "+FLAGS", "(\\Deleted)")
            imap.expunge()

        await self.run(fn)

    async def move(self, mailbox: str, uid: int, target: str) -> None:
        def fn(imap: imaplib.IMAP4) -> None:
            imap.select(mailbox)
            assert imap.uid("MOVE", str(uid), target)[0] == "OK"

        await self.run(fn)

    async def mailboxes(self) -> set[str]:
        def fn(imap: imaplib.IMAP4) -> set[str]:
            _, data = imap.list()
            # * LIST (\HasNoChildren) "." "Name with spaces" (or an atom)
            listed = (re.fullmatch(r'\(.*?\) (?:"."|NIL) (.*)', line.decode())
                      for line in data if isinstance(line, bytes))  # fmt: skip
            return {m[1].strip('"') for m in listed if m}

        result: set[str] = await self.run(fn)
        return result


# -- the box ---------------------------------------------------------------------------


@dataclass
class Env:
    box: Box
    central: Central
    dovecot: DovecotServer | None
    status: SyncStatus
    data: Path

    @property
    def boxes(self) -> Mailboxes:
        return Mailboxes(self.box.mailstore)

    def replicator(self, **options: Any) -> MailboxReplicator:
        box = self.box
        return MailboxReplicator(
            self.status, ManualClock(), config=box.config, directory=box.directory,
            mailstore=box.mailstore, **options,
        )  # fmt: skip

    async def sync(self, **options: Any) -> Any:
        replicator = self.replicator(**options)
        async with replicator.opened():
            return await replicator.sync_once()

    async def local(self, mailbox: str) -> dict[int, tuple[str, set[str]]]:
        rows = await self.box.mailstore.messages(USER, mailbox)
        return {r.uid: (r.content_hash, set(r.flags)) for r in rows}

    async def append_local(self, mailbox: str, content: bytes, flags: tuple[str, ...] = ()) -> int:
        _, uid = await self.boxes.append(USER, mailbox, content, quota_bytes=BIG, flags=flags)
        return uid

    async def assert_converged(self, *mailboxes: str) -> None:
        for name in mailboxes:
            local = sorted((h, sorted(f)) for h, f in (await self.local(name)).values())
            central = await self.central.contents(name.replace("/", "."))  # Dovecot's separator
            remote = sorted((h, sorted(f)) for h, f in central.values())
            assert local == remote, name
            hashes = [h for h, _ in local]
            assert len(hashes) == len(set(hashes)) or name == "dup", f"duplicates in {name}"


@pytest.fixture
async def env(tmp_path: Path, dovecot: DovecotServer) -> AsyncIterator[Env]:
    data = tmp_path / "box"
    await init_box(data, DOMAIN)
    keys = data / "keys"
    assert dovecot.cert_path is not None
    shutil.copy(dovecot.cert_path, keys / "central-ca.pem")
    save_credentials(keys, CentralCredentials(*MASTER))
    config = load_config(
        data, file_values={"central_imap": f"imaps://127.0.0.1:{dovecot.imaps_port}"}
    )
    async with open_box(config) as box:
        await add_user(box, USER, "local-pw", name_th="สมชาย")
        assert dovecot.imap_port is not None
        central = Central(dovecot.imap_port)
        yield Env(box, central, dovecot, SyncStatus(data, ManualClock()), data)


# -- tests -----------------------------------------------------------------------------


def test_merge_flags_is_three_way_per_flag() -> None:
    base = ("\\Seen", "$Work")
    # Local removed \Seen, the centre added \Flagged: both changes survive.
    assert set(merge_flags(base, ("$Work",), ("\\Seen", "$Work", "\\Flagged"))) == {
        "$Work", "\\Flagged",
    }  # fmt: skip
    # Both removed $Work: gone. Nobody touched \Seen: kept.
    assert merge_flags(base, ("\\Seen",), ("\\Seen",)) == ("\\Seen",)
    assert merge_flags((), (), ()) == ()


async def test_first_sync_both_ways_then_nothing_to_do(env: Env) -> None:
    for n in range(3):
        await env.append_local("INBOX", mail(n, "local"), ("\\Seen",) if n == 0 else ())
    await env.append_local("Sent", mail(9, "sent"), ("\\Seen",))
    await env.central.append("INBOX", mail(1, "central"), "\\Flagged")
    await env.central.append("INBOX", mail(2, "central"))
    await env.central.append("Projects", mail(3, "central"))
    # The same message on both sides already (delivered twice): matched, not copied.
    await env.append_local("INBOX", mail(7, "both"), ("\\Seen",))
    await env.central.append("INBOX", mail(7, "both"), "\\Answered")

    report = await env.sync()
    assert report.ok, report.errors
    assert (report.fetched, report.appended, report.matched) == (3, 4, 1)
    await env.assert_converged("INBOX", "Sent", "Projects")
    local = await env.local("INBOX")
    both = hashlib.sha256(mail(7, "both")).hexdigest()
    assert [f for h, f in local.values() if h == both] == [{"\\Seen", "\\Answered"}]
    assert {"Sent", "Drafts", "Trash", "Projects"} <= await env.central.mailboxes()
    status = read_sync_status(env.data)["mailbox"]
    assert status["last_error"] is None
    assert status["fetched"] == 3

    again = await env.sync()
    assert again.ok, again.errors
    assert (again.fetched, again.appended, again.matched, again.flags_up, again.flags_down) == (
        0, 0, 0, 0, 0,
    )  # fmt: skip
    await env.assert_converged("INBOX", "Sent", "Projects")


@pytest.mark.parametrize("condstore", [True, False], ids=["qresync", "uid-ranges"])
async def test_incremental_both_ways(env: Env, condstore: bool) -> None:
    uids = [await env.append_local("INBOX", mail(n, "l")) for n in range(4)]
    for n in range(4):
        await env.central.append("INBOX", mail(n, "c"))
    await env.central.append("Archive", mail(0, "a"))
    assert (await env.sync(use_condstore=condstore)).ok
    await env.assert_converged("INBOX", "Archive")

    # Local: read one, delete one, a new delivery, a draft; a move to Archive.
    inbox = await env.boxes.get(USER, "INBOX")
    await env.boxes.store_flags(inbox.id, [uids[0]], FlagMode.ADD, ["\\Seen"])
    await env.boxes.store_flags(inbox.id, [uids[1]], FlagMode.ADD, ["\\Deleted"])
    await env.boxes.expunge(inbox.id, USER, [uids[1]])
    await env.append_local("INBOX", mail(10, "l"))
    await env.append_local("Drafts", mail(11, "draft"), ("\\Draft",))
    await env.boxes.copy(inbox.id, [uids[2]], USER, "Archive", quota_bytes=BIG, move=True)
    # Central: flag one, expunge one, a new arrival, a move to Archive.
    central = await env.central.contents("INBOX")
    by_hash = {h: uid for uid, (h, _) in central.items()}
    await env.central.store("INBOX", by_hash[hashlib.sha256(mail(0, "c")).hexdigest()],
                            "+FLAGS", "\\Flagged")  # fmt: skip
    await env.central.expunge("INBOX", by_hash[hashlib.sha256(mail(1, "c")).hexdigest()])
    await env.central.move("INBOX", by_hash[hashlib.sha256(mail(2, "c")).hexdigest()], "Archive")
    await env.central.append("INBOX", mail(20, "c"))
    # Both sides change the same message's flags: each side's change survives.
    both = by_hash[hashlib.sha256(mail(3, "l")).hexdigest()]
    await env.central.store("INBOX", both, "+FLAGS", "$Work")
    await env.boxes.store_flags(inbox.id, [uids[3]], FlagMode.ADD, ["\\Answered"])

    report = await env.sync(use_condstore=condstore)
    assert report.ok, report.errors
    await env.assert_converged("INBOX", "Archive", "Drafts")
    local = {h: f for h, f in (await env.local("INBOX")).values()}
    assert local[hashlib.sha256(mail(3, "l")).hexdigest()] == {"$Work", "\\Answered"}
    assert local[hashlib.sha256(mail(0, "c")).hexdigest()] == {"\\Flagged"}
    assert hashlib.sha256(mail(1, "l")).hexdigest() not in local
    assert hashlib.sha256(mail(1, "c")).hexdigest() not in local
    archive = {h for h, _ in (await env.local("Archive")).values()}
    assert {hashlib.sha256(m).hexdigest() for m in (mail(2, "l"), mail(2, "c"))} <= archive
    assert (await env.sync(use_condstore=condstore)).appended == 0


async def test_first_sync_resumes_where_it_stopped(env: Env) -> None:
    for n in range(30):
        await env.central.append("INBOX", mail(n, "c"))
    replicator = env.replicator(batch_messages=4)
    appended = 0
    real_append = replicator.mailboxes.append
    with trio.CancelScope() as cut:

        async def append(*args: Any, **kwargs: Any) -> Any:
            nonlocal appended
            appended += 1
            if appended == 11:  # the link "dies" in the middle of the third batch
                cut.cancel()
                await trio.lowlevel.checkpoint()
            return await real_append(*args, **kwargs)

        replicator.mailboxes.append = append  # type: ignore[method-assign]
        async with replicator.opened():
            await replicator.sync_once()
    assert cut.cancelled_caught
    kept = len(await env.local("INBOX"))
    assert 8 <= kept <= 10

    report = await env.sync(batch_messages=4)
    assert report.ok, report.errors
    # Resumed: the committed batches were not fetched again, the cut one was matched.
    assert report.fetched + report.matched == 30 - 8
    await env.assert_converged("INBOX")
    assert len(await env.local("INBOX")) == 30


async def test_crash_between_append_and_map_commit_does_not_duplicate(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        await env.append_local("INBOX", mail(n, "l"))
    real_commit = MailboxSyncState.commit

    class Crash(Exception):
        pass

    async def commit(self: MailboxSyncState, pair: Any, **kwargs: Any) -> None:
        if kwargs.get("add") and pair.local_name == "INBOX":
            raise Crash("power cut")  # the APPENDs happened; their map rows are lost
        await real_commit(self, pair, **kwargs)

    monkeypatch.setattr(MailboxSyncState, "commit", commit)
    report = await env.sync()
    assert not report.ok
    assert len(await env.central.contents("INBOX")) == 3
    monkeypatch.setattr(MailboxSyncState, "commit", real_commit)

    report = await env.sync()
    assert report.ok, report.errors
    assert (report.appended, report.fetched, report.matched) == (0, 0, 3)
    await env.assert_converged("INBOX")
    assert len(await env.central.contents("INBOX")) == 3


async def test_centre_unreachable_mid_round_then_converges(env: Env) -> None:
    for n in range(10):
        await env.central.append("INBOX", mail(n, "c", size=2000))
    replicator = env.replicator(batch_messages=3, timeout=10)
    real_append = replicator.mailboxes.append
    count = 0

    async def append(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == 4:
            assert env.dovecot is not None
            await trio.to_thread.run_sync(env.dovecot.stop)
        return await real_append(*args, **kwargs)

    replicator.mailboxes.append = append  # type: ignore[method-assign]
    async with replicator.opened():
        report = await replicator.sync_once()
        assert not report.ok
        assert read_sync_status(env.data)["mailbox"]["last_error"]
        # While the centre is down: rounds fail fast, local work goes on.
        await env.append_local("INBOX", mail(99, "l"))
        assert not (await replicator.sync_once()).ok
        assert env.dovecot is not None
        await trio.to_thread.run_sync(env.dovecot.start)
        # The peer makes a new self-signed certificate on each start.
        assert env.dovecot.cert_path is not None
        shutil.copy(env.dovecot.cert_path, env.data / "keys" / "central-ca.pem")
        report = await replicator.sync_once()
    assert report.ok, report.errors
    assert read_sync_status(env.data)["mailbox"]["last_error"] is None
    await env.assert_converged("INBOX")
    assert len(await env.local("INBOX")) == 11


async def eventually(read: Any, count: int) -> None:
    """Poll *read* until it returns *count* items (bounded: 30 s of real time)."""
    with trio.fail_after(30):
        for _ in range(3000):
            if len(await read()) >= count:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"never reached {count}")


async def test_wake_runs_a_round_and_service_reports(env: Env) -> None:
    await env.central.append("INBOX", mail(1, "c"))
    clock = ManualClock()
    replicator = MailboxReplicator(
        env.status, clock, config=env.box.config, directory=env.box.directory,
        mailstore=env.box.mailstore, interval=3600,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(replicator.serve)
        await eventually(lambda: env.local("INBOX"), 1)
        await env.append_local("INBOX", mail(2, "l"))
        replicator.wake()  # the clock never moves: only wake() can start this round
        await eventually(lambda: env.central.contents("INBOX"), 2)
        nursery.cancel_scope.cancel()
    await env.assert_converged("INBOX")


async def test_not_enrolled_is_a_reported_failure(env: Env) -> None:
    (env.data / "keys" / "central.json").unlink()
    report = await env.sync()
    assert not report.ok
    assert "not enrolled" in read_sync_status(env.data)["mailbox"]["last_error"]


async def test_wrong_certificate_is_refused(env: Env, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    cert, _ = self_signed_cert(other, "imap.peer.test")
    shutil.copy(cert, env.data / "keys" / "central-ca.pem")
    report = await env.sync()
    assert not report.ok
    assert "TLS handshake" in report.errors[0]
    assert env.box.mailstore is not None


# -- an edgebox as the central IMAP server -----------------------------------------------


async def test_against_an_edgebox_as_central_server(tmp_path: Path) -> None:
    """The hub role's mail server: a service account with the delegation grant acts for
    the user; STARTTLS (imap://) this time."""
    central_data = tmp_path / "central"
    await init_box(central_data, DOMAIN)
    async with open_box(load_config(central_data)) as central_box:
        await add_user(central_box, USER, PASSWORD, name_th="สมชาย")
        await add_user(central_box, f"svc@{DOMAIN}", "svc-pw-1234", name_th="svc", service=True)
        inbox = Mailboxes(central_box.mailstore)
        for n in range(3):
            await inbox.append(USER, "INBOX", mail(n, "hub"), quota_bytes=BIG)
    running = await trio.to_thread.run_sync(start_box, central_data)
    try:
        data = tmp_path / "box"
        await init_box(data, DOMAIN)
        shutil.copy(running.ca, data / "keys" / "central-ca.pem")
        save_credentials(data / "keys", CentralCredentials(f"svc@{DOMAIN}", "svc-pw-1234"))
        config = load_config(
            data, file_values={"central_imap": f"imap://127.0.0.1:{running.port('imap')}"}
        )
        tls = ssl.create_default_context(cafile=str(running.ca))
        async with open_box(config) as box:
            await add_user(box, USER, "local-pw", name_th="สมชาย")
            env = Env(box, Central(running.port("imaps"), tls), None,
                      SyncStatus(data, ManualClock()), data)  # fmt: skip
            await env.append_local("INBOX", mail(1, "box"))
            await env.append_local("Sent", mail(2, "box"), ("\\Seen",))
            report = await env.sync()
            assert report.ok, report.errors
            assert (report.fetched, report.appended) == (3, 2)
            await env.assert_converged("INBOX", "Sent")
            # Incremental, with QRESYNC from our own server.
            central = await env.central.contents("INBOX")
            first = min(central)
            await env.central.store("INBOX", first, "+FLAGS", "\\Flagged")
            await env.central.expunge("INBOX", max(central))
            await env.append_local("INBOX", mail(3, "box"))
            report = await env.sync()
            assert report.ok, report.errors
            await env.assert_converged("INBOX", "Sent")
            assert len(await env.local("INBOX")) == 4
            # Our own RENAME keeps UIDVALIDITY too, so a renamed folder is followed.
            await env.boxes.create(USER, "Projects")
            await env.append_local("Projects", mail(4, "box"))
            assert (await env.sync()).ok
            await env.boxes.rename(USER, "Projects", "Done")
            report = await env.sync()
            assert (report.folders_renamed, report.appended, report.fetched) == (1, 0, 0)
            names = await env.central.mailboxes()
            assert "Done" in names
            assert "Projects" not in names
            await env.assert_converged("Done")
    finally:
        await trio.to_thread.run_sync(running.stop)


# -- folders renamed and deleted -------------------------------------------------------


async def central_call(env: Env, command: str, *args: str) -> None:
    def fn(imap: imaplib.IMAP4) -> None:
        typ, data = getattr(imap, command)(*(f'"{arg}"' for arg in args))  # imaplib won't quote
        assert typ == "OK", data

    await env.central.run(fn)


async def test_a_folder_renamed_on_the_box_is_renamed_at_the_centre(env: Env) -> None:
    await env.central.append("Projects", mail(1, "p"))
    await env.central.append("Projects.2026", mail(2, "p"))
    assert (await env.sync()).ok
    await env.boxes.rename(USER, "Projects", "Archive/Old projects")
    await env.append_local("Archive/Old projects", mail(3, "p"))

    report = await env.sync()
    assert report.ok, report.errors
    assert report.folders_renamed >= 1
    assert report.fetched == 0  # followed, not copied afresh
    names = await env.central.mailboxes()
    assert {"Archive.Old projects", "Archive.Old projects.2026"} <= names
    assert not {"Projects", "Projects.2026"} & names
    await env.assert_converged("Archive/Old projects", "Archive/Old projects/2026")
    assert len(await env.local("Archive/Old projects")) == 2
    again = await env.sync()
    assert (again.folders_renamed, again.fetched, again.appended) == (0, 0, 0)


async def test_a_folder_renamed_at_the_centre_is_renamed_on_the_box(env: Env) -> None:
    await env.boxes.create(USER, "Reports")
    await env.append_local("Reports", mail(1, "r"), ("\\Seen",))
    assert (await env.sync()).ok
    await central_call(env, "rename", "Reports", "Reports 2569")

    report = await env.sync()
    assert report.ok, report.errors
    assert report.folders_renamed == 1
    assert (report.fetched, report.appended) == (0, 0)
    heads = {m.name for m in await env.boxes.heads(USER)}
    assert "Reports 2569" in heads
    assert "Reports" not in heads
    await env.assert_converged("Reports 2569")


async def test_a_folder_deleted_on_either_side_is_deleted_on_the_other(env: Env) -> None:
    await env.boxes.create(USER, "Old")
    await env.append_local("Old", mail(1, "o"))
    await env.central.append("Gone", mail(2, "g"))
    assert (await env.sync()).ok
    await env.boxes.delete(USER, "Old")
    await central_call(env, "delete", "Gone")

    report = await env.sync()
    assert report.ok, report.errors
    assert report.folders_deleted == 2
    assert not {"Old", "Gone"} & await env.central.mailboxes()
    assert not {"Old", "Gone"} & {m.name for m in await env.boxes.heads(USER)}
    again = await env.sync()
    assert (again.folders_deleted, again.fetched, again.appended) == (0, 0, 0)


async def test_a_deleted_folder_with_mail_the_other_side_has_not_seen_comes_back(
    env: Env,
) -> None:
    """Deleting a folder must not take mail nobody on the deleting side ever saw."""
    await env.boxes.create(USER, "Cases")
    await env.append_local("Cases", mail(1, "c"))
    await env.central.append("Notes", mail(2, "n"))
    assert (await env.sync()).ok
    # Deleted on the box while new mail reached the central copy ...
    await env.boxes.delete(USER, "Cases")
    await env.central.append("Cases", mail(3, "c"))
    # ... and deleted at the centre while new mail was filed on the box.
    await central_call(env, "delete", "Notes")
    await env.append_local("Notes", mail(4, "n"))

    report = await env.sync()
    assert report.ok, report.errors
    assert report.folders_deleted == 0
    await env.assert_converged("Cases", "Notes")
    assert len(await env.local("Cases")) == 2
    assert len(await env.local("Notes")) == 2
