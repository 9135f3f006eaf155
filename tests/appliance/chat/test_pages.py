"""The chat pages over real HTTPS: room list, room, new room, search and the form posts.

A box in tmp_path serves the sign-in pages, the chat API and the chat pages on a free
port; each person has a browser session (cookie) and the pages' CSRF token. What a
browser's script would do is done here through the API, as the chat scripts do.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from appliance.box import Box, init_box, open_box
from appliance.chat.api import chat_routes
from appliance.chat.models import Room
from appliance.chat.pages import (
    PRESETS,
    bangkok_time,
    chat_page_routes,
    highlight,
    link_segments,
    parse_addresses,
)
from appliance.directory import User
from appliance.directory.preferences import Preferences
from appliance.directory.sessions import BROWSER_TTL
from appliance.registry import page_kit, session_api
from appliance.web.csrf import csrf_token_for
from appliance.web.pages import CommonPages
from tests.appliance.configs import https_on_a_free_port
from tests.appliance.web.conftest import Reply, Server, start_server

DOMAIN = "pages.go.th"
PASSWORD = "รหัสลับ-ทดสอบ-2567"
HOSTILE = "<img src=x onerror=alert(1)>"

# --- a parsed page ---------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)


class Page(HTMLParser):
    """A page's elements, with the text inside each (enough to check what is shown)."""

    VOID = frozenset({"area", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                      "source", "track", "wbr"})  # fmt: skip

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.inline_scripts: list[str] = []
        self._open: list[Element] = []
        self._script: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if self._open:
            self._open[-1].children.append(element)
        if tag == "script" and "src" not in element.attrs:
            self._script = []
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.inline_scripts.append("".join(self._script))
            self._script = None
        for at in range(len(self._open) - 1, -1, -1):
            if self._open[at].tag == tag:
                del self._open[at:]
                break

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script.append(data)
        for element in self._open:
            element.text += data

    def all(self, testid: str) -> list[Element]:
        return [e for e in self.elements if e.attrs.get("data-testid") == testid]

    def one(self, testid: str) -> Element:
        found = self.all(testid)
        assert len(found) == 1, (testid, len(found))
        return found[0]

    def within(self, parent: Element, testid: str) -> list[Element]:
        found: list[Element] = []
        stack = list(parent.children)
        while stack:
            element = stack.pop()
            if element.attrs.get("data-testid") == testid:
                found.append(element)
            stack.extend(element.children)
        return found


def squash(text: str) -> str:
    return " ".join(text.split())


# --- the site ----------------------------------------------------------------------------


