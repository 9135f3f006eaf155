// The buttons under a message: reply, edit, delete, hide for me.

import { api, tr } from "./common.js";
import { enc, errorText } from "./chat-page.js";

function editableText(li) {
  if (li.dataset.kind === "link") return li.querySelector(".link a")?.textContent ?? "";
  return li.querySelector(li.dataset.kind === "text" ? ".body .text" : ".body .caption")?.textContent ?? "";
}

/**
 * Answer the message buttons of *room*'s list. A change the box accepted is shown at
 * once through *onEvent*, as its event will show it; *setReply* starts a reply.
 */
export function bindMessageActions(room, { onEvent, setReply }) {
  const editDialog = document.getElementById("edit-dialog");
  const messagePath = (li) => `${room.path}/messages/${enc(li.dataset.messageId)}`;

  function edit(li) {
    const area = document.getElementById("edit-text");
    area.value = editableText(li);
    editDialog.returnValue = "";
    editDialog.addEventListener("close", async () => {
      if (editDialog.returnValue !== "save" || area.value === editableText(li)) return;
      try {
        const message = await api("PATCH", messagePath(li), { text: area.value });
        onEvent({ type: "message.edited", room_id: room.id, payload: { message_id: message.id, content: message.content } });
      } catch (error) {
        room.showError(errorText(error));
      }
    }, { once: true });
    editDialog.showModal();
    area.focus();
  }

  async function remove(li) {
    if (!window.confirm(tr("ลบข้อความนี้หรือไม่ ผู้อื่นจะเห็นว่ามีข้อความถูกลบ", "Delete this message? Others will see that a message was deleted."))) return;
    try {
      await api("DELETE", messagePath(li));
      onEvent({ type: "message.deleted", room_id: room.id, payload: { message_id: li.dataset.messageId } });
    } catch (error) {
      room.showError(errorText(error));
    }
  }

  async function hide(li) {
    try {
      await api("PUT", `${messagePath(li)}/hidden`);
      li.remove();
    } catch (error) {
      room.showError(errorText(error));
    }
  }

  room.list.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button[data-action]") : null;
    const li = button?.closest(".message");
    if (!li) return;
    const action = button.dataset.action;
    if (action === "reply" && room.form) setReply(li);
    else if (action === "edit") edit(li);
    else if (action === "delete") remove(li);
    else if (action === "hide") hide(li);
  });
}
