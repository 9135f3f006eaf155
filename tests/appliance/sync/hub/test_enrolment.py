"""One-time enrolment tokens and the enrolled-box register of the hub."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from appliance.sync.clock import ManualClock
from appliance.sync.hub.enrolment import (
    Enrolment,
    EnrolmentRefused,
    EnrolmentToken,
    TokenFormatError,
    open_hub_database,
)
from appliance.sync.transport import Peer

FP = bytes(range(32))


async def test_token_redeems_once(tmp_path: Path, hub_store: str) -> None:
    async with open_hub_database(tmp_path, hub_store) as db:
        enrolment = Enrolment(db, ManualClock())
        token = await enrolment.issue_token("moe.go.th", FP)
        assert await enrolment.check_token(token) == "moe.go.th"
        assert await enrolment.redeem(token, "box1", 0xABC, "sync-box1@moe.go.th") == "moe.go.th"
        assert await enrolment.peer("box1", 0xABC) == Peer("box1", "moe.go.th")
        with pytest.raises(EnrolmentRefused) as refused:
            await enrolment.redeem(token, "box2", 0xDEF, "sync-box2@moe.go.th")
        assert refused.value.code == "token_used"
        # The refused attempt changed nothing.
        assert await enrolment.peer("box2", 0xDEF) is None
        assert [b.box_id for b in await enrolment.boxes()] == ["box1"]


async def test_token_expires_by_the_clock(tmp_path: Path, hub_store: str) -> None:
    clock = ManualClock()
    async with open_hub_database(tmp_path, hub_store) as db:
        enrolment = Enrolment(db, clock)
        token = await enrolment.issue_token("moe.go.th", FP, ttl=24 * 3600)
        await clock.advance(24 * 3600 - 1)
        assert await enrolment.check_token(token) == "moe.go.th"
        await clock.advance(1)
        with pytest.raises(EnrolmentRefused) as refused:
            await enrolment.redeem(token, "box1", 1, "s@moe.go.th")
        assert refused.value.code == "token_expired"


async def test_unknown_token_is_refused(tmp_path: Path, hub_store: str) -> None:
    async with open_hub_database(tmp_path, hub_store) as db:
        enrolment = Enrolment(db, ManualClock())
        with pytest.raises(EnrolmentRefused) as refused:
            await enrolment.check_token(EnrolmentToken(bytes(18), FP))
        assert refused.value.code == "token_unknown"


async def test_only_a_hash_of_the_secret_is_stored(tmp_path: Path) -> None:
    async with open_hub_database(tmp_path) as db:
        token = await Enrolment(db, ManualClock()).issue_token("moe.go.th", FP)
    raw = (tmp_path / "db" / "hub.sqlite").read_bytes()
    raw += (
        (tmp_path / "db" / "hub.sqlite-wal").read_bytes()
        if (tmp_path / "db" / "hub.sqlite-wal").exists()
        else b""
    )
    assert token.secret not in raw
    conn = sqlite3.connect(tmp_path / "db" / "hub.sqlite")
    assert conn.execute("SELECT token_hash FROM tokens").fetchone()[0] == token.hash
    conn.close()


async def test_reenrolment_replaces_the_serial_and_revocation_stops_the_box(
    tmp_path: Path, hub_store: str
) -> None:
    async with open_hub_database(tmp_path, hub_store) as db:
        enrolment = Enrolment(db, ManualClock())
        for serial in (1, 2):
            token = await enrolment.issue_token("moe.go.th", FP)
            await enrolment.redeem(token, "box1", serial, "s@moe.go.th")
        assert await enrolment.peer("box1", 1) is None
        assert await enrolment.peer("box1", 2) == Peer("box1", "moe.go.th")
        assert await enrolment.revoke("box1")
        assert not await enrolment.revoke("box1")
        assert await enrolment.peer("box1", 2) is None


async def test_absurd_lifetimes_are_refused(tmp_path: Path, hub_store: str) -> None:
    async with open_hub_database(tmp_path, hub_store) as db:
        enrolment = Enrolment(db, ManualClock())
        for ttl in (0, -1, 365 * 24 * 3600):
            with pytest.raises(ValueError, match="token lives"):
                await enrolment.issue_token("moe.go.th", FP, ttl=ttl)


def test_token_prints_and_parses_back_without_showing_its_secret() -> None:
    token = EnrolmentToken(b"s" * 18, FP)
    text = str(token)
    assert text.startswith("eb1.")
    assert EnrolmentToken.parse(f"  {text}\n") == token
    assert "c3Nz" not in repr(token)  # base64 of "sss"


@given(st.text(max_size=200))
def test_anything_else_is_not_a_token(text: str) -> None:
    try:
        token = EnrolmentToken.parse(text)
    except TokenFormatError:
        return
    assert str(token) == text.strip()


async def test_any_worker_sees_tokens_and_revocations_of_the_others(pg_url: str) -> None:
    """Two hub workers on one PostgreSQL: what one enrols or revokes, the other knows."""
    clock = ManualClock()
    async with (
        open_hub_database(Path("unused"), pg_url) as one,
        open_hub_database(Path("unused"), pg_url) as two,
    ):
        first, second = Enrolment(one, clock), Enrolment(two, clock)
        token = await first.issue_token("moe.go.th", FP)
        assert await second.check_token(token) == "moe.go.th"
        await second.redeem(token, "box1", 7, "sync-box1@moe.go.th")
        assert await first.peer("box1", 7) == Peer("box1", "moe.go.th")
        with pytest.raises(EnrolmentRefused) as refused:
            await first.redeem(token, "box2", 8, "sync-box2@moe.go.th")
        assert refused.value.code == "token_used"
        assert await first.revoke("box1")
        assert await second.peer("box1", 7) is None


async def test_two_workers_racing_with_one_token_enrol_one_box(pg_url: str) -> None:
    """The redeem transaction holds: of two workers redeeming one token, one wins."""
    clock = ManualClock()
    async with (
        open_hub_database(Path("unused"), pg_url) as one,
        open_hub_database(Path("unused"), pg_url) as two,
    ):
        workers = [Enrolment(one, clock), Enrolment(two, clock)]

        async def redeem(
            index: int, token: EnrolmentToken, box_id: str, outcomes: list[str]
        ) -> None:
            try:
                await workers[index].redeem(token, box_id, index + 1, "s@x")
                outcomes.append("enrolled")
            except EnrolmentRefused as exc:
                outcomes.append(exc.code)

        for round_ in range(5):
            token = await workers[0].issue_token("moe.go.th", FP)
            outcomes: list[str] = []
            async with trio.open_nursery() as nursery:
                for index in (0, 1):
                    nursery.start_soon(redeem, index, token, f"box{round_}-{index}", outcomes)
            assert sorted(outcomes) == ["enrolled", "token_used"]
        assert len(await workers[1].boxes()) == 5
