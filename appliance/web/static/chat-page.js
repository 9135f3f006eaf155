// What every chat page shares: its root element, errors in the page's language, the
// keyboard ("/" to search, Esc to close, arrows through lists), finding colleagues, and
// the start-up each page's module runs (appliance/chat/pages.py renders the pages).
//
// Errors are shown in the page's language, from the API's message_th / message_en.

import { ApiError, api, el, lang, tr } from "./common.js";
import { names } from "./chat-names.js";
import { bindFillLocation } from "./chat-place.js";

/** The page's chat element; data-chat-page says which page it is. */
export const root = document.querySelector(".chat[data-chat-page]");
export const enc = encodeURIComponent;

// The refusal in the page's language (the API sends both).
export function errorText(error) {
  const body = error?.body?.error;
  if (body) return (lang === "th" ? body.message_th : body.message_en) || body.message;
  if (error instanceof ApiError) {
    return tr(`เกิดข้อผิดพลาด (HTTP ${error.status})`, `Something went wrong (HTTP ${error.status})`);
  }
  return tr("ติดต่อเครื่องแม่ข่ายไม่ได้ กรุณาลองใหม่อีกครั้ง", "Could not reach the box; please try again");
}

// --- keyboard: "/" to search, Esc to close ------------------------------------------------

function typingInField(target) {
  return target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.key === "/" && !event.ctrlKey && !event.metaKey && !event.altKey && !typingInField(event.target)) {
    const search = document.getElementById("chat-q");
    if (search) {
      event.preventDefault();
      search.focus();
      search.select();
    }
  } else if (event.key === "Escape" && !document.querySelector("dialog[open]")) {
    // Dialogs close themselves on Esc; an open side panel closes here.
    const panel = event.target instanceof Element ? event.target.closest("details[open]") : null;
    if (panel) {
      panel.open = false;
      panel.querySelector("summary")?.focus();
    }
  }
});

// Up and down arrows move between rooms in the list.
export function arrowNavigation(list, selector) {
  list.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    const links = [...list.querySelectorAll(selector)];
    const at = links.indexOf(document.activeElement);
    if (at < 0) return;
    const next = links[at + (event.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      event.preventDefault();
      next.focus();
    }
  });
}

// --- finding colleagues (datalist#people) ---------------------------------------------------

function bindPeopleSearch() {
  const list = document.getElementById("people");
  if (!list) return;
  let timer = null;
  for (const input of root.querySelectorAll("[data-people-search]")) {
    input.addEventListener("input", () => {
      clearTimeout(timer);
      const q = input.value.split(/[\s,;]+/).pop() ?? "";
      if (q.length < 2) return;
      timer = setTimeout(async () => {
        try {
          const people = await api("GET", `/api/v1/directory/users?q=${enc(q)}&limit=10`);
          list.replaceChildren(...people.map((p) => {
            const name = (lang === "en" ? p.name_en : p.name_th) || p.name_th;
            names.set(p.address, name);
            return el("option", { value: p.address }, `${name} (${p.address})`);
          }));
        } catch { /* suggestions are a help, not a need */ }
      }, 250);
    });
  }
  for (const button of root.querySelectorAll('[data-action="add-person"]')) {
    button.addEventListener("click", () => {
      const input = button.parentElement.querySelector("input");
      const target = document.getElementById(button.dataset.target);
      const address = input.value.trim();
      if (!address) return;
      target.value = target.value.trim() ? `${target.value.trim()}\n${address}` : address;
      input.value = "";
      input.focus();
    });
  }
}

// --- start ---------------------------------------------------------------------------------

/** Run *init* (the page's own part) once the shared helpers are bound, if this is a chat page. */
export function startChatPage(init) {
  if (!root) return;
  root.classList.add("js");
  bindPeopleSearch();
  bindFillLocation(root);
  init();
}
