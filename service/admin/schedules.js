"use strict";
// The dashboard's schedules panel: each schedule's last and next tick and its last event's state.
(() => {
  const POLL_MS = 5000;

  function cell(content, title) {
    const node = document.createElement("td");
    node.textContent = content;
    if (title) node.title = title;
    return node;
  }

  function timing(entry) {
    return entry.cron ? `${entry.cron} (${entry.timezone})` : `every ${entry.every}`;
  }

  function row(entry) {
    const node = document.createElement("tr");
    const last = entry.last_event;
    const state = last ? (last.state || "status expired") : "never fired";
    const failing = entry.failing_here ? `not published yet: ${entry.failing_here}` : "";
    node.append(
      cell(entry.name, `${entry.type} from ${entry.source}, missed = ${entry.missed}`),
      cell(timing(entry)),
      cell(entry.last_tick || "-", last ? last.id : ""),
      cell(failing ? "retrying" : state, failing),
      cell(entry.next_tick));
    return node;
  }

  async function refresh() {
    const token = sessionStorage.getItem("conveyor-token");
    const panel = document.getElementById("schedules");
    if (!token || !panel) return;
    let answer;
    try {
      const response = await fetch("/v1/admin/schedules?poll=1", {headers: {"Authorization": "Bearer " + token}});
      if (!response.ok) return;  // the main script reports refused tokens and errors
      answer = await response.json();
    } catch (error) {
      return;
    }
    panel.hidden = answer.schedules.length === 0;
    panel.querySelector("tbody").replaceChildren(...answer.schedules.map(row));
  }

  // The main script keeps the token on login (its listener runs first): show the panel at once.
  document.getElementById("login-form").addEventListener("submit", () => setTimeout(refresh, 0));
  refresh();
  setInterval(refresh, POLL_MS);
})();
