// The chat page of roomcast (served at `/`): a small client of the Centrifugo protocol v2 in
// its JSON format, spoken directly over `/connection/websocket` (no SDK, no build step).
//
// What it keeps, and why:
// - `rooms`: the user's rooms as `roomcast.rooms` reports them (unread badges, previews),
//   asked again on every (re)connect, every ROOMS_EVERY_MS and when a read cursor moves.
// - `room`: the open room: its messages by offset (a Map, so history, live pushes and
//   recovered publications can overlap without showing a message twice), the stream
//   position {offset, epoch} of the newest publication seen, and who is present.
// - After a lost connection (a server restart, a network cut) it reconnects with backoff
//   and resubscribes with `recover: true` from that position: the server sends what was
//   missed, in order. When it cannot (`recovered: false`), the page reads the gap with
//   `history` from the same position, so no message goes missing either way.
// Everything shown is text (textContent), never HTML from the wire.
"use strict";

const WS_URL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/connection/websocket";
const HISTORY_PAGE = 50;
const ROOMS_EVERY_MS = 10000;
const CALL_TIMEOUT_MS = 10000;
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 3000;
const MAX_SHOWN = 2000; // messages kept on screen per room; older ones are dropped from view

// `$` and `el`: dom.js.

const state = {
  auth: null,        // {user, token} or {user, name} (name: insecure mode, re-login on expiry)
  ws: null,
  nextId: 1,
  pending: new Map(), // command id -> {resolve, reject, timer}
  connected: false,
  backoff: BACKOFF_MIN_MS,
  stopped: true,
  rooms: [],
  room: null,         // {channel, messages: Map, offset, epoch, presence: Map client->user, oldest}
  roomsTimer: null,
};

// ---- login ---------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  const name = $("name").value.trim();
  const token = $("token").value.trim();
  try {
    if (token) {
      state.auth = { token, user: userOfToken(token) };
    } else if (name) {
      state.auth = { name, ...(await pageLogin(name)) };
    } else {
      throw new Error("type a name or paste a token");
    }
  } catch (e) {
    $("login-error").textContent = e.message;
    return;
  }
  sessionStorage.setItem("roomcast.auth", JSON.stringify(state.auth));
  start();
}

async function pageLogin(name) {
  const r = await fetch("/page/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user: name }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `login refused (HTTP ${r.status})`);
  return { token: body.token, user: body.user };
}

// The `sub` claim, for showing who you are (the server verifies the token, not this page).
function userOfToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub || "";
  } catch (_) {
    throw new Error("that does not look like a connection token (a JWT)");
  }
}

function logout() {
  sessionStorage.removeItem("roomcast.auth");
  state.stopped = true;
  if (state.ws) state.ws.close(1000);
  location.reload();
}

// ---- connection ----------------------------------------------------------------------

function start() {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("logout").hidden = false;
  $("me").textContent = state.auth.user ? `as ${state.auth.user}` : "anonymous";
  state.stopped = false;
  connect();
  clearInterval(state.roomsTimer);
  state.roomsTimer = setInterval(() => state.connected && refreshRooms(), ROOMS_EVERY_MS);
}

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (ok ? "ok" : "down");
  document.body.dataset.connected = ok ? "1" : "0";
}

function connect() {
  setStatus("connecting…", false);
  const ws = new WebSocket(WS_URL);
  state.ws = ws;
  ws.onopen = () => onOpen(ws);
  ws.onmessage = (ev) => {
    // One frame may carry several replies, one JSON object per line.
    for (const line of String(ev.data).split("\n")) {
      if (line.trim()) onReply(ws, JSON.parse(line));
    }
  };
  ws.onclose = (ev) => onClose(ws, ev);
}

async function onOpen(ws) {
  try {
    const r = await call("connect", { token: state.auth.token, name: "roomcast-page" });
    state.connected = true;
    state.backoff = BACKOFF_MIN_MS;
    setStatus("connected", true);
    state.node = r.node;
    scheduleRefresh(r);
    await refreshRooms();
    if (state.room) await subscribe(state.room, true);
  } catch (e) {
    if (e.code === 109 && state.auth.name) {
      // Expired page login: sign in again under the same name and reconnect.
      Object.assign(state.auth, await pageLogin(state.auth.name).catch(() => ({})));
    } else if (e.code === 109) {
      // A pasted token that expired: only its owner can bring a new one.
      state.stopped = true;
      setStatus("token expired", false);
      $("room-error").textContent = "the token has expired: leave and paste a new one";
      ws.close(1000);
      return;
    }
    $("room-error").textContent = `connect: ${e.message}`;
    ws.close(3000);
  }
}

