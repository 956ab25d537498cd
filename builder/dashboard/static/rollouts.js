// Staged rollouts and fleet commands: the page as the second face of builder/rollout's engine.
// Rollouts come from GET /api/rollouts (the records of the rollout state directory, polled every second:
// a rollout run by an `edge-builder rollout start` elsewhere changes on disk, not in the MQTT stream);
// Start / Pause / Resume / Abort POST to /api/rollouts/*; fleet commands POST to /api/command.
// Uses app.js's helpers h, pill, ago, loggedIn and its `nodes` map; node ticks come from nodes.js
// (window.nodeTable.selected()).
"use strict";

const staged = { rollouts: [], problem: null, error: null, keys: new Map() };
const PHASE_KIND = { running: "warn", paused: "idle", halted: "bad", completed: "ok", aborted: "bad" };
const NODE_KIND = { waiting: "idle", announced: "warn", committed: "warn", healthy: "ok", failed: "bad" };
const WAVE_KIND = { passed: "ok", running: "warn", paused: "idle", failed: "bad", aborted: "bad", pending: "idle" };

function say(id, text, bad) {
  const p = document.getElementById(id);
  p.textContent = text || "";
  p.className = bad ? "fault" : "muted";
}

async function postJSON(path, body) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return r.json();
}

// ---- the rollouts ----------------------------------------------------------------------------------------
function gatesText(r) {
  const g = r.gates || {}, pct = x => `${Math.round(x * 100)}%`;
  return [`soak ${g.soak_s} s`, `success ≥ ${pct(g.success)}`, `failure ≤ ${pct(g.failure)}`,
    `p95 latency ≤ ${g.max_latency_ratio ?? "off"}${g.max_latency_ratio ? "×" : ""}`,
    `errors ≤ ${g.max_error_rate === null ? "off" : pct(g.max_error_rate)}`,
    `detections ± ${g.max_detection_rate_change === null ? "off" : pct(g.max_detection_rate_change)}`,
    `wave timeout ${g.wave_timeout_s} s`, r.rollback_on_halt ? "roll back on halt" : null].filter(Boolean).join(" · ");
}

function runnerText(r) {
  if (!r.runner) return r.done ? "" : "no runner: Resume runs it here";
  if (r.runner.ours) return "run by this dashboard";
  return `run by ${r.runner.owner} (pid ${r.runner.pid} on ${r.runner.host}): read-only, buttons send requests`;
}

function controls(r) {
  const btn = (action, label, rollback, enabled, cls) => h("button", {
    type: "button", class: cls || "secondary", disabled: !enabled, "data-action": action + (rollback ? "-rollback" : ""),
    onclick: () => control(r.id, action, rollback),
  }, label);
  const live = !r.done && !r.foreign;
  return h("div", { class: "controls" },
    btn("pause", "Pause", false, live && r.phase === "running"),
    btn("resume", "Resume", false, live && (r.phase === "paused" || !r.runner)),
    btn("abort", "Abort", false, live, "danger"),
    btn("abort", "Abort + roll back", true, live, "danger"));
}

function renderStaged(r) {
  return h("div", { class: "staged", "data-staged-rollout": r.id, "data-phase": r.phase },
    h("h3", {}, `${r.name} v${r.version} → ${r.target}`, pill(r.phase, PHASE_KIND[r.phase] || "idle"),
      h("span", { class: "muted" }, `waves ${r.waves_spec} · started ${ago(r.created)}`)),
    h("div", { class: "runner muted" }, runnerText(r), r.foreign ? ` (not runnable here: ${r.foreign})` : ""),
    r.reason ? h("div", { class: r.phase === "halted" ? "fault halt" : "reason halt" }, r.reason) : null,
    h("div", { class: "gates muted" }, "gates: ", gatesText(r)),
    h("div", { class: "waves" }, r.waves.map(w => h("span", { class: "wave", "data-wave": w.index, "data-state": w.state },
      pill(`wave ${w.index + 1} · ${w.size} node${w.size === 1 ? "" : "s"} · ${w.state}`, WAVE_KIND[w.state] || "idle")))),
    h("div", { class: "staged-nodes" }, r.nodes.map(p => [
      h("span", { class: "node-id" }, p.node),
      h("span", { class: "muted" }, `wave ${p.wave + 1}`),
      h("span", { "data-staged-node": p.node, "data-status": p.status },
        pill(p.status + (p.rolled_back ? " · rolled back" : ""), NODE_KIND[p.status] || "idle")),
      h("span", { class: p.status === "failed" ? "fault" : "reason" }, p.reason || ""),
    ])),
    r.done ? null : controls(r),
    h("details", { class: "events" }, h("summary", { class: "muted" }, "events"),
      h("pre", {}, r.events.join("\n"))));
}

