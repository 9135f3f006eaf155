// The room list page (/chat): unread badges and previews follow the event stream.

import { api, el, tr } from "./common.js";
import { learnName, nameOf, names } from "./chat-names.js";
import { showAlert, showRefusal } from "./chat-notices.js";
import { arrowNavigation, enc, root, startChatPage } from "./chat-page.js";
import { EventStream } from "./chat-stream.js";
import { isoTime, shortDate } from "./chat-text.js";

const KIND_WORDS = {
  direct: tr("สนทนาส่วนตัว", "Direct chat"),
  group: tr("กลุ่ม", "Group"),
  broadcast: tr("ห้องประกาศ", "Broadcast"),
  secret: tr("ห้องลับ", "Secret chat"),
};

// As preview in appliance/chat/pages/views.py: who, and what (a secret message is never shown in a list).
function previewText(message, me) {
  if (!message) return "";
  const who = message.sender === me ? tr("ท่าน", "You") : nameOf(message.sender);
  const c = message.content ?? {};
  let what;
  if (message.deleted) what = tr("ข้อความนี้ถูกลบแล้ว", "This message was deleted");
  else if (message.secret) what = tr("ข้อความลับ", "Secret message");
  else if (message.kind === "text") what = String(c.text ?? "").split(/\s+/).join(" ").trim();
  else if (message.kind === "link") what = String(c.title || c.url || "");
  else if (message.kind === "image") what = tr("รูปภาพ", "Photo");
  else if (message.kind === "video") what = tr("วิดีโอ", "Video");
  else if (message.kind === "voice") what = tr("ข้อความเสียง", "Voice message");
  else if (message.kind === "file") what = tr("ไฟล์ ", "File ") + String(c.name ?? "");
  else if (message.kind === "location") what = tr("ตำแหน่งที่ตั้ง", "Location");
  else if (message.kind === "sticker") what = tr("สติกเกอร์", "Sticker");
  else what = String(message.kind);
  if (what.length > 80) what = what.slice(0, 79) + "…";
  return `${who}: ${what}`;
}

const LIST_EVENTS = new Set([
  "message.posted", "message.edited", "message.deleted", "message.expired", "message.hidden",
  "message.shown", "receipt", "room.created", "room.renamed", "room.deleted", "member.added",
  "member.removed",
]);

// A row for a room that appeared since the page was rendered (templates/chat/list.html).
function rowFor(room) {
  const label = KIND_WORDS[room.kind] ?? room.kind;
  return el("li", { class: "room-item", "data-testid": "room-item", "data-room-id": room.id, "data-kind": room.kind },
    el("a", { class: "room-link", href: `/chat/rooms/${enc(room.id)}` },
      el("span", { class: "room-icon kind-icon", "data-icon": room.kind, "aria-hidden": "true" }),
      el("span", { class: "room-main" },
        el("span", { class: "room-name", "data-testid": "room-name" }, room.name || tr("ห้องใหม่", "New room")),
        el("span", { class: "kind-label" }, label),
        el("span", { class: "preview", "data-testid": "room-preview" })),
      el("span", { class: "room-side" },
        el("time", { class: "room-time", "data-testid": "room-time" }),
        el("span", { class: "unread-badge", "data-testid": "unread-count", hidden: true }),
        el("span", { class: "visually-hidden unread-words" }))));
}

// Bring every row up to date with /api/v1/me/unread: badges, previews, times, order.
async function refresh(list, me) {
  let data;
  try { data = await api("GET", "/api/v1/me/unread"); } catch { return; }
  const present = new Set();
  const senders = data.rooms.map((r) => r.last_message?.sender).filter(Boolean);
  await Promise.all(senders.filter((a) => !names.has(a)).map(learnName));
  for (const info of data.rooms) {
    present.add(info.room_id);
    let row = [...list.querySelectorAll(".room-item")].find((li) => li.dataset.roomId === info.room_id);
    if (!row) {
      try { row = rowFor(await api("GET", `/api/v1/rooms/${enc(info.room_id)}`)); } catch { continue; }
      list.querySelector(".empty")?.remove();
      list.prepend(row);
    }
    const badge = row.querySelector(".unread-badge");
    badge.textContent = info.unread >= 999 ? "999+" : String(info.unread);
    badge.hidden = info.unread === 0;
    row.querySelector(".unread-words").textContent = info.unread ? tr("ข้อความที่ยังไม่ได้อ่าน", "unread messages") : "";
    row.classList.toggle("has-unread", info.unread > 0);
    const last = info.last_message;
    row.querySelector(".preview").textContent = previewText(last, me);
    const time = row.querySelector(".room-time");
    if (last) {
      time.dateTime = isoTime(last.created_at);
      time.textContent = shortDate(last.created_at);
      row.dataset.last = String(last.created_at);
    }
  }
  for (const row of list.querySelectorAll(".room-item")) {
    if (!present.has(row.dataset.roomId)) row.remove();
  }
  // Newest activity first, as the server orders it.
  const rows = [...list.querySelectorAll(".room-item")];
  const when = (row) => Number(row.dataset.last ?? (row.querySelector(".room-time")?.dateTime ? Date.parse(row.querySelector(".room-time").dateTime) / 1000 : 0));
  const sorted = [...rows].sort((a, b) => when(b) - when(a));
  if (sorted.some((row, i) => row !== rows[i])) {
    const focused = document.activeElement;
    list.append(...sorted);
    if (focused instanceof HTMLElement) focused.focus();
  }
}

function initList() {
  const me = root.dataset.me;
  const list = root.querySelector('[data-testid="room-list"]');
  arrowNavigation(list, ".room-link");
  let timer = null;

  new EventStream(root, Number(root.dataset.cursor) || 0, (event) => {
    if (event.type === "alert") showAlert(event);
    else if (event.type === "sync.rejected") showRefusal(event);
    else if (LIST_EVENTS.has(event.type)) {
      clearTimeout(timer);
      timer = setTimeout(() => refresh(list, me), 300);
    }
  }, () => {});
}

startChatPage(initList);
