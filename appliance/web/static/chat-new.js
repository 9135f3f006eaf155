// The new-room form (/chat/new): shows the fields of the chosen kind; finding colleagues
// is chat-page.js's.

import { root, startChatPage } from "./chat-page.js";

function initNew() {
  const formEl = root.querySelector('[data-testid="new-room-form"]');
  const hours = formEl.querySelector(".hours");
  const hoursBox = formEl.querySelector('input[name="working_hours"]');

  function show() {
    const kind = formEl.querySelector('input[name="kind"]:checked')?.value ?? "group";
    for (const part of formEl.querySelectorAll("[data-for]")) {
      part.hidden = !part.dataset.for.split(" ").includes(kind);
    }
    hours.hidden = !hoursBox.checked;
  }

  for (const radio of formEl.querySelectorAll('input[name="kind"]')) {
    radio.addEventListener("change", () => {
      const preset = formEl.querySelector(`input[data-preset="${radio.value}"]`);
      if (preset) preset.checked = true;
      show();
    });
  }
  hoursBox.addEventListener("change", show);
  show();
}

startChatPage(initNew);
