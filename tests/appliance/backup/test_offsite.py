"""Offsite backups to the hub, in-process: the box's upload against the hub's handlers.

`DirectHub` is a `HubCall` straight into `backup_hub_routes` with the JSON round trip of
the wire, a peer named as the TLS layer would name it, and faults: a cut after so many
puts (the link stays down), or an answer lost after the hub wrote.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from appliance.backup.crypto import BackupDamaged, ensure_backup_key, key_id, key_to_words
from appliance.backup.escrow import EscrowError, ensure_escrow_key, unwrap_key, wrap_key
from appliance.backup.health import check_offsite_backup
from appliance.backup.hubstore import BLOB_IDS, box_folder, read_escrow, usage
from appliance.backup.offsite.download import fetch_manifest, fetch_set
from appliance.backup.offsite.protocol import PIECE, PUT_PATH
from appliance.backup.offsite.routes import backup_hub_routes
from appliance.backup.offsite.upload import create_offsite_backup
from appliance.backup.restore import RestoreError, restore_backup
from appliance.backup.service import read_state
from appliance.backup.snapshot import complete_backups
from appliance.backup.throttle import TokenBucket
from appliance.box import configured, init_box, open_box
from appliance.health import Level
from appliance.identity import read_identity
from appliance.security.keys import load_data_key
from appliance.store.blobs import BlobStore
from appliance.sync.hub.errors import HubError
from appliance.sync.share import LinkShare, SharedHubCall
from appliance.sync.transport import JSON, HubRefused, HubUnavailable, Peer
from tests.appliance.backup.test_backup import USERS, _make_data, contents, deliver


class DirectHub:
    """`HubCall` into the hub's backup handlers for one box, with faults on demand."""

    def __init__(self, hub_data: Path, box_id: str, keep: int = 14, quota: int = 0) -> None:
        self.routes = {r.path: r.handler for r in backup_hub_routes(hub_data, keep, quota)}
        self.peer = Peer(box_id, "backup.go.th")
        self.puts: list[tuple[str, int]] = []
        self.put_requests = 0
        #: The link goes down after the n-th put at this offset was answered.
        self.cut_after_offset: int | None = None
        self.cut_after_count = 1
        #: Puts whose answer is lost after the hub wrote (once each).
        self.lose_answers = 0
        self.down = False

    async def __call__(self, path: str, body: JSON) -> JSON:
        if self.down:
            raise HubUnavailable("cut")
        wire = json.loads(json.dumps(body))
        if path == PUT_PATH:
            self.put_requests += 1
            # A batched put's pieces (small objects whole) count one by one.
            self.puts += [(p["object"], p["offset"]) for p in wire.get("pieces") or [wire]]
        try:
            answer = await self.routes[path](self.peer, wire)
        except HubError as exc:
            raise HubRefused(exc.status, exc.code, exc.message) from None
        cut_at = self.cut_after_offset
        if path == PUT_PATH and cut_at is not None and wire.get("offset") == cut_at:
            self.cut_after_count -= 1
            if not self.cut_after_count:
                self.cut_after_offset = None
                self.down = True
        if path == PUT_PATH and self.lose_answers:
            self.lose_answers -= 1
            raise HubUnavailable("answer lost")
        return json.loads(json.dumps(answer))


@pytest.fixture
async def data(tmp_path: Path) -> Path:
    return await _make_data(tmp_path)


def _box_id(data: Path) -> str:
    identity = read_identity(data)
    assert identity is not None
    return identity.box_id


def _hub(tmp_path: Path, data: Path, keep: int = 14) -> DirectHub:
    hub_data = tmp_path / "hub"
    (hub_data / "keys").mkdir(parents=True, exist_ok=True)
    # The hub's escrow key is sealed under its provisioning secret, as on a real hub.
    from appliance.security.keys import ensure_provisioning_secret

    ensure_provisioning_secret(hub_data / "keys")
    return DirectHub(hub_data, _box_id(data), keep)


def _big_blobs(data: Path, count: int, size: int) -> list[str]:
    store = BlobStore(data / "blobs", load_data_key(data / "keys"))
    return [store.put(secrets.token_bytes(size)) for _ in range(count)]


