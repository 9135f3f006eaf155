// A room's past: earlier messages page by page, and the media and links panel.

import { api, el, formatSize as sizeText, tr } from "./common.js";
import { nameNode } from "./chat-names.js";
import { enc, errorText } from "./chat-page.js";
import { externalLink, safeHref, shortDate } from "./chat-text.js";

/** The "earlier messages" button: the next 50 before the first shown, with their receipts. */
export function bindEarlier(room, { addMessage, loadReceipts }) {
  const earlier = room.root.querySelector('[data-action="load-earlier"]');
  earlier?.addEventListener("click", async () => {
    const first = room.list.querySelector(".message");
    earlier.disabled = true;
    try {
      const older = await api("GET", `${room.path}/messages?limit=50${first ? `&before=${enc(first.dataset.messageId)}` : ""}`);
      const keep = first;
      for (const message of older) {
        const li = await addMessage(message, { prepend: true });
        if (li && li.dataset.mine === "1") loadReceipts(li);
      }
      keep?.scrollIntoView({ block: "start" });
      if (older.length < 50) earlier.remove();
    } catch (error) {
      room.showError(errorText(error));
    } finally {
      earlier.disabled = false;
    }
  });
}

/** The media and links panel: links first when opened, a tab per kind. */
export function bindMediaPanel(room, fileUrl) {
  const mediaPanel = room.root.querySelector('[data-testid="media-panel"]');
  const mediaList = room.root.querySelector('[data-testid="media-list"]');

  async function showMedia(kind) {
    for (const tab of mediaPanel.querySelectorAll("[data-media-kind]")) {
      tab.setAttribute("aria-selected", tab.dataset.mediaKind === kind ? "true" : "false");
    }
    mediaList.replaceChildren(el("li", { class: "muted" }, tr("กำลังโหลด…", "Loading…")));
    try {
      const items = await api("GET", `${room.path}/media?kind=${enc(kind)}`);
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
}
