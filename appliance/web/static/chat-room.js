// A room page (/chat/rooms/{id}): the stream of messages, edits, deletions, receipts and
// typing; sending text, replies, files, location and stickers; marking what is seen as
// read. This module composes the room's parts (chat-room-*.js), each given the room's
// context and only the other parts it calls.

import { el, tr } from "./common.js";
import { names } from "./chat-names.js";
import { enc, root, startChatPage } from "./chat-page.js";
import { EventStream } from "./chat-stream.js";
import { bindMessageActions } from "./chat-room-actions.js";
import { roomComposer } from "./chat-room-composer.js";
import { roomEvents } from "./chat-room-events.js";
import { bindEarlier, bindMediaPanel } from "./chat-room-history.js";
import { sendLocation } from "./chat-room-location.js";
import { messageList } from "./chat-room-messages.js";
import { roomPeople } from "./chat-room-people.js";
import { readTracking } from "./chat-room-reading.js";
import { bindStickers } from "./chat-room-stickers.js";
import { bindUploads } from "./chat-room-uploads.js";
import { messageView } from "./chat-room-view.js";

/**
 * What every part of a room page reads (templates/chat/room.html's data- attributes):
 * root, id, me, path (the room's API path), list (the messages' <ul>), form (the
 * composer, absent when one may not post), autoLocation, maxBytes; messageItem(id),
 * showNotice(text, withReload) and showError(text).
 */
function roomContext() {
  const id = root.dataset.roomId;
  const list = root.querySelector('[data-testid="messages"]');
  const form = root.querySelector(".composer");
  const sendError = form?.querySelector(".send-error");
  const notice = root.querySelector(".room-notice");

  function showNotice(text, withReload = false) {
    notice.replaceChildren(text);
    if (withReload) {
      notice.append(" ", el("button", { type: "button", class: "small", onclick: () => location.reload() },
        tr("โหลดหน้าใหม่", "Reload")));
    }
    notice.hidden = false;
  }

  return {
    root,
    id,
    me: root.dataset.me,
    path: `/api/v1/rooms/${enc(id)}`,
    list,
    form,
    autoLocation: root.dataset.autoLocation === "1",
    maxBytes: (Number(root.dataset.maxUploadMb) || 25) * 1024 * 1024,
    messageItem: (messageId) => [...list.children].find((li) => li.dataset.messageId === messageId) ?? null,
    showNotice,
    showError(text) {
      if (!sendError) return showNotice(text);
      sendError.textContent = text;
      sendError.hidden = !text;
    },
  };
}

function initRoom() {
  const room = roomContext();
  // The names the page was rendered with, so nothing is asked of the directory twice.
  for (const li of root.querySelectorAll('[data-testid="member"]')) names.set(li.dataset.address, li.dataset.name);
  for (const li of room.list.querySelectorAll(".message")) {
    names.set(li.dataset.sender, li.querySelector(".sender")?.textContent ?? li.dataset.sender);
  }

  const view = messageView(room);
  const reading = readTracking(room);
  const messages = messageList(room, view, reading);
  const people = roomPeople(room);
  const { onEvent, onTyping } = roomEvents(room, { view, messages, reading, people });
  const composer = roomComposer(room, {
    addMessage: messages.addMessage,
    typing: () => stream.send({ type: "typing", room_id: room.id }),
  });
  bindMessageActions(room, { onEvent, setReply: composer.setReply });
  bindEarlier(room, { addMessage: messages.addMessage, loadReceipts: reading.loadReceipts });
  bindMediaPanel(room, view.fileUrl);
  if (room.form) {
    bindUploads(room, composer);
    room.form.querySelector('[data-action="send-location"]').addEventListener("click", () => sendLocation(composer.send));
    bindStickers(room.form, composer.send);
  }

  const stream = new EventStream(root, Number(root.dataset.cursor) || 0, onEvent, onTyping);

  for (const li of room.list.querySelectorAll('.message[data-mine="0"]')) reading.watchRead(li);
  if (!location.hash) room.list.lastElementChild?.scrollIntoView({ block: "end" });
}

startChatPage(initRoom);
