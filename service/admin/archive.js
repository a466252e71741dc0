"use strict";
// The dashboard's archive panel: the span the archive holds, and a replay into one subscription.
// Separate from dashboard.js; it reads the same admin token from sessionStorage.
(() => {
  const SPAN_MS = 30000, PROGRESS_MS = 1000;
  const panel = document.getElementById("archive");
  let watching = null;  // the replay whose progress is shown

  function archiveApi(path, options = {}) {
    const headers = Object.assign({"Authorization": "Bearer " + sessionStorage.getItem("conveyor-token")}, options.headers || {});
    return fetch(path, Object.assign({}, options, {headers}));
  }

  function when(row) {
    return row ? `${row.time || "no time"} (${row.id})` : "-";
  }

  function seconds(input) {
    // datetime-local is the browser's local time; the API takes Unix seconds.
    const value = input.value ? new Date(input.value).getTime() / 1000 : NaN;
    return Number.isFinite(value) ? value : null;
  }

  function progressLine(replay) {
    let line = `${replay.replay_id} into ${replay.subscription}: ${replay.state}, scanned ${replay.scanned}, matched ${replay.matched}, published ${replay.published}`;
    if (replay.uncertain) line += `; unconfirmed: ${replay.uncertain.id}`;
    if (replay.error) line += `; ${replay.error}`;
    return line;
  }

  async function showSpan() {
    if (!sessionStorage.getItem("conveyor-token")) { panel.hidden = true; return; }
    let response;
    try { response = await archiveApi("/v1/admin/archive/span"); } catch (error) { return; }
    if (response.status === 404) { panel.hidden = true; return; }  // the archive is off
    if (!response.ok) return;
    const span = await response.json();
    panel.hidden = false;
    document.getElementById("archive-oldest").textContent = when(span.oldest);
    document.getElementById("archive-newest").textContent = when(span.newest);
    const days = span.retention_seconds / 86400;
    document.getElementById("archive-retention").textContent = days >= 1 ? `${days.toFixed(1)} d` : `${span.retention_seconds} s`;
    const select = document.getElementById("archive-to");
    if (!select.options.length) {
      const listed = await archiveApi("/v1/admin/subscriptions").then(r => r.json()).catch(() => ({subscriptions: []}));
      for (const entry of listed.subscriptions || []) {
        const option = document.createElement("option");
        option.value = option.textContent = entry.name;
        select.appendChild(option);
      }
    }
  }

  async function follow(replayId) {
    watching = replayId;
    const note = document.getElementById("archive-progress");
    while (watching === replayId) {
      const response = await archiveApi(`/v1/admin/archive/replays/${encodeURIComponent(replayId)}`).catch(() => null);
      if (!response || !response.ok) return;
      const replay = await response.json();
      note.textContent = progressLine(replay);
      document.getElementById("archive-cancel").hidden = replay.state !== "running";
      if (replay.state !== "running") return;
      await new Promise(resolve => setTimeout(resolve, PROGRESS_MS));
    }
  }

  document.getElementById("archive-form").addEventListener("submit", async event => {
    event.preventDefault();
    const note = document.getElementById("archive-progress");
    const since = seconds(document.getElementById("archive-since"));
    const until = seconds(document.getElementById("archive-until")) ?? Date.now() / 1000;
    if (since === null) { note.textContent = "give the window's start"; return; }
    const body = {
      subscription: document.getElementById("archive-to").value,
      since, until,
      rate: Number(document.getElementById("archive-rate").value) || 100,
      dry_run: document.getElementById("archive-dry-run").checked,
    };
    const type = document.getElementById("archive-type").value.trim();
    if (type) body.type = type;
    const response = await archiveApi("/v1/admin/archive/replay", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    }).catch(() => null);
    if (!response) { note.textContent = "conveyor unreachable"; return; }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) { note.textContent = answer.detail || String(response.status); return; }
    note.textContent = progressLine(answer);
    follow(answer.replay_id);
  });

  document.getElementById("archive-cancel").addEventListener("click", async () => {
    if (!watching) return;
    const replayId = watching;
    const response = await archiveApi(`/v1/admin/archive/replays/${encodeURIComponent(replayId)}`, {method: "DELETE"}).catch(() => null);
    if (response && response.ok) document.getElementById("archive-progress").textContent = progressLine(await response.json());
  });

  // After a login the token is there: look at once rather than at the next interval.
  document.getElementById("login-form").addEventListener("submit", () => setTimeout(showSpan, 200));
  showSpan();
  setInterval(showSpan, SPAN_MS);
})();