async def test_an_offsite_backup_restores_every_message_onto_a_blank_box(
    tmp_path: Path, data: Path
) -> None:
    hub = _hub(tmp_path, data)
    report = await create_offsite_backup(data, hub, rate=1e9)
    assert report.blobs_sent == report.blobs > 0
    # The six small messages went in one request, the files each in their own.
    assert hub.put_requests == 1 + report.files_sent
    folder = box_folder(tmp_path / "hub", _box_id(data))
    (held,) = complete_backups(folder)
    assert held.name == report.name
    # The hub's folder is an ordinary backup target: the hub never had the key.
    key = ensure_backup_key(data / "keys")
    assert (held / "key.id").read_text().strip() == key_id(key)
    fetched = await fetch_set(hub, tmp_path / "download", box=_box_id(data))
    restored = tmp_path / "restored"
    await trio.to_thread.run_sync(restore_backup, restored, fetched, key)
    assert await contents(restored) == await contents(data)
    state = read_state(data)
    assert state["offsite_last_name"] == report.name
    assert state["offsite_pending"] is None


async def test_batches_of_attachments_stay_within_a_piece(tmp_path: Path, data: Path) -> None:
    # Two of these and the six small notes stay under the old flush mark (3/4 of a
    # piece), and a third took the batch past a piece: the hub refused it (413).
    _big_blobs(data, 6, 370 * 1024)
    hub = _hub(tmp_path, data)
    report = await create_offsite_backup(data, hub, rate=1e9)
    assert report.blobs_sent == report.blobs
    assert hub.put_requests < report.blobs + report.files_sent


async def test_the_second_backup_sends_only_new_blobs_and_the_hub_keeps_both_sets(
    tmp_path: Path, data: Path
) -> None:
    hub = _hub(tmp_path, data)
    first = await create_offsite_backup(data, hub, rate=1e9, now=1_800_000_000)
    await deliver(data, 3, "second")
    hub.puts.clear()
    second = await create_offsite_backup(data, hub, rate=1e9, now=1_800_086_400)
    assert second.blobs_sent == 3
    assert second.blobs == first.blobs + 3
    assert {o for o, _ in hub.puts if o.startswith("blob/")} == {
        f"blob/{b}" for b in _blob_ids(data)
    } - {f"blob/{b}" for b in _ids_of(tmp_path, data, first.name)}
    assert len(complete_backups(box_folder(tmp_path / "hub", _box_id(data)))) == 2
    # A box that lost its record of what it sent (restored from a backup) sends nothing
    # the hub holds: it vouches for those blobs from its own copies.
    (data / "backup" / "offsite-index.json").unlink()
    hub.puts.clear()
    third = await create_offsite_backup(data, hub, rate=1e9, now=1_800_172_800)
    assert third.blobs_sent == 0
    assert not [o for o, _ in hub.puts if o.startswith("blob/")]
    key = ensure_backup_key(data / "keys")
    manifest = await fetch_manifest(hub, third.name, key)
    assert len(manifest["blobs"]) == third.blobs


def _blob_ids(data: Path) -> set[str]:
    return {p.name for p in (data / "blobs").glob("*/*/*") if p.is_file()}


def _ids_of(tmp_path: Path, data: Path, name: str) -> set[str]:
    folder = box_folder(tmp_path / "hub", _box_id(data))
    return set((folder / name / BLOB_IDS).read_text().split())


