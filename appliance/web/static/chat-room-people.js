// A room's members and invitations, kept live from the stream (the side panels of
// templates/chat/room.html).

import { csrfToken, el, formatDate, tr } from "./common.js";
import { nameNode } from "./chat-names.js";
import { enc } from "./chat-page.js";

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

/** Members and invitations of *room* (chat-room.js's context). */
export function roomPeople(room) {
  const { root } = room;

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

  function addInvitation(invitation) {
    const box = root.querySelector('[data-testid="invitations"]');
    if (!box || [...box.children].some((li) => li.dataset.invitationId === invitation.id)) return;
    root.querySelector(".no-invitations")?.remove();
    const invited = (invitation.invitees ?? []).some((i) => i.address === room.me);
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
    if (invited) room.showNotice(tr(`คำเชิญใหม่: ${invitation.title}`, `New invitation: ${invitation.title}`));
  }

  function answerShown(invitationId, address, answer) {
    const card = [...root.querySelectorAll('[data-testid="invitation"]')].find((li) => li.dataset.invitationId === invitationId);
    if (!card) return;
    const line = [...card.querySelectorAll(".answers li")].find((li) => li.dataset.address === address);
    if (line) line.replaceWith(answerLine(address, answer));
    if (address === room.me) {
      for (const button of card.querySelectorAll("button[name=answer]")) {
        button.setAttribute("aria-pressed", button.value === answer ? "true" : "false");
      }
    }
  }

  return { addInvitation, addMember, answerShown, removeMember };
}
