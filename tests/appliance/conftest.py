"""`make_box`: the one way the in-process tests get a real box in tmp_path.

A test module states only what its box differs in — the agency, the people on it, the
configuration — in a `box` fixture of three lines; how a box is initialised, opened,
peopled and closed is written here once:

    @pytest.fixture
    async def box(make_box: BoxFactory) -> Box:
        return await make_box(DOMAIN, people=[Person(ADDRESS, PASSWORD, "สมชาย ใจดี")])

Each box lives in a task of the fixture's own nursery, so its databases' writer tasks
open and close in one task (trio's cancel scopes nest), and every box is closed when the
test ends, after the test's own fixtures that use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance.box import Box, add_user, init_box, open_box
from appliance.config import Config
from tests.appliance.configs import https_on_a_free_port


@dataclass(frozen=True)
class Person:
    """Someone with an account on a test box."""

    address: str
    password: str
    name_th: str
    name_en: str | None = None
    unit: str | None = None
    rank: int | None = None
    #: Administrator of their own agency.
    admin: bool = False
    #: Administrator of the whole box.
    box_admin: bool = False


@dataclass(frozen=True)
class Agency:
    """An agency served beside the box's own."""

    domain: str
    name_th: str
    name_en: str | None = None


#: ``await make_box(domain, *, agency_name=None, agencies=(), people=(), mailboxes=True,
#: config=https_on_a_free_port, name="data")`` (`make_box`): an open box, closed when
#: the test ends.
BoxFactory = Callable[..., Awaitable[Box]]


@pytest.fixture
async def make_box(tmp_path: Path) -> AsyncIterator[BoxFactory]:
    """Make real boxes for one test (see the module's docstring).

    *people* are made with `appliance.box.add_user`, the way every account is made,
    mailboxes included; with ``mailboxes=False`` only their directory entries are, as
    for a user whose mailboxes a first delivery or a first webmail visit creates.
    *config* turns the data directory into the box's configuration (by default the
    HTTPS service on a port the kernel picks).
    """
    closing = trio.Event()

    async def hold(
        opening: Callable[[], AbstractAsyncContextManager[Box]],
        task_status: trio.TaskStatus[Box] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with opening() as opened:
            task_status.started(opened)
            await closing.wait()

    async with trio.open_nursery() as nursery:

        async def make(
            domain: str,
            *,
            agency_name: str | None = None,
            agencies: Sequence[Agency] = (),
            people: Sequence[Person] = (),
            mailboxes: bool = True,
            config: Callable[[Path], Config] = https_on_a_free_port,
            name: str = "data",
        ) -> Box:
            data = tmp_path / name

            @asynccontextmanager
            async def opening() -> AsyncIterator[Box]:
                await init_box(data, domain, agency_name)
                async with open_box(config(data)) as opened:
                    for agency in agencies:
                        await opened.directory.add_agency(
                            agency.domain, agency.name_th, agency.name_en
                        )
                    for person in people:
                        await _add(opened, person, mailboxes=mailboxes)
                    yield opened

            box: Box = await nursery.start(hold, opening)
            return box

        yield make
        closing.set()


async def _add(box: Box, person: Person, *, mailboxes: bool) -> None:
    details: dict[str, Any] = {"name_th": person.name_th}
    for name in ("name_en", "unit", "rank"):
        if (value := getattr(person, name)) is not None:
            details[name] = value
    if mailboxes:
        await add_user(box, person.address, person.password, admin=person.admin,
                       box_admin=person.box_admin, **details)  # fmt: skip
        return
    if person.admin or person.box_admin:
        raise ValueError(f"{person.address}: an administrator is made with their mailboxes")
    await box.directory.add_user(person.address, password=person.password, **details)
