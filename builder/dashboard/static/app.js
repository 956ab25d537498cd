// Edge fleet dashboard: plain JavaScript, no libraries. State arrives over Server-Sent Events from
// /api/events (one "snapshot", then "delta" events carrying only the nodes that changed); charts are
// drawn on <canvas> by the functions below.
"use strict";

const HISTORY_S = 180;           // seconds of chart history kept per node
const nodes = new Map();         // id -> node view (see builder/dashboard/state.py NodeView) + hist
let rollouts = [];
let stats = {};
let clockOffset = 0;             // server clock minus browser clock, seconds
let lastEvent = null;            // {v, now, recv} of the last event: tests read staleness from it
let eventCount = 0;
const lags = [];                 // seconds from a node's telemetry timestamp to its arrival in this page
let renderQueued = false;
const rendered = new Map();      // id -> node.v last drawn

// ---- small helpers -------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const serverNow = () => Date.now() / 1000 + clockOffset;
const num = (x, d = 1) => (x === null || x === undefined) ? "–" : Number(x).toFixed(d);
function ago(t) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, serverNow() - t);
  if (s < 1) return "now";
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function pill(text, kind, title) { return h("span", { class: `pill ${kind}`, title: title || "" }, text); }
function hue(name) { let x = 0; for (const c of name) x = (x * 31 + c.charCodeAt(0)) % 360; return x; }

// ---- stream ----------------------------------------------------------------------------------------
function onEvent(d) {
  const recv = Date.now() / 1000;
  clockOffset = d.now - recv;
  lastEvent = { v: d.v, now: d.now, recv, type: d.type };
  eventCount += 1;
  stats = d.stats || stats;
  if (d.type === "snapshot") {
    nodes.clear();
    rendered.clear();
    for (const n of d.nodes) nodes.set(n.id, n);
  } else {
    for (const n of d.nodes) {
      const old = nodes.get(n.id);
      // How far behind the node the page is: arrival here minus the node's own telemetry timestamp.
      if (n.telemetry && (!old || !old.telemetry || old.telemetry.ts !== n.telemetry.ts)) {
        lags.push(recv - n.telemetry.ts);
        if (lags.length > 5000) lags.splice(0, lags.length - 5000);
      }
      mergeNode(n);
    }
  }
  if (d.rollouts) rollouts = d.rollouts;
  queueRender();
}

function mergeNode(n) {
  const old = nodes.get(n.id);
  let hist = old ? old.hist : [];
  const lastT = hist.length ? hist[hist.length - 1][0] : -Infinity;
  hist = hist.concat(n.hist.filter(p => p[0] > lastT));  // deltas repeat the last few points
  const cutoff = serverNow() - HISTORY_S;
  while (hist.length && hist[0][0] < cutoff) hist.shift();
  n.hist = hist;
  if (!("shadow" in n)) n.shadow = old ? old.shadow : null;  // sent only when it changed (state.py _node_json)
  nodes.set(n.id, n);
}

function connect() {
  const link = document.getElementById("link");
  const es = new EventSource("/api/events");
  es.addEventListener("snapshot", e => onEvent(JSON.parse(e.data)));
  es.addEventListener("delta", e => onEvent(JSON.parse(e.data)));
  es.onopen = () => { link.textContent = "live"; link.className = "pill ok"; };
  es.onerror = async () => {  // EventSource retries by itself, but not past a lost login (401)
    link.textContent = "reconnecting…"; link.className = "pill warn";
    if (!(await loggedIn())) { es.close(); showLogin("the session ended (the dashboard restarted?): log in again"); }
  };
}

// ---- login -------------------------------------------------------------------------------------------
// The session cookie is HttpOnly: the page cannot read it, it asks the server whether it is logged in.
async function loggedIn() {
  try {
    const r = await fetch("/api/session", { cache: "no-store" });
    return r.ok && (await r.json()).logged_in;
  } catch (e) {
    return true;  // the server is down, not the login: let EventSource keep retrying
  }
}

function showLogin(why) {
  document.getElementById("login").hidden = false;
  document.getElementById("main").hidden = true;
  const link = document.getElementById("link");
  link.textContent = "logged out"; link.className = "pill bad";
  document.getElementById("login-msg").textContent = why || "";
}

function login(ev) {
  ev.preventDefault();
  const token = document.getElementById("login-token").value.trim();
  if (token) location.assign(`/?token=${encodeURIComponent(token)}`);  // the server sets the cookie, redirects to /
}

// ---- node table ------------------------------------------------------------------------------------
// Rows, cells, camera sub-rows and charts: static/nodes.js (window.nodeTable), patched per cell, in view only.

// ---- detections --------------------------------------------------------------------------------------
const snapshots = new Map();  // id -> {img, ts}

