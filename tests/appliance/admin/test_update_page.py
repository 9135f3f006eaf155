"""The console's system updates page: what runs, how the last updates ended and why,
the hub's offer, and "install now" — a box-wide right, behind the session and CSRF."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import trio

from appliance.admin.pages import admin_routes
from appliance.box import Box
from appliance.registry import page_kit, session_api
from appliance.update import outcome
from appliance.update.follow import (
    OFFER_FILE,
    InstallNowBell,
    Offer,
    OfferState,
    install_requested,
)
from appliance.update.rauc import RaucError, RaucStatus, Slot
from appliance.web.pages import CommonPages
from tests.appliance.web.conftest import Reply, start_server

from .conftest import ADMIN_A, ROOT, STAFF_A, Console

OFFER = Offer("2026.12.2", 600 * 1024 * 1024, "b" * 64)


class BootedB:
    """RAUC's answer on a box running slot B with 2026.12.1 (the boundary's twin)."""

    def status(self) -> RaucStatus:
        return RaucStatus("edgebox-amd64", "B", (
            Slot("rootfs.0", "A", "inactive", "good", "2026.11.3"),
            Slot("rootfs.1", "B", "booted", "good", "2026.12.1"),
        ))  # fmt: skip

    def info(self, bundle: Path) -> str:
        raise RaucError("not used")

    def install(self, bundle: Path, progress: object = None) -> None:
        raise RaucError("not used")

    def mark(self, verdict: str) -> None:
        raise RaucError("not used")


def text(reply: Reply) -> str:
    return reply.body.decode()


def offered(data: Path, decision: str = "newer", stage: str = "ready", reason: str = "") -> None:
    state = OfferState("stable", OFFER, "2026.12.1", decision, stage, reason, time.time())
    (data / OFFER_FILE).parent.mkdir(parents=True, exist_ok=True)
    (data / OFFER_FILE).write_text(json.dumps(dataclasses.asdict(state)))


async def updating_console(
    box: Box, nursery: trio.Nursery, *, updates: bool, bell: InstallNowBell | None = None
) -> Console:
    """The console of a box that installs updates (or not), RAUC answering for slot B."""
    config = dataclasses.replace(box.config, updates=updates)
    kit = page_kit(box)
    routes = [
        *CommonPages(kit, session_api(box)).routes(),
        *admin_routes(
            kit, config=config, identity=box.identity, directory=box.directory,
            mailstore=box.mailstore, sessions=box.sessions, signin=box.signin, guard=box.guard,
            traffic=box.traffic, status_file=box.status_file, rauc=BootedB(),
            install_now_bell=bell,
        ),
    ]  # fmt: skip
    return Console(box, await start_server(box, nursery, routes, sessions=box.sessions))


async def test_the_page_shows_the_running_slot_the_outcomes_and_the_offer(
    box: Box, nursery: trio.Nursery
) -> None:
    data = box.config.data_dir
    outcome.record(data, "installed", "2026.12.1", "B", time.time() - 7200)
    outcome.record(data, "rolled_back", "2026.12.1", "A", time.time() - 3600,
                   "health gate failed: store: the probe blob read back differently")  # fmt: skip
    outcome.record(data, "refused", "2026.11.9", "", time.time() - 60,
                   "release 2026.11.9 is not newer than the running 2026.12.1")  # fmt: skip
    offered(data)
    console = await updating_console(box, nursery, updates=True)
    page = await (await console.as_user(ROOT)).get("/admin/update")
    assert page.status == 200
    html = text(page)
    assert 'data-testid="running-version">2026.12.1<' in html
    assert 'data-testid="running-slot">B<' in html
    # Newest first, each with its reason.
    rows = html.split('data-testid="update-event"')[1:]
    assert [row.split('data-event="')[1].split('"')[0] for row in rows] == [
        "refused", "rolled_back", "installed",
    ]  # fmt: skip
    assert "is not newer than the running 2026.12.1" in rows[0]
    assert "health gate failed: store" in rows[1]
    assert 'data-testid="offer-version">2026.12.2<' in html
    assert 'data-testid="install-now"' in html
    assert "600.0 MiB" in html


async def test_install_now_asks_the_follower_and_is_recorded(
    box: Box, nursery: trio.Nursery
) -> None:
    data = box.config.data_dir
    offered(data)
    bell = InstallNowBell()
    # The follower (appliance.update.follow) listens: it must find the request written
    # when it wakes.
    woken: list[object] = []
    bell.listen(lambda: woken.append(install_requested(data)))
    console = await updating_console(box, nursery, updates=True, bell=bell)
    root = await console.as_user(ROOT)
    # Without the page's CSRF token: refused, nothing asked.
    refused = await root.post("/admin/update/install-now", csrf=False)
    assert refused.status == 403
    assert install_requested(data) is None
    assert woken == []
    done = await root.post("/admin/update/install-now")
    assert (done.status, done.header("location")) == (303, "/admin/update?saved=install-now")
    asked = install_requested(data)
    assert asked is not None
    assert woken == [asked]  # woken once, after the request was written
    assert asked["by"] == ROOT
    page = await root.get("/admin/update?saved=install-now")
    assert 'data-testid="saved-notice"' in text(page)
    assert 'data-testid="install-requested"' in text(page)
    assert 'data-testid="install-now"' not in text(page)  # asked once is enough


@pytest.mark.parametrize("who", [ADMIN_A, STAFF_A])
async def test_only_an_admin_of_the_whole_box_sees_or_installs_updates(
    box: Box, nursery: trio.Nursery, who: str
) -> None:
    data = box.config.data_dir
    offered(data)
    console = await updating_console(box, nursery, updates=True)
    client = await console.as_user(who)
    assert (await client.get("/admin/update")).status == 403
    assert (await client.post("/admin/update/install-now")).status == 403
    assert install_requested(data) is None
    if who == ADMIN_A:  # an agency admin's menu has no link to it
        assert 'data-testid="admin-nav-update"' not in text(await client.get("/admin"))


@pytest.mark.parametrize(
    ("decision", "updates"), [("up-to-date", True), ("older", True), ("newer", False)]
)
async def test_install_now_refuses_when_there_is_nothing_to_install(
    box: Box, nursery: trio.Nursery, decision: str, updates: bool
) -> None:
    data = box.config.data_dir
    offered(data, decision=decision, stage="refused" if decision == "older" else "")
    console = await updating_console(box, nursery, updates=updates)
    root = await console.as_user(ROOT)
    assert 'data-testid="install-now"' not in text(await root.get("/admin/update"))
    done = await root.post("/admin/update/install-now")
    assert done.status == 409
    assert 'data-testid="form-error"' in text(done)
    assert install_requested(data) is None


async def test_without_rauc_the_page_says_so_and_still_shows_the_history(
    console: Console,
) -> None:
    # The default console: RAUC as the settings name it, which is not running here.
    page = await (await console.as_user(ROOT)).get("/admin/update")
    assert page.status == 200
    assert 'data-testid="rauc-error"' in text(page)
    assert "No update yet" in text(page) or "ยังไม่เคยปรับรุ่น" in text(page)
