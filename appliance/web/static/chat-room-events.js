// A room page's side of the event stream: what each event changes on the page, and who
// is typing.

import { api, el, tr } from "./common.js";
import { learnName, nameNode, nameOf, names } from "./chat-names.js";
import { showAlert, showRefusal } from "./chat-notices.js";
import { enc } from "./chat-page.js";

/**
 * The stream handlers of *room*: onEvent for events, onTyping for typing notices.
 * *parts* are the page's other pieces: view, messages, reading, people.
 */
export function roomEvents(room, { view, messages, reading, people }) {
  const { root, me } = room;
  const typingLine = root.querySelector('[data-testid="typing"]');
  const typists = new Map();

  function showTyping() {
    const who = [...typists.keys()].map(nameOf);
    typingLine.textContent = who.length ? `${who.join(", ")} ${tr("กำลังพิมพ์…", who.length > 1 ? "are typing…" : "is typing…")}` : "";
  }

  function onTyping(notice) {
    if (notice.room_id !== room.id || notice.address === me) return;
    clearTimeout(typists.get(notice.address));
    typists.set(notice.address, setTimeout(() => { typists.delete(notice.address); showTyping(); }, 5000));
    if (!names.has(notice.address)) learnName(notice.address).then(showTyping);
    showTyping();
  }

  function disableComposer(text) {
    room.showNotice(text);
    if (room.form) for (const control of room.form.elements) control.disabled = true;
  }

  function posted(p) {
    if (!p.message) return;
    messages.addMessage(p.message).then((li) => {
      if (li && p.message.sender !== me && document.visibilityState !== "visible") reading.countUnseen();
    });
    if (typists.delete(p.message.sender)) showTyping();
  }

  function edited(p) {
    const li = room.messageItem(p.message_id);
    if (!li || p.removed) return;
    const update = (message) => {
      const old = li.querySelector(".body");
      old.replaceWith(view.renderBody(message));
      if (!li.querySelector(".edited")) li.querySelector(".meta time").after(" ", el("span", { class: "edited", "data-testid": "edited" }, tr("แก้ไขแล้ว", "edited")));
    };
    if (li.dataset.secret === "1") api("GET", `${room.path}/messages/${enc(p.message_id)}`).then(update, () => {});
    else update({ id: p.message_id, kind: li.dataset.kind, content: p.content ?? {}, deleted: false });
  }

  function deleted(p) {
    const li = room.messageItem(p.message_id);
    if (!li) return;
    li.classList.add("deleted");
    li.querySelector(".body").replaceWith(view.renderBody({ deleted: true }));
    li.querySelector(".actions")?.remove();
  }

  function expired(p) {
    const li = room.messageItem(p.message_id);
    if (!li) return;
    if (p.reason !== "read") return li.remove();
    // Everyone has read this secret message and the box has deleted it. It stays
    // on this open page, so the last reader can finish reading; a reload drops it.
    li.classList.add("expired");
    li.querySelector(".actions")?.remove();
    li.append(el("p", { class: "expired-note muted", "data-testid": "expired-note" },
      tr("ทุกคนอ่านแล้ว ข้อความลับนี้ถูกลบจากเครื่องแม่ข่ายแล้ว และจะหายไปเมื่อออกจากหน้านี้",
        "Everyone has read it: this secret message is deleted from the box and goes when you leave the page.")));
  }

  function receipt(p) {
    for (const id of p.message_ids ?? []) {
      const li = room.messageItem(id);
      if (li && li.dataset.mine === "1") reading.addReader(li, p.reader);
    }
  }

  function onEvent(event) {
    const p = event.payload ?? {};
    if (event.type === "alert") return showAlert(event);
    if (event.type === "sync.rejected") return showRefusal(event);
    if (event.type === "message.hidden" && p.room_id === room.id) return room.messageItem(p.message_id)?.remove();
    if (event.room_id !== room.id) return;
    switch (event.type) {
      case "message.posted":
        return posted(p);
      case "message.edited":
        return edited(p);
      case "message.deleted":
        return deleted(p);
      case "message.expired":
        return expired(p);
      case "receipt":
        return receipt(p);
      case "member.added":
        for (const address of p.addresses ?? []) people.addMember(address);
        return;
      case "member.removed":
        if (p.address === me) disableComposer(tr("ท่านถูกนำออกจากห้องนี้แล้ว", "You were removed from this room."));
        else people.removeMember(p.address);
        return;
      case "room.renamed": {
        const title = root.querySelector('[data-testid="room-title"]');
        if (p.name) title.textContent = p.name;
        return;
      }
      case "room.owner_changed":
        root.dataset.owner = p.owner;
        root.querySelector('[data-testid="room-owner"]').replaceChildren(nameNode(p.owner));
        room.showNotice(tr(`${nameOf(p.owner)} เป็นเจ้าของห้องแล้ว`, `${nameOf(p.owner)} now owns the room.`), p.owner === me || p.previous === me);
        return;
      case "room.updated":
        room.showNotice(tr("กฎของห้องเปลี่ยนแล้ว", "The room's rules have changed."), true);
        return;
      case "room.deleted":
        disableComposer(tr("เจ้าของห้องลบห้องนี้แล้ว", "The owner deleted this room."));
        return;
      case "invitation.created":
        if (p.invitation) people.addInvitation(p.invitation);
        return;
      case "invitation.answered":
        people.answerShown(p.invitation_id, p.address, p.answer);
        return;
      default:
    }
  }

  return { onEvent, onTyping };
}