// Cards are drawn only in view (plus a margin): at 1,000 nodes, redrawing every card on every detections
// message was most of the page's CPU (docs/SCALE.md). A card out of view is marked and drawn when it scrolls in.
const cardsInView = new Set();
const cardObserver = new IntersectionObserver(entries => {
  for (const e of entries) {
    const id = e.target.getAttribute("data-node");
    if (e.isIntersecting) { cardsInView.add(id); drawCard(e.target, id); } else cardsInView.delete(id);
  }
}, { rootMargin: "300px" });

function renderDetections() {
  const box = document.getElementById("detections");
  const cards = new Map([...box.children].map(c => [c.getAttribute("data-node"), c]));
  for (const id of [...nodes.keys()].sort()) {
    const n = nodes.get(id);
    if (!n.detections_ts && !n.has_snapshot) continue;
    let card = cards.get(id);
    if (!card) {
      card = h("div", { class: "card", "data-node": id },
        h("h3", {}, h("span", {}, id), h("span", { class: "muted when" })),
        h("canvas", { width: 320, height: 240 }), h("ul", {}));
      box.append(card);
      cardObserver.observe(card);
    }
    if (cardsInView.has(id)) drawCard(card, id);
  }
  document.getElementById("no-detections").style.display = box.children.length ? "none" : "";
}

function drawCard(card, id) {
  const n = nodes.get(id);
  if (!n || rendered.get("det:" + id) === n.detections_ts) return;
  rendered.set("det:" + id, n.detections_ts);
  card.querySelector(".when").textContent = n.detections_frame !== null ? `frame ${n.detections_frame}` : "";
  if (n.has_snapshot) loadSnapshot(n, card.querySelector("canvas"));
  drawDetections(card.querySelector("canvas"), n);
  card.querySelector("ul").replaceChildren(...(n.detections.length ? n.detections.slice(0, 6).map(d =>
    h("li", {}, h("span", { style: `color:hsl(${hue(d.class_name)},70%,38%)` }, d.class_name), h("span", {}, num(d.score, 2))))
    : [h("li", { class: "muted" }, "nothing detected")]));
}

function loadSnapshot(n, cv) {
  const s = snapshots.get(n.id);
  if (s && s.ts === n.detections_ts) return;
  const img = new Image();
  img.onload = () => { snapshots.set(n.id, { img, ts: n.detections_ts }); drawDetections(cv, nodes.get(n.id)); };
  img.src = `/api/snapshot/${encodeURIComponent(n.id)}?t=${n.detections_ts}`;
}

function drawDetections(cv, n) {
  const ctx = cv.getContext("2d"), W = cv.width, H = cv.height;
  ctx.fillStyle = "#20242c"; ctx.fillRect(0, 0, W, H);
  const snap = snapshots.get(n.id);
  if (snap) ctx.drawImage(snap.img, 0, 0, W, H);
  ctx.font = "12px system-ui"; ctx.lineWidth = 2;
  for (const d of n.detections) {
    const [x1, y1, x2, y2] = d.box;
    const color = `hsl(${hue(d.class_name)},80%,60%)`;
    ctx.strokeStyle = color; ctx.strokeRect(x1 * W, y1 * H, (x2 - x1) * W, (y2 - y1) * H);
    const label = `${d.class_name} ${num(d.score, 2)}`;
    ctx.fillStyle = color; ctx.fillRect(x1 * W, Math.max(0, y1 * H - 15), ctx.measureText(label).width + 6, 15);
    ctx.fillStyle = "#111"; ctx.fillText(label, x1 * W + 3, Math.max(11, y1 * H - 3));
  }
}

// ---- rollout -----------------------------------------------------------------------------------------
const STEP = { waiting: 0, announced: .1, verifying: .2, downloading: .25, activating: .8, trial: .9 };

function renderRollouts() {
  const box = document.getElementById("rollouts");
  box.replaceChildren(...rollouts.slice().reverse().map(r => {
    const summary = r.done ? pill(`done: ${r.committed} ok, ${r.failed} failed`, r.failed ? "bad" : "ok")
      : pill(`in progress: ${r.committed}/${r.nodes.length} committed`, "warn");
    return h("div", { class: "rollout", "data-rollout": r.id },
      h("h3", {}, `#${r.id} ${r.name} v${r.version} → ${r.target}`, summary,
        h("span", { class: "muted" }, `started ${ago(r.started)}`)),
      h("div", { class: "steps" }, r.nodes.length ? r.nodes.map(x => {
        const frac = x.done ? 1 : (x.state === "downloading" && x.progress !== null ? .25 + .5 * x.progress : (STEP[x.state] ?? .5));
        return [
          h("span", { class: "node-id" }, x.node),
          h("span", { "data-rollout-node": x.node, "data-state": x.state },
            pill(x.state.replace("_", " "), x.done ? (x.ok ? "ok" : "bad") : (x.state === "waiting" ? "idle" : "warn"))),
          h("div", {}, h("div", { class: `bar ${x.done ? (x.ok ? "done-ok" : "done-bad") : ""}` },
            h("div", { style: `width:${Math.round(frac * 100)}%` })),
            x.reason ? h("div", { class: "reason" }, x.reason) : null),
        ];
      }) : [h("span", { class: "muted" }, "no node matches this target yet")]));
  }));
}

