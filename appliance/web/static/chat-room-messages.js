// The message list of a room page: adding a message from the stream, a send or an
// earlier page, once, where the reader expects it.

import { api } from "./common.js";
import { enc } from "./chat-page.js";

function nearBottom() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 200;
}

/** The list of *room*, drawn by *view* (chat-room-view.js), read as *reading* tracks. */
export function messageList(room, view, reading) {
  // Add a message (from the stream, a send, or an earlier page) unless it is here already.
  async function addMessage(message, { prepend = false } = {}) {
    if (message.room_id !== room.id || room.messageItem(message.id)) return null;
    if (message.secret && !message.deleted && !Object.keys(message.content ?? {}).length) {
      // A secret message's event carries no content (docs/chat.md): fetch it.
      try { message = await api("GET", `${room.path}/messages/${enc(message.id)}`); } catch { return null; }
      if (room.messageItem(message.id)) return null;
    }
    const follow = !prepend && nearBottom();
    const li = view.renderMessage(message);
    if (prepend) room.list.prepend(li); else room.list.append(li);
    room.root.querySelector(".empty-room")?.remove();
    if (message.sender !== room.me) reading.watchRead(li);
    if (follow || message.sender === room.me) li.scrollIntoView({ block: "end" });
    return li;
  }

  return { addMessage };
}
