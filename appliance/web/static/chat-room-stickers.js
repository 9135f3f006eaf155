// The sticker picker of a room's composer: the agency's packs, loaded on first open.

import { api, el, tr } from "./common.js";
import { enc, errorText } from "./chat-page.js";

/** Open the picker from the composer's sticker button; a chosen sticker goes through *send*. */
export function bindStickers(form, send) {
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

  form.querySelector('[data-action="stickers"]').addEventListener("click", openStickers);
}