// A token with an expiry: the server asks for a fresh one `ttl` seconds after connect
// (else it closes the connection). A page login gets one from /page/login and sends it with
// `refresh`; a pasted token cannot be renewed here (the page reconnects and says so).
let refreshTimer = null;
function scheduleRefresh(result) {
  clearTimeout(refreshTimer);
  if (!result.expires || !result.ttl || !state.auth.name) return;
  const ws = state.ws;
  const wait = Math.max(1, result.ttl - 10) * 1000;
  refreshTimer = setTimeout(async () => {
    if (ws !== state.ws || !state.connected) return;
    try {
      Object.assign(state.auth, await pageLogin(state.auth.name));
      sessionStorage.setItem("roomcast.auth", JSON.stringify(state.auth));
      scheduleRefresh(await call("refresh", { token: state.auth.token }));
    } catch (e) {
      $("room-error").textContent = `token refresh: ${e.message}`;
    }
  }, wait);
}

function onClose(ws, ev) {
  if (ws !== state.ws) return;
  state.connected = false;
  for (const [, p] of state.pending) {
    clearTimeout(p.timer);
    p.reject(Object.assign(new Error("connection lost"), { code: 0 }));
  }
  state.pending.clear();
  setEnabled(false);
  if (state.room) {
    // Who is present is known again after the resubscribe; until then, nobody is shown.
    state.room.presence.clear();
    showPresence(state.room);
  }
  // 3500-3999 and 4500-4999: the server says do not reconnect (invalid token, banned...).
  const terminal = (ev.code >= 3500 && ev.code < 4000) || (ev.code >= 4500 && ev.code < 5000);
  if (state.stopped) return;
  if (terminal) {
    setStatus(`disconnected: ${ev.reason || ev.code}`, false);
    $("room-error").textContent = `the server closed the connection (${ev.code} ${ev.reason}); not reconnecting`;
    return;
  }
  setStatus(`reconnecting (${ev.code || "network"})…`, false);
  const wait = state.backoff * (0.75 + Math.random() / 2);
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
  setTimeout(connect, wait);
}

// Sends one command and resolves with its result (rejects with {code, message} on error).
function call(method, params) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return Promise.reject(Object.assign(new Error("not connected"), { code: 0 }));
  }
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      state.pending.delete(id);
      reject(Object.assign(new Error(`${method}: no answer`), { code: 0 }));
    }, CALL_TIMEOUT_MS);
    state.pending.set(id, { resolve, reject, timer });
    ws.send(JSON.stringify({ id, [method]: params }));
  });
}

function onReply(ws, reply) {
  if (ws !== state.ws) return;
  if (reply.id) {
    const p = state.pending.get(reply.id);
    if (!p) return;
    state.pending.delete(reply.id);
    clearTimeout(p.timer);
    if (reply.error) p.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }));
    else p.resolve(Object.values(reply).find((v) => v !== reply.id) || {});
    return;
  }
  if (reply.push) return onPush(reply.push);
  // An empty reply is the server's ping: answer with an empty command.
  if (Object.keys(reply).length === 0) ws.send("{}");
}

function onPush(push) {
  const room = state.room;
  const channel = push.channel || "";
  if (push.pub && channel.startsWith("#")) {
    // The personal channel: a read cursor moved on another tab or device.
    refreshRooms();
    return;
  }
  if (!room || channel !== room.channel) {
    if (push.pub) refreshRooms();
    return;
  }
  if (push.pub) {
    addMessages(room, [push.pub]);
    markRead(room);
  } else if (push.join) {
    room.presence.set(push.join.info.client, push.join.info.user);
    showPresence(room);
    logJoin(`${push.join.info.user || "anonymous"} joined`);
  } else if (push.leave) {
    room.presence.delete(push.leave.info.client);
    showPresence(room);
    logJoin(`${push.leave.info.user || "anonymous"} left`);
  } else if (push.unsubscribe) {
    $("room-error").textContent = `unsubscribed by the server (${push.unsubscribe.code})`;
    setEnabled(false);
  }
}

