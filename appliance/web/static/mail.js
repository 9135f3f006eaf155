// The webmail's keyboard shortcuts and "select all". Everything here is a shortcut to a
// link or form already on the page (templates/mail/), which works without this script.
// Shortcuts act only when focus is not in a text field, and never with Ctrl/Alt/Meta.

const list = document.querySelector("table.messages");
const rows = list ? [...list.querySelectorAll("tbody tr")] : [];
const bulk = document.getElementById("mail-bulk");
const help = document.getElementById("mail-shortcuts");
let current = -1;

// --- select all ---------------------------------------------------------------------
const selectAll = document.querySelector("input.select-all");
if (selectAll && rows.length) {
  const boxes = rows.map((row) => row.querySelector('input[name="uids"]')).filter(Boolean);
  selectAll.hidden = false;
  selectAll.addEventListener("change", () => {
    for (const box of boxes) box.checked = selectAll.checked;
  });
  for (const box of boxes) {
    box.addEventListener("change", () => {
      const ticked = boxes.filter((b) => b.checked).length;
      selectAll.checked = ticked === boxes.length;
      selectAll.indeterminate = ticked > 0 && ticked < boxes.length;
    });
  }
}

// --- the help dialog ----------------------------------------------------------------
function openHelp() {
  if (help && !help.open) help.showModal();
}
for (const button of document.querySelectorAll("button.shortcuts-open")) {
  button.hidden = false;
  button.addEventListener("click", openHelp);
}

// --- remote images: the bar goes once the frame shows them ----------------------------
const showImages = document.querySelector("a.show-images");
showImages?.addEventListener("click", () => {
  document.getElementById("remote-images")?.setAttribute("hidden", "");
});

// --- rows ---------------------------------------------------------------------------
function select(index) {
  if (!rows.length) return;
  current = Math.max(0, Math.min(rows.length - 1, index));
  rows.forEach((row, i) => row.classList.toggle("current", i === current));
  const link = rows[current].querySelector("a.open");
  link?.focus();
}

function currentRow() {
  if (current >= 0) return rows[current];
  // Focus may be on a row already (tabbed to, or clicked).
  const focused = document.activeElement?.closest?.("table.messages tbody tr");
  return focused ?? null;
}

// Tick only *row* and press the bulk form's button for *action*.
function actOnRow(row, action) {
  if (!bulk || !row) return;
  for (const box of bulk.querySelectorAll('input[name="uids"]')) box.checked = false;
  const box = row.querySelector('input[name="uids"]');
  const button = bulk.querySelector(`button[name="action"][value="${action}"]`);
  if (!box || !button) return;
  box.checked = true;
  button.click();
}

function composeFor(kind, row) {
  const ref = row?.dataset.ref;
  // As the pages write it (folders.compose_url): "/" left readable, the rest encoded.
  if (ref) window.location.assign(`/mail/compose?${kind}=${encodeURIComponent(ref).replaceAll("%2F", "/")}`);
}

// The reading view marks its controls with data-key; a key press clicks the control.
function press(key) {
  const target = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!target) return false;
  target.click();
  return true;
}

function typing(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  if (target.tagName !== "INPUT") return false;
  return !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.altKey || event.metaKey || event.isComposing) return;
  if (typing(event.target)) return;
  if (help?.open) return; // the dialog has its own keys (Esc closes it)
  const row = currentRow();
  let handled = true;
  switch (event.key) {
    case "j": select(current < 0 && row ? rows.indexOf(row) + 1 : current + 1); break;
    case "k": select(current < 0 && row ? rows.indexOf(row) - 1 : current - 1); break;
    case "o":
    case "Enter":
      if (row && event.target === document.body) row.querySelector("a.open")?.click();
      else if (row && event.key === "o") row.querySelector("a.open")?.click();
      else handled = false; // Enter on a link or button does what it always does
      break;
    case "c": window.location.assign("/mail/compose"); break;
    case "r": if (!press("r")) composeFor("reply", row); break;
    case "a": if (!press("a")) composeFor("reply_all", row); break;
    case "f": if (!press("f")) composeFor("forward", row); break;
    case "/": document.getElementById("mail-search-q")?.focus(); break;
    case "#": if (!press("#")) actOnRow(row, "delete"); break;
    case "s":
      if (!press("s") && row) actOnRow(row, row.dataset.flagged === "true" ? "unflag" : "flag");
      break;
    case "u": press("u"); break;
    case "?": openHelp(); break;
    default: handled = false;
  }
  if (handled) event.preventDefault();
});
