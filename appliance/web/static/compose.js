// The compose page's conveniences; the form works the same without them.
// - warns before leaving with text that was not sent or saved (beforeunload);
// - lists the chosen files with their sizes and the total, and stops a form whose
//   attachments pass the limit before anything is uploaded (the server refuses it too);
// - Ctrl+Enter (Cmd+Enter on a Mac) sends; Enter in a one-line field does not.

import { el, formatSize, tr } from "./common.js";

const form = document.getElementById("compose-form");
if (form) setUp(form);

function setUp(form) {
  const limit = Number(form.dataset.maxAttachments) || 25 * 1024 * 1024;
  const files = document.getElementById("compose-files");
  const chosen = document.getElementById("compose-chosen");
  const total = document.getElementById("compose-total");
  const tooBig = document.getElementById("compose-too-big");
  const send = document.getElementById("compose-send");
  let dirty = false;

  const markDirty = () => { dirty = true; };
  form.addEventListener("input", markDirty);
  form.addEventListener("change", markDirty);

  window.addEventListener("beforeunload", (event) => {
    if (!dirty) return;
    // Browsers show their own wording; setting returnValue is what asks them to.
    event.preventDefault();
    event.returnValue = "";
  });

  function attachmentBytes() {
    let sum = 0;
    for (const box of form.querySelectorAll('input[name="keep"]:checked')) {
      sum += Number(box.dataset.size) || 0;
    }
    for (const file of files?.files ?? []) sum += file.size;
    return sum;
  }

  function update() {
    chosen.replaceChildren(
      ...Array.from(files?.files ?? [], (file) =>
        el("li", {}, el("span", { class: "compose-file-name" }, file.name), " ",
          el("span", { class: "muted" }, `(${formatSize(file.size)})`))),
    );
    const sum = attachmentBytes();
    total.textContent = sum
      ? tr(`ไฟล์แนบรวม ${formatSize(sum)}`, `Attachments in all: ${formatSize(sum)}`)
      : "";
    const over = sum > limit;
    tooBig.hidden = !over;
    tooBig.textContent = over
      ? tr(`ไฟล์แนบรวม ${formatSize(sum)} เกินขนาดที่ส่งได้ (${formatSize(limit)}) กรุณาเอาบางไฟล์ออก`,
           `The attachments come to ${formatSize(sum)}, more than can be sent (${formatSize(limit)}). Please leave some out.`)
      : "";
    return !over;
  }

  files?.addEventListener("change", update);
  for (const box of form.querySelectorAll('input[name="keep"]')) box.addEventListener("change", update);
  update();

  form.addEventListener("submit", (event) => {
    if (!update()) {
      event.preventDefault();
      tooBig.focus();
      return;
    }
    dirty = false;
  });

  form.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    if (event.ctrlKey || event.metaKey) {
      event.preventDefault();
      form.requestSubmit(send);
      return;
    }
    // Enter in To or Subject would send a half-written message (the first submit
    // button is Send); only the button itself or Ctrl+Enter sends.
    const target = event.target;
    if (target instanceof HTMLInputElement && target.type !== "submit" && target.type !== "button") {
      event.preventDefault();
    }
  });
}
