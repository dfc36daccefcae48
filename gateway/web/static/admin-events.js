// "Live events": one WebSocket to /admin/events (same origin; the server checks the
// session cookie, the second factor, the admin list and the Origin), newest event on
// top. Filters reconnect with new query parameters; a dropped socket reconnects with
// a growing delay. Every text goes in with textContent: an event is data, never markup.
"use strict";

(() => {
  const MAX_ITEMS = 500;
  let socket = null;
  let retry = 0;
  let timer = null;

  const field = (event, name) => (event[name] === undefined || event[name] === null ? "" : String(event[name]));

  function describe(e) {
    const who = field(e, "user") || "(no user)";
    const from = field(e, "client_ip") || field(e, "ip") || field(e, "subnet");
    switch (e.event) {
      case "login.ok":
        return `${who} logged in from ${from}` + (e.factor ? ` (${e.factor})` : "");
      case "login.denied":
        return `login of ${who} from ${from} denied: ${field(e, "reason")}`;
      case "connection.refused":
        return `connection from ${from} refused: ${field(e, "reason")}`;
      case "login.plaintext_blocked":
        return `plaintext login attempt by ${who} from ${from} blocked`;
      case "ban.created":
        return `${field(e, "network")} banned (${field(e, "ban_reason")})`;
      case "admin.ban_added":
        return `${field(e, "network")} banned by ${field(e, "admin") || "an administrator"}` +
          (e.reason ? ` (${e.reason})` : "");
      case "admin.ban_removed":
        return `ban of ${field(e, "network")} removed by ${field(e, "admin") || "an administrator"}`;
      case "anomaly":
        return `${field(e, "anomaly_kind")} ${field(e, "user")} ${from} → ${field(e, "action")}`.replace(/\s+/g, " ");
      case "session.revoked":
        return `session of ${who} from ${from} ended: ${field(e, "reason")}`;
      case "admin.session_killed":
        return `session of ${who} from ${from} signed out by ${field(e, "admin") || "an administrator"}`;
      default:
        return field(e, "event");
    }
  }

  function timeOf(e) {
    const t = field(e, "ts");
    const m = /T(\d\d:\d\d:\d\d)/.exec(t);
    return m ? m[1] : new Date().toISOString().slice(11, 19);
  }

  function show(e) {
    const list = document.getElementById("live-events");
    const item = document.createElement("li");
    item.dataset.kind = field(e, "kind");
    item.dataset.event = field(e, "event");
    if (e.user) item.dataset.user = String(e.user);
    const cells = e.kind === "lost"
      ? [timeOf(e), "lost", `${field(e, "lost")} events were dropped: this page did not keep up`, ""]
      : [timeOf(e), field(e, "kind"), describe(e), field(e, "instance")];
    for (const [i, name] of ["time", "kind", "text", "instance"].entries()) {
      const span = document.createElement("span");
      span.className = name;
      span.textContent = cells[i];
      item.appendChild(span);
    }
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX_ITEMS) list.removeChild(list.lastChild);
  }

  function status(text) {
    document.getElementById("feed-status").textContent = text;
  }

  function query(form) {
    const params = new URLSearchParams();
    for (const name of ["kind", "user", "address"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  function connect(form) {
    clearTimeout(timer);
    if (socket) socket.close();  // its close handler sees it is no longer current
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${form.dataset.feed}${query(form)}`);
    socket = ws;
    ws.addEventListener("open", () => {
      retry = 0;
      status("Live: new events appear at the top.");
    });
    ws.addEventListener("message", (message) => {
      try {
        show(JSON.parse(message.data));
      } catch (err) {
        // not an event: ignore it rather than stop the feed
      }
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      if (event.code === 1008) {
        // the server ended the feed: this session signed out or is no admin's any more
        status("The session ended: sign in again to see live events.");
        return;
      }
      retry = Math.min(retry + 1, 6);
      const delay = 500 * 2 ** (retry - 1);
      status(`Disconnected; reconnecting in ${Math.round(delay / 1000)} s…`);
      timer = setTimeout(() => connect(form), delay);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("feed-filter");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      document.getElementById("live-events").replaceChildren();
      connect(form);
    });
    connect(form);
  });
})();
