# ruff: noqa: F811 - the env and dovecot fixtures come from test_mailbox
"""Mailbox replication on a slow link: large central mail listed first, bodies after.

Against a real Dovecot (master user, IMAPS) on 127.0.0.1, with the fixtures of
test_mailbox.py: the listing phase stores header, size, flags and Dovecot's
BODYSTRUCTURE; the body phase fills bodies in; a body a reader asks for is fetched at
once; a cut between the phases resumes with nothing lost or doubled.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from appliance.mail import mime
from appliance.mail.mailstore import BodyUnavailable
from appliance.sync.mailbox import WHOLE_BELOW, order_bodies
from appliance.sync.mailbox_state import MailboxSyncState

from .test_mailbox import USER, Env, dovecot, env, mail  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

BOUNDARY = "=_b"


def large(n: int, tag: str = "big") -> bytes:
    """A multipart mail with a text part, a forwarded message and an attachment."""
    attachment = "QUJD" * (WHOLE_BELOW // 3)
    return (
        f"From: a@x.go.th\r\nTo: {USER}\r\nSubject: {tag}{n}\r\n"
        f"Message-ID: <{tag}{n}@x.go.th>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n\r\n'
        f"--{BOUNDARY}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
        f"--{BOUNDARY}\r\nContent-Type: message/rfc822\r\n\r\n"
        "From: b@y.go.th\r\nSubject: inner\r\n\r\ninner text\r\n"
        f"--{BOUNDARY}\r\nContent-Type: application/pdf; name=r{n}.pdf\r\n"
        "Content-Disposition: attachment; filename=r{n}.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--{BOUNDARY}--\r\n"
    ).encode()


def test_order_bodies_puts_requested_first_then_keeps_newest_first() -> None:
    pending = [(5, 1, "INBOX", 50, 10), (4, 1, "INBOX", 40, 10), (3, 2, "Sent", 3, 10)]
    assert [p[0] for p in order_bodies(pending, {3})] == [3, 5, 4]
    assert [p[0] for p in order_bodies(pending, set())] == [5, 4, 3]


async def test_large_mail_listed_first_then_bodies(env: Env) -> None:
    await env.central.append("INBOX", mail(1))
    for n in range(3):
        await env.central.append("INBOX", large(n), "\\Flagged" if n == 0 else "")
    await env.central.append("INBOX", mail(2))

    report = await env.sync(fetch_bodies=False)
    assert report.ok, report.errors
    assert (report.fetched, report.listed, report.bodies) == (2, 3, 0)
    assert report.bodies_pending == 3
    rows = await env.box.mailstore.messages(USER)
    pending = [r for r in rows if r.body_pending]
    assert len(rows) == 5
    assert len(pending) == 3
    central = await env.central.contents("INBOX")
    for row in pending:
        header = await env.box.mailstore.content(row)
        assert header.endswith(b"\r\n\r\n")
        assert b"Subject: big" in header
        assert row.size == len(large(0))
    assert "\\Flagged" in pending[0].flags
    structures = {r.uid: r.pending_structure for r in pending}

    # The next round (nothing new) fetches the bodies: newest first, all of them.
    report = await env.sync()
    assert report.ok, report.errors
    assert (report.fetched, report.listed, report.bodies, report.bodies_pending) == (0, 0, 3, 0)
    await env.assert_converged("INBOX")
    assert len(central) == 5
    # What IMAP served while pending is what it serves now the body is here.
    for row in await env.box.mailstore.messages(USER):
        if row.uid in structures:
            stored = structures[row.uid]
            assert stored is not None
            content = await env.box.mailstore.content(row)
            local = mime.bodystructure(mime.parse(content), extended=True)
            for extended in (True, False):
                listed = mime.pending_bodystructure(stored, extended)
                here = mime.bodystructure(mime.parse(content), extended=extended)
                assert _shape(listed) == _shape(here)
                # Same strings; numbers are the centre's count (Dovecot counts a last
                # line without CRLF as none, we count it as one: a line count may differ).
                assert _strings(listed) == _strings(here)
            assert _shape(local)


def _strings(value: Any) -> list[str]:
    if isinstance(value, tuple):
        return [s for v in value for s in _strings(v)]
    return [value.lower()] if isinstance(value, str) else []


def _shape(value: Any) -> Any:
    """Nesting and kinds of a nested value: what clients parse by."""
    if isinstance(value, tuple):
        return tuple(_shape(v) for v in value)
    return type(value).__name__ if value is not None else "NIL"


async def test_a_body_a_reader_asks_for_is_fetched_at_once(env: Env) -> None:
    for n in range(3):
        await env.central.append("INBOX", large(n))
    replicator = env.replicator(fetch_bodies=False)
    async with replicator.opened():
        report = await replicator.sync_once()
        assert report.ok
        assert report.listed == 3
        store = env.box.mailstore
        rows = await store.messages(USER)
        wanted = rows[0]
        # What an IMAP FETCH BODY[] or the webmail does: ask, wait (bounded).
        (filled,) = await store.ensure_bodies([wanted])
        assert not filled.body_pending
        assert await store.content(filled) == large(0)
        assert [r.uid for r in await store.messages(USER) if r.body_pending] == [
            r.uid for r in rows[1:]
        ]
        content, pending = await store.read_for_display(rows[1])
        assert not pending
        assert content == large(1)


async def test_link_down_gives_unavailable_never_a_hang(env: Env) -> None:
    await env.central.append("INBOX", large(0))
    assert (await env.sync(fetch_bodies=False)).listed == 1
    assert env.dovecot is not None
    env.dovecot.stop()
    replicator = env.replicator()
    async with replicator.opened():
        rows = await env.box.mailstore.messages(USER)
        with trio.fail_after(30):  # a refused connection answers well within body_wait
            with pytest.raises(BodyUnavailable):
                await env.box.mailstore.ensure_bodies(rows)
        report = await replicator.sync_once()
        assert not report.ok
    assert (await env.box.mailstore.messages(USER))[0].body_pending


async def test_cut_between_listing_and_map_commit_resumes_without_duplicates(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending rows are committed, their map rows are not (the box died): the next
    round finds them by Message-ID and header, maps them, and fetches their bodies."""
    for n in range(3):
        await env.central.append("INBOX", large(n))
    original = MailboxSyncState.commit
    calls = {"n": 0}

    async def commit(self: MailboxSyncState, pair: Any, **kwargs: Any) -> None:
        if kwargs.get("add"):
            calls["n"] += 1
            raise RuntimeError("power cut")
        await original(self, pair, **kwargs)

    monkeypatch.setattr(MailboxSyncState, "commit", commit)
    report = await env.sync()
    assert not report.ok
    assert calls["n"] == 1
    assert len([r for r in await env.box.mailstore.messages(USER) if r.body_pending]) == 3
    monkeypatch.setattr(MailboxSyncState, "commit", original)

    report = await env.sync()
    assert report.ok, report.errors
    assert (report.listed, report.matched, report.appended) == (0, 3, 0)
    assert report.bodies == 3
    await env.assert_converged("INBOX")
    assert len(await env.central.contents("INBOX")) == 3
