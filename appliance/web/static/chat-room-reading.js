// What the reader has seen in a room: marking messages read as they come into view,
// "read by" under one's own messages, and the count of unseen messages in the title.

import { api, tr } from "./common.js";
import { nameNode } from "./chat-names.js";
import { enc } from "./chat-page.js";

/** Read tracking for *room* (chat-room.js's context). */
export function readTracking(room) {
  let unseen = 0;
  const baseTitle = document.title;

  // ---- "read by"

  function addReader(li, address) {
    const line = li.querySelector(".read-by");
    if (!line) return;
    const readers = line.dataset.readers ? line.dataset.readers.split(" ") : [];
    if (readers.includes(address)) return;
    if (readers.length >= 10) {
      line.dataset.more = String(Number(line.dataset.more) + 1);
      line.querySelector(".read-by-more").textContent = " " + tr(`และอีก ${line.dataset.more} คน`, `and ${line.dataset.more} more`);
    } else {
      readers.push(address);
      line.dataset.readers = readers.join(" ");
      const namesLine = line.querySelector(".read-by-names");
      if (namesLine.childNodes.length) namesLine.append(", ");
      namesLine.append(nameNode(address));
    }
    line.hidden = false;
  }

  async function loadReceipts(li) {
    try {
      const receipts = await api("GET", `${room.path}/messages/${enc(li.dataset.messageId)}/receipts`);
      for (const r of receipts.read) addReader(li, r.reader);
    } catch { /* shown when the next receipt arrives */ }
  }

  // ---- marking what is seen as read

  const visible = new Set();
  let lastRead = null;
  let readTimer = null;
  const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) visible.add(entry.target); else visible.delete(entry.target);
    }
    scheduleRead();
  }, { threshold: 0.6 }) : null;

  function watchRead(li) {
    if (observer) observer.observe(li); else { visible.add(li); scheduleRead(); }
  }

  function scheduleRead() {
    if (document.visibilityState !== "visible") return;
    clearTimeout(readTimer);
    readTimer = setTimeout(markRead, 400);
  }

  async function markRead() {
    // The newest message of others on screen: everything up to it is read.
    let newest = null;
    for (const li of visible) {
      if (!li.isConnected) { visible.delete(li); continue; }
      if (!newest || (newest.compareDocumentPosition(li) & Node.DOCUMENT_POSITION_FOLLOWING)) newest = li;
    }
    if (!newest || (lastRead && lastRead.isConnected && !(lastRead.compareDocumentPosition(newest) & Node.DOCUMENT_POSITION_FOLLOWING))) return;
    const previous = lastRead;
    lastRead = newest;
    try {
      await api("POST", `${room.path}/read`, { up_to: newest.dataset.messageId });
      for (const li of [...visible]) {
        if (li === newest || (li.compareDocumentPosition(newest) & Node.DOCUMENT_POSITION_FOLLOWING)) {
          observer?.unobserve(li);
          visible.delete(li);
        }
      }
    } catch {
      lastRead = previous;
    }
  }

  // A message from someone else arrived while the page was hidden: "(N) room" in the tab.
  function countUnseen() {
    unseen += 1;
    document.title = `(${unseen}) ${baseTitle}`;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      unseen = 0;
      document.title = baseTitle;
      scheduleRead();
    }
  });

  return { addReader, countUnseen, loadReceipts, watchRead };
}