// ---- rooms ---------------------------------------------------------------------------

async function refreshRooms() {
  if (!state.auth.user) return; // anonymous: no rooms of one's own
  let r;
  try {
    r = await call("rpc", { method: "roomcast.rooms", data: { limit: 200 } });
  } catch (e) {
    return;
  }
  const data = r.data || {};
  state.rooms = data.rooms || [];
  showRooms(data.total_unread || 0);
}

function showRooms(total) {
  const list = $("rooms");
  list.replaceChildren();
  for (const r of state.rooms) {
    const li = el("li");
    li.dataset.channel = r.channel;
    const name = el("span", "name", r.channel);
    if (r.preview && r.preview.data && typeof r.preview.data.text === "string") {
      name.append(el("span", "preview", r.preview.data.text));
    }
    li.append(name);
    // The open room is being read (its cursor follows the newest message): no badge.
    const open = state.room && state.room.channel === r.channel;
    if (open) li.classList.add("open");
    if (r.unread > 0 && !open) li.append(el("span", "badge", String(r.unread)));
    li.onclick = () => openRoom(r.channel);
    list.append(li);
  }
  $("no-rooms").hidden = state.rooms.length > 0;
  $("total-unread").hidden = total === 0;
  $("total-unread").textContent = String(total);
}

async function openRoom(channel) {
  channel = channel.trim();
  if (!channel || (state.room && state.room.channel === channel)) return;
  $("room-error").textContent = "";
  if (state.room && state.connected) {
    call("unsubscribe", { channel: state.room.channel }).catch(() => {});
  }
  const room = { channel, messages: new Map(), offset: 0, epoch: "", presence: new Map(), oldest: 0 };
  state.room = room;
  $("room-name").textContent = channel;
  $("messages").replaceChildren();
  $("joins").replaceChildren();
  $("presence").replaceChildren();
  document.body.dataset.room = channel;
  for (const li of $("rooms").children) li.classList.toggle("open", li.dataset.channel === channel);
  if (state.connected) await subscribe(room, false);
}

// Subscribes to the open room. `again`: after a reconnect, recovering from the position
// last seen; otherwise a fresh subscription followed by the newest page of history.
async function subscribe(room, again) {
  const req = { channel: room.channel, join_leave: true };
  if (again && room.epoch) Object.assign(req, { recover: true, offset: room.offset, epoch: room.epoch });
  let r;
  try {
    r = await call("subscribe", req);
  } catch (e) {
    if (state.room === room) $("room-error").textContent = `subscribe: ${e.message} (${e.code})`;
    return;
  }
  if (state.room !== room) return;
  const before = { offset: room.offset, epoch: room.epoch };
  addMessages(room, r.publications || []);
  if (!again || !before.epoch) {
    await loadHistory(room, null);
  } else if (!r.recovered || r.epoch !== before.epoch) {
    // Not recovered (too far behind, or the history's epoch changed): page the gap.
    await fillGap(room, before, r);
  }
  room.epoch = r.epoch || room.epoch;
  room.offset = Math.max(room.offset, r.offset || 0);
  document.body.dataset.recovered = r.recovered ? "1" : "0";
  setEnabled(true);
  await loadPresence(room);
  markRead(room);
}

async function loadHistory(room, beforeOffset) {
  const req = { channel: room.channel, limit: HISTORY_PAGE, reverse: true };
  if (beforeOffset) req.since = { offset: beforeOffset, epoch: room.epoch };
  try {
    const h = await call("history", req);
    if (state.room !== room) return;
    if (!room.epoch) room.epoch = h.epoch;
    addMessages(room, h.publications || []);
    const pubs = h.publications || [];
    $("older").hidden = pubs.length < HISTORY_PAGE;
  } catch (e) {
    $("room-error").textContent = `history: ${e.message} (${e.code})`;
  }
}

