"""The replication property, against a real Dovecot: whatever users do on the box and at
the centre, in any order, and wherever a round is cut, the two sides end up the same.

Each example starts a fresh box and empties the user's central mailboxes; then a random
sequence of steps runs: appends, flag changes, expunges and moves on either side, and
replication rounds, some of them cut at a random moment (the round is abandoned where it
stands, as when the link dies or the box loses power: only what was committed stays).
At the end two uncut rounds run, and every mailbox must hold the same messages with the
same flags on both sides, each once.
"""

from __future__ import annotations

import imaplib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.box import add_user, init_box, open_box
from appliance.config import load_config
from appliance.mail.mailboxes import FlagMode
from appliance.sync.central import CentralCredentials, save_credentials
from appliance.sync.clock import ManualClock
from appliance.sync.status import SyncStatus
from tests.appliance.sync.test_mailbox import (
    BIG,
    DOMAIN,
    MASTER,
    PASSWORD,
    USER,
    Central,
    Env,
    mail,
)
from tests.peers.dovecot import DovecotServer

pytestmark = pytest.mark.slow

MAILBOXES = ("INBOX", "Work")
FLAGS = ("\\Seen", "\\Flagged", "$Work")

_WHERE = st.sampled_from(MAILBOXES)
_STEP = st.one_of(
    st.tuples(st.sampled_from(["local_append", "central_append"]), _WHERE),
    st.tuples(
        st.sampled_from(["local_flag", "central_flag"]),
        _WHERE,
        st.integers(0, 20),
        st.sampled_from(FLAGS),
        st.booleans(),
    ),
    st.tuples(st.sampled_from(["local_expunge", "central_expunge"]), _WHERE, st.integers(0, 20)),
    st.tuples(st.just("local_move"), st.integers(0, 20)),
    # A round, cut after this many milliseconds (None: it runs to its end).
    st.tuples(st.just("sync"), st.one_of(st.none(), st.integers(1, 250))),
)


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    with DovecotServer(
        tmp_path_factory.mktemp("dovecot"), users={USER: PASSWORD}, master_user=MASTER
    ) as dc:
        yield dc


def empty_central(imap: imaplib.IMAP4) -> None:
    for name in MAILBOXES[1:]:
        imap.delete(name)  # NO if it is not there: fine
    imap.create("Work")
    _, (count,) = imap.select("INBOX")
    if int(count or 0):
        imap.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
        imap.expunge()


async def nth_local(env: Env, mailbox: str, index: int) -> int | None:
    uids = sorted(await env.local(mailbox))
    return uids[index % len(uids)] if uids else None


async def nth_central(env: Env, mailbox: str, index: int) -> int | None:
    uids = sorted(await env.central.contents(mailbox))
    return uids[index % len(uids)] if uids else None


async def apply(env: Env, step: tuple[Any, ...], serial: int) -> None:
    action = step[0]
    if action == "local_append":
        await env.append_local(step[1], mail(serial, "box"))
    elif action == "central_append":
        await env.central.append(step[1], mail(serial, "centre"))
    elif action in ("local_flag", "central_flag"):
        _, mailbox, index, flag, on = step
        if action == "local_flag":
            uid = await nth_local(env, mailbox, index)
            if uid is not None:
                info = await env.boxes.get(USER, mailbox)
                mode = FlagMode.ADD if on else FlagMode.REMOVE
                await env.boxes.store_flags(info.id, [uid], mode, [flag])
        else:
            uid = await nth_central(env, mailbox, index)
            if uid is not None:
                await env.central.store(mailbox, uid, "+FLAGS" if on else "-FLAGS", flag)
    elif action == "local_expunge":
        uid = await nth_local(env, step[1], step[2])
        if uid is not None:
            info = await env.boxes.get(USER, step[1])
            await env.boxes.store_flags(info.id, [uid], FlagMode.ADD, ["\\Deleted"])
            await env.boxes.expunge(info.id, USER, [uid])
    elif action == "central_expunge":
        uid = await nth_central(env, step[1], step[2])
        if uid is not None:
            await env.central.expunge(step[1], uid)
    elif action == "local_move":
        uid = await nth_local(env, "INBOX", step[1])
        if uid is not None:
            info = await env.boxes.get(USER, "INBOX")
            await env.boxes.copy(info.id, [uid], USER, "Work", quota_bytes=BIG, move=True)
    else:
        cut_after_ms = step[1]
        with trio.move_on_after(cut_after_ms / 1000 if cut_after_ms else float("inf")):
            await env.sync()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(_STEP, max_size=14))
async def test_random_interleavings_and_cuts_converge(
    dovecot: DovecotServer, steps: list[tuple[Any, ...]]
) -> None:
    assert dovecot.imap_port is not None
    assert dovecot.cert_path is not None
    central = Central(dovecot.imap_port)
    await central.run(empty_central)
    # Each example runs in a trio run of its own, so it opens its own box.
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "box"
        await init_box(data, DOMAIN)
        shutil.copy(dovecot.cert_path, data / "keys" / "central-ca.pem")
        save_credentials(data / "keys", CentralCredentials(*MASTER))
        config = load_config(
            data, file_values={"central_imap": f"imaps://127.0.0.1:{dovecot.imaps_port}"}
        )
        async with open_box(config) as box:
            await add_user(box, USER, "local-pw", name_th="สมชาย")
            env = Env(box, central, dovecot, SyncStatus(data, ManualClock()), data)
            await env.boxes.create(USER, "Work")
            # Bounded: a round that hangs is a failure, not a stuck suite.
            with trio.fail_after(120):
                for serial, step in enumerate(steps):
                    await apply(env, step, serial)
                for _ in range(2):
                    report = await env.sync()
                    assert report.ok, report.errors
            await env.assert_converged(*MAILBOXES)
