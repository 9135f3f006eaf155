"""The admin console's factory reset: a box admin, the box's short id typed and the
password again; then the running box is asked to reset (appliance.provisioning)."""

from __future__ import annotations

import pytest
import trio

from appliance.box import Box
from appliance.provisioning.device import ensure_device
from appliance.provisioning.lifecycle import BoxState, Lifecycle
from appliance.registry import admin_console, page_kit, session_api
from appliance.web.pages import CommonPages
from tests.appliance.admin.conftest import ADMIN_A, PASSWORD, ROOT, Console
from tests.appliance.web.conftest import start_server


@pytest.fixture
async def resettable(box: Box, nursery: trio.Nursery) -> tuple[Console, Lifecycle]:
    lifecycle = Lifecycle(box.config.data_dir, ensure_device(box.config.data_dir))
    lifecycle.serving(BoxState.PROVISIONED, {})
    kit = page_kit(box)
    routes = [*CommonPages(kit, session_api(box)).routes(),
              *admin_console(box, kit, lifecycle)]  # fmt: skip
    server = await start_server(box, nursery, routes, sessions=box.sessions)
    return Console(box, server), lifecycle


async def _asked(lifecycle: Lifecycle) -> bool:
    with trio.move_on_after(0.01):
        await lifecycle.wait_reset_requested()
        return True
    return False


async def test_box_admin_resets_with_password_and_typed_id(
    resettable: tuple[Console, Lifecycle], box: Box
) -> None:
    console, lifecycle = resettable
    short = box.identity.box_id[:6]
    root = await console.as_user(ROOT)
    page = await root.get("/admin/factory-reset")
    assert page.status == 200
    assert f'data-testid="box-short-id">{short}<' in page.body.decode()

    wrong_id = await root.post("/admin/factory-reset", {"confirm": "zzzzzz", "password": PASSWORD})
    assert wrong_id.status == 422
    wrong_pw = await root.post("/admin/factory-reset", {"confirm": short, "password": "nope"})
    assert wrong_pw.status == 403
    assert "wrong password" in wrong_pw.body.decode() or "รหัสผ่านไม่ถูกต้อง" in wrong_pw.body.decode()
    no_csrf = await root.post("/admin/factory-reset", {"confirm": short, "password": PASSWORD},
                              csrf=False)  # fmt: skip
    assert no_csrf.status == 403
    assert not await _asked(lifecycle)

    done = await root.post("/admin/factory-reset", {"confirm": short, "password": PASSWORD})
    assert done.status == 200
    assert 'data-testid="reset-started"' in done.body.decode()
    assert await _asked(lifecycle)


async def test_an_agency_admin_may_not_reset_the_box(
    resettable: tuple[Console, Lifecycle], box: Box
) -> None:
    console, lifecycle = resettable
    admin = await console.as_user(ADMIN_A)
    assert (await admin.get("/admin/factory-reset")).status == 403
    reply = await admin.post(
        "/admin/factory-reset", {"confirm": box.identity.box_id[:6], "password": PASSWORD}
    )
    assert reply.status == 403
    assert not await _asked(lifecycle)


async def test_without_a_running_box_the_console_says_use_the_cli(
    console: Console, box: Box
) -> None:
    root = await console.as_user(ROOT)
    reply = await root.post(
        "/admin/factory-reset", {"confirm": box.identity.box_id[:6], "password": PASSWORD}
    )
    assert reply.status == 409
    assert "edgebox factory-reset" in reply.body.decode()