// Reads every publication after `from` (the position before the restart), page by page.
async function fillGap(room, from, sub) {
  let since = from.epoch === sub.epoch ? { offset: from.offset, epoch: sub.epoch } : null;
  if (!since) {
    // A new epoch: the old offsets mean nothing; start over from the newest page.
    room.messages.clear();
    $("messages").replaceChildren();
    room.epoch = sub.epoch;
    return loadHistory(room, null);
  }
  for (let pages = 0; pages < 100; pages++) {
    const h = await call("history", { channel: room.channel, limit: HISTORY_PAGE, since });
    const pubs = h.publications || [];
    addMessages(room, pubs);
    if (pubs.length < HISTORY_PAGE) return;
    since = { offset: pubs[pubs.length - 1].offset, epoch: h.epoch };
  }
}

async function loadPresence(room) {
  try {
    const p = await call("presence", { channel: room.channel });
    if (state.room !== room) return;
    room.presence = new Map(Object.values(p.presence || {}).map((i) => [i.client, i.user]));
    showPresence(room);
  } catch (e) {
    // Presence off in this namespace: the list stays empty.
  }
}

function showPresence(room) {
  const users = [...new Set(room.presence.values())].sort();
  $("presence").replaceChildren(
    ...users.map((u) => {
      const li = el("li", "", u || "anonymous");
      li.dataset.user = u;
      return li;
    }),
  );
}

function logJoin(text) {
  const list = $("joins");
  list.prepend(el("li", "", `${new Date().toLocaleTimeString()} ${text}`));
  while (list.children.length > 20) list.lastChild.remove();
}

// ---- messages ------------------------------------------------------------------------

function addMessages(room, pubs) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  for (const p of pubs) {
    const offset = p.offset || 0;
    if (!offset || room.messages.has(offset)) continue;
    room.messages.set(offset, p);
    room.offset = Math.max(room.offset, offset);
    room.oldest = room.oldest ? Math.min(room.oldest, offset) : offset;
    const li = messageItem(p);
    // Keep the list in offset order whatever order the publications came in.
    let next = null;
    for (const c of list.children) {
      if (Number(c.dataset.offset) > offset) {
        next = c;
        break;
      }
    }
    list.insertBefore(li, next);
  }
  while (list.children.length > MAX_SHOWN) {
    room.messages.delete(Number(list.firstChild.dataset.offset));
    list.firstChild.remove();
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function messageItem(p) {
  const li = el("li", "msg");
  li.dataset.offset = String(p.offset);
  const user = (p.info && p.info.user) || "";
  if (user && state.auth && user === state.auth.user) li.classList.add("mine");
  li.append(el("span", "off", `#${p.offset}`));
  li.append(el("span", "who", user || "server"));
  const d = p.data;
  li.append(el("span", "text", d && typeof d.text === "string" ? d.text : JSON.stringify(d)));
  return li;
}

let readTimer = null;
// Moves the read cursor to the newest message shown (batched: one call per half second).
function markRead(room) {
  if (!state.auth.user || !room.offset) return;
  clearTimeout(readTimer);
  readTimer = setTimeout(async () => {
    if (state.room !== room || !state.connected) return;
    try {
      await call("rpc", { method: "roomcast.read", data: { channel: room.channel, offset: room.offset } });
    } catch (_) {
      return; // not a member of a members-only room, or offline: the badge stays
    }
    refreshRooms();
  }, 500);
}

async function send(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim() || !state.room) return;
  $("room-error").textContent = "";
  try {
    await call("publish", { channel: state.room.channel, data: { text } });
    input.value = "";
  } catch (e) {
    $("room-error").textContent = `not sent: ${e.message} (${e.code})`;
  }
}

function setEnabled(on) {
  $("text").disabled = !on;
  $("send").disabled = !on;
  document.body.dataset.subscribed = on ? "1" : "0";
}

// ---- start ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").onsubmit = login;
  $("send-form").onsubmit = send;
  $("open-form").onsubmit = (e) => {
    e.preventDefault();
    openRoom($("open-room").value);
  };
  $("older").onclick = () => state.room && loadHistory(state.room, state.room.oldest);
  $("logout").onclick = logout;
  const saved = sessionStorage.getItem("roomcast.auth");
  if (saved) {
    state.auth = JSON.parse(saved);
    start();
  }
});