async def test_a_cut_mid_upload_resumes_without_resending_finished_blobs(
    tmp_path: Path, data: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Blobs of 2.5 pieces each: a cut can fall inside one.
    _big_blobs(data, 4, PIECE * 5 // 2)
    hub = _hub(tmp_path, data)
    # Down after the second piece of the second big blob: the first is whole by then.
    hub.cut_after_offset, hub.cut_after_count = PIECE, 2
    with pytest.raises(HubUnavailable):
        await create_offsite_backup(data, hub, rate=1e9)
    pending = read_state(data)["offsite_pending"]
    assert pending
    folder = box_folder(tmp_path / "hub", _box_id(data))
    finished = {o for o, _ in hub.puts if (folder / "blobs" / o[5:7] / o[5:]).exists()}
    cut_object, cut_offset = hub.puts[-1]
    assert cut_offset == PIECE
    assert cut_object not in finished
    # The link comes back; a new run resumes the same set.
    hub.down = False
    first_puts = len(hub.puts)
    report = await create_offsite_backup(data, hub, rate=1e9)
    assert report.name == pending
    resumed = hub.puts[first_puts:]
    assert finished, "no blob was finished before the cut"
    assert not {o for o, _ in resumed} & finished, "a finished blob was sent again"
    # The blob cut in the middle goes on from the hub's offset, not from 0.
    assert (cut_object, 0) not in resumed
    assert resumed[[o for o, _ in resumed].index(cut_object)][1] == 2 * PIECE
    restored = tmp_path / "restored"
    fetched = await fetch_set(hub, tmp_path / "download", box=_box_id(data))
    await trio.to_thread.run_sync(
        restore_backup, restored, fetched, ensure_backup_key(data / "keys")
    )
    assert _blob_ids(restored) == _blob_ids(data)


async def test_a_lost_answer_is_not_written_twice(
    tmp_path: Path, data: Path, autojump_clock: trio.testing.MockClock
) -> None:
    _big_blobs(data, 1, PIECE * 3)
    hub = _hub(tmp_path, data)
    hub.lose_answers = 2
    await create_offsite_backup(data, hub, rate=1e9)
    fetched = await fetch_set(hub, tmp_path / "download", box=_box_id(data))
    restored = tmp_path / "restored"
    await trio.to_thread.run_sync(
        restore_backup, restored, fetched, ensure_backup_key(data / "keys")
    )
    assert _blob_ids(restored) == _blob_ids(data)


async def test_the_hub_refuses_another_boxs_backup_set(tmp_path: Path, data: Path) -> None:
    hub = _hub(tmp_path, data)
    report = await create_offsite_backup(data, hub, rate=1e9)
    intruder = DirectHub(tmp_path / "hub", "other-box")
    for path, body in [
        ("/sync/v1/backup/sets", {"box": _box_id(data)}),
        (
            "/sync/v1/backup/get",
            {"box": _box_id(data), "set": report.name, "object": "manifest", "offset": 0},
        ),
        (
            "/sync/v1/backup/begin",
            {"box": _box_id(data), "set": report.name, "key_id": "00" * 8},
        ),
    ]:
        with pytest.raises(HubRefused) as refused:
            await intruder(path, body)
        assert refused.value.status == 403
        assert refused.value.code == "wrong_box"
    # Without naming the box, the other box sees only its own (empty) folder.
    assert (await intruder("/sync/v1/backup/sets", {}))["sets"] == []
    with pytest.raises(HubRefused) as refused:
        await intruder("/sync/v1/backup/get",
                       {"set": report.name, "object": "manifest", "offset": 0})  # fmt: skip
    assert refused.value.status == 404
    # Nor can a name climb out of the box's folder.
    for bad in ("data/../../x", "blob/../../etc", "data", "/etc/passwd", "manifest/x"):
        with pytest.raises(HubRefused) as refused:
            await hub("/sync/v1/backup/get", {"set": report.name, "object": bad, "offset": 0})
        assert refused.value.status == 400


async def test_a_wrong_key_or_a_damaged_set_fails_naming_the_part(
    tmp_path: Path, data: Path
) -> None:
    hub = _hub(tmp_path, data)
    report = await create_offsite_backup(data, hub, rate=1e9)
    fetched = await fetch_set(hub, tmp_path / "download", box=_box_id(data))
    with pytest.raises(RestoreError, match="wrong key"):
        restore_backup(tmp_path / "wrong", fetched, secrets.token_bytes(32))
    assert not (tmp_path / "wrong").exists()
    # Damage one blob at the hub: the restore names it, and writes nothing.
    folder = box_folder(tmp_path / "hub", _box_id(data))
    victim_id = sorted(_ids_of(tmp_path, data, report.name))[0]
    victim = folder / "blobs" / victim_id[:2] / victim_id
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    victim.write_bytes(bytes(damaged))
    again = await fetch_set(hub, tmp_path / "download2", box=_box_id(data))
    with pytest.raises(BackupDamaged, match=f"blob/{victim_id}: chunk 0 failed authentication"):
        restore_backup(tmp_path / "restored", again, ensure_backup_key(data / "keys"))
    assert not (tmp_path / "restored").exists()


async def test_the_first_backup_escrows_the_key_which_only_the_hub_unwraps(
    tmp_path: Path, data: Path
) -> None:
    hub = _hub(tmp_path, data)
    first = await create_offsite_backup(data, hub, rate=1e9, now=1_800_000_000)
    assert first.escrowed
    second = await create_offsite_backup(data, hub, rate=1e9, now=1_800_000_000)
    assert not second.escrowed  # the hub holds it already
    # The same second: the hub refuses the taken name and the box picks another.
    assert second.name.startswith(first.name + "-")
    assert len(complete_backups(box_folder(tmp_path / "hub", _box_id(data)))) == 2
    key = ensure_backup_key(data / "keys")
    (held,) = read_escrow(box_folder(tmp_path / "hub", _box_id(data)))
    assert held["key_id"] == key_id(key)
    assert key.hex() not in json.dumps(held)
    hub_keys = tmp_path / "hub" / "keys"
    recovered = unwrap_key(hub_keys, _box_id(data), key_id(key), held["wrapped"])
    assert key_to_words(recovered) == key_to_words(key)
    # Filed under another box, or with another key id, it does not unwrap.
    with pytest.raises(EscrowError):
        unwrap_key(hub_keys, "other-box", key_id(key), held["wrapped"])
    with pytest.raises(EscrowError):
        unwrap_key(hub_keys, _box_id(data), "00" * 8, held["wrapped"])
    # Wrapped to another hub's escrow key: this hub cannot unwrap it.
    other = tmp_path / "other-hub" / "keys"
    other.mkdir(parents=True)
    from appliance.security.keys import ensure_provisioning_secret

    ensure_provisioning_secret(other)
    foreign = wrap_key(ensure_escrow_key(other), _box_id(data), key)
    with pytest.raises(EscrowError):
        unwrap_key(hub_keys, _box_id(data), key_id(key), foreign)


async def test_the_hub_keeps_the_newest_sets_and_sweeps_blobs_only_old_sets_used(
    tmp_path: Path, data: Path
) -> None:
    hub = _hub(tmp_path, data, keep=2)
    store = BlobStore(data / "blobs", load_data_key(data / "keys"))
    doomed = store.put(b"a message deleted after the first backup")
    first = await create_offsite_backup(data, hub, rate=1e9, now=1_800_000_000)
    store.delete(doomed)
    await create_offsite_backup(data, hub, rate=1e9, now=1_800_086_400)
    folder = box_folder(tmp_path / "hub", _box_id(data))
    assert (folder / "blobs" / doomed[:2] / doomed).exists()  # the first set needs it
    third = await create_offsite_backup(data, hub, rate=1e9, now=1_800_172_800)
    assert third.removed == (first.name,)
    assert [p.name for p in complete_backups(folder)][-1] == third.name
    assert len(complete_backups(folder)) == 2
    assert not (folder / "blobs" / doomed[:2] / doomed).exists()
    assert _ids_of(tmp_path, data, third.name) <= {p.name for p in folder.glob("blobs/*/*")}


async def test_the_hub_keeps_a_box_within_its_quota_but_never_drops_the_last_good_set(
    tmp_path: Path, data: Path
) -> None:
    first = await create_offsite_backup(data, _hub(tmp_path, data), rate=1e9, now=1_800_000_000)
    folder = box_folder(tmp_path / "hub", _box_id(data))
    quota = usage(folder) + 256 * 1024
    hub = DirectHub(tmp_path / "hub", _box_id(data), quota=quota)
    # A new attachment takes the box past its quota: the oldest set goes at the commit.
    _big_blobs(data, 1, 512 * 1024)
    second = await create_offsite_backup(data, hub, rate=1e9, now=1_800_086_400)
    assert second.removed == (first.name,)
    assert [p.name for p in complete_backups(folder)] == [second.name]
    # Still over it with only the last good set: that set stays, the next is refused.
    assert usage(folder) > quota
    with pytest.raises(HubRefused) as refused:
        await create_offsite_backup(data, hub, rate=1e9, now=1_800_172_800)
    assert (refused.value.status, refused.value.code) == (409, "over_quota")
    assert "quota" in str(refused.value)
    assert [p.name for p in complete_backups(folder)] == [second.name]
    key = ensure_backup_key(data / "keys")
    fetched = await fetch_set(hub, tmp_path / "download", box=_box_id(data))
    await trio.to_thread.run_sync(restore_backup, tmp_path / "restored", fetched, key)
    assert await contents(tmp_path / "restored") == await contents(data)
    # With room again (the operator raised the quota), the box backs up as before.
    roomy = DirectHub(tmp_path / "hub", _box_id(data), quota=4 * quota)
    third = await create_offsite_backup(data, roomy, rate=1e9, now=1_800_259_200)
    assert [p.name for p in complete_backups(folder)] == [second.name, third.name]


def test_the_token_bucket_holds_the_average_and_allows_one_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=100.0)
    assert bucket.delay(0.0, 100) == 0.0  # the burst
    assert bucket.delay(0.0, 50) == pytest.approx(0.5)
    assert bucket.delay(0.5, 50) == pytest.approx(0.5)  # in debt: wait for the refill
    assert bucket.delay(10.0, 100) == 0.0  # a long quiet refills only up to the burst
    assert bucket.delay(10.0, 300) == pytest.approx(3.0)  # a piece above the burst waits
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1)


