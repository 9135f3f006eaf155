// What every page's scripts share: calling the box's JSON API from a signed-in page.
// The session cookie goes along by itself (same origin); the two headers are what the
// server's CSRF rule asks of a cookie-authenticated unsafe request (server.py).

export const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
// What the CSRF rule asks of every unsafe call a page's script makes.
export const API_HEADERS = Object.freeze({ "X-Requested-With": "edgebox", "X-CSRF-Token": csrfToken });

export class ApiError extends Error {
  constructor(status, body) {
    // The page's language, not the Accept-Language the server answered in.
    const error = body?.error;
    const local = document.documentElement.lang === "en" ? error?.message_en : error?.message_th;
    super(local ?? error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = error?.code ?? "http";
    this.body = body;
  }
}

export async function api(method, path, body, { raw = false, contentType } = {}) {
  const headers = { ...API_HEADERS };
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    payload = body;
    headers["Content-Type"] = contentType ?? body.type ?? "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/signin?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, null);
  }
  if (!response.ok) {
    let detail = null;
    try { detail = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

export const lang = document.documentElement.lang === "en" ? "en" : "th";

// tr("ไทย", "English"): the scripts' counterpart of the templates' tr().
export function tr(thai, english) {
  return lang === "en" ? english : thai;
}

// Dates as the pages show them: Buddhist Era in Thai, Thailand's time (i18n.py).
const THAI_MONTHS = ["ม.ค.", "ก.พ.", "มี.ค.", "เม.ย.", "พ.ค.", "มิ.ย.", "ก.ค.", "ส.ค.", "ก.ย.", "ต.ค.", "พ.ย.", "ธ.ค."];
const EN_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

export function formatDate(value, { time = true } = {}) {
  const d = new Date(new Date(value).getTime() + 7 * 3600 * 1000); // UTC+7, no DST
  const year = lang === "th" ? d.getUTCFullYear() + 543 : d.getUTCFullYear();
  const month = (lang === "th" ? THAI_MONTHS : EN_MONTHS)[d.getUTCMonth()];
  let text = `${d.getUTCDate()} ${month} ${year}`;
  if (time) {
    const hh = String(d.getUTCHours()).padStart(2, "0");
    const mm = String(d.getUTCMinutes()).padStart(2, "0");
    text += ` ${hh}:${mm}`;
  }
  return text;
}

// Sizes as the pages show them, the twin of i18n.format_size: KB, MB, GB, TB in both
// languages, 1024-based, one decimal below ten, halves up. Whole numbers only (exact
// below 2^53 / 10 bytes), because toFixed() rounds ties unlike Python's format.
const SIZE_UNITS = ["KB", "MB", "GB", "TB"];

export function formatSize(bytes) {
  const size = Math.max(0, Math.trunc(Number(bytes) || 0));
  for (const [index, unit] of SIZE_UNITS.entries()) {
    const divisor = 1024 ** (index + 1);
    const tenths = Math.floor((size * 10 + divisor / 2) / divisor);
    if (tenths < 100) {
      if (!size) return `0 ${unit}`;
      const shown = Math.max(tenths, 1); // a file that is not empty never shows as nothing
      return `${Math.floor(shown / 10)}.${shown % 10} ${unit}`;
    }
    const whole = Math.floor((size + divisor / 2) / divisor);
    if (whole < 1024 || index === SIZE_UNITS.length - 1) return `${whole} ${unit}`;
  }
  return `${size}`;
}

// Build DOM from text only: scripts never assign innerHTML with data, so a message's
// text can never become markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
