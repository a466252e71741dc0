"use strict";
const POLL_MS = 2000, SHOWN_ENTRIES = 100;
const samples = [];  // the server's recent rate samples, oldest first
let windowSeconds = 600, serverNow = 0;
const cards = new Map();  // subscription -> its card (built once, updated on every poll)
const replayNotes = new Map();  // subscription -> what its last replay did
const replaying = new Set();  // subscriptions with a replay under way: their button stays off
let token = sessionStorage.getItem("conveyor-token");

function api(path, options = {}) {
  const headers = Object.assign({"Authorization": "Bearer " + token}, options.headers || {});
  return fetch(path, Object.assign({}, options, {headers}));
}

function post(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

// Every piece of data goes in as text (textContent, attributes), never as markup.
function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
}

function line(tag, content, className) {
  const node = text(tag, content, "line" + (className ? " " + className : ""));
  node.title = content;
  return node;
}

function button(label, className, onClick) {
  const node = text("button", label, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function deadLetters(name) {
  return `/v1/admin/subscriptions/${encodeURIComponent(name)}/dead-letters`;
}

function svgNode(tag, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// x is time, from the oldest sample kept (at most the server's window) to now; y the value
// scaled to the highest. Every sparkline shares the x range, so their moments line up.
function sparkline(points) {
  const start = Math.max(serverNow - windowSeconds, samples.length ? samples[0].time - samples[0].seconds : -Infinity);
  const width = Math.max(serverNow - start, 1e-3);
  const svg = svgNode("svg", {viewBox: `0 0 ${width} 36`, preserveAspectRatio: "none", "data-points": points.length});
  const top = Math.max(...points.map(p => p.value), 1e-9);
  svg.appendChild(svgNode("polyline", {
    points: points.map(p => `${(p.time - start).toFixed(2)},${(34 - 32 * p.value / top).toFixed(2)}`).join(" "),
    fill: "none", stroke: "#3b6fd6", "stroke-width": "1.5", "vector-effect": "non-scaling-stroke",
  }));
  return svg;
}

function series(pick) {
  return samples.map(sample => ({time: sample.time, value: pick(sample)})).filter(p => typeof p.value === "number");
}

function addSamples(history) {
  if (!history || !Array.isArray(history.samples)) return;
  windowSeconds = history.span_seconds || windowSeconds;
  serverNow = Math.max(serverNow, history.time || 0);
  const newest = samples.length ? samples.at(-1).time : -Infinity;
  samples.push(...history.samples.filter(sample => sample.time > newest));
  while (samples.length && samples[0].time < serverNow - windowSeconds) samples.shift();
}

function showLogin(message) {
  token = null;
  sessionStorage.removeItem("conveyor-token");
  cards.clear();
  document.getElementById("subscriptions").replaceChildren();
  document.getElementById("overview").hidden = true;
  document.getElementById("login").hidden = false;
  const note = document.getElementById("login-error");
  note.textContent = message || "";
  note.hidden = !message;
}

// Entries a pass could not put back, where the answer lists them.
function skippedNote(answer) {
  return Array.isArray(answer.skipped) && answer.skipped.length ? `, ${answer.skipped.length} skipped` : "";
}

async function replayAll(name, node) {
  if (!confirm(`Send every dead letter of ${name} back to its queue?`)) return;
  replaying.add(name);
  node.disabled = true;
  replayNotes.set(name, "replaying...");
  try {
    const response = await post(deadLetters(name) + "/replay", {all: true});
    const answer = await response.json().catch(() => ({}));
    replayNotes.set(name, response.ok
      ? `replayed ${answer.replayed}${skippedNote(answer)}`
      : `replay failed: ${answer.detail || response.status}${answer.replayed ? ` (replayed ${answer.replayed})` : ""}`);
  } catch (error) {
    replayNotes.set(name, "replay failed: conveyor unreachable");
  } finally {
    replaying.delete(name);
  }
  refresh();
}

// The dead letters of one subscription: listed on demand (each listing is a pass over the queue).
function deadLetterPanel(name) {
  const panel = text("div", "", "dlq"), bar = text("div", "", "dlq-bar"), reason = text("select", "", "dlq-reason");
  panel.hidden = true;
  const note = text("p", "", "note dlq-note");
  const list = text("ul", "", "dlq-entries");
  const detail = text("div", "", "dlq-detail");
  detail.hidden = true;
  const matching = () => reason.value ? {filter: {reason: reason.value}} : null;
  const replayMatching = button("Replay matching", "small dlq-replay-matching", () => act("replay", matching(), `every entry with reason ${reason.value}`));
  const discardMatching = button("Discard matching", "small dlq-discard-matching", () => act("discard", matching(), `every entry with reason ${reason.value}`));
  reason.addEventListener("change", () => { replayMatching.disabled = discardMatching.disabled = !reason.value; });
  bar.append(text("span", "reason"), reason, replayMatching, discardMatching, button("Reload", "small dlq-reload", () => load()));

  async function load() {
    note.textContent = "loading...";
    let response, answer;
    try {
      response = await api(deadLetters(name) + `?limit=${SHOWN_ENTRIES}`);
      answer = await response.json();
    } catch (error) { note.textContent = "could not list: conveyor unreachable"; return; }
    if (!response.ok) { note.textContent = `could not list: ${answer.detail || response.status}`; return; }
    const chosen = reason.value;
    const reasons = [...new Set(answer.entries.map(entry => entry.reason).filter(Boolean))].sort();
    reason.replaceChildren(text("option", "any"), ...reasons.map(value => text("option", value)));
    reason.firstChild.value = "";
    reason.value = reasons.includes(chosen) ? chosen : "";
    replayMatching.disabled = discardMatching.disabled = !reason.value;
    list.replaceChildren(...answer.entries.map(entry => {
      const item = document.createElement("li");
      item.dataset.entry = entry.id;
      const error = [entry.error.class, entry.error.message].filter(Boolean).join(": ");
      item.appendChild(line("span", `${entry.event.id} (${entry.event.type}) ${entry.reason || "?"}: ${error}`, "dlq-summary"));
      item.append(
        button("details", "small dlq-show", () => show(entry.id, item)),
        button("replay", "small dlq-replay", () => act("replay", {ids: [entry.id]}, null)),
        button("discard", "small dlq-discard", () => act("discard", {ids: [entry.id]}, `entry ${entry.event.id}`)),
      );
      return item;
    }));
    if (!answer.entries.length) list.appendChild(text("li", "no dead letters", "note"));
    note.textContent = answer.matching > answer.entries.length
      ? `showing ${answer.entries.length} of ${answer.matching}` : `${answer.matching} entries`;
  }

  async function show(entryId, item) {
    for (const other of list.children) other.classList.toggle("selected", other === item);
    let response, answer;
    try {
      response = await api(`${deadLetters(name)}/${encodeURIComponent(entryId)}`);
      answer = await response.json();
    } catch (error) { note.textContent = "could not show: conveyor unreachable"; return; }
    if (!response.ok) { note.textContent = `could not show: ${answer.detail || response.status}`; return; }
    const headers = answer.headers || {};
    const fields = document.createElement("dl");
    for (const [label, value] of [
      ["event", `${answer.event.id} (${answer.event.type}) from ${answer.event.source}`],
      ["reason", answer.reason], ["error class", answer.error.class], ["error message", answer.error.message],
      ["attempts", answer.attempts], ["replays", answer.replays],
      ["first failure", answer.first_failure], ["last failure", answer.last_failure],
    ]) {
      fields.append(text("dt", label), text("dd", value === null || value === undefined ? "-" : String(value), "field-" + label.replaceAll(" ", "-")));
    }
    const every = document.createElement("dl");
    for (const [header, value] of Object.entries(headers)) {
      if (header === "x-conveyor-error-traceback") continue;
      every.append(text("dt", header), text("dd", typeof value === "string" ? value : JSON.stringify(value), "dlq-header"));
    }
    const all = document.createElement("details");
    all.append(text("summary", "every header", "note"), every);
    const trace = text("ol", "", "traceback");
    const traceback = typeof headers["x-conveyor-error-traceback"] === "string" ? headers["x-conveyor-error-traceback"] : "";
    const rows = traceback.split("\n").filter(row => row.trim());
    if (rows.length && !traceback.startsWith("Traceback")) rows[0] = "\u2026" + rows[0];  // the header keeps the tail
    for (const row of rows) trace.appendChild(text("li", row));
    detail.replaceChildren(text("h3", `entry ${answer.id}`), fields, all, text("div", "traceback", "note"), trace);
    detail.hidden = false;
  }

  async function act(action, selection, what) {
    if (!selection) return;
    if (what && !confirm(`${action === "replay" ? "Replay" : "Discard"} ${what} of ${name}?`)) return;
    note.textContent = `${action}ing...`;
    let response, answer;
    try {
      response = await post(`${deadLetters(name)}/${action}`, selection);
      answer = await response.json().catch(() => ({}));
    } catch (error) { note.textContent = `${action} failed: conveyor unreachable`; return; }
    const done = action === "replay" ? answer.replayed : answer.discarded;
    const skipped = skippedNote(answer);
    const outcome = !response.ok ? `${action} failed: ${answer.detail || response.status}`
      : done || skipped ? `${action === "replay" ? "replayed" : "discarded"} ${done || 0}${skipped}`
      : `nothing to ${action}: no such entry in the queue now`;
    detail.hidden = true;
    await load();
    note.textContent = outcome;
    refresh();
  }

  panel.append(bar, note, list, detail);
  panel.load = load;
  return panel;
}

function card(name) {
  const node = document.createElement("section");
  node.className = "card";
  node.dataset.subscription = name;
  node.appendChild(text("h2", name));
  const parts = {
    patterns: text("div", "", "patterns"),
    counts: text("div", "", "counts"),
    spark: text("div", "", "spark"),
    failures: text("ul", "", "failures"),
    replay: button("Replay dead letters", "replay", () => replayAll(name, parts.replay)),
    replayed: text("span", "", "note replayed"),
    panel: deadLetterPanel(name),
  };
  const toggle = button("Dead letters", "dlq-toggle", () => {
    parts.panel.hidden = !parts.panel.hidden;
    if (!parts.panel.hidden) parts.panel.load();
  });
  node.append(parts.patterns, parts.counts, parts.spark, parts.failures, parts.replay, " ", toggle, " ", parts.replayed, parts.panel);
  node.parts = parts;
  return node;
}

function update(node, entry) {
  const {parts} = node;
  const name = entry.name;
  const filters = entry.filters && entry.filters.length ? `  (${entry.filters.length} filter${entry.filters.length > 1 ? "s" : ""})` : "";
  const limit = entry.rate ? `  at most ${entry.rate.limit} per process` : "";
  // Outcome events are opt-in; the lookup above answers for every subscription either way.
  const outcomes = entry.completions ? "outcomes published to {ns}.results" : "outcomes: status lookup only";
  parts.patterns.textContent = entry.events.join("  ") + filters + limit + "  →  " + entry.handler + "  ·  " + outcomes;
  parts.patterns.title = entry.filters && entry.filters.length ? JSON.stringify(entry.filters) : "";
  // A webhook's endpoint circuit: "open" means its events wait on the ladder, unsent.
  const circuit = entry.webhook ? entry.webhook.circuit.state : "";
  if (circuit) parts.patterns.textContent += `  (${entry.webhook.endpoint}: circuit ${circuit})`;
  node.dataset.circuit = circuit;
  const retrying = entry.retry.tiers.reduce((a, t) => a + (t.messages || 0), 0);
  const cells = [];
  for (const [label, value, cls] of [
    ["ready", entry.queue.messages, "ready"], ["consumers", entry.queue.consumers, "consumers"],
    ["retrying", retrying, "retrying"], ["dead letters", entry.dead_letter.messages, "dead"],
  ]) {
    const cell = document.createElement("div");
    cell.className = cls + (typeof value === "number" && value > 0 ? " nonzero" : "");
    cell.appendChild(text("b", value === undefined ? "?" : String(value), cls + "-count"));
    cell.appendChild(text("span", label));
    cells.push(cell);
  }
  parts.counts.replaceChildren(...cells);
  const rate = series(s => s.subscriptions[name] && s.subscriptions[name].handled_per_second);
  const latency = series(s => s.subscriptions[name] && s.subscriptions[name].handler_ms);
  const columns = [];
  for (const [label, points, cls] of [
    [`${(rate.at(-1) || {value: 0}).value.toFixed(1)} events/s`, rate, "rate"],
    [`${(latency.at(-1) || {value: 0}).value.toFixed(0)} ms avg`, latency, "latency"],
  ]) {
    const column = text("div", "", cls);
    column.style.flex = "1";
    column.append(sparkline(points), text("div", label));
    columns.push(column);
  }
  parts.spark.replaceChildren(...columns);
  const failures = entry.recent_failures.map(failure => line("li",
    `${new Date(failure.at * 1000).toLocaleTimeString()} ${failure.event_id} (${failure.type}) ${failure.outcome}: ${failure.error}`));
  if (!failures.length) failures.push(text("li", "no recent failures", "note"));
  parts.failures.replaceChildren(...failures);
  parts.replay.disabled = !entry.dead_letter.messages || replaying.has(name);
  parts.replayed.textContent = replayNotes.get(name) || "";
}

function renderIngest(ingest) {
  const strip = document.getElementById("ingest");
  strip.hidden = !ingest;
  if (!ingest) return;
  const accepted = series(s => s.ingest.accepted_per_second);
  strip.querySelector(".accepted-spark").replaceChildren(sparkline(accepted));
  strip.querySelector(".accepted-rate").textContent = `${(accepted.at(-1) || {value: 0}).value.toFixed(1)} accepted/s`;
  strip.querySelector(".accepted-total").textContent = `${ingest.accepted} accepted since start`;
  const latest = samples.at(-1);
  const rows = Object.entries(ingest.refused).sort().map(([reason, count]) => {
    const rate = latest && latest.ingest.refused_per_second[reason] || 0;
    const row = line("li", `${reason}: ${count} (${rate.toFixed(1)}/s)`, count > 0 ? "nonzero" : "");
    row.dataset.reason = reason;
    return row;
  });
  if (!rows.length) rows.push(text("li", "nothing refused", "note"));
  strip.querySelector(".refused").replaceChildren(...rows);
}

async function lookUp(eventId) {
  const result = document.getElementById("lookup-result");
  if (!eventId) { result.replaceChildren(text("p", "enter an event id", "note lookup-note")); return; }
  let response, answer;
  try {
    response = await api(`/v1/events/${encodeURIComponent(eventId)}`);
    answer = await response.json();
  } catch (error) { result.replaceChildren(text("p", "lookup failed: no answer from conveyor", "note lookup-note")); return; }
  if (!response.ok) {
    result.replaceChildren(text("p", `${eventId}: ${answer.detail || response.status}`, "note lookup-note"));
    return;
  }
  const table = text("table", "", "lookup-subscriptions"), head = document.createElement("tr");
  for (const label of ["subscription", "state", "attempts", "last error"]) head.appendChild(text("th", label));
  table.appendChild(head);
  for (const [name, status] of Object.entries(answer.subscriptions)) {
    const row = document.createElement("tr");
    row.dataset.lookupSubscription = name;
    const error = status.last_error ? [status.last_error.class, status.last_error.message].filter(Boolean).join(": ") : "";
    row.append(line("td", name), text("td", status.state, `lookup-state state-${status.state}`), text("td", String(status.attempts)), line("td", error, "lookup-error"));
    table.appendChild(row);
  }
  result.replaceChildren(
    line("p", `${answer.id} (${answer.type}) from ${answer.source}: ${answer.state}`, "lookup-summary"), table);
}

async function refresh() {
  if (!token) { document.getElementById("login").hidden = false; return; }
  let response, historyResponse;
  const since = samples.length ? `?since=${samples.at(-1).time}` : "";
  try {
    // The history first (with the first poll): the sparklines start from the server's past.
    [response, historyResponse] = await Promise.all([api("/v1/admin/dashboard"), api("/v1/admin/dashboard/history" + since)]);
  } catch (error) {
    document.getElementById("error").textContent = "conveyor unreachable"; return;
  }
  if (response.status === 401 || response.status === 403) {
    const refused = await response.json().catch(() => ({}));
    showLogin(`That token was refused (${response.status}): ${refused.detail || "not an admin token"}`);
    return;
  }
  let data;
  try { data = await response.json(); } catch (error) {
    document.getElementById("error").textContent = `unexpected answer (${response.status})`; return;
  }
  if (!response.ok) { document.getElementById("error").textContent = data.detail || response.status; return; }
  if (historyResponse.ok) addSamples(await historyResponse.json().catch(() => null));
  serverNow = Math.max(serverNow, data.time);
  document.getElementById("error").textContent = "";
  document.getElementById("login").hidden = true;
  document.getElementById("overview").hidden = false;
  const broker = document.getElementById("broker");
  broker.textContent = data.broker_connected ? "broker up" : "broker down";
  broker.className = data.broker_connected ? "up" : "down";
  renderIngest(data.ingest);
  // Statuses are served where the ingress runs (a worker alone has none to look up).
  document.getElementById("lookup").hidden = !data.ingest;
  const names = data.subscriptions.map(entry => entry.name);
  // Cards are kept and updated in place: an open dead-letter list keeps its state and focus.
  if (names.join("\n") !== [...cards.keys()].join("\n")) {
    const kept = new Map(names.map(name => [name, cards.get(name) || card(name)]));
    cards.clear();
    for (const [name, node] of kept) cards.set(name, node);
    document.getElementById("subscriptions").replaceChildren(...kept.values());
  }
  for (const entry of data.subscriptions) update(cards.get(entry.name), entry);
  document.getElementById("updated").textContent = "updated " + new Date(data.time * 1000).toLocaleTimeString();
}

document.getElementById("login-form").addEventListener("submit", event => {
  event.preventDefault();
  const given = document.getElementById("token").value.trim();
  if (!given) { showLogin("Enter the admin token (CONVEYOR_ADMIN_TOKEN)."); return; }
  token = given;
  sessionStorage.setItem("conveyor-token", token);
  document.getElementById("login-error").hidden = true;
  refresh();
});
document.getElementById("lookup-form").addEventListener("submit", event => {
  event.preventDefault();
  lookUp(document.getElementById("lookup-id").value.trim());
});
refresh();
setInterval(refresh, POLL_MS);