async def test_the_backup_keeps_to_its_rate(
    tmp_path: Path, data: Path, autojump_clock: trio.testing.MockClock
) -> None:
    _big_blobs(data, 3, PIECE)
    hub = _hub(tmp_path, data)
    report = await create_offsite_backup(data, hub, rate=PIECE / 4)  # 4 s a piece
    sent_after_burst = report.bytes_sent - PIECE
    assert report.seconds >= sent_after_burst / (PIECE / 4) * 0.99


async def test_the_backup_waits_while_a_replicator_uses_the_link(
    tmp_path: Path, data: Path, autojump_clock: trio.testing.MockClock
) -> None:
    hub = _hub(tmp_path, data)
    share = LinkShare()
    events: list[str] = []
    release = trio.Event()

    async def slow_chat(path: str, body: Any) -> Any:
        events.append("chat starts")
        await release.wait()
        events.append("chat done")
        return {}

    class Recording:
        async def __call__(self, path: str, body: JSON) -> JSON:
            if path == PUT_PATH:
                events.append("backup put")
            return await hub(path, body)

    async with trio.open_nursery() as nursery:
        replicator = SharedHubCall(slow_chat, share)
        nursery.start_soon(replicator, "/sync/v1/chat/push", {})
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(lambda: create_offsite_backup(data, Recording(), rate=1e9,
                                                         share=share, yield_limit=60))  # fmt: skip
        await trio.sleep(5)
        assert "backup put" not in events
        release.set()
    assert events.index("chat done") < events.index("backup put")
    # With a replicator that never stops, the backup still goes after the bound (and
    # in the same second as the last set: it is named anew).
    share.started()
    await deliver(data, 1, "later")
    report = await create_offsite_backup(data, hub, rate=1e9, share=share, yield_limit=5)
    assert report.blobs_sent == 1


