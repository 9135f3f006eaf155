// Alerts and the hub's refusals, shown at the top of the room list and of a room.

import { el, formatDate, tr } from "./common.js";
import { nameNode } from "./chat-names.js";
import { root } from "./chat-page.js";
import { externalLink, mapUrl } from "./chat-text.js";

export function showAlert(event) {
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
export function showRefusal(event) {
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
