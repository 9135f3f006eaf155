// How a room page draws a message: the twin of message_item in
// templates/chat/_macros.html (change one, change the other).

import { api, el, formatDate, formatSize as sizeText, tr } from "./common.js";
import { nameNode } from "./chat-names.js";
import { enc } from "./chat-page.js";
import { externalLink, isoTime, mapUrl, safeHref, shortDate, textWithLinks } from "./chat-text.js";

function snippetOf(message) {
  const c = message.content ?? {};
  const parts = [c.text, c.title, c.url, c.name, c.location?.label].filter((p) => typeof p === "string" && p);
  return parts.join(" ").split(/\s+/).join(" ").slice(0, 120);
}

function placeLink(place, fallback) {
  const url = mapUrl(place);
  return url ? externalLink(url, place.label || fallback) : null;
}

/** The drawing functions for *room* (chat-room.js's context: its path, me, messageItem). */
export function messageView(room) {
  function fileUrl(message) {
    return `${room.path}/messages/${enc(message.id)}/file`;
  }

  // The quoted message a reply shows: from the page when it is here, else from the box.
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
    const here = room.messageItem(id);
    if (here) {
      quote.replaceChildren(nameNode(here.dataset.sender, { class: "quote-sender" }), " ",
        el("span", { class: "quote-text" }, (here.querySelector(".body")?.textContent ?? "").trim().slice(0, 120)));
    } else {
      api("GET", `${room.path}/messages/${enc(id)}`).then(fill, () => fill(null));
    }
    return quote;
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
    const mine = message.sender === room.me;
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

  return { fileUrl, renderBody, renderMessage };
}
