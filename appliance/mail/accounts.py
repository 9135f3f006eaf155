"""The one way an account is made: a directory user, their org unit, mailboxes and grants.

`edgebox user add`, the demo set-up, the admin console, the USB stick and the hub's
admission of a box all come here (through `appliance.box.add_user` or directly), so an
account is the same whoever made it. It lives with mail because an account is a user of
the directory *and* the mailboxes the mail store keeps for them.

What this is not: the directory's own checks of names, addresses and passwords
(appliance.directory), or who may make an account (the callers).
"""

from __future__ import annotations

from typing import Any

from appliance.directory import Directory, User
from appliance.mail.mailstore import Mailstore


async def create_account(
    directory: Directory,
    mailstore: Mailstore,
    email: str,
    password: str | None,
    **details: Any,
) -> User:
    """Add a user with their org unit, mailboxes and grants.

    *password* is None when *details* carry a ``password_hash`` instead (the setup
    wizard's first admin). *details* are `Directory.add_user`'s, plus ``admin`` (of their agency),
    ``box_admin`` (of every agency on the box) and ``service`` (a sync service account
    that may act for every user of the box).
    """
    admin = details.pop("admin", False)
    box_admin = details.pop("box_admin", False)
    service = details.pop("service", False)
    if details.get("unit"):
        domain = email.rpartition("@")[2]
        await directory.ensure_unit(domain, details["unit"])
    user = await directory.add_user(email, password=password, **details)
    await mailstore.create_mailboxes(user.address)
    if admin:
        await directory.grant_admin(user.address, user.agency_domain)
    if box_admin:
        await directory.grant_admin(user.address, None)
    if service:
        await directory.grant_delegation(user.address, None)
    return user
