// The admin page of roomcast (served at `/admin`). Everything it shows comes from the server
// HTTP API of this node (`POST /api/<method>` with the key the operator typed, kept in this
// tab's sessionStorage) and from its `/metrics`:
// - nodes of the cluster with connections, users, rooms and uptime (`info`);
// - the busiest rooms (`channels`, sorted by connections, the first BUSIEST);
// - live counters (`/metrics`, summed over labels, with the rate since the last refresh);
// - a user's connections (`connections`) with a disconnect button each, or all at once
//   (`disconnect`);
// - publish to a room (`publish`).
// It refreshes every REFRESH_MS while the tab is visible. Values are shown as text only.
"use strict";

const REFRESH_MS = 2000;
const BUSIEST = 20;
// Counters shown first, in this order; every other roomcast_* series follows.
const FIRST = [
  "roomcast_connections",
  "roomcast_users",
  "roomcast_subscriptions",
  "roomcast_connects_total",
  "roomcast_disconnects_total",
  "roomcast_publications_total",
  "roomcast_deliveries_total",
  "roomcast_commands_total",
  "roomcast_command_errors_total",
  "roomcast_slow_closes_total",
  "roomcast_token_refusals_total",
];

// `$` and `el`: dom.js.
const row = (cells) => {
  const tr = el("tr");
  for (const [text, cls] of cells) tr.append(el("td", cls || "", String(text)));
  return tr;
};

let key = sessionStorage.getItem("roomcast.apikey") || "";
let timer = null;
let lastCounters = null; // {at: ms, values: Map}

class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function api(method, body) {
  const r = await fetch(`/api/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-API-Key": key },
    body: JSON.stringify(body || {}),
  });
  const answer = await r.json().catch(() => ({}));
  if (answer.error) throw new ApiError(answer.error.message, answer.error.code, r.status);
  if (!r.ok) throw new ApiError(`HTTP ${r.status}`, 0, r.status);
  return answer.result;
}

function setStatus(text, ok) {
  $("status").textContent = text;
  $("status").className = "status " + (ok ? "ok" : "down");
}

function uptime(secs) {
  const d = Math.floor(secs / 86400);
  const h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${secs % 60}s`;
}

async function refresh() {
  try {
    const [info, channels] = await Promise.all([api("info"), api("channels")]);
    showNodes(info.nodes || []);
    showBusiest(channels.channels || {});
    setStatus(`updated ${new Date().toLocaleTimeString()}`, true);
  } catch (e) {
    if (e.status === 401) {
      forget("the API key was refused");
      return;
    }
    setStatus(`error: ${e.message}`, false);
  }
  try {
    showCounters(await (await fetch("/metrics")).text());
  } catch (_) {
    // /metrics unreachable: the counters keep their last values
  }
}

function showNodes(nodes) {
  nodes.sort((a, b) => a.name.localeCompare(b.name));
  $("nodes").tBodies[0].replaceChildren(
    ...nodes.map((n) => {
      const tr = row([
        [n.name],
        [n.num_clients, "n"],
        [n.num_users, "n"],
        [n.num_channels, "n"],
        [uptime(n.uptime), "n"],
        [n.version],
      ]);
      tr.dataset.node = n.uid;
      return tr;
    }),
  );
}

function showBusiest(channels) {
  const rooms = Object.entries(channels)
    .map(([name, c]) => [name, c.num_clients])
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .slice(0, BUSIEST);
  $("busiest").tBodies[0].replaceChildren(
    ...rooms.map(([name, n]) => {
      const tr = row([[name], [n, "n"]]);
      tr.dataset.room = name;
      return tr;
    }),
  );
}

// Prometheus/OpenMetrics text: sums each series over its labels (histogram buckets left out).
function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1].endsWith("_bucket") || m[1].endsWith("_created")) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) values.set(m[1], (values.get(m[1]) || 0) + v);
  }
  return values;
}

