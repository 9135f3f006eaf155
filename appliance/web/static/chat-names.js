// Colleagues' names in the chat pages: learnt from the page and the directory, and put
// wherever an address shows. One Map for every chat module of a page (one module
// instance: always imported as "./chat-names.js").

import { api, el, lang } from "./common.js";

const enc = encodeURIComponent;

export const names = new Map();
const asking = new Map();

export function nameOf(address) {
  return names.get(address) ?? address;
}

// Learn a colleague's name from the directory, then fix it wherever the address shows.
export function learnName(address) {
  if (names.has(address) || asking.has(address)) return asking.get(address) ?? Promise.resolve();
  const done = api("GET", `/api/v1/directory/users?q=${enc(address)}&limit=5`)
    .then((people) => {
      const person = people.find((p) => p.address === address);
      if (!person) return;
      const name = (lang === "en" ? person.name_en : person.name_th) || person.name_th || address;
      names.set(address, name);
      for (const node of document.querySelectorAll("[data-name-of]")) {
        if (node.dataset.nameOf === address) node.textContent = name;
      }
    })
    .catch(() => {});
  asking.set(address, done);
  return done;
}

export function nameNode(address, attrs = {}) {
  if (!names.has(address)) learnName(address);
  return el("span", { ...attrs, "data-name-of": address }, nameOf(address));
}