function drawStaged() {
  const box = document.getElementById("staged-rollouts");
  const seen = new Set();
  for (const r of staged.rollouts) {
    seen.add(r.id);
    // Redraw a rollout only when it changed (not its heartbeat): buttons under the pointer stay put.
    const key = JSON.stringify({ ...r, runner: r.runner && { owner: r.runner.owner, ours: r.runner.ours } });
    const old = box.querySelector(`[data-staged-rollout="${CSS.escape(r.id)}"]`);
    if (old && staged.keys.get(r.id) === key) continue;
    staged.keys.set(r.id, key);
    const open = old && old.querySelector("details.events").open;
    const el = renderStaged(r);
    if (open) el.querySelector("details.events").open = true;
    if (old) old.replaceWith(el); else box.append(el);
  }
  for (const el of [...box.children]) if (!seen.has(el.getAttribute("data-staged-rollout"))) el.remove();
  staged.rollouts.forEach((r, i) => {  // newest first
    const el = box.querySelector(`[data-staged-rollout="${CSS.escape(r.id)}"]`);
    if (box.children[i] !== el) box.insertBefore(el, box.children[i] || null);
  });
  const busy = staged.rollouts.find(r => !r.done);
  document.getElementById("staged-start").disabled = !!staged.problem || !!busy;
  if (staged.problem) say("staged-msg", `staged rollouts disabled: ${staged.problem}`, true);
  else if (staged.error) say("staged-msg", staged.error, true);
}

async function pollStaged() {
  try {
    const r = await fetch("/api/rollouts", { cache: "no-store" });
    if (!r.ok) return;
    const d = await r.json();
    staged.rollouts = d.rollouts || [];
    staged.problem = d.problem;
    staged.error = d.error;
    drawStaged();
  } catch (e) {
    /* the server is restarting: the next poll says */
  }
}

async function control(id, action, rollback) {
  const what = action + (rollback ? " + roll back" : "");
  try {
    const d = await postJSON(`/api/rollouts/${action}`, { id, rollback });
    say("staged-msg", d.ok ? d.message : `${what} refused: ${d.error}`, !d.ok);
  } catch (e) {
    say("staged-msg", `${what} failed: ${e}`, true);
  }
  pollStaged();
}

function numberOrNull(id) {
  const v = document.getElementById(id).value.trim();
  return v === "" ? null : Number(v);
}

async function startStaged(ev) {
  ev.preventDefault();
  const bundle = document.getElementById("bundle").value;
  if (!bundle) return say("staged-msg", "pick a bundle first", true);
  const body = {
    bundle, target: document.getElementById("staged-target").value.trim() || "all",
    waves: document.getElementById("staged-waves").value.trim(),
    soak: numberOrNull("staged-soak") ?? 0, success_threshold: numberOrNull("staged-success") ?? 1,
    failure_threshold: numberOrNull("staged-failure") ?? 0, max_latency_ratio: numberOrNull("staged-latency"),
    max_error_rate: numberOrNull("staged-errors"), max_detection_rate_change: numberOrNull("staged-detections"),
    wave_timeout: numberOrNull("staged-timeout") ?? 900, rollback_on_halt: document.getElementById("staged-rollback").checked,
  };
  const btn = document.getElementById("staged-start");
  btn.disabled = true;
  try {
    const d = await postJSON("/api/rollouts/start", body);
    say("staged-msg", d.ok ? `rollout ${d.id} started: ${d.waves.map(w => w.join(", ")).join(" | ")}` : `not started: ${d.error}`, !d.ok);
  } catch (e) {
    say("staged-msg", `not started: ${e}`, true);
  } finally {
    btn.disabled = false;
  }
  pollStaged();
}

