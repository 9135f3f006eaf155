"""A message whose body is still on the central server (slow-link "body later"), in webmail."""

from __future__ import annotations

from collections.abc import Sequence

from tests.appliance.mail.test_pending_bodies import add_pending, large_mail
from tests.appliance.mail.webmail.conftest import ADDRESS, Mail


async def pending(mail: Mail, tag: str) -> tuple[bytes, int]:
    """A large message listed from the centre, its body not fetched: ``(content, uid)``."""
    await mail.box.mailstore.create_mailboxes(ADDRESS)
    content = large_mail(tag)
    return content, await add_pending(mail.box.mailstore, ADDRESS, content)


async def test_a_pending_body_with_the_link_down_shows_a_notice(mail: Mail) -> None:
    _, uid = await pending(mail, "webmail")
    assert mail.box.mailstore.body_fetcher is None  # no replication: the link is "down"

    page = await mail.me.page(f"/mail/folder/INBOX/{uid}")
    assert "ยังไม่ได้ดาวน์โหลดจากเซิร์ฟเวอร์กลาง" in page
    assert "body-pending" in page
    # The headers are local, so the page still shows who wrote and what about.
    assert "webmail" in page  # the subject


async def test_a_pending_body_that_arrives_in_time_is_shown(mail: Mail) -> None:
    content, uid = await pending(mail, "arrives")
    store = mail.box.mailstore
    asked: list[list[int]] = []

    async def fetcher(message_ids: Sequence[int]) -> None:
        asked.append(list(message_ids))
        inbox = await mail.mailboxes.get(ADDRESS, "INBOX")
        assert await store.fill_body(inbox.id, uid, content)

    store.body_fetcher = fetcher
    try:
        page = await mail.me.page(f"/mail/folder/INBOX/{uid}")
    finally:
        store.body_fetcher = None
    assert len(asked) == 1
    assert "body-pending" not in page


async def test_moving_a_pending_message_while_the_link_is_down_says_why(mail: Mail) -> None:
    _, uid = await pending(mail, "move")
    reply = await mail.me.post(
        "/mail/actions",
        [("folder", "INBOX"), ("action", "move"), ("target", "Archive"), ("uids", str(uid))],
    )
    assert reply.status == 422
    assert "ดาวน์โหลด" in reply.body.decode()
    assert [m.uid for m in await mail.stored()] == [uid]  # nothing half-moved
    assert await mail.stored(folder="Archive") == []
