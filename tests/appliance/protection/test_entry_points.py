# ruff: noqa: F811 - the test functions take the fixtures this module imports
"""Webmail compose and mail replicated from the centre, scanned by real clamd and rspamd.

The SMTP ports and chat uploads are driven end to end in tests/e2e/test_protection.py;
here the webmail page runs in-process (the compose tests' fixtures) and replication
runs against a real Dovecot as the centre (the mailbox sync tests' fixtures), each
with the box's `Protection` pointed at engines this module runs.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance.box import Box
from appliance.compliance.traffic_log import iter_records
from appliance.config import Config
from appliance.mail.webmail.compose_pages import compose_routes
from appliance.protection.engines import protection_from_config
from appliance.protection.scanner import Protection
from appliance.registry import page_kit, session_api
from appliance.web.pages import CommonPages
from tests.appliance.mail.webmail.test_compose_pages import (  # noqa: F401 - fixtures
    SOMCHAI,
    SOMYING,
    Browser,
    box,
    messages,
    page_text,
    send,
    sign_in,
)
from tests.appliance.protection.engines import EICAR, CompiledRules, running_engines
from tests.appliance.sync.test_mailbox import USER, Env, dovecot, env  # noqa: F401 - fixtures
from tests.appliance.web.conftest import start_server
from tests.harness import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, compiled_rules: CompiledRules
) -> Iterator[Config]:
    clamd, rspamd = require_tool("clamd"), require_tool("rspamd")
    root = tmp_path_factory.mktemp("engines")
    with running_engines(root, clamd, rspamd, compiled_rules) as config:
        yield config


async def compose_as_somchai(box: Box, nursery: trio.Nursery, protection: Protection) -> Browser:
    """The compose page served with *protection*, and Somchai signed in to it."""
    kit = page_kit(box)
    compose = compose_routes(
        kit, directory=box.directory, mailstore=box.mailstore, delivery=box.delivery,
        traffic=box.traffic, disk_guard=box.disk_guard, hostname=box.hostname,
        max_recipients=box.config.max_recipients, protection=protection,
    )  # fmt: skip
    routes = [*CommonPages(kit, session_api(box)).routes(), *compose]
    server = await start_server(box, nursery, routes, sessions=box.sessions)
    return await sign_in(server, SOMCHAI)


async def test_webmail_refuses_an_eicar_attachment_and_sends_a_clean_one(
    box: Box, nursery: trio.Nursery, engines: Config
) -> None:
    somchai = await compose_as_somchai(box, nursery, protection_from_config(engines))
    reply = await somchai.post(
        send(to=SOMYING, subject="แฟ้มงาน", body="ตามแนบ"),
        [("eicar.com", "application/octet-stream", EICAR)],
    )
    assert reply.status == 422
    text = page_text(reply)
    assert "พบไวรัส" in text
    assert "Edgebox-Test-EICAR" in text
    assert await messages(box, SOMYING, "INBOX") == []
    reply = await somchai.post(
        send(to=SOMYING, subject="แฟ้มงาน", body="ตามแนบ"), [("minutes.txt", "text/plain", b"ok\n")]
    )
    assert reply.status == 303, page_text(reply)
    [(_, received)] = await messages(box, SOMYING, "INBOX")
    assert str(received["X-Virus-Scanned"]).startswith("clamd on ")
    results = [r.result for r in iter_records(box.config.data_dir / "log" / "traffic")
               if r.service == "webmail"]  # fmt: skip
    assert results[0].startswith("554 5.7.1 virus Edgebox-Test-EICAR")
    assert results[-1].startswith("250 2.0.0 clean")


async def test_webmail_says_try_later_while_a_scanner_is_down(
    box: Box, nursery: trio.Nursery, engines: Config, tmp_path: Path
) -> None:
    gone = dataclasses.replace(engines, protection_clamd_socket=str(tmp_path / "none.sock"))
    somchai = await compose_as_somchai(box, nursery, protection_from_config(gone))
    reply = await somchai.post(send(to=SOMYING, subject="x", body="y"))
    assert reply.status == 422
    assert "ไม่พร้อมใช้งานชั่วคราว" in page_text(reply)
    assert await messages(box, SOMYING, "INBOX") == []


def infected_mail(n: int) -> bytes:
    encoded = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    return (
        (
            f"From: x@example.org\r\nTo: {USER}\r\nSubject: infected {n}\r\n"
            f"Message-ID: <infected{n}@example.org>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=B\r\n\r\n"
            "--B\r\nContent-Type: text/plain\r\n\r\n"
            "see file\r\n--B\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + encoded
        + b"--B--\r\n"
    )


async def test_replicated_mail_with_a_virus_is_kept_as_a_notice(
    env: Env,
    engines: Config,
    tmp_path: Path,
) -> None:

    await env.central.append("INBOX", infected_mail(1))
    await env.central.append("INBOX", b"From: x@example.org\r\nSubject: fine\r\n\r\nclean\r\n")
    # clamd down: nothing comes down unscanned; the round reports it.
    gone = dataclasses.replace(engines, protection_clamd_socket=str(tmp_path / "none.sock"))
    report = await env.sync(protection=protection_from_config(gone))
    assert not report.ok
    assert any("ScannerUnavailable" in e for e in report.errors), report.errors
    assert await env.box.mailstore.messages(USER, "INBOX") == []
    # clamd back: the clean one as it is, the infected one as a notice, each once.
    report = await env.sync(protection=protection_from_config(engines))
    assert report.ok, report.errors
    contents = [await env.box.mailstore.content(r)
                for r in await env.box.mailstore.messages(USER, "INBOX")]  # fmt: skip
    assert len(contents) == 2
    [notice] = [c for c in contents if b"infected 1" in c]
    assert EICAR not in notice
    assert base64.b64encode(EICAR)[:20] not in notice
    assert b"X-Virus-Found: Edgebox-Test-EICAR" in notice
    assert "นำเนื้อหาและไฟล์แนบออก".encode() in notice
    again = await env.sync(protection=protection_from_config(engines))
    assert (again.fetched, again.appended) == (0, 0)


async def test_a_listed_body_with_a_virus_is_filled_with_a_notice(
    env: Env, engines: Config
) -> None:
    await env.central.append("INBOX", infected_mail(2))
    # Above whole_below a message is listed first and its body fetched after.
    report = await env.sync(protection=protection_from_config(engines), whole_below=100)
    assert report.ok, report.errors
    [row] = await env.box.mailstore.messages(USER, "INBOX")
    content = await env.box.mailstore.content(row)
    assert b"Subject: infected 2" in content
    assert EICAR not in content
    assert base64.b64encode(EICAR)[:20] not in content
    assert b"[virus removed by edgebox: Edgebox-Test-EICAR" in content