def test_the_offsite_health_check_warns_after_two_days(tmp_path: Path) -> None:
    from appliance.backup.service import record

    now = 1_800_000_000.0
    assert check_offsite_backup(tmp_path, "", True, now).level is Level.WARN
    assert check_offsite_backup(tmp_path, "https://hub:7443", False, now).level is Level.WARN
    no_backup = check_offsite_backup(tmp_path, "https://hub:7443", True, now)
    assert no_backup.level is Level.WARN
    assert "no good offsite backup" in no_backup.en
    record(tmp_path, offsite_last_good=now - 3600, offsite_last_name="20270115T080000Z")
    fresh = check_offsite_backup(tmp_path, "https://hub:7443", True, now)
    assert fresh.level is Level.OK
    assert "20270115T080000Z" in fresh.en
    record(tmp_path, offsite_last_good=now - 2 * 86400 - 60, offsite_last_error="HubUnavailable")
    stale = check_offsite_backup(tmp_path, "https://hub:7443", True, now)
    assert stale.level is Level.WARN
    assert "2.0 days" in stale.en
    assert "HubUnavailable" in stale.en
    assert stale.th


async def test_the_hub_refuses_a_put_that_is_not_a_backup_file(tmp_path: Path, data: Path) -> None:
    hub = _hub(tmp_path, data)
    await hub("/sync/v1/backup/begin", {"set": "20270101T000000Z", "key_id": "00" * 8})
    with pytest.raises(HubRefused) as refused:
        await hub(PUT_PATH, {"set": "20270101T000000Z", "object": "blob/" + "ab" * 32,
                             "offset": 0, "data": base64.b64encode(b"plain text").decode(),
                             "final": True, "size": 10})  # fmt: skip
    assert refused.value.code == "not_backup_file"
    with pytest.raises(HubRefused) as refused:
        await hub("/sync/v1/backup/commit", {"set": "20270101T000000Z", "key_id": "00" * 8,
                                             "manifest": "", "blobs": ["ab" * 32],
                                             "files": []})  # fmt: skip
    assert refused.value.code == "incomplete"


async def test_configured_boxes_open(tmp_path: Path) -> None:
    # The config's new settings have working defaults.
    await init_box(tmp_path / "d", "x.go.th")
    async with open_box(configured(tmp_path / "d", {}, {})) as box:
        assert box.config.backup_offsite is True
        assert box.config.backup_offsite_rate > 0
        assert box.config.backup_hub_keep == 14


__all__ = ["USERS"]