function fillOptions(listId, values) {
  document.getElementById(listId).replaceChildren(...values.map(v => h("option", { value: v })));
}

function groupsSeen() {
  const groups = new Set();
  for (const n of nodes.values()) n.groups.forEach(g => groups.add(g));
  return [...groups].sort();
}

// ---- fleet commands --------------------------------------------------------------------------------------
function commandForm() {
  const scope = document.getElementById("cmd-scope").value;
  const command = document.getElementById("cmd-command").value;
  document.getElementById("cmd-group").hidden = scope !== "group";
  document.getElementById("cmd-selected").hidden = scope !== "selected";
  document.getElementById("cmd-version").hidden = command !== "pin";
  const ticked = window.nodeTable.selected();
  document.getElementById("cmd-selected").textContent = ticked.length ? `${ticked.length} ticked: ${ticked.join(", ")}` : "no node ticked";
}

function replySummary(o) {
  const res = o.result || {};
  if (Array.isArray(res.versions)) {
    return res.versions.map(v => `v${v.version}${v.current ? " (current)" : v.previous ? " (previous)" : ""}${v.pinned ? " pinned" : ""}`)
      .join(", ") + (res.high_water !== undefined ? ` · high-water v${res.high_water}` : "");
  }
  return Object.keys(res).length ? JSON.stringify(res) : "";
}

function showOutcomes(outcomes) {
  const table = document.getElementById("cmd-results");
  table.hidden = false;
  table.querySelector("tbody").replaceChildren(...outcomes.map(o => h("tr", { "data-reply-node": o.node, "data-ok": String(o.ok) },
    h("td", { class: "node-id" }, o.node),
    h("td", {}, pill(o.ok === null ? "no reply" : o.ok ? "ok" : "failed", o.ok === null ? "warn" : o.ok ? "ok" : "bad"),
      o.error ? h("div", { class: "fault" }, o.error) : null),
    h("td", {}, h("code", { class: "reply" }, replySummary(o))),
    h("td", { class: "num" }, o.seconds.toFixed(2)))));
}

async function sendCommand(ev) {
  ev.preventDefault();
  const command = document.getElementById("cmd-command").value;
  const body = { command };
  if (document.getElementById("cmd-scope").value === "group") body.group = document.getElementById("cmd-group").value.trim();
  else body.nodes = window.nodeTable.selected();
  if (command === "pin") body.version = numberOrNull("cmd-version");
  const btn = document.getElementById("cmd-send");
  btn.disabled = true;
  say("cmd-msg", `sending ${command}…`, false);
  try {
    const d = await postJSON("/api/command", body);
    if (!d.ok) return say("cmd-msg", `not sent: ${d.error}`, true);
    const answered = d.outcomes.filter(o => o.ok !== null).length;
    say("cmd-msg", `${command}: ${answered} of ${d.outcomes.length} node(s) replied`, false);
    showOutcomes(d.outcomes);
  } catch (e) {
    say("cmd-msg", `not sent: ${e}`, true);
  } finally {
    btn.disabled = false;
  }
}

// ---- wiring ------------------------------------------------------------------------------------------------
document.getElementById("staged-form").addEventListener("submit", startStaged);
document.getElementById("staged-target").addEventListener("focus", () => fillOptions("staged-targets", ["all", ...groupsSeen().map(g => `group:${g}`)]));
document.getElementById("command-form").addEventListener("submit", sendCommand);
document.getElementById("cmd-scope").addEventListener("change", commandForm);
document.getElementById("cmd-command").addEventListener("change", commandForm);
document.getElementById("cmd-group").addEventListener("focus", () => fillOptions("cmd-groups", groupsSeen()));
window.nodeTable.onSelect = commandForm;
window.staged = staged;  // tests and the console
loggedIn().then(ok => {
  if (!ok) return;
  pollStaged();
  setInterval(pollStaged, 1000);
});
