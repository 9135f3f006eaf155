// A room's composer: sending text (Enter sends, Shift+Enter is a new line), replies,
// the typing notice, and the one send() that files, stickers and locations go through.

import { api } from "./common.js";
import { nameOf } from "./chat-names.js";
import { errorText } from "./chat-page.js";
import { messagePlace } from "./chat-room-location.js";

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The composer of *room*: send(body) posts a message (the reply, auto-location and a
 * retry-safe client_id added) and shows it with *addMessage*; *typing* tells the others.
 */
export function roomComposer(room, { addMessage, typing }) {
  const { form } = room;
  const composer = form?.querySelector("textarea[name=text]");
  const replyInput = form?.querySelector("input[name=reply_to]");
  const replying = form?.querySelector(".replying");
  let draftClientId = null;
  let draftText = null;

  async function send(body) {
    const draft = { ...body };
    if (replyInput?.value) draft.reply_to = replyInput.value;
    if (room.autoLocation && !draft.location) {
      const place = await messagePlace();
      if (!place) return false;
      draft.location = place;
    }
    // A retry of the same text keeps its client_id: the box then never stores it twice.
    const key = JSON.stringify(body);
    if (draftText !== key) { draftText = key; draftClientId = newClientId(); }
    draft.client_id = draftClientId;
    try {
      const message = await api("POST", `${room.path}/messages`, draft);
      draftText = null;
      room.showError("");
      clearReply();
      await addMessage(message);
      return true;
    } catch (error) {
      room.showError(errorText(error));
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

  // The caption a file is sent with: what is typed, cleared once the file is sent.
  function caption() {
    return composer.value.trim();
  }

  function clearCaption() {
    composer.value = "";
  }

  function bind() {
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
        typing();
      }
    });
    replying.querySelector("button").addEventListener("click", clearReply);
  }

  if (form) bind();
  return { caption, clearCaption, send, setReply };
}

