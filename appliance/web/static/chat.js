// Chat in the browser: keeps the server-rendered chat pages live (appliance/chat/pages.py).
//
// One module for the four pages; the page says which it is in data-chat-page:
//   list   - room list: unread badges and previews follow the event stream;
//   room   - a room: stream of messages, edits, deletions, receipts, typing; sending
//            text, replies, files, location, stickers; marking what is seen as read;
//   new    - the new-room form: shows the fields of the chosen kind, finds colleagues;
//   search - search results (keyboard only).
//
// Rules kept everywhere: text from a message, a name or the server goes into the page
// only through textContent / el() (never innerHTML), and a link is an <a> only when it
// is an http(s) URL. Errors are shown in the page's language, from the API's
// message_th / message_en.

import { API_HEADERS, ApiError, api, csrfToken, el, formatDate, formatSize as sizeText, lang, tr } from "./common.js";

const root = document.querySelector(".chat[data-chat-page]");
const enc = encodeURIComponent;

// --- calling the API ----------------------------------------------------------------

// The refusal in the page's language (the API sends both).
function errorText(error) {
  const body = error?.body?.error;
  if (body) return (lang === "th" ? body.message_th : body.message_en) || body.message;
  if (error instanceof ApiError) {
    return tr(`เกิดข้อผิดพลาด (HTTP ${error.status})`, `Something went wrong (HTTP ${error.status})`);
  }
  return tr("ติดต่อเครื่องแม่ข่ายไม่ได้ กรุณาลองใหม่อีกครั้ง", "Could not reach the box; please try again");
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- text, links, dates ---------------------------------------------------------------

// The same rule as pages.link_segments: ASCII URL characters only, trailing sentence
// punctuation and unmatched closing brackets left outside the link.
const LINK = /https?:\/\/[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=%]+/gi;
const TRAILING = ".,;:!?'";
const OPENERS = { ")": "(", "]": "[" };

function count(text, char) {
  return text.split(char).length - 1;
}

function trimUrl(url) {
  while (url) {
    const last = url[url.length - 1];
    if (TRAILING.includes(last)) url = url.slice(0, -1);
    else if (OPENERS[last] && count(url, last) > count(url, OPENERS[last])) url = url.slice(0, -1);
    else break;
  }
  return url;
}

export function linkSegments(text) {
  const pieces = [];
  let at = 0;
  for (const match of text.matchAll(LINK)) {
    const url = trimUrl(match[0]);
    if (!url.split("://")[1]) continue;
    if (match.index > at) pieces.push({ text: text.slice(at, match.index) });
    pieces.push({ text: url, href: url });
    at = match.index + url.length;
  }
  if (at < text.length) pieces.push({ text: text.slice(at) });
  return pieces;
}

function safeHref(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

function externalLink(href, text) {
  return el("a", { href, rel: "noopener noreferrer", target: "_blank" }, text);
}

// Text with its web links as anchors, built node by node.
function textWithLinks(text) {
  const nodes = [];
  for (const piece of linkSegments(text)) {
    const href = piece.href && safeHref(piece.href);
    nodes.push(href ? externalLink(href, piece.text) : document.createTextNode(piece.text));
  }
  return nodes;
}

const BANGKOK = 7 * 3600 * 1000;

function isoTime(seconds) {
  return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

// As i18n.format_short: the time if today (Thailand's day), else the date.
function shortDate(seconds) {
  const then = new Date(seconds * 1000 + BANGKOK);
  const today = new Date(Date.now() + BANGKOK);
  if (then.toISOString().slice(0, 10) === today.toISOString().slice(0, 10)) {
    return then.toISOString().slice(11, 16);
  }
  return formatDate(seconds * 1000, { time: false });
}

function mapUrl(place) {
  const lat = Number(place?.lat);
  const lon = Number(place?.lon);
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return null;
  const a = lat.toFixed(6);
  const b = lon.toFixed(6);
  return `https://www.openstreetmap.org/?mlat=${a}&mlon=${b}#map=16/${a}/${b}`;
}

// --- names ----------------------------------------------------------------------------

const names = new Map();
const asking = new Map();

function nameOf(address) {
  return names.get(address) ?? address;
}

// Learn a colleague's name from the directory, then fix it wherever the address shows.
function learnName(address) {
  if (names.has(address) || asking.has(address)) return asking.get(address) ?? Promise.resolve();
  const done = api("GET", `/api/v1/directory/users?q=${enc(address)}&limit=5`)
    .then((people) => {
      const person = people.find((p) => p.address === address);
      if (!person) return;
      const name = (lang === "en" ? person.name_en : person.name_th) || person.name_th || address;
      names.set(address, name);
      for (const node of document.querySelectorAll("[data-name-of]")) {
        if (node.dataset.nameOf === address) node.textContent = name;
      }
    })
    .catch(() => {});
  asking.set(address, done);
  return done;
}

function nameNode(address, attrs = {}) {
  if (!names.has(address)) learnName(address);
  return el("span", { ...attrs, "data-name-of": address }, nameOf(address));
}

// --- the event stream (WebSocket, resumable by cursor) ---------------------------------

class EventStream {
  // Opens /api/v1/stream?cursor=N with the session cookie (same origin), and after a
  // drop reconnects with backoff (1 s doubling to 30 s, jittered) from the cursor of
  // the last event handled, so nothing is missed or repeated (docs/chat.md).
  constructor(cursor, onEvent, onNotice) {
    this.cursor = cursor;
    this.onEvent = onEvent;
    this.onNotice = onNotice;
    this.backoff = 1000;
    this.ws = null;
    this.retry = null;
    this.ackTimer = null;
    this.status = el("p", { class: "stream-status muted", role: "status", "data-testid": "stream-status", hidden: true });
    root.prepend(this.status);
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
    this.connect();
  }

  connect() {
    this.retry = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/stream?cursor=${this.cursor}`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.backoff = 1000;
      this.status.hidden = true;
      root.dataset.stream = "open";
    });
    ws.addEventListener("message", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      if (data.type === "event" && Number.isInteger(data.cursor)) {
        if (data.cursor <= this.cursor) return;
        this.cursor = data.cursor;
        try { this.onEvent(data.event); } catch (error) { console.error(error); }
        this.scheduleAck();
      } else if (data.type === "typing") {
        this.onNotice(data);
      }
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      root.dataset.stream = "closed";
      this.status.hidden = false;
      this.status.textContent = tr("การเชื่อมต่อขาดหาย กำลังเชื่อมต่อใหม่…", "Connection lost; reconnecting…");
      const wait = this.backoff * (0.5 + Math.random() / 2);
      this.backoff = Math.min(this.backoff * 2, 30000);
      this.retry = setTimeout(() => this.connect(), wait);
    });
  }

  reconnectNow() {
    if (this.ws || !this.retry) return;
    clearTimeout(this.retry);
    this.connect();
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  scheduleAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = setTimeout(() => this.send({ type: "ack", cursor: this.cursor }), 1000);
  }
}

// --- alerts (every chat page) ------------------------------------------------------------

function showAlert(event) {
  const box = root.querySelector(".alert-notices");
  if (!box) return;
  const p = event.payload ?? {};
  const where = mapUrl(p.location);
  const radius = Number(p.radius_m) >= 1000
    ? `${(Number(p.radius_m) / 1000).toFixed(1)} ${tr("กม.", "km")}`
    : `${Math.round(Number(p.radius_m) || 0)} ${tr("ม.", "m")}`;
  const notice = el("div", { class: "alert-notice", role: "alert", "data-testid": "alert-notice" },
    el("p", {},
      el("strong", {}, tr("แจ้งเตือน", "Alert") + ": "),
      el("span", { class: "alert-text", "data-testid": "alert-text" }, String(p.text ?? "")),
      el("br"),
      el("span", { class: "muted" },
        tr("จาก ", "From "), nameNode(String(p.from ?? "")), " · ",
        formatDate(event.created_at * 1000), " · ", tr("รัศมี ", "within "), radius, " "),
      where ? externalLink(where, tr("ดูแผนที่", "Map")) : null),
    el("button", { type: "button", class: "small", onclick: () => notice.remove() }, tr("รับทราบ", "Dismiss")));
  box.prepend(notice);
}

// An action taken while the box was cut off that the hub refused when the link came back
// (docs/chat-sync.md): say so where the author looks, never drop it silently.
function showRefusal(event) {
  const box = root.querySelector(".alert-notices");
  if (!box) return;
  const p = event.payload ?? {};
  const words = typeof p.content?.text === "string" ? p.content.text : "";
  const notice = el("div", { class: "alert-notice", role: "alert", "data-testid": "sync-refusal" },
    el("p", {},
      el("strong", {}, tr("ส่วนกลางไม่รับรายการที่ทำไว้ระหว่างขาดการเชื่อมต่อ", "The centre refused an action taken while offline") + ": "),
      el("span", {}, tr(String(p.message_th ?? ""), String(p.message_en ?? ""))),
      words ? el("br") : null,
      words ? el("span", { class: "muted" }, tr("ข้อความของท่าน: ", "Your message: "), words) : null),
    el("button", { type: "button", class: "small", onclick: () => notice.remove() }, tr("รับทราบ", "Dismiss")));
  box.prepend(notice);
}

// --- keyboard: "/" to search, Esc to close ------------------------------------------------

function typingInField(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.key === "/" && !event.ctrlKey && !event.metaKey && !event.altKey && !typingInField(event.target)) {
    const search = document.getElementById("chat-q");
    if (search) {
      event.preventDefault();
      search.focus();
      search.select();
    }
  } else if (event.key === "Escape" && !document.querySelector("dialog[open]")) {
    // Dialogs close themselves on Esc; an open side panel closes here.
    const panel = event.target instanceof Element ? event.target.closest("details[open]") : null;
    if (panel) {
      panel.open = false;
      panel.querySelector("summary")?.focus();
    }
  }
});

// Up and down arrows move between rooms in the list.
function arrowNavigation(list, selector) {
  list.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const links = [...list.querySelectorAll(selector)];
    const at = links.indexOf(document.activeElement);
    if (at < 0) return;
    const next = links[at + (event.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      event.preventDefault();
      next.focus();
    }
  });
}

// --- geolocation ----------------------------------------------------------------------------

function browserLocation() {
  return new Promise((resolve, reject) => {
    if (!navigator.geolocation) {
      reject(new Error(tr("เบราว์เซอร์นี้ไม่รองรับการระบุตำแหน่ง", "This browser cannot tell its location")));
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) => resolve({ lat: position.coords.latitude, lon: position.coords.longitude }),
      (error) => reject(new Error(error.code === 1
        ? tr("ไม่ได้รับอนุญาตให้ใช้ตำแหน่ง", "Permission to use the location was refused")
        : tr("อ่านตำแหน่งจากเบราว์เซอร์ไม่ได้", "The browser could not tell the location"))),
      { enableHighAccuracy: true, timeout: 10000, maximumAge: 60000 });
  });
}

function numberFrom(input, low, high) {
  const value = input?.value.trim() === "" ? NaN : Number(input?.value);
  return Number.isFinite(value) && value >= low && value <= high ? value : null;
}

function bindFillLocation() {
  for (const button of root.querySelectorAll('[data-action="fill-location"]')) {
    button.addEventListener("click", async () => {
      const lat = document.getElementById(button.dataset.lat);
      const lon = document.getElementById(button.dataset.lon);
      try {
        const place = await browserLocation();
        lat.value = place.lat.toFixed(6);
        lon.value = place.lon.toFixed(6);
      } catch (error) {
        button.after(el("span", { class: "alert", role: "alert" }, " ", error.message));
        lat.focus();
      }
    });
  }
}

// --- finding colleagues (datalist#people) ---------------------------------------------------

function bindPeopleSearch() {
  const list = document.getElementById("people");
  if (!list) return;
  let timer = null;
  for (const input of root.querySelectorAll("[data-people-search]")) {
    input.addEventListener("input", () => {
      clearTimeout(timer);
      const q = input.value.split(/[\s,;]+/).pop() ?? "";
      if (q.length < 2) return;
      timer = setTimeout(async () => {
        try {
          const people = await api("GET", `/api/v1/directory/users?q=${enc(q)}&limit=10`);
          list.replaceChildren(...people.map((p) => {
            const name = (lang === "en" ? p.name_en : p.name_th) || p.name_th;
            names.set(p.address, name);
            return el("option", { value: p.address }, `${name} (${p.address})`);
          }));
        } catch { /* suggestions are a help, not a need */ }
      }, 250);
    });
  }
  for (const button of root.querySelectorAll('[data-action="add-person"]')) {
    button.addEventListener("click", () => {
      const input = button.parentElement.querySelector("input");
      const target = document.getElementById(button.dataset.target);
      const address = input.value.trim();
      if (!address) return;
      target.value = target.value.trim() ? `${target.value.trim()}\n${address}` : address;
      input.value = "";
      input.focus();
    });
  }
}

// --- the room list ----------------------------------------------------------------------------

const KIND_WORDS = {
  direct: tr("สนทนาส่วนตัว", "Direct chat"),
  group: tr("กลุ่ม", "Group"),
  broadcast: tr("ห้องประกาศ", "Broadcast"),
  secret: tr("ห้องลับ", "Secret chat"),
};

// As pages.preview: who, and what (a secret message is never shown in a list).
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

function initList() {
  const me = root.dataset.me;
  const list = root.querySelector('[data-testid="room-list"]');
  arrowNavigation(list, ".room-link");
  let timer = null;

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

  async function refresh() {
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

  new EventStream(Number(root.dataset.cursor) || 0, (event) => {
    if (event.type === "alert") showAlert(event);
    else if (event.type === "sync.rejected") showRefusal(event);
    else if (LIST_EVENTS.has(event.type)) {
      clearTimeout(timer);
      timer = setTimeout(refresh, 300);
    }
  }, () => {});
}

// --- a room -------------------------------------------------------------------------------------

function initRoom() {
  const roomId = root.dataset.roomId;
  const me = root.dataset.me;
  const maxBytes = (Number(root.dataset.maxUploadMb) || 25) * 1024 * 1024;
  const autoLocation = root.dataset.autoLocation === "1";
  const list = root.querySelector('[data-testid="messages"]');
  const form = root.querySelector(".composer");
  const composer = form?.querySelector("textarea[name=text]");
  const replyInput = form?.querySelector("input[name=reply_to]");
  const replying = form?.querySelector(".replying");
  const sendError = form?.querySelector(".send-error");
  const uploadStatus = form?.querySelector(".upload-status");
  const notice = root.querySelector(".room-notice");
  const typingLine = root.querySelector('[data-testid="typing"]');
  const roomPath = `/api/v1/rooms/${enc(roomId)}`;
  let draftClientId = null;
  let draftText = null;
  let unseen = 0;
  const baseTitle = document.title;

  for (const li of root.querySelectorAll('[data-testid="member"]')) names.set(li.dataset.address, li.dataset.name);
  for (const li of list.querySelectorAll(".message")) {
    names.set(li.dataset.sender, li.querySelector(".sender")?.textContent ?? li.dataset.sender);
  }

  function messageItem(id) {
    return [...list.children].find((li) => li.dataset.messageId === id) ?? null;
  }

  function showNotice(text, withReload = false) {
    notice.replaceChildren(text);
    if (withReload) {
      notice.append(" ", el("button", { type: "button", class: "small", onclick: () => location.reload() },
        tr("โหลดหน้าใหม่", "Reload")));
    }
    notice.hidden = false;
  }

  function showError(text) {
    if (!sendError) return showNotice(text);
    sendError.textContent = text;
    sendError.hidden = !text;
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 200;
  }

  // ---- rendering (mirrors message_item in templates/chat/_macros.html)

  function quoteFor(id) {
    const quote = el("blockquote", { class: "quote", "data-testid": "quote", "data-quote-id": id });
    const fill = (message) => {
      if (!message || message.deleted) {
        quote.classList.add("missing");
        quote.replaceChildren(tr("ข้อความต้นฉบับไม่มีแล้ว", "The original message is no longer available"));
        return;
      }
      quote.replaceChildren(nameNode(message.sender, { class: "quote-sender" }), " ",
        el("span", { class: "quote-text" }, snippetOf(message)));
    };
    const here = messageItem(id);
    if (here) {
      quote.replaceChildren(nameNode(here.dataset.sender, { class: "quote-sender" }), " ",
        el("span", { class: "quote-text" }, (here.querySelector(".body")?.textContent ?? "").trim().slice(0, 120)));
    } else {
      api("GET", `${roomPath}/messages/${enc(id)}`).then(fill, () => fill(null));
    }
    return quote;
  }

  function snippetOf(message) {
    const c = message.content ?? {};
    const parts = [c.text, c.title, c.url, c.name, c.location?.label].filter((p) => typeof p === "string" && p);
    return parts.join(" ").split(/\s+/).join(" ").slice(0, 120);
  }

  function fileUrl(message) {
    return `${roomPath}/messages/${enc(message.id)}/file`;
  }

  function placeLink(place, fallback) {
    const url = mapUrl(place);
    return url ? externalLink(url, place.label || fallback) : null;
  }

  function renderBody(message) {
    const c = message.content ?? {};
    const body = el("div", { class: "body", "data-testid": "message-body" });
    if (message.deleted) {
      body.append(el("p", { class: "tombstone" }, tr("ข้อความนี้ถูกลบแล้ว", "This message was deleted")));
      return body;
    }
    const kind = message.kind;
    if (kind === "text") {
      body.append(el("p", { class: "text" }, textWithLinks(String(c.text ?? ""))));
    } else if (kind === "link") {
      const href = safeHref(String(c.url ?? ""));
      if (href) body.append(el("p", { class: "link" }, externalLink(href, String(c.title || c.url))));
    } else if (kind === "sticker") {
      body.append(el("img", { class: "sticker", src: `/api/v1/stickers/${enc(String(c.sticker_id ?? ""))}/image`,
        alt: `${tr("สติกเกอร์", "Sticker")} ${c.name ?? ""}`, width: 120, height: 120 }));
    } else if (kind === "location") {
      body.append(el("p", { class: "place" }, placeLink(c.location ?? {}, tr("ตำแหน่งที่ตั้ง", "Location")), " ",
        el("span", { class: "coords" }, `${Number(c.location?.lat).toFixed(5)}, ${Number(c.location?.lon).toFixed(5)}`)));
    } else if (kind === "image") {
      body.append(el("a", { class: "image", href: fileUrl(message), target: "_blank", rel: "noopener noreferrer" },
        el("img", { src: fileUrl(message), alt: String(c.name ?? ""), loading: "lazy" })));
    } else if (kind === "video") {
      body.append(el("video", { controls: true, preload: "none", src: fileUrl(message) }));
    } else if (kind === "voice") {
      body.append(el("audio", { controls: true, preload: "none", src: fileUrl(message) }));
    } else if (kind === "file") {
      body.append(el("p", { class: "file" },
        el("a", { href: fileUrl(message), download: String(c.name ?? "file") }, String(c.name ?? "")), " ",
        el("span", { class: "muted" }, `(${sizeText(Number(c.size) || 0)})`)));
    }
    if (["image", "video", "voice", "file"].includes(kind) && c.text) {
      body.append(el("p", { class: "text caption" }, textWithLinks(String(c.text))));
    }
    if (kind !== "location" && c.location) {
      body.append(el("p", { class: "place attached" }, placeLink(c.location, tr("ตำแหน่งของผู้ส่ง", "Sender's location"))));
    }
    return body;
  }

  function actionsFor(message, mine) {
    const editable = mine && ["text", "link", "image", "video", "voice", "file"].includes(message.kind);
    return el("div", { class: "actions js-only" },
      el("button", { type: "button", class: "small", "data-action": "reply", "data-testid": "reply" }, tr("ตอบกลับ", "Reply")),
      editable ? el("button", { type: "button", class: "small", "data-action": "edit", "data-testid": "edit" }, tr("แก้ไข", "Edit")) : null,
      mine ? el("button", { type: "button", class: "small danger", "data-action": "delete", "data-testid": "delete" }, tr("ลบ", "Delete")) : null,
      el("button", { type: "button", class: "small", "data-action": "hide", "data-testid": "hide" }, tr("ซ่อนจากมุมมองของฉัน", "Hide for me")));
  }

  function renderMessage(message) {
    const mine = message.sender === me;
    const li = el("li", {
      class: "message" + (mine ? " mine" : "") + (message.deleted ? " deleted" : ""),
      id: `m-${message.id}`, "data-testid": "message", "data-message-id": message.id,
      "data-sender": message.sender, "data-kind": message.kind, "data-mine": mine ? "1" : "0",
      "data-secret": message.secret ? "1" : "0",
    });
    const meta = el("div", { class: "meta" },
      nameNode(message.sender, { class: "sender", "data-testid": "message-sender" }), " ",
      el("time", { datetime: isoTime(message.created_at), title: formatDate(message.created_at * 1000) },
        shortDate(message.created_at)));
    if (message.edited_at) meta.append(" ", el("span", { class: "edited", "data-testid": "edited" }, tr("แก้ไขแล้ว", "edited")));
    if (message.secret) meta.append(" ", el("span", { class: "badge secret" }, tr("ลับ", "secret")));
    li.append(meta);
    if (message.reply_to) li.append(quoteFor(message.reply_to));
    li.append(renderBody(message));
    if (mine) {
      li.append(el("p", { class: "read-by", "data-testid": "read-by", "data-readers": "", "data-more": "0", hidden: true },
        el("span", { class: "read-by-label" }, tr("อ่านแล้วโดย", "Read by")), " ",
        el("span", { class: "read-by-names", "data-testid": "read-by-names" }),
        el("span", { class: "read-by-more" })));
    }
    if (!message.deleted) li.append(actionsFor(message, mine));
    return li;
  }

  // Add a message (from the stream, a send, or an earlier page) unless it is here already.
  async function addMessage(message, { prepend = false } = {}) {
    if (message.room_id !== roomId || messageItem(message.id)) return null;
    if (message.secret && !message.deleted && !Object.keys(message.content ?? {}).length) {
      // A secret message's event carries no content (docs/chat.md): fetch it.
      try { message = await api("GET", `${roomPath}/messages/${enc(message.id)}`); } catch { return null; }
      if (messageItem(message.id)) return null;
    }
    const follow = !prepend && nearBottom();
    const li = renderMessage(message);
    if (prepend) list.prepend(li); else list.append(li);
    root.querySelector(".empty-room")?.remove();
    if (message.sender !== me) watchRead(li);
    if (follow || message.sender === me) li.scrollIntoView({ block: "end" });
    return li;
  }

  // ---- "read by"

  function addReader(li, address) {
    const line = li.querySelector(".read-by");
    if (!line) return;
    const readers = line.dataset.readers ? line.dataset.readers.split(" ") : [];
    if (readers.includes(address)) return;
    if (readers.length >= 10) {
      line.dataset.more = String(Number(line.dataset.more) + 1);
      line.querySelector(".read-by-more").textContent = " " + tr(`และอีก ${line.dataset.more} คน`, `and ${line.dataset.more} more`);
    } else {
      readers.push(address);
      line.dataset.readers = readers.join(" ");
      const namesLine = line.querySelector(".read-by-names");
      if (namesLine.childNodes.length) namesLine.append(", ");
      namesLine.append(nameNode(address));
    }
    line.hidden = false;
  }

  async function loadReceipts(li) {
    try {
      const receipts = await api("GET", `${roomPath}/messages/${enc(li.dataset.messageId)}/receipts`);
      for (const r of receipts.read) addReader(li, r.reader);
    } catch { /* shown when the next receipt arrives */ }
  }

  // ---- marking what is seen as read

  const visible = new Set();
  let lastRead = null;
  let readTimer = null;
  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) visible.add(entry.target); else visible.delete(entry.target);
    }
    scheduleRead();
  }, { threshold: 0.6 }) : null;

  function watchRead(li) {
    if (observer) observer.observe(li); else { visible.add(li); scheduleRead(); }
  }

  function scheduleRead() {
    if (document.visibilityState !== "visible") return;
    clearTimeout(readTimer);
    readTimer = setTimeout(markRead, 400);
  }

  async function markRead() {
    // The newest message of others on screen: everything up to it is read.
    let newest = null;
    for (const li of visible) {
      if (!li.isConnected) { visible.delete(li); continue; }
      if (!newest || (newest.compareDocumentPosition(li) & Node.DOCUMENT_POSITION_FOLLOWING)) newest = li;
    }
    if (!newest || (lastRead && lastRead.isConnected && !(lastRead.compareDocumentPosition(newest) & Node.DOCUMENT_POSITION_FOLLOWING))) return;
    const previous = lastRead;
    lastRead = newest;
    try {
      await api("POST", `${roomPath}/read`, { up_to: newest.dataset.messageId });
      for (const li of [...visible]) {
        if (li === newest || (li.compareDocumentPosition(newest) & Node.DOCUMENT_POSITION_FOLLOWING)) {
          observer?.unobserve(li);
          visible.delete(li);
        }
      }
    } catch {
      lastRead = previous;
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      unseen = 0;
      document.title = baseTitle;
      scheduleRead();
    }
  });

  // ---- the stream

  const typists = new Map();

  function showTyping() {
    const who = [...typists.keys()].map(nameOf);
    typingLine.textContent = who.length ? `${who.join(", ")} ${tr("กำลังพิมพ์…", who.length > 1 ? "are typing…" : "is typing…")}` : "";
  }

  function onTyping(notice) {
    if (notice.room_id !== roomId || notice.address === me) return;
    clearTimeout(typists.get(notice.address));
    typists.set(notice.address, setTimeout(() => { typists.delete(notice.address); showTyping(); }, 5000));
    if (!names.has(notice.address)) learnName(notice.address).then(showTyping);
    showTyping();
  }

  function disableComposer(text) {
    showNotice(text);
    if (form) for (const control of form.elements) control.disabled = true;
  }

  function onEvent(event) {
    const p = event.payload ?? {};
    if (event.type === "alert") return showAlert(event);
    if (event.type === "sync.rejected") return showRefusal(event);
    if (event.type === "message.hidden" && p.room_id === roomId) return messageItem(p.message_id)?.remove();
    if (event.room_id !== roomId) return;
    switch (event.type) {
      case "message.posted": {
        if (!p.message) return;
        addMessage(p.message).then((li) => {
          if (li && p.message.sender !== me && document.visibilityState !== "visible") {
            unseen += 1;
            document.title = `(${unseen}) ${baseTitle}`;
          }
        });
        if (typists.delete(p.message.sender)) showTyping();
        return;
      }
      case "message.edited": {
        const li = messageItem(p.message_id);
        if (!li || p.removed) return;
        const update = (message) => {
          const old = li.querySelector(".body");
          old.replaceWith(renderBody(message));
          if (!li.querySelector(".edited")) li.querySelector(".meta time").after(" ", el("span", { class: "edited", "data-testid": "edited" }, tr("แก้ไขแล้ว", "edited")));
        };
        if (li.dataset.secret === "1") api("GET", `${roomPath}/messages/${enc(p.message_id)}`).then(update, () => {});
        else update({ id: p.message_id, kind: li.dataset.kind, content: p.content ?? {}, deleted: false });
        return;
      }
      case "message.deleted": {
        const li = messageItem(p.message_id);
        if (!li) return;
        li.classList.add("deleted");
        li.querySelector(".body").replaceWith(renderBody({ deleted: true }));
        li.querySelector(".actions")?.remove();
        return;
      }
      case "message.expired": {
        const li = messageItem(p.message_id);
        if (!li) return;
        if (p.reason !== "read") return li.remove();
        // Everyone has read this secret message and the box has deleted it. It stays
        // on this open page, so the last reader can finish reading; a reload drops it.
        li.classList.add("expired");
        li.querySelector(".actions")?.remove();
        li.append(el("p", { class: "expired-note muted", "data-testid": "expired-note" },
          tr("ทุกคนอ่านแล้ว ข้อความลับนี้ถูกลบจากเครื่องแม่ข่ายแล้ว และจะหายไปเมื่อออกจากหน้านี้",
            "Everyone has read it: this secret message is deleted from the box and goes when you leave the page.")));
        return;
      }
      case "receipt": {
        for (const id of p.message_ids ?? []) {
          const li = messageItem(id);
          if (li && li.dataset.mine === "1") addReader(li, p.reader);
        }
        return;
      }
      case "member.added":
        for (const address of p.addresses ?? []) addMember(address);
        return;
      case "member.removed":
        if (p.address === me) disableComposer(tr("ท่านถูกนำออกจากห้องนี้แล้ว", "You were removed from this room."));
        else removeMember(p.address);
        return;
      case "room.renamed": {
        const title = root.querySelector('[data-testid="room-title"]');
        if (p.name) title.textContent = p.name;
        return;
      }
      case "room.owner_changed":
        root.dataset.owner = p.owner;
        root.querySelector('[data-testid="room-owner"]').replaceChildren(nameNode(p.owner));
        showNotice(tr(`${nameOf(p.owner)} เป็นเจ้าของห้องแล้ว`, `${nameOf(p.owner)} now owns the room.`), p.owner === me || p.previous === me);
        return;
      case "room.updated":
        showNotice(tr("กฎของห้องเปลี่ยนแล้ว", "The room's rules have changed."), true);
        return;
      case "room.deleted":
        disableComposer(tr("เจ้าของห้องลบห้องนี้แล้ว", "The owner deleted this room."));
        return;
      case "invitation.created":
        if (p.invitation) addInvitation(p.invitation);
        return;
      case "invitation.answered":
        answerShown(p.invitation_id, p.address, p.answer);
        return;
      default:
    }
  }

  // ---- members, invitations (live)

  function memberItem(address) {
    return [...root.querySelectorAll('[data-testid="member"]')].find((li) => li.dataset.address === address) ?? null;
  }

  function addMember(address) {
    if (memberItem(address)) return;
    const members = root.querySelector('[data-testid="member-list"]');
    members?.append(el("li", { class: "member", "data-testid": "member", "data-address": address },
      nameNode(address, { class: "member-name" }), " ", el("span", { class: "muted member-address" }, address)));
  }

  function removeMember(address) {
    memberItem(address)?.remove();
  }

  const ANSWERS = { accept: tr("ตอบรับ", "accepted"), decline: tr("ปฏิเสธ", "declined") };

  function answerLine(address, answer) {
    return el("li", { "data-address": address, "data-answer": answer ?? "" },
      nameNode(address, { class: "answer-name" }), ": ",
      el("span", { class: "answer-label" }, ANSWERS[answer] ?? tr("ยังไม่ตอบ", "no answer yet")));
  }

  function answerForm(id) {
    const action = `/chat/invitations/${enc(id)}/answer`;
    return el("form", { class: "inline", method: "post", action },
      el("input", { type: "hidden", name: "csrf_token", value: csrfToken }),
      el("button", { type: "submit", name: "answer", value: "accept", class: "small", "data-testid": "accept" }, tr("ตอบรับ", "Accept")), " ",
      el("button", { type: "submit", name: "answer", value: "decline", class: "small", "data-testid": "decline" }, tr("ปฏิเสธ", "Decline")));
  }

  function whenText(value) {
    const time = Date.parse(value);
    return Number.isFinite(time) ? formatDate(time) : String(value ?? "");
  }

  function addInvitation(invitation) {
    const box = root.querySelector('[data-testid="invitations"]');
    if (!box || [...box.children].some((li) => li.dataset.invitationId === invitation.id)) return;
    root.querySelector(".no-invitations")?.remove();
    const invited = (invitation.invitees ?? []).some((i) => i.address === me);
    let when = whenText(invitation.starts_at);
    if (invitation.ends_at) when += " – " + whenText(invitation.ends_at);
    if (invitation.place) when += " · " + invitation.place;
    box.prepend(el("li", { class: "invitation", "data-testid": "invitation", "data-invitation-id": invitation.id },
      el("h3", { class: "invitation-title" }, String(invitation.title ?? "")),
      el("p", { class: "invitation-when" }, when),
      el("p", { class: "muted" }, tr("ผู้เชิญ", "From"), ": ", nameNode(invitation.organiser)),
      invited ? answerForm(invitation.id) : null,
      el("ul", { class: "answers", "data-testid": "answers" },
        (invitation.invitees ?? []).map((i) => answerLine(i.address, i.answer)))));
    if (invited) showNotice(tr(`คำเชิญใหม่: ${invitation.title}`, `New invitation: ${invitation.title}`));
  }

  function answerShown(invitationId, address, answer) {
    const card = [...root.querySelectorAll('[data-testid="invitation"]')].find((li) => li.dataset.invitationId === invitationId);
    if (!card) return;
    const line = [...card.querySelectorAll(".answers li")].find((li) => li.dataset.address === address);
    if (line) line.replaceWith(answerLine(address, answer));
    if (address === me) {
      for (const button of card.querySelectorAll("button[name=answer]")) {
        button.setAttribute("aria-pressed", button.value === answer ? "true" : "false");
      }
    }
  }

  // ---- sending

  const locationDialog = document.getElementById("location-dialog");
  let knownPlace = null;

  // The manual form, when the browser cannot tell where we are; resolves to a place or null.
  function askPlace(why) {
    return new Promise((resolve) => {
      locationDialog.querySelector(".location-why").textContent = why;
      locationDialog.returnValue = "";
      locationDialog.addEventListener("close", () => {
        if (locationDialog.returnValue !== "send") return resolve(null);
        const lat = numberFrom(document.getElementById("loc-lat"), -90, 90);
        const lon = numberFrom(document.getElementById("loc-lon"), -180, 180);
        const label = document.getElementById("loc-label").value.trim();
        resolve(lat === null || lon === null ? null : { lat, lon, ...(label ? { label } : {}) });
      }, { once: true });
      locationDialog.showModal();
    });
  }

  // A location for a message in an auto-location room: the typed one, else the browser's.
  async function messagePlace() {
    const lat = numberFrom(document.getElementById("msg-lat"), -90, 90);
    const lon = numberFrom(document.getElementById("msg-lon"), -180, 180);
    if (lat !== null && lon !== null) return { lat, lon };
    const status = root.querySelector('[data-testid="location-status"]');
    try {
      knownPlace = await browserLocation();
      document.getElementById("msg-lat").value = knownPlace.lat.toFixed(6);
      document.getElementById("msg-lon").value = knownPlace.lon.toFixed(6);
      return knownPlace;
    } catch (error) {
      status.textContent = `${error.message} ${tr("ห้องนี้ต้องระบุตำแหน่งทุกข้อความ กรุณากรอกละติจูดและลองจิจูด", "This room needs a location on every message: enter latitude and longitude.")}`;
      status.classList.add("alert");
      document.getElementById("msg-lat").focus();
      return null;
    }
  }

  async function send(body) {
    const draft = { ...body };
    if (replyInput?.value) draft.reply_to = replyInput.value;
    if (autoLocation && !draft.location) {
      const place = await messagePlace();
      if (!place) return false;
      draft.location = place;
    }
    // A retry of the same text keeps its client_id: the box then never stores it twice.
    const key = JSON.stringify(body);
    if (draftText !== key) { draftText = key; draftClientId = newClientId(); }
    draft.client_id = draftClientId;
    try {
      const message = await api("POST", `${roomPath}/messages`, draft);
      draftText = null;
      showError("");
      clearReply();
      await addMessage(message);
      return true;
    } catch (error) {
      showError(errorText(error));
      return false;
    }
  }

  async function sendText() {
    const text = composer.value;
    if (!text.trim()) return;
    composer.readOnly = true;
    try {
      if (await send({ kind: "text", text })) composer.value = "";
    } finally {
      composer.readOnly = false;
      composer.focus();
    }
  }

  function setReply(li) {
    replyInput.value = li.dataset.messageId;
    replying.querySelector(".replying-text").textContent = `${nameOf(li.dataset.sender)}: ${(li.querySelector(".body")?.textContent ?? "").trim().slice(0, 120)}`;
    replying.hidden = false;
    composer.focus();
  }

  function clearReply() {
    if (!replyInput) return;
    replyInput.value = "";
    replying.hidden = true;
  }

  /** The images an image message may carry (appliance.security.untrusted.RASTER_IMAGE_TYPES). */
  const RASTER_IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

  function uploadFile(file) {
    // XMLHttpRequest, not fetch: only it reports upload progress.
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `/api/v1/uploads?name=${enc(file.name || "file")}`);
      for (const [name, value] of Object.entries(API_HEADERS)) xhr.setRequestHeader(name, value);
      xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) {
          const percent = Math.floor((event.loaded / event.total) * 100);
          uploadStatus.textContent = tr(`กำลังอัปโหลด ${file.name} ${percent}%`, `Uploading ${file.name}: ${percent}%`);
        }
      });
      xhr.addEventListener("load", () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
        if (xhr.status === 201) resolve(body); else reject(new ApiError(xhr.status, body));
      });
      xhr.addEventListener("error", () => reject(new TypeError("network")));
      xhr.send(file);
    });
  }

  async function sendFile(file) {
    showError("");
    if (file.size > maxBytes) {
      showError(tr(`ไฟล์ ${file.name} มีขนาด ${sizeText(file.size)} เกินขีดจำกัด ${sizeText(maxBytes)}`,
        `${file.name} is ${sizeText(file.size)}, over the ${sizeText(maxBytes)} limit`));
      return;
    }
    if (file.size === 0) {
      showError(tr("ไฟล์ว่างเปล่า", "The file is empty"));
      return;
    }
    uploadStatus.textContent = tr(`กำลังอัปโหลด ${file.name} 0%`, `Uploading ${file.name}: 0%`);
    try {
      const upload = await uploadFile(file);
      // The box's type, not the browser's guess: it is the bytes' own type when they
      // are a picture or sound, and an SVG is never shown as a picture (it is a file).
      const type = String(upload.media_type ?? "");
      const kind = RASTER_IMAGES.includes(type) ? "image" : type.startsWith("video/") ? "video"
        : type.startsWith("audio/") ? "voice" : "file";
      uploadStatus.textContent = tr("อัปโหลดแล้ว กำลังส่ง…", "Uploaded; sending…");
      const caption = composer.value.trim();
      if (await send({ kind, upload_id: upload.upload_id, ...(caption ? { text: caption } : {}) }) && caption) composer.value = "";
      uploadStatus.textContent = "";
    } catch (error) {
      uploadStatus.textContent = "";
      showError(errorText(error));
    }
  }

  async function sendLocation() {
    let place;
    try {
      place = await browserLocation();
    } catch (error) {
      place = await askPlace(error.message);
    }
    if (place) await send({ kind: "location", location: place });
  }

  // ---- stickers

  const stickerDialog = document.getElementById("sticker-dialog");
  let stickersLoaded = false;

  async function openStickers() {
    stickerDialog.showModal();
    if (stickersLoaded) return;
    const box = stickerDialog.querySelector(".sticker-packs");
    box.replaceChildren(el("p", { class: "muted" }, tr("กำลังโหลด…", "Loading…")));
    try {
      const packs = await api("GET", "/api/v1/sticker-packs");
      stickersLoaded = true;
      const usable = packs.filter((p) => p.stickers.length);
      if (!usable.length) {
        box.replaceChildren(el("p", { class: "muted" }, tr("หน่วยงานของท่านยังไม่มีสติกเกอร์ ผู้ดูแลระบบของหน่วยงานเป็นผู้เพิ่ม",
          "Your agency has no stickers yet; its administrators add them.")));
        return;
      }
      box.replaceChildren(...usable.map((pack) => el("section", {},
        el("h3", {}, pack.name),
        el("div", { class: "sticker-grid" }, pack.stickers.map((s) =>
          el("button", { type: "button", "data-sticker-id": s.id, "data-testid": "sticker", title: s.name,
            onclick: () => { stickerDialog.close(); send({ kind: "sticker", sticker_id: s.id }); } },
          el("img", { src: `/api/v1/stickers/${enc(s.id)}/image`, alt: s.name, width: 64, height: 64, loading: "lazy" })))))));
    } catch (error) {
      box.replaceChildren(el("p", { class: "alert" }, errorText(error)));
    }
  }

  // ---- message actions

  const editDialog = document.getElementById("edit-dialog");

  function editableText(li) {
    if (li.dataset.kind === "link") return li.querySelector(".link a")?.textContent ?? "";
    return li.querySelector(li.dataset.kind === "text" ? ".body .text" : ".body .caption")?.textContent ?? "";
  }

  function edit(li) {
    const area = document.getElementById("edit-text");
    area.value = editableText(li);
    editDialog.returnValue = "";
    editDialog.addEventListener("close", async () => {
      if (editDialog.returnValue !== "save" || area.value === editableText(li)) return;
      try {
        const message = await api("PATCH", `${roomPath}/messages/${enc(li.dataset.messageId)}`, { text: area.value });
        onEvent({ type: "message.edited", room_id: roomId, payload: { message_id: message.id, content: message.content } });
      } catch (error) {
        showError(errorText(error));
      }
    }, { once: true });
    editDialog.showModal();
    area.focus();
  }

  async function remove(li) {
    if (!window.confirm(tr("ลบข้อความนี้หรือไม่ ผู้อื่นจะเห็นว่ามีข้อความถูกลบ", "Delete this message? Others will see that a message was deleted."))) return;
    try {
      await api("DELETE", `${roomPath}/messages/${enc(li.dataset.messageId)}`);
      onEvent({ type: "message.deleted", room_id: roomId, payload: { message_id: li.dataset.messageId } });
    } catch (error) {
      showError(errorText(error));
    }
  }

  async function hide(li) {
    try {
      await api("PUT", `${roomPath}/messages/${enc(li.dataset.messageId)}/hidden`);
      li.remove();
    } catch (error) {
      showError(errorText(error));
    }
  }

  list.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button[data-action]") : null;
    const li = button?.closest(".message");
    if (!li) return;
    const action = button.dataset.action;
    if (action === "reply" && form) setReply(li);
    else if (action === "edit") edit(li);
    else if (action === "delete") remove(li);
    else if (action === "hide") hide(li);
  });

  // ---- earlier messages

  const earlier = root.querySelector('[data-action="load-earlier"]');
  earlier?.addEventListener("click", async () => {
    const first = list.querySelector(".message");
    earlier.disabled = true;
    try {
      const older = await api("GET", `${roomPath}/messages?limit=50${first ? `&before=${enc(first.dataset.messageId)}` : ""}`);
      const keep = first;
      for (const message of older) {
        const li = await addMessage(message, { prepend: true });
        if (li && li.dataset.mine === "1") loadReceipts(li);
      }
      keep?.scrollIntoView({ block: "start" });
      if (older.length < 50) earlier.remove();
    } catch (error) {
      showError(errorText(error));
    } finally {
      earlier.disabled = false;
    }
  });

  // ---- media and links tab

  const mediaPanel = root.querySelector('[data-testid="media-panel"]');
  const mediaList = root.querySelector('[data-testid="media-list"]');

  async function showMedia(kind) {
    for (const tab of mediaPanel.querySelectorAll("[data-media-kind]")) {
      tab.setAttribute("aria-selected", tab.dataset.mediaKind === kind ? "true" : "false");
    }
    mediaList.replaceChildren(el("li", { class: "muted" }, tr("กำลังโหลด…", "Loading…")));
    try {
      const items = await api("GET", `${roomPath}/media?kind=${enc(kind)}`);
      if (!items.length) {
        mediaList.replaceChildren(el("li", { class: "muted" }, tr("ยังไม่มีรายการ", "Nothing yet")));
        return;
      }
      mediaList.replaceChildren(...items.map((m) => {
        const c = m.content ?? {};
        let main;
        if (kind === "link") {
          const href = safeHref(String(c.url ?? ""));
          main = href ? externalLink(href, String(c.title || c.url)) : String(c.url ?? "");
        } else if (kind === "image") {
          main = el("a", { href: fileUrl(m), target: "_blank", rel: "noopener noreferrer" },
            el("img", { src: fileUrl(m), alt: String(c.name ?? ""), loading: "lazy" }));
        } else {
          main = el("a", { href: fileUrl(m), download: String(c.name ?? "file") }, String(c.name ?? ""));
        }
        return el("li", { "data-testid": "media-item" }, main, el("br"),
          el("span", { class: "muted" }, nameNode(m.sender), " · ", shortDate(m.created_at),
            c.size ? ` · ${sizeText(Number(c.size))}` : ""));
      }));
    } catch (error) {
      mediaList.replaceChildren(el("li", { class: "alert" }, errorText(error)));
    }
  }

  mediaPanel?.addEventListener("toggle", () => {
    if (mediaPanel.open && !mediaList.childElementCount) showMedia("link");
  });
  for (const tab of mediaPanel?.querySelectorAll("[data-media-kind]") ?? []) {
    tab.addEventListener("click", () => showMedia(tab.dataset.mediaKind));
  }

  // ---- the composer

  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sendText();
    });
    let lastTyping = 0;
    composer.addEventListener("keydown", (event) => {
      // Enter sends, Shift+Enter is a new line; never while an input method (Thai
      // keyboards, predictive text) is still composing.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        sendText();
      } else if (event.key === "Escape" && !replying.hidden) {
        clearReply();
      }
    });
    composer.addEventListener("input", () => {
      const now = Date.now();
      if (now - lastTyping > 3000 && composer.value) {
        lastTyping = now;
        stream.send({ type: "typing", room_id: roomId });
      }
    });
    replying.querySelector("button").addEventListener("click", clearReply);
    const fileInput = form.querySelector(".file-input");
    form.querySelector('[data-action="attach"]').addEventListener("click", () => fileInput.click());
    fileInput.addEventListener("change", () => {
      const file = fileInput.files?.[0];
      fileInput.value = "";
      if (file) sendFile(file);
    });
    form.querySelector('[data-action="send-location"]').addEventListener("click", sendLocation);
    form.querySelector('[data-action="stickers"]').addEventListener("click", openStickers);
  }

  const stream = new EventStream(Number(root.dataset.cursor) || 0, onEvent, onTyping);

  for (const li of list.querySelectorAll('.message[data-mine="0"]')) watchRead(li);
  if (!location.hash) list.lastElementChild?.scrollIntoView({ block: "end" });
}

// --- the new-room form ---------------------------------------------------------------------------

function initNew() {
  const formEl = root.querySelector('[data-testid="new-room-form"]');
  const hours = formEl.querySelector(".hours");
  const hoursBox = formEl.querySelector('input[name="working_hours"]');

  function show() {
    const kind = formEl.querySelector('input[name="kind"]:checked')?.value ?? "group";
    for (const part of formEl.querySelectorAll("[data-for]")) {
      part.hidden = !part.dataset.for.split(" ").includes(kind);
    }
    hours.hidden = !hoursBox.checked;
  }

  for (const radio of formEl.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", () => {
      const preset = formEl.querySelector(`input[data-preset="${radio.value}"]`);
      if (preset) preset.checked = true;
      show();
    });
  }
  hoursBox.addEventListener("change", show);
  show();
}

// --- start -------------------------------------------------------------------------------------

if (root) {
  root.classList.add("js");
  bindPeopleSearch();
  bindFillLocation();
  const page = root.dataset.chatPage;
  if (page === "list") initList();
  else if (page === "room") initRoom();
  else if (page === "new") initNew();
  else if (page === "search") arrowNavigation(root, ".search-result a");
}