function showCounters(text) {
  const values = parseMetrics(text);
  const now = Date.now();
  const names = [
    ...FIRST.filter((n) => values.has(n)),
    ...[...values.keys()].filter((n) => n.startsWith("roomcast_") && !FIRST.includes(n)).sort(),
  ];
  $("counters").tBodies[0].replaceChildren(
    ...names.map((name) => {
      const v = values.get(name);
      let rate = "";
      if (lastCounters && name.endsWith("_total") && lastCounters.values.has(name)) {
        const secs = (now - lastCounters.at) / 1000;
        if (secs > 0) rate = ((v - lastCounters.values.get(name)) / secs).toFixed(1);
      }
      const tr = row([[name], [Number.isInteger(v) ? v : v.toFixed(3), "n"], [rate, "n"]]);
      tr.dataset.metric = name;
      return tr;
    }),
  );
  lastCounters = { at: now, values };
}

// ---- a user's connections --------------------------------------------------------------

async function lookup(event) {
  if (event) event.preventDefault();
  const user = $("lookup-user").value.trim();
  $("lookup-error").textContent = "";
  if (!user) return;
  try {
    const r = await api("connections", { user });
    $("lookup-nodes").textContent = r.nodes.length
      ? `${user} is connected on ${r.nodes.length} node(s): ${r.nodes.join(", ")}` +
        (r.connections.length ? "" : " (none on this node: ask that node's /admin)")
      : `${user} is not connected`;
    $("connections").tBodies[0].replaceChildren(
      ...r.connections.map((c) => {
        const tr = row([[c.client], [c.node], [c.queued_bytes, "n"]]);
        tr.dataset.client = c.client;
        const td = el("td");
        const b = el("button", "disconnect", "Disconnect");
        b.type = "button";
        b.onclick = () => disconnect(user, c.client);
        td.append(b);
        tr.append(td);
        return tr;
      }),
    );
    $("disconnect-all").disabled = r.nodes.length === 0;
  } catch (e) {
    $("lookup-error").textContent = e.message;
  }
}

async function disconnect(user, client) {
  $("lookup-error").textContent = "";
  try {
    const body = { user };
    if (client) body.client = client;
    await api("disconnect", body);
  } catch (e) {
    $("lookup-error").textContent = e.message;
    return;
  }
  // The close takes a moment to reach the directory: look again shortly.
  setTimeout(lookup, 300);
}

// ---- publish ---------------------------------------------------------------------------

async function publish(event) {
  event.preventDefault();
  $("pub-error").textContent = "";
  $("pub-result").textContent = "";
  const channel = $("pub-channel").value.trim();
  let data;
  try {
    const raw = $("pub-data").value.trim();
    data = raw.startsWith("{") || raw.startsWith("[") ? JSON.parse(raw) : { text: raw };
  } catch (e) {
    $("pub-error").textContent = `data is not JSON: ${e.message}`;
    return;
  }
  try {
    const r = await api("publish", { channel, data });
    $("pub-result").textContent = `published at offset ${r.offset} (epoch ${r.epoch})`;
  } catch (e) {
    $("pub-error").textContent = e.message;
  }
}

// ---- key -------------------------------------------------------------------------------

function useKey(event) {
  event.preventDefault();
  key = $("apikey").value.trim();
  $("key-error").textContent = "";
  if (!key) return;
  sessionStorage.setItem("roomcast.apikey", key);
  show();
}

function forget(why) {
  key = "";
  sessionStorage.removeItem("roomcast.apikey");
  clearInterval(timer);
  $("panel").hidden = true;
  $("key-card").hidden = false;
  $("forget").hidden = true;
  $("key-error").textContent = typeof why === "string" ? why : "";
  setStatus("no API key", false);
}

function show() {
  $("key-card").hidden = true;
  $("panel").hidden = false;
  $("forget").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(() => document.visibilityState === "visible" && refresh(), REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").onsubmit = useKey;
  $("forget").onclick = () => forget();
  $("lookup-form").onsubmit = lookup;
  $("disconnect-all").onclick = () => disconnect($("lookup-user").value.trim(), null);
  $("publish-form").onsubmit = publish;
  if (key) show();
});