@dataclass
class Site:
    server: Server
    box: Box
    people: dict[str, User]
    tokens: dict[str, str]

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def cookie(self, who: str) -> dict[str, str]:
        return {"Cookie": f"edgebox_session={self.tokens[who]}"}

    async def get(self, who: str, path: str) -> Reply:
        return await self.server.request("GET", path, headers=self.cookie(who))

    async def page(self, who: str, path: str) -> Page:
        reply = await self.get(who, path)
        assert reply.status == 200, (reply.status, reply.body[:500])
        return Page(reply.body.decode())

    async def post(self, who: str, path: str, fields: list[tuple[str, str]]) -> Reply:
        body = urlencode([("csrf_token", csrf_token_for(self.tokens[who])), *fields])
        headers = {
            **self.cookie(who),
            "Origin": self.origin,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return await self.server.request("POST", path, body.encode(), headers=headers)

    async def api(self, who: str, method: str, path: str, body: Any = None) -> Reply:
        headers = {**self.cookie(who), "X-Requested-With": "edgebox"}
        return await self.server.request(method, path, body, headers=headers)

    @property
    def chat(self) -> Any:
        return self.box.chat

    async def room(self, owner: str, *members: str, kind: str = "group", **extra: Any) -> Room:
        room: Room = await self.chat.create_room(
            self.people[owner],
            kind,
            name=extra.pop("name", "งานสารบรรณ"),
            members=[self.people[m].address for m in members],
            **extra,
        )
        return room

    async def say(self, who: str, room: Room, text: str, **extra: Any) -> str:
        message, _ = await self.chat.post(
            self.people[who], room.id, {"kind": "text", "text": text, **extra}
        )
        return str(message.id)

    async def english(self, who: str) -> None:
        await page_kit(self.box).preferences.set(
            self.people[who].address, Preferences(language="en")
        )


@pytest.fixture
async def site(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Site]:
    data = tmp_path / "data"
    await init_box(data, DOMAIN)
    config = https_on_a_free_port(data)
    async with open_box(config) as box:
        directory = box.directory
        await directory.ensure_unit(DOMAIN, "กองคลัง", "Finance")
        await directory.ensure_unit(DOMAIN, "กองช่าง", "Works")
        people = {}
        for key, rank, unit, name_th, name_en in (
            ("boss", 9, "กองคลัง", "อธิบดี ใหญ่ยิ่ง", "Director General"),
            ("staff", 1, "กองช่าง", "สมชาย ใจดี", "Somchai Jaidee"),
            ("peer", 1, "กองช่าง", "สมหญิง รักงาน", "Somying Rakngan"),
        ):
            people[key] = await directory.add_user(
                f"{key}@{DOMAIN}", password=PASSWORD, name_th=name_th, name_en=name_en,
                rank=rank, unit=unit,
            )  # fmt: skip
        await directory.grant_admin(people["boss"].address, DOMAIN)
        tokens = {}
        for key, person in people.items():
            tokens[key], _ = await box.sessions.create(
                person, client_ip="127.0.0.1", user_agent=None, ttl=BROWSER_TTL
            )
        kit = page_kit(box)
        routes = [
            *CommonPages(kit, session_api(box)).routes(),
            *chat_routes(box.chat),
            *chat_page_routes(box.chat, box.directory, kit),
        ]
        server = await start_server(box, nursery, routes, sessions=box.sessions)
        yield Site(server, box, people, tokens)


def room_item(page: Page, room: Room) -> Element:
    found = [e for e in page.all("room-item") if e.attrs.get("data-room-id") == room.id]
    assert len(found) == 1
    return found[0]


def badge(page: Page, room: Room) -> Element:
    (count,) = page.within(room_item(page, room), "unread-count")
    return count


# --- the room list -------------------------------------------------------------------------


async def test_room_list_shows_unread_counts_that_fall_after_reading(site: Site) -> None:
    room = await site.room("boss", "staff")
    quiet = await site.room("boss", "staff", name="ห้องเงียบ")
    await site.say("staff", room, "เรียนท่านอธิบดี")
    last = await site.say("staff", room, "เอกสารพร้อมแล้วครับ")

    page = await site.page("boss", "/chat")
    count = badge(page, room)
    assert count.text == "2"
    assert "hidden" not in count.attrs
    assert "hidden" in badge(page, quiet).attrs
    (preview,) = page.within(room_item(page, room), "room-preview")
    assert squash(preview.text) == "สมชาย ใจดี: เอกสารพร้อมแล้วครับ"
    # The room with the newest message comes first.
    assert [e.attrs["data-room-id"] for e in page.all("room-item")] == [room.id, quiet.id]

    # static/chat-room-reading.js marks what the reader saw, up to the newest message.
    read = await site.api("boss", "POST", f"/api/v1/rooms/{room.id}/read", {"up_to": last})
    assert read.status == 200
    page = await site.page("boss", "/chat")
    assert "hidden" in badge(page, room).attrs
    assert "has-unread" not in room_item(page, room).attrs["class"]

    # The sender's own messages never count as unread for them.
    assert "hidden" in badge(await site.page("staff", "/chat"), room).attrs


async def test_room_list_hides_rooms_outside_working_hours(site: Site) -> None:
    hours = {"days": [0], "start": "00:00", "end": "00:01"}  # closed nearly always
    closed = await site.room("boss", "staff", options={"working_hours": hours}, name="ปิดแล้ว")
    open_room = await site.room("boss", "staff", name="เปิดอยู่")
    page = await site.page("staff", "/chat")
    shown = [e.attrs["data-room-id"] for e in page.all("room-item")]
    assert open_room.id in shown
    assert (closed.id in shown) == closed.options.working_hours.is_open(site.chat.clock())  # type: ignore[union-attr]


async def test_unread_api_counts_match_the_list(site: Site) -> None:
    room = await site.room("boss", "staff")
    await site.say("staff", room, "หนึ่ง")
    hidden = await site.say("staff", room, "สอง")
    await site.api("boss", "PUT", f"/api/v1/rooms/{room.id}/messages/{hidden}/hidden")
    reply = await site.api("boss", "GET", "/api/v1/me/unread")
    assert reply.status == 200
    body = reply.json()
    assert body["cursor"] >= 1
    (entry,) = [r for r in body["rooms"] if r["room_id"] == room.id]
    assert entry["unread"] == 1
    assert entry["last_message"]["content"]["text"] == "หนึ่ง"


# --- a room ---------------------------------------------------------------------------------


async def test_room_page_renders_hostile_messages_as_text(site: Site) -> None:
    room = await site.room("boss", "staff")
    first = await site.say("staff", room, HOSTILE)
    await site.say("staff", room, "<script>alert(2)</script> javascript:alert(3)")
    await site.say("staff", room, "ดูที่ https://www.example.go.th/a?b=1&c=2. ขอบคุณ", reply_to=first)
    reply = await site.get("boss", f"/chat/rooms/{room.id}")
    assert reply.status == 200
    html = reply.body.decode()
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script>alert(2)" not in html
    page = Page(html)
    assert not [e for e in page.elements if e.tag == "img" and e.attrs.get("src") == "x"]
    assert not page.inline_scripts
    messages = page.all("message")
    assert [squash(page.within(m, "message-body")[0].text) for m in messages] == [
        HOSTILE,
        "<script>alert(2)</script> javascript:alert(3)",
        "ดูที่ https://www.example.go.th/a?b=1&c=2. ขอบคุณ",
    ]
    assert messages[0].attrs["data-message-id"] == first
    anchors = [
        e for e in page.elements if e.tag == "a" and "example.go.th" in e.attrs.get("href", "")
    ]
    assert [a.attrs for a in anchors] == [
        {
            "href": "https://www.example.go.th/a?b=1&c=2",
            "rel": "noopener noreferrer",
            "target": "_blank",
        }
    ]
    assert not [e for e in page.elements if "javascript:" in e.attrs.get("href", "")]
    # The reply quotes the hostile message, as text too.
    (quote,) = page.within(messages[2], "quote")
    assert HOSTILE in quote.text


async def test_own_messages_show_who_read_them(site: Site) -> None:
    room = await site.room("boss", "staff", "peer")
    mine = await site.say("boss", room, "ประชุมบ่ายนี้")
    await site.api("staff", "POST", f"/api/v1/rooms/{room.id}/read", {"up_to": mine})

    page = await site.page("boss", f"/chat/rooms/{room.id}")
    # The stream starts where the page's data ends: no event is missed in between.
    (root,) = [e for e in page.elements if e.attrs.get("data-chat-page") == "room"]
    assert int(root.attrs["data-cursor"]) == site.chat.head_cursor
    (message,) = page.all("message")
    (read_by,) = page.within(message, "read-by")
    assert "hidden" not in read_by.attrs
    assert "อ่านแล้วโดย" in read_by.text
    assert squash(page.within(read_by, "read-by-names")[0].text) == "สมชาย ใจดี"
    assert read_by.attrs["data-readers"] == site.people["staff"].address
    # Nobody sees "read by" under someone else's message.
    staff_page = await site.page("staff", f"/chat/rooms/{room.id}")
    assert not staff_page.all("read-by")


async def test_member_who_is_not_owner_gets_no_owner_controls(site: Site) -> None:
    room = await site.room("boss", "staff")
    member = await site.page("staff", f"/chat/rooms/{room.id}")
    assert not member.all("owner-controls")
    assert not member.all("remove-member")
    assert not [
        e for e in member.elements if e.tag == "form" and "/members" in e.attrs.get("action", "")
    ]
    note = member.one("owner-only-note")
    assert "เฉพาะเจ้าของห้อง (อธิบดี ใหญ่ยิ่ง)" in note.text
    assert "ออกจากห้องเองไม่ได้" in note.text

    owner = await site.page("boss", f"/chat/rooms/{room.id}")
    assert owner.one("owner-controls")
    assert len(owner.all("remove-member")) == 1  # staff; never the owner
    assert not owner.all("owner-only-note")

    # A member who posts the owner's form anyway is refused, and nothing changes.
    refused = await site.post("staff", f"/chat/rooms/{room.id}/name", [("name", "ยึดห้อง")])
    assert refused.status == 403
    assert "เฉพาะเจ้าของห้องเท่านั้นที่เปลี่ยนแปลงห้องได้" in refused.body.decode()
    assert (await site.chat.room(site.people["boss"], room.id)).name == "งานสารบรรณ"


async def test_owner_controls_change_the_room(site: Site) -> None:
    room = await site.room("boss", "staff")
    base = f"/chat/rooms/{room.id}"
    added = await site.post("boss", base + "/members", [("addresses", site.people["peer"].address)])
    assert added.status == 303
    renamed = await site.post("boss", base + "/name", [("name", "ทีมงบประมาณ")])
    assert renamed.status == 303
    removed = await site.post(
        "boss", base + "/members/remove", [("address", site.people["staff"].address)]
    )
    assert removed.status == 303
    current = await site.chat.room(site.people["boss"], room.id)
    assert current.name == "ทีมงบประมาณ"
    assert current.members == {site.people["boss"].address, site.people["peer"].address}

    unknown = await site.post("boss", base + "/members", [("addresses", "nobody@pages.go.th")])
    assert unknown.status == 422
    assert "nobody@pages.go.th ไม่ใช่ผู้ใช้ของหน่วยงานในระบบนี้" in unknown.body.decode()

    moved = await site.post("boss", base + "/owner", [("owner", site.people["peer"].address)])
    assert moved.status == 303
    assert (await site.chat.room(site.people["peer"], room.id)).owner == site.people["peer"].address
    # Only the new owner deletes it, and only when the box is ticked.
    assert (await site.post("boss", base + "/delete", [("confirm", "yes")])).status == 403
    assert (await site.post("peer", base + "/delete", [])).status == 422
    gone = await site.post("peer", base + "/delete", [("confirm", "yes")])
    assert (gone.status, gone.header("Location")) == (303, "/chat")
    assert (await site.get("peer", base)).status == 404


async def test_text_form_posts_without_script(site: Site) -> None:
    room = await site.room("boss", "staff", options={"auto_location": True})
    base = f"/chat/rooms/{room.id}"
    refused = await site.post("staff", base + "/messages", [("text", "ถึงแล้วครับ")])
    assert refused.status == 422
    page = Page(refused.body.decode())
    assert "ทุกข้อความในห้องนี้ต้องระบุตำแหน่งที่ตั้งของท่าน" in page.one("room-error").text
    assert page.one("composer").text == "ถึงแล้วครับ"  # the draft is kept
    sent = await site.post(
        "staff", base + "/messages", [("text", "ถึงแล้วครับ"), ("lat", "13.7563"), ("lon", "100.5018")]
    )
    assert sent.status == 303
    (message,) = await site.chat.messages(site.people["boss"], room.id)
    assert message.content["location"] == {"lat": 13.7563, "lon": 100.5018, "label": None}
    assert sent.header("Location") == f"/chat/rooms/{room.id.replace(':', '%3A')}#m-{message.id}"


async def test_events_invitation_answers_and_alerts(site: Site) -> None:
    room = await site.room("boss", "staff", "peer")
    base = f"/chat/rooms/{room.id}"
    invited = await site.post(
        "boss",
        base + "/invitations",
        [("title", "ประชุมงบประมาณ"), ("starts_at", "2026-02-02T13:30"), ("place", "ห้อง 301")],
    )
    assert invited.status == 303
    (invitation,) = await site.chat.room_invitations(site.people["boss"], room.id)
    assert invitation["starts_at"] == "2026-02-02T13:30:00+07:00"
    answered = await site.post(
        "staff", f"/chat/invitations/{invitation['id']}/answer", [("answer", "accept")]
    )
    assert answered.status == 303
    page = await site.page("peer", base)
    (card,) = page.all("invitation")
    assert "ประชุมงบประมาณ" in card.text
    (answers,) = page.within(card, "answers")
    assert "สมชาย ใจดี: ตอบรับ" in squash(answers.text)
    assert "สมหญิง รักงาน: ยังไม่ตอบ" in squash(answers.text)
    assert page.within(card, "accept")

    # Staff share where they are; the owner alerts the room within 2 km.
    shared = await site.post(
        "staff",
        "/chat/location",
        [("share", "on"), ("lat", "13.75"), ("lon", "100.50"), ("next", base)],
    )
    assert shared.status == 303
    alerted = await site.post(
        "boss",
        base + "/alert",
        [("text", "น้ำท่วมถนนหน้าสำนักงาน"), ("lat", "13.751"), ("lon", "100.501"), ("radius_km", "2"),
         ("scope", "room")],
    )  # fmt: skip
    assert alerted.status == 303
    assert "alerted=1" in (alerted.header("Location") or "")
    page = await site.page("boss", base + "?alerted=1")
    assert "ส่งการแจ้งเตือนถึง 1 คนแล้ว" in page.one("alert-sent").text
    # The count comes from the address bar: anything but a number is not shown.
    assert not (await site.page("boss", base + "?alerted=" + quote("ทุกคน"))).all("alert-sent")
    # A member who is not the owner cannot send one.
    alert = [("text", "x"), ("lat", "1"), ("lon", "1"), ("radius_km", "1")]
    assert (await site.post("peer", base + "/alert", alert)).status == 403
    # Opting out deletes the shared location.
    await site.post("staff", "/chat/location", [("share", "off"), ("next", base)])
    assert not await site.chat.sharing_location(site.people["staff"])


# --- new rooms ----------------------------------------------------------------------------------


async def test_new_room_page_lists_every_kind_with_its_rule(site: Site) -> None:
    page = await site.page("staff", "/chat/new")
    for preset in PRESETS:
        choice = page.one(f"kind-{preset.value}")
        assert preset.info.name.th in choice.text
        assert squash(page.one(f"rule-{preset.value}").text) == squash(preset.info.rule.th)
    assert "โหมดปกติ" in page.one("mode-text").text
    assert not page.all("public-mode-toggle")  # staff are not agency admins

    await site.english("staff")
    page = await site.page("staff", "/chat/new")
    for preset in PRESETS:
        assert squash(page.one(f"rule-{preset.value}").text) == squash(preset.info.rule.en)
    assert (await site.page("boss", "/chat/new")).one("public-mode-toggle")


async def test_creating_rooms_of_every_kind(site: Site) -> None:
    staff, peer, boss = (site.people[k].address for k in ("staff", "peer", "boss"))
    made: dict[str, Room] = {}
    forms: dict[str, list[tuple[str, str]]] = {
        "group": [("name", "กลุ่มงาน"), ("members", f"{peer}\n{boss}")],
        "secret": [("name", "ลับ"), ("members", boss), ("secret_ttl", "3600")],
        "broadcast": [("name", "ประกาศ"), ("audience", "units"), ("units", "กองช่าง"),
                      ("posters", peer)],
        "no_private_chat": [("name", "ห้ามคุย"), ("members", peer)],
        "auto_location": [("name", "ภาคสนาม"), ("members", peer)],
        "working_hours": [("name", "เวลาราชการ"), ("members", peer), ("days", "0"), ("days", "4"),
                          ("start", "08:30"), ("end", "16:30")],
        "direct": [("with", peer)],
    }  # fmt: skip
    for kind, fields in forms.items():
        reply = await site.post("boss", "/chat/new", [("kind", kind), *fields])
        assert reply.status == 303, (kind, reply.body[:300])
        room_id = (reply.header("Location") or "").rpartition("/")[2].replace("%3A", ":")
        made[kind] = await site.chat.room(site.people["boss"], room_id)
    assert made["group"].members == {staff, peer, boss} - {staff}
    assert made["secret"].kind == "secret"
    assert made["secret"].options.secret_ttl == 3600
    assert made["broadcast"].members == {boss, staff, peer}  # the unit กองช่าง, and the owner
    assert made["broadcast"].options.posters == {peer}
    assert made["no_private_chat"].options.no_private_chat
    assert made["auto_location"].options.auto_location
    hours = made["working_hours"].options.working_hours
    assert hours is not None
    assert hours.to_json() == {"days": [0, 4], "start": "08:30", "end": "16:30"}
    assert made["direct"].kind == "direct"
    assert made["direct"].members == {boss, peer}


async def test_refusals_are_shown_in_the_users_language(site: Site) -> None:
    boss = site.people["boss"].address
    refused = await site.post("staff", "/chat/new", [("kind", "direct"), ("with", boss)])
    assert refused.status == 403
    page = Page(refused.body.decode())
    assert "ไม่สามารถเริ่มสนทนาส่วนตัวกับผู้ที่มีตำแหน่งสูงกว่าได้" in page.one("form-error").text
    assert page.one("direct-with").attrs["value"] == boss  # the form keeps what was typed

    await site.english("staff")
    refused = await site.post("staff", "/chat/new", [("kind", "direct"), ("with", boss)])
    assert "You cannot start a private chat with someone of higher rank" in (
        Page(refused.body.decode()).one("form-error").text
    )
    # In public mode (the contacted person's agency) it is allowed.
    switched = await site.post("boss", "/chat/settings", [("public_mode", "on")])
    assert switched.status == 303
    allowed = await site.post("staff", "/chat/new", [("kind", "direct"), ("with", boss)])
    assert allowed.status == 303
    assert (await site.post("staff", "/chat/settings", [("public_mode", "off")])).status == 403
    # Issue 16: the same form lets everyone create broadcast rooms, or only admins.
    assert not await site.box.chat.broadcast_by_everyone(DOMAIN)
    opened = [("public_mode", "on"), ("broadcast_everyone", "on")]
    assert (await site.post("boss", "/chat/settings", opened)).status == 303
    assert await site.box.chat.broadcast_by_everyone(DOMAIN)

    no_days = await site.post("peer", "/chat/new", [("kind", "working_hours"), ("name", "x")])
    assert no_days.status == 422
    assert "กรุณาเลือกวันทำการอย่างน้อยหนึ่งวัน" in no_days.body.decode()


# --- search ----------------------------------------------------------------------------------


async def test_search_page_finds_thai_substrings_in_my_rooms(site: Site) -> None:
    room = await site.room("boss", "staff")
    elsewhere = await site.room("boss", "peer")
    found = await site.say("boss", room, "ขอเชิญประชุมคณะกรรมการบริหารวันจันทร์")
    await site.say("boss", elsewhere, "คณะกรรมการลับเฉพาะ")

    page = await site.page("staff", "/chat/search?q=" + quote("กรรมการ"))
    results = page.all("search-result")
    assert [r.attrs["data-message-id"] for r in results] == [found]
    marks = [e for e in page.elements if e.tag == "mark"]
    assert [m.text for m in marks] == ["กรรมการ"]
    assert "งานสารบรรณ" in results[0].text
    (link,) = [e for e in results[0].children if e.tag == "a"]
    assert link.attrs["href"].endswith(f"#m-{found}")
    # Two Thai characters scan rather than use the index: found all the same.
    assert (
        len((await site.page("staff", "/chat/search?q=" + quote("ปร"))).all("search-result")) == 1
    )
    assert not (await site.page("staff", "/chat/search?q=" + quote("ไม่มีคำนี้"))).all("search-result")
    assert not (await site.page("staff", "/chat/search")).all("search-results")


async def test_search_results_are_escaped(site: Site) -> None:
    room = await site.room("boss", "staff")
    await site.say("boss", room, f"ก่อน {HOSTILE} หลัง")
    reply = await site.get("staff", "/chat/search?q=" + "onerror")
    assert HOSTILE not in reply.body.decode()
    assert [m.text for m in Page(reply.body.decode()).elements if m.tag == "mark"] == ["onerror"]


# --- every page ------------------------------------------------------------------------------


async def test_no_page_has_inline_script_style_or_handlers(site: Site) -> None:
    room = await site.room("boss", "staff", options={"auto_location": True})
    await site.say("staff", room, HOSTILE, location={"lat": 13.7, "lon": 100.5})
    await site.chat.invite(
        site.people["boss"], room.id, title="<b>ประชุม</b>", starts_at="2026-01-01T09:00:00+07:00"
    )
    secret = await site.room("boss", "staff", kind="secret", name=None)
    paths = [
        "/chat",
        "/chat/new",
        "/chat/search?q=onerror",
        f"/chat/rooms/{room.id}",
        f"/chat/rooms/{secret.id}",
    ]
    for who in ("boss", "staff"):
        for path in paths:
            page = await site.page(who, path)
            assert not page.inline_scripts, path
            for element in page.elements:
                assert element.tag != "style", path
                assert "style" not in element.attrs, (path, element)
                assert not [a for a in element.attrs if a.startswith("on")], (path, element)
                if element.tag == "script":
                    assert element.attrs.get("type") == "module", path
            forms = [
                e for e in page.elements if e.tag == "form" and e.attrs.get("method") == "post"
            ]
            for form in forms:
                fields = [e for e in _descendants(form) if e.tag == "input"]
                assert any(f.attrs.get("name") == "csrf_token" for f in fields), (path, form.attrs)


def _descendants(element: Element) -> list[Element]:
    found: list[Element] = []
    stack = list(element.children)
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(child.children)
    return found


async def test_pages_need_a_session_and_a_csrf_token(site: Site) -> None:
    room = await site.room("boss", "staff")
    anonymous = await site.server.request("GET", f"/chat/rooms/{room.id}")
    assert anonymous.status == 303
    assert (anonymous.header("Location") or "").startswith("/signin?next=")
    headers = {**site.cookie("boss"), "Origin": site.origin,
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    forged = await site.server.request(
        "POST", f"/chat/rooms/{room.id}/name", b"name=hijacked", headers=headers
    )
    assert forged.status == 403
    assert (await site.chat.room(site.people["boss"], room.id)).name == "งานสารบรรณ"
    # Someone else's room is not found, not forbidden.
    assert (await site.get("peer", f"/chat/rooms/{room.id}")).status == 404


# --- pure helpers ------------------------------------------------------------------------------


def test_link_segments_examples() -> None:
    def links(text: str) -> list[str | None]:
        return [s.href for s in link_segments(text) if s.href]

    assert links("ดูที่https://a.go.th/xครับ") == ["https://a.go.th/x"]
    assert links("(see https://a.go.th/x).") == ["https://a.go.th/x"]
    assert links("https://th.wikipedia.org/wiki/A_(B)") == ["https://th.wikipedia.org/wiki/A_(B)"]
    assert links("javascript:alert(1) data:text/html,x ftp://a.go.th") == []
    assert links("http:// alone, HTTP://A.GO.TH!") == ["HTTP://A.GO.TH"]
    assert link_segments("") == []


#: Chat text made of the pieces that make or break links.
_LINKISH = st.lists(
    st.sampled_from(["http://", "https://", "HTTPS://", "a", "b", " ", ":", "/", ".", "(", ")",
                     "[", "]", "!", "?", "'", "<", ">", '"', "\n", "฿", "ก", "ข", "javascript:"])
).map("".join)  # fmt: skip


@given(st.one_of(_LINKISH, st.text()))
def test_link_segments_keep_the_text_and_link_only_web_addresses(text: str) -> None:
    pieces = link_segments(text)
    assert "".join(p.text for p in pieces) == text
    for piece in pieces:
        assert piece.text
        if piece.href is not None:
            assert piece.href == piece.text
            assert re.fullmatch(r"(?i)https?://[!-~]+", piece.href)
            assert not set(piece.href) & set('<>"')


@given(st.text(), st.text(min_size=1))
def test_highlight_marks_only_a_case_insensitive_match(text: str, q: str) -> None:
    pieces = highlight(text, q)
    marked = [p for p, hit in pieces if hit]
    assert len(marked) <= 1
    if marked:
        assert marked[0].casefold() == q.casefold()
    if q.casefold() not in text.casefold():
        assert not marked


def test_bangkok_time_and_addresses() -> None:
    assert bangkok_time("2026-01-31T14:05", "starts_at") == "2026-01-31T14:05:00+07:00"
    for bad in ("", "2026-02-30T10:00", "tomorrow", "2026-01-31 14:05"):
        with pytest.raises(Exception, match=r"date|time|วัน"):
            bangkok_time(bad, "starts_at")
    assert parse_addresses(" a@x.go.th, b@x.go.th;\nc@x.go.th  a@x.go.th ") == [
        "a@x.go.th",
        "b@x.go.th",
        "c@x.go.th",
    ]
