// Chat text as the pages show it: web links, dates, map links (every chat page).
//
// The rule kept everywhere: text from a message, a name or the server goes into the
// page only through textContent / el() (never innerHTML), and a link is an <a> only
// when it is an http(s) URL.

import { el, formatDate } from "./common.js";

// The same rule as link_segments in appliance/chat/pages/text.py: ASCII URL characters only, trailing sentence
// punctuation and unmatched closing brackets left outside the link.
const LINK = /https?:\/\/[A-Za-z0-9\-._~:/?#[\]@!$&'()*+,;=%]+/gi;
const TRAILING = ".,;:!?'";
const OPENERS = { ")": "(", "]": "[" };

function count(text, char) {
  return text.split(char).length - 1;
}

function trimUrl(url) {
  while (url) {
    const last = url[url.length - 1];
    if (TRAILING.includes(last)) url = url.slice(0, -1);
    else if (OPENERS[last] && count(url, last) > count(url, OPENERS[last])) url = url.slice(0, -1);
    else break;
  }
  return url;
}

export function linkSegments(text) {
  const pieces = [];
  let at = 0;
  for (const match of text.matchAll(LINK)) {
    const url = trimUrl(match[0]);
    if (!url.split("://")[1]) continue;
    if (match.index > at) pieces.push({ text: text.slice(at, match.index) });
    pieces.push({ text: url, href: url });
    at = match.index + url.length;
  }
  if (at < text.length) pieces.push({ text: text.slice(at) });
  return pieces;
}

export function safeHref(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

export function externalLink(href, text) {
  return el("a", { href, rel: "noopener noreferrer", target: "_blank" }, text);
}

// Text with its web links as anchors, built node by node.
export function textWithLinks(text) {
  const nodes = [];
  for (const piece of linkSegments(text)) {
    const href = piece.href && safeHref(piece.href);
    nodes.push(href ? externalLink(href, piece.text) : document.createTextNode(piece.text));
  }
  return nodes;
}

const BANGKOK = 7 * 3600 * 1000;

export function isoTime(seconds) {
  return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
}

// As i18n.format_short: the time if today (Thailand's day), else the date.
export function shortDate(seconds) {
  const then = new Date(seconds * 1000 + BANGKOK);
  const today = new Date(Date.now() + BANGKOK);
  if (then.toISOString().slice(0, 10) === today.toISOString().slice(0, 10)) {
    return then.toISOString().slice(11, 16);
  }
  return formatDate(seconds * 1000, { time: false });
}

export function mapUrl(place) {
  const lat = Number(place?.lat);
  const lon = Number(place?.lon);
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return null;
  const a = lat.toFixed(6);
  const b = lon.toFixed(6);
  return `https://www.openstreetmap.org/?mlat=${a}&mlon=${b}#map=16/${a}/${b}`;
}
