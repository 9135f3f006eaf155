// The chat event stream in the browser: a WebSocket, resumable by cursor (docs/chat.md).

import { el, tr } from "./common.js";

export class EventStream {
  // Opens /api/v1/stream?cursor=N with the session cookie (same origin), and after a
  // drop reconnects with backoff (1 s doubling to 30 s, jittered) from the cursor of
  // the last event handled, so nothing is missed or repeated (docs/chat.md). *root*,
  // the page's .chat element, shows the connection's state (data-stream, a status line).
  constructor(root, cursor, onEvent, onNotice) {
    this.root = root;
    this.cursor = cursor;
    this.onEvent = onEvent;
    this.onNotice = onNotice;
    this.backoff = 1000;
    this.ws = null;
    this.retry = null;
    this.ackTimer = null;
    this.status = el("p", { class: "stream-status muted", role: "status", "data-testid": "stream-status", hidden: true });
    root.prepend(this.status);
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
    this.connect();
  }

  connect() {
    this.retry = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/stream?cursor=${this.cursor}`);
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.backoff = 1000;
      this.status.hidden = true;
      this.root.dataset.stream = "open";
    });
    ws.addEventListener("message", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      if (data.type === "event" && Number.isInteger(data.cursor)) {
        if (data.cursor <= this.cursor) return;
        this.cursor = data.cursor;
        try { this.onEvent(data.event); } catch (error) { console.error(error); }
        this.scheduleAck();
      } else if (data.type === "typing") {
        this.onNotice(data);
      }
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.root.dataset.stream = "closed";
      this.status.hidden = false;
      this.status.textContent = tr("การเชื่อมต่อขาดหาย กำลังเชื่อมต่อใหม่…", "Connection lost; reconnecting…");
      const wait = this.backoff * (0.5 + Math.random() / 2);
      this.backoff = Math.min(this.backoff * 2, 30000);
      this.retry = setTimeout(() => this.connect(), wait);
    });
  }

  reconnectNow() {
    if (this.ws || !this.retry) return;
    clearTimeout(this.retry);
    this.connect();
  }

  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  scheduleAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = setTimeout(() => this.send({ type: "ack", cursor: this.cursor }), 1000);
  }
}