async function loadBundles() {
  const sel = document.getElementById("bundle");
  try {
    const r = await fetch("/api/bundles");
    const d = await r.json();
    if (!r.ok) return message(`cannot list bundles: ${d.error}`, true);
    const why = b => b.error ? `unusable: ${b.error}` : b.refused ? `refused: ${b.refused}` : null;
    sel.replaceChildren(...d.bundles.map(b => h("option", { value: b.id, disabled: !!why(b), title: why(b) || b.path },
      why(b) ? `${b.rel} (${why(b)})` : `${b.name} v${b.version}  —  ${b.rel}`)));
    if (!d.bundles.length) sel.append(h("option", { value: "", disabled: true }, `no bundles under ${d.roots.join(", ") || "--bundles"}`));
    document.getElementById("publish").disabled = !d.bundles.some(b => !why(b)) || !!d.problem;
    if (d.problem) message(`rollout disabled: ${d.problem}`, true);
  } catch (e) {
    message(`cannot list bundles: ${e}`, true);
  }
}

function message(text, bad) {
  const p = document.getElementById("rollout-msg");
  p.textContent = text;
  p.className = bad ? "fault" : "muted";
}

function targetText() {
  const kind = document.getElementById("target-kind").value;
  return kind === "all" ? "all" : `${kind}:${document.getElementById("target-value").value.trim()}`;
}

function fillTargetValues() {
  const kind = document.getElementById("target-kind").value;
  const values = new Set();
  for (const n of nodes.values()) (kind === "group" ? n.groups : [n.id]).forEach(v => values.add(v));
  document.getElementById("target-values").replaceChildren(...[...values].sort().map(v => h("option", { value: v })));
  document.getElementById("target-value").disabled = kind === "all";
}

async function publish(ev) {
  ev.preventDefault();
  const btn = document.getElementById("publish");
  const bundle = document.getElementById("bundle").value;
  if (!bundle) return message("pick a bundle first", true);
  btn.disabled = true;
  try {
    const r = await fetch("/api/rollout", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ bundle, target: targetText() }) });
    const d = await r.json();
    if (d.ok) message(`published ${d.rollout.name} v${d.rollout.version} to ${d.rollout.target} (retained on ${d.topic})`, false);
    else message(`not published: ${d.error}`, true);
  } catch (e) {
    message(`not published: ${e}`, true);
  } finally {
    btn.disabled = false;
  }
}

// ---- render loop -------------------------------------------------------------------------------------
let fullRender = true;

function queueRender(full) {
  if (full) fullRender = true;
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; const f = fullRender; fullRender = false; render(f); });
}

function render(full) {
  window.nodeTable.render(nodes, full);
  renderRollouts();
  renderDetections();
  const all = [...nodes.values()];
  document.getElementById("st-nodes").textContent = all.length;
  document.getElementById("st-online").textContent = all.filter(n => n.online).length;
  document.getElementById("st-faulty").textContent = all.filter(n => Object.keys(n.faults || {}).length).length;
  document.getElementById("st-msgs").textContent = stats.messages ?? 0;
  document.getElementById("st-rejected").textContent = stats.rejected ?? 0;
  const broker = document.getElementById("broker");
  broker.textContent = stats.broker ? "broker connected" : `broker down${stats.broker_error ? ": " + stats.broker_error : ""}`;
  broker.className = `pill ${stats.broker ? "ok" : "bad"}`;
  tick();
}

function tick() {
  document.getElementById("st-age").textContent = lastEvent ? ago(lastEvent.now) : "–";
}

// Exposed for tests and for debugging in the console.
window.dashboard = { nodes, get rollouts() { return rollouts; }, get lastEvent() { return lastEvent; },
  get eventCount() { return eventCount; }, lags };

document.getElementById("rollout-form").addEventListener("submit", publish);
document.getElementById("reload-bundles").addEventListener("click", loadBundles);
document.getElementById("target-kind").addEventListener("change", fillTargetValues);
document.getElementById("target-value").addEventListener("focus", fillTargetValues);
document.getElementById("login-form").addEventListener("submit", login);
setInterval(() => { tick(); queueRender(true); }, 1000);  // ages and "silent" need the clock, not just events
loggedIn().then(ok => {
  if (!ok) return showLogin(new URLSearchParams(location.search).has("token") ? "wrong token" : "");
  loadBundles();
  connect();
});
