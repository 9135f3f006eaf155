"""POST /mail/actions: flags, move, delete to Trash, expunge in Trash, and CSRF."""

from __future__ import annotations

from tests.appliance.mail.webmail.conftest import ADDRESS, OTHER, Mail, deliver, message


async def three(mail: Mail) -> None:
    for n in range(1, 4):
        await deliver(mail.box, message(f"message {n}"))


def picks(*uids: int) -> list[tuple[str, str]]:
    return [("uids", str(uid)) for uid in uids]


async def test_mark_read_unread_flag_unflag(mail: Mail) -> None:
    await three(mail)

    reply = await mail.me.post(
        "/mail/actions", [("folder", "INBOX"), ("action", "read"), ("back", "/mail"), *picks(1, 3)]
    )

    assert reply.status == 303
    assert reply.header("Location") == "/mail"
    assert "\\Seen" in await mail.flags(1)
    assert "\\Seen" in await mail.flags(3)
    assert "\\Seen" not in await mail.flags(2)

    await mail.me.post("/mail/actions", [("folder", "INBOX"), ("action", "unread"), *picks(3)])
    await mail.me.post("/mail/actions", [("folder", "INBOX"), ("action", "flag"), *picks(2, 3)])
    await mail.me.post("/mail/actions", [("folder", "INBOX"), ("action", "unflag"), *picks(3)])

    assert await mail.flags(1) == {"\\Seen"}
    assert await mail.flags(2) == {"\\Flagged"}
    assert await mail.flags(3) == set()


async def test_move_to_another_folder(mail: Mail) -> None:
    await three(mail)
    reply = await mail.me.post(
        "/mail/actions",
        [("folder", "INBOX"), ("action", "move"), ("target", "Archive"),
         ("back", "/mail/folder/INBOX?page=1"), *picks(2)],
    )  # fmt: skip
    assert reply.status == 303
    assert reply.header("Location") == "/mail/folder/INBOX?page=1"
    assert [m.uid for m in await mail.stored()] == [1, 3]
    [moved] = await mail.stored(folder="Archive")
    assert b"message 2" in await mail.box.mailstore.content(moved)
    assert "message 2" in await mail.me.page("/mail/folder/Archive")


async def test_delete_moves_to_trash_and_delete_in_trash_expunges(mail: Mail) -> None:
    await three(mail)

    await mail.me.post("/mail/actions", [("folder", "INBOX"), ("action", "delete"), *picks(1, 2)])

    assert [m.uid for m in await mail.stored()] == [3]
    trash = await mail.stored(folder="Trash")
    assert len(trash) == 2
    blob_ids = {m.blob_id for m in trash}

    await mail.me.post(
        "/mail/actions",
        [("folder", "Trash"), ("action", "delete"), ("back", "/mail/folder/Trash"),
         ("uids", str(trash[0].uid))],
    )  # fmt: skip

    remaining = await mail.stored(folder="Trash")
    assert [m.uid for m in remaining] == [trash[1].uid]
    # Gone for good: its blob too, since no other copy refers to it.
    gone = (blob_ids - {remaining[0].blob_id}).pop()
    assert not mail.box.mailstore.blobs.exists(gone)
    page = await mail.me.page("/mail/folder/Trash")
    assert "ลบถาวร" in page


async def test_a_forged_post_without_the_token_is_refused_and_changes_nothing(mail: Mail) -> None:
    await three(mail)
    forged = [("folder", "INBOX"), ("action", "delete"), *picks(1, 2, 3)]

    without = await mail.me.post("/mail/actions", forged, csrf=False)
    wrong = await mail.me.post("/mail/actions", [*forged, ("csrf_token", "x" * 32)], csrf=False)
    # The other user's token does not do for this session either.
    theirs = await mail.me.post("/mail/actions", [*forged, ("csrf_token", mail.other.csrf)],
                                csrf=False)  # fmt: skip

    assert without.status == wrong.status == theirs.status == 403
    assert [m.uid for m in await mail.stored()] == [1, 2, 3]
    assert await mail.stored(folder="Trash") == []
    assert all(not m.flags for m in await mail.stored())


async def test_bad_requests_change_nothing(mail: Mail) -> None:
    await three(mail)
    cases = [
        ([("folder", "INBOX"), ("action", "explode"), *picks(1)], 422),
        ([("folder", "INBOX"), ("action", "move"), *picks(1)], 422),
        ([("folder", "INBOX"), ("action", "move"), ("target", "Nowhere"), *picks(1)], 404),
        ([("folder", "Nowhere"), ("action", "read"), *picks(1)], 404),
        ([("folder", "INBOX"), ("action", "read"), ("uids", "1; DROP TABLE")], 422),
        ([("folder", "INBOX"), ("action", "read"), ("uids", "-1")], 422),
    ]
    for fields, status in cases:
        reply = await mail.me.post("/mail/actions", fields)
        assert reply.status == status, fields
        assert reply.header("Content-Type") == "text/html; charset=utf-8"
    assert all(not m.flags for m in await mail.stored())
    assert len(await mail.stored()) == 3


async def test_back_never_leaves_the_mail_pages(mail: Mail) -> None:
    await three(mail)
    for back in ("https://evil.example/", "//evil.example/", "/settings", "javascript:alert(1)"):
        reply = await mail.me.post(
            "/mail/actions", [("folder", "Junk"), ("action", "read"), ("back", back), *picks(1)]
        )
        assert reply.header("Location") == "/mail/folder/Junk", back


async def test_users_act_only_on_their_own_mail(mail: Mail) -> None:
    await three(mail)
    await deliver(mail.box, message("hers"), OTHER)
    # Somsri names UIDs 1-3 of "INBOX": only her own UID 1 exists, and only it changes.
    await mail.other.post(
        "/mail/actions", [("folder", "INBOX"), ("action", "delete"), *picks(1, 2, 3)]
    )
    assert [m.uid for m in await mail.stored(ADDRESS)] == [1, 2, 3]
    assert await mail.stored(OTHER) == []
    assert len(await mail.stored(OTHER, "Trash")) == 1


async def test_nothing_ticked_just_goes_back(mail: Mail) -> None:
    await three(mail)
    reply = await mail.me.post("/mail/actions", [("folder", "INBOX"), ("action", "delete")])
    assert reply.status == 303
    assert reply.header("Location") == "/mail"
    assert len(await mail.stored()) == 3


async def test_the_reading_view_forms_post_what_the_actions_expect(mail: Mail) -> None:
    """Submit the reading view's own flag form, as a browser would, field for field."""
    import re

    await three(mail)
    page = await mail.me.page("/mail/folder/INBOX/2")
    form = next(f for f in re.findall(r"<form method=\"post\".*?</form>", page, re.S)
                if 'value="flag"' in f)  # fmt: skip
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)
    fields.append(("action", "flag"))

    reply = await mail.me.post("/mail/actions", fields, csrf=False)  # the page's own token

    assert reply.status == 303
    assert reply.header("Location") == "/mail/folder/INBOX/2"
    assert await mail.flags(2) == {"\\Seen", "\\Flagged"}
