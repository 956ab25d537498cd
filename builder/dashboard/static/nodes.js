// The node table, built for a thousand nodes at 1 Hz (docs/SCALE.md). app.js owns the data (the `nodes`
// map, replaced object by object as deltas arrive) and calls render() at most once per animation frame;
// this file owns the rows:
// - keyed rows: a node's <tr data-node> (and its camera sub-rows) is made once and then patched cell by
//   cell: a cell is rewritten only when the text it shows changed, never the whole table;
// - work bounded by what is on screen: rows in view (an IntersectionObserver, plus a margin) get every
//   cell and their two charts; rows out of view keep their data attributes and their slow cells (status,
//   model, backend, last update) current and are caught up the moment they scroll into view;
// - staleness as the operator sees it: `shownLags` holds, per telemetry message shown in a row in view,
//   the seconds from the node's timestamp to the frame that wrote it into the page; `catchUps` the seconds
//   from a row with missed changes coming into view to its being drawn.
// Uses app.js's helpers h, pill, num, ago, serverNow and HISTORY_S (globals of the page).
// A <th class="select"> first in the table's header turns on a checkbox column (fleet commands): the
// checked ids are window.nodeTable.selected(); checking one calls window.nodeTable.onSelect(ids), if set.
// The shadow column (the node's latest shadow run, docs/SHADOW.md) adds its own header; a click on its cell
// opens the run's details in a row under the node, patched like the other cells: in view only.
"use strict";

window.nodeTable = (() => {
  const rows = new Map();       // id -> row record (see makeRow)
  const camRows = new Map();    // "id\0camera" -> {tr, keys}
  const selection = new Set();
  const expanded = new Set();   // ids whose shadow details are open
  const shownLags = [];         // seconds, node timestamp -> written into a row in view
  const catchUps = [];          // seconds, a row with missed changes coming into view -> drawn
  let current = new Map();      // the nodes map of the last render
  let structure = "";           // the ids and cameras in table order, as last laid out
  let colors = null;            // chart colours, read once from the CSS variables
  let selectColumn = null;      // decided at the first render from the table's header
  let catchUp = false;
  const io = new IntersectionObserver(onIntersect, { rootMargin: "400px 0px" });

  // ---- status rule (the same in `fleet status`) ------------------------------------------------------
  const STATUS_KIND = { running: "ok", starting: "warn", degraded: "warn", error: "bad", stopped: "idle" };
  const UPDATE_KIND = { committed: "ok", rolled_back: "bad", rejected: "bad", failed: "bad" };
  const CAMERA_KIND = { streaming: "ok", stalled: "bad", reconnecting: "warn" };
  const SHADOW_KIND = { running: "warn", done: "ok", verifying: "idle", stopped: "idle", rejected: "bad", failed: "bad" };
  const SHADOW_LEAF = "shadow/report";

  function nodeStatus(n) {
    const faults = Object.entries(n.faults || {});
    if (faults.length) return { kind: "bad", text: "faulty", detail: faults.map(([leaf, why]) => `${leaf}: ${why}`).join("; ") };
    if (n.online === false) return { kind: "idle", text: "offline", detail: null };
    if (n.online === null) return { kind: "idle", text: "unknown", detail: "no availability message yet" };
    const t = n.telemetry;
    if (t && n.telemetry_rx !== null && serverNow() - n.telemetry_rx > Math.max(10, 3 * t.interval_s)) {
      return { kind: "warn", text: "silent", detail: `no telemetry for ${ago(n.telemetry_rx)}` };
    }
    const st = n.status || "online";
    return { kind: STATUS_KIND[st] || "ok", text: st, detail: n.reason };
  }

  // ---- columns: each says what it shows as a string (its key) and how to draw it ----------------------
  // `slow` columns change rarely and stay current even out of view; the others only matter on screen.
  const fmtPower = t => t.power_w === null || t.power_w === undefined ? "–" : `${num(t.power_w, 2)} W`;
  const fmtTemp = t => t.temp_c === null || t.temp_c === undefined ? "–" :
    `${num(t.temp_c, 0)} °C${t.tpu_temp_c ? " / TPU " + num(t.tpu_temp_c, 0) : ""}`;
  const updKey = u => u ? `${u.version}|${u.state}|${u.progress}|${u.reason}` : "";
  const COLUMNS = [
    { slow: true, key: n => `${n.id}|${n.groups.join(", ")}`,
      fill: (td, n) => td.replaceChildren(h("div", { class: "node-id" }, n.id),
        n.groups.length ? h("div", { class: "groups" }, n.groups.join(", ")) : "") },
    { slow: true, key: (n, s) => `${s.text}|${s.kind}|${s.detail}`,
      fill: (td, n, s) => td.replaceChildren(pill(s.text, s.kind),
        s.detail ? h("div", { class: s.text === "faulty" ? "fault" : "reason" }, s.detail) : "") },
    { slow: true, cls: "model", key: n => n.model_version !== null ? `${n.model_name} v${n.model_version}` : "–",
      fill: (td, n, s, t, key) => { td.textContent = key; } },
    { slow: true, key: (n, s, t) => `${n.backend || t.backend || "–"}|${n.device || ""}`,
      fill: (td, n, s, t) => td.replaceChildren(n.backend || t.backend || "–", n.device ? h("div", { class: "groups" }, n.device) : "") },
    { cls: "num", key: (n, s, t) => num(t.fps, 1), fill: (td, n, s, t, key) => { td.textContent = key; } },
    { cls: "num", key: (n, s, t) => `${num(t.p50_ms)} / ${num(t.p95_ms)} ms|${t.stage || ""}`,
      fill: (td, n, s, t) => { td.textContent = `${num(t.p50_ms)} / ${num(t.p95_ms)} ms`; td.title = t.stage ? `stage: ${t.stage}` : ""; } },
    { cls: "num", key: (n, s, t) => `${fmtPower(t)}|${t.power_estimated}|${t.power_source}`,
      fill: (td, n, s, t) => td.replaceChildren(fmtPower(t), t.power_estimated && fmtPower(t) !== "–"
        ? h("span", { class: "est", title: `source: ${t.power_source}` }, "est.") : "") },
    { cls: "num", key: (n, s, t) => fmtTemp(t), fill: (td, n, s, t, key) => { td.textContent = key; } },
    { slow: true, key: n => updKey(n.update), fill: (td, n) => td.replaceChildren(updateCell(n.update)) },
    { head: "shadow", cls: "shadow", click: id => toggleShadow(id),
      title: "latest shadow run: agreement (F1 of the candidate's boxes against the live model's) over the frames compared; click for details",
      key: n => shadowKey(n), fill: (td, n) => td.replaceChildren(shadowCell(n)) },
  ];

  function updateCell(u) {
    if (!u) return h("span", { class: "muted" }, "–");
    const pct = u.state === "downloading" && u.progress !== null ? ` ${Math.round(u.progress * 100)}%` : "";
    return h("div", {},
      pill(`${u.version !== null ? "v" + u.version + " " : ""}${u.state.replace("_", " ")}${pct}`, UPDATE_KIND[u.state] || "warn"),
      u.reason ? h("div", { class: "reason" }, u.reason) : null);
  }

  // ---- shadow runs ----------------------------------------------------------------------------------
  const pct = x => x === null || x === undefined ? "–" : `${Math.round(x * 100)} %`;
  const ref = m => m ? `${m.name} v${m.version}` : "–";
  const shadowFault = n => (n.faults || {})[SHADOW_LEAF] || null;
  const shadowKey = n => { const v = n.shadow; return v ? `${v.state}|${v.f1}|${v.frames}|${ref(v.candidate)}|${shadowFault(n)}` : `|${shadowFault(n)}`; };

  function shadowCell(n) {
    const v = n.shadow, fault = shadowFault(n);
    if (!v && !fault) return h("span", { class: "muted" }, "–");
    return h("div", { "data-shadow-state": v ? v.state : "error" },
      fault ? pill("report error", "bad", fault) : null,
      v ? [pill(v.state, SHADOW_KIND[v.state] || "idle"), " ", h("span", { class: "agree" }, `${pct(v.f1)} · ${v.frames} fr`),
           h("div", { class: "groups" }, ref(v.candidate))] : null);
  }

  function toggleShadow(id) {
    const n = current.get(id);
    if (expanded.has(id)) expanded.delete(id);
    else if (n && (n.shadow || shadowFault(n))) expanded.add(id);
    else return;
    requestAnimationFrame(() => render(current, false));
  }

  // The open details row of one node: made on opening, patched while its node's row is in view.
  function shadowRow(r, n, full) {
    if (!expanded.has(r.id)) { r.detail = null; return; }
    if (!r.detail) {
      const td = h("td", { colSpan: COLUMNS.length + 2 + (selectColumn ? 1 : 0) });
      r.detail = { tr: h("tr", { class: "shadow-detail", "data-shadow-of": r.id }, td), td, key: "" };
    }
    if (!r.visible && !full) return;
    const key = JSON.stringify([n.shadow, shadowFault(n), n.shadow ? ago(n.shadow.ts) : ""]);
    if (key !== r.detail.key) { r.detail.key = key; r.detail.td.replaceChildren(shadowDetails(n)); }
  }

  function shadowDetails(n) {
    const v = n.shadow, fault = shadowFault(n);
    const rejected = fault ? h("div", { class: "fault" }, `last report rejected: ${fault}`) : null;
    if (!v) return h("div", { class: "shadow-box" }, rejected, h("div", { class: "muted" }, "no readable shadow report"));
    const cl = v.candidate_latency || {}, ll = v.live_latency || {};
    const ratio = cl.p50_ms && ll.p50_ms ? ` (× ${num(cl.p50_ms / ll.p50_ms, 1)} at p50)` : "";
    const fig = (k, ...val) => [h("dt", {}, k), h("dd", {}, ...val)];
    return h("div", { class: "shadow-box" }, rejected,
      h("div", { class: "shadow-head" }, pill(v.state, SHADOW_KIND[v.state] || "idle"), " ",
        h("b", {}, ref(v.candidate)), " beside live ", h("b", {}, ref(v.live)),
        h("span", { class: "muted" }, ` reported ${ago(v.ts)}${v.request_id ? " · request " + v.request_id : ""}`)),
      v.reason ? h("div", { class: "reason" }, v.reason) : null,
      h("dl", {},
        fig("frames compared", `${v.frames} over ${num(v.window_s, 0)} s`, h("span", { class: "muted" },
          ` (${v.shadow_frames} shadow frames, ${num(v.shadow_rate_hz, 2)}/s; ${v.errors} errors; skipped ${v.skipped_budget} budget, ${v.skipped_busy} busy)`)),
        fig("boxes", `live ${v.live_boxes} · candidate ${v.candidate_boxes} · matched ${v.matched}`),
        fig("agreement", `precision ${pct(v.precision)} · recall ${pct(v.recall)} · F1 ${pct(v.f1)}`,
          h("span", { class: "muted" }, ` (mean IoU ${num(v.mean_iou, 2)}, score Δ ${num(v.score_delta, 3)})`)),
        fig("latency p50 / p95", `candidate ${num(cl.p50_ms)} / ${num(cl.p95_ms)} ms · live ${num(ll.p50_ms)} / ${num(ll.p95_ms)} ms${ratio}`,
          h("span", { class: "muted" }, ` (live slowdown ${pct(v.live_slowdown)})`))),
      v.classes.length ? h("table", { class: "shadow-classes" },
        h("thead", {}, h("tr", {}, ["class", "live", "candidate", "matched", "precision", "recall"].map(x => h("th", {}, x)))),
        h("tbody", {}, v.classes.map(c => h("tr", { "data-class": c.name }, h("td", {}, c.name), h("td", { class: "num" }, c.live),
          h("td", { class: "num" }, c.candidate), h("td", { class: "num" }, c.matched),
          h("td", { class: "num" }, pct(c.precision)), h("td", { class: "num" }, pct(c.recall)))))) : null,
      v.classes_total > v.classes.length ? h("div", { class: "muted" }, `and ${v.classes_total - v.classes.length} more classes`) : null);
  }

  // ---- rows ------------------------------------------------------------------------------------------
  function makeRow(id) {
    const tr = h("tr", { "data-node": id });
    const r = { id, tr, node: null, keys: [], tds: [], visible: false, stale: true, chartNode: null, shownTs: null,
                attrs: "", check: null, cams: "", visibleSince: null };
    if (selectColumn) {
      r.check = h("input", { type: "checkbox", "data-select-node": id, checked: selection.has(id) });
      r.check.addEventListener("change", () => toggle(id, r.check.checked));
      tr.append(h("td", { class: "select" }, r.check));
    }
    for (const c of COLUMNS) {
      const td = h("td", c.cls ? { class: c.cls } : {});
      if (c.click) td.addEventListener("click", () => c.click(id));
      r.tds.push(td); tr.append(td);
    }
    r.lat = h("canvas", { class: "spark lat", width: 300, height: 72 });
    r.pow = h("canvas", { class: "spark pow", width: 300, height: 72 });
    tr.append(h("td", {}, r.lat), h("td", {}, r.pow));
    io.observe(tr);
    return r;
  }

  // Bring one row up to date with its node; `full`: the clock moved (ages, silent, scrolling charts).
  function patchRow(r, n, full) {
    const s = nodeStatus(n), t = n.telemetry || {};
    const cls = s.text === "faulty" ? "faulty" : (n.online === false ? "offline" : "");
    const attrs = `${cls}|${s.text}|${n.model_version}`;
    if (attrs !== r.attrs) {
      r.attrs = attrs;
      r.tr.className = cls;
      r.tr.setAttribute("data-status", s.text);
      r.tr.setAttribute("data-model-version", n.model_version ?? "");
    }
    COLUMNS.forEach((c, i) => {
      if (!r.visible && !c.slow) return;
      const key = c.key(n, s, t);
      if (key !== r.keys[i]) { r.keys[i] = key; c.fill(r.tds[i], n, s, t, key); }
    });
    r.stale = !r.visible;
    if (!r.visible) return;
    if (full || r.chartNode !== n) {
      r.chartNode = n;
      const now = serverNow();
      spark(r.lat, n.hist, [[1, "--p50"], [2, "--p95"]], now);
      spark(r.pow, n.hist, [[3, "--pow"]], now);
    }
    if (n.telemetry && n.telemetry.ts !== r.shownTs) {
      r.shownTs = n.telemetry.ts;
      // A row scrolled into view shows what it missed: that is catching up (scroll -> drawn), not staleness.
      const sample = r.visibleSince !== null ? catchUps : shownLags;
      sample.push(r.visibleSince !== null ? (performance.now() - r.visibleSince) / 1000 : Date.now() / 1000 - n.telemetry.ts);
      if (sample.length > 20000) sample.splice(0, sample.length - 20000);
    }
    r.visibleSince = null;
  }

  function cameraRows(id, n, visible, full) {
    const out = [];
    for (const name of Object.keys(n.cameras || {}).sort()) {
      const key = `${id}\0${name}`;
      let cr = camRows.get(key);
      if (!cr) { cr = { tr: h("tr", { "data-camera-of": id, "data-camera": name }), keys: "", state: null }; camRows.set(key, cr); }
      const c = n.cameras[name];
      if (cr.state !== (c.state || "")) {
        cr.state = c.state || "";
        cr.tr.className = `camera ${c.state === "stalled" ? "stalled" : ""}`;
        cr.tr.setAttribute("data-camera-state", cr.state);
      }
      if (visible || full) patchCamera(cr, name, c);
      out.push(cr.tr);
    }
    return out;
  }

  function patchCamera(cr, name, c) {
    const dets = c.detections === null ? "no detections yet" :
      `${c.detections} object${c.detections === 1 ? "" : "s"}${c.classes.length ? ": " + c.classes.join(", ") : ""}`;
    const key = JSON.stringify([c.state, c.camera_fps, c.device, c.fps, c.dropped_fps, c.p50_ms, c.p95_ms, c.e2e_p95_ms, dets]);
    if (key === cr.keys) return;
    cr.keys = key;
    cr.tr.replaceChildren(
      ...(selectColumn ? [h("td", { class: "select" })] : []),
      h("td", { class: "cam-name" }, "└ ", name),
      h("td", {}, pill(c.state || "unknown", CAMERA_KIND[c.state] || "idle")),
      h("td", { class: "muted" }, `camera ${num(c.camera_fps, 1)} fps`),
      h("td", {}, c.device || "–"),
      h("td", { class: "num", title: "inference FPS (dropped)" }, num(c.fps, 1),
        c.dropped_fps ? h("div", { class: "groups" }, `${num(c.dropped_fps, 1)} dropped`) : null),
      h("td", { class: "num", title: `model time; capture → detections p95 ${num(c.e2e_p95_ms)} ms` },
        `${num(c.p50_ms)} / ${num(c.p95_ms)} ms`),
      h("td", { class: "muted", colSpan: COLUMNS.length - 4 }, dets));
  }

  // ---- charts ----------------------------------------------------------------------------------------
  // A sparkline: the last HISTORY_S seconds, y from 0 to the max seen, latest value printed top-left.
  function spark(cv, hist, series, now) {
    colors = colors || getComputedStyle(document.documentElement);
    const ctx = cv.getContext("2d");
    const W = cv.width, H = cv.height, pad = 4;
    ctx.clearRect(0, 0, W, H);
    ctx.strokeStyle = "#e2e5eb"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(0, H - pad); ctx.lineTo(W, H - pad); ctx.stroke();
    let ymax = 0;
    for (const p of hist) for (const [i] of series) if (p[i] !== null && p[i] > ymax) ymax = p[i];
    if (ymax <= 0) { ctx.fillStyle = "#9aa1b0"; ctx.font = "20px system-ui"; ctx.fillText("no data", 8, H / 2 + 7); return; }
    ymax *= 1.15;
    // Window: the history we have (at least 30 s, at most HISTORY_S), so a young node's chart is not a dot.
    const span = Math.min(HISTORY_S, Math.max(30, now - hist[0][0]));
    const x = t => W - ((now - t) / span) * W;
    const y = v => H - pad - (v / ymax) * (H - 2 * pad);
    for (const [i, color] of series) {
      ctx.strokeStyle = colors.getPropertyValue(color).trim(); ctx.lineWidth = 2.5; ctx.beginPath();
      let pen = false;
      for (const p of hist) {
        if (p[i] === null) { pen = false; continue; }
        if (pen) ctx.lineTo(x(p[0]), y(p[i])); else ctx.moveTo(x(p[0]), y(p[i]));
        pen = true;
      }
      ctx.stroke();
    }
    const last = hist[hist.length - 1];
    const label = series.map(([i]) => num(last[i], i === 3 ? 2 : 1)).join(" / ");
    ctx.font = "bold 20px system-ui";
    ctx.fillStyle = "rgba(255,255,255,.8)"; ctx.fillRect(0, 0, ctx.measureText(label).width + 8, 26);
    ctx.fillStyle = "#1d2330"; ctx.fillText(label, 4, 21);
  }

  // ---- the table -------------------------------------------------------------------------------------
  // Called by app.js once per animation frame at most: `full` when the clock moved (the 1 s tick).
  function render(nodes, full) {
    current = nodes;
    if (selectColumn === null) { selectColumn = !!document.querySelector("#nodes thead th.select"); addHeaders(); }
    const ids = [...nodes.keys()].sort();
    document.getElementById("empty").style.display = ids.length ? "none" : "";
    for (const [id, r] of rows) if (!nodes.has(id)) { io.unobserve(r.tr); rows.delete(id); }
    const parts = [];
    for (const id of ids) {
      const n = nodes.get(id);
      let r = rows.get(id);
      if (!r) { r = makeRow(id); rows.set(id, r); }
      const cams = Object.keys(n.cameras || {}).sort().join("\0");
      parts.push(id, cams, expanded.has(id));
      if (full || r.node !== n || (r.visible && r.stale) || !r.detail !== !expanded.has(id)) {
        r.node = n;
        patchRow(r, n, full);
        r.camTrs = cameraRows(id, n, r.visible, r.cams !== cams);
        r.cams = cams;
        shadowRow(r, n, full);
      }
    }
    const shape = parts.join("\n");
    if (shape !== structure) { structure = shape; layOut(ids); }
  }

  // Headers of the columns this file adds (index.html holds the others), at their column's place.
  function addHeaders() {
    const tr = document.querySelector("#nodes thead tr");
    COLUMNS.forEach((c, i) => {
      if (!c.head || tr.querySelector(`th[data-col="${c.head}"]`)) return;
      tr.insertBefore(h("th", { "data-col": c.head, title: c.title || "" }, c.head), tr.children[i + (selectColumn ? 1 : 0)] || null);
    });
  }

  // Put the rows in order (only when a node, a camera or open details came or went): node row, its details, its cameras.
  function layOut(ids) {
    const tbody = document.querySelector("#nodes tbody");
    const wanted = [];
    for (const id of ids) {
      const r = rows.get(id);
      wanted.push(r.tr, ...(r.detail ? [r.detail.tr] : []), ...(r.camTrs || []));
    }
    const keep = new Set(wanted);
    for (const tr of [...tbody.children]) if (!keep.has(tr)) tr.remove();
    for (const id of [...expanded]) if (!rows.has(id)) expanded.delete(id);
    for (const [key, cr] of camRows) if (!keep.has(cr.tr)) camRows.delete(key);
    wanted.forEach((tr, i) => { if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null); });
  }

  function onIntersect(entries) {
    for (const e of entries) {
      const r = rows.get(e.target.getAttribute("data-node"));
      if (!r) continue;
      r.visible = e.isIntersecting;
      r.visibleSince = r.visible && r.stale ? performance.now() : null;
      if (r.visibleSince !== null) catchUp = true;
    }
    if (catchUp) requestAnimationFrame(() => { if (catchUp) { catchUp = false; render(current, false); } });
  }

  // ---- selection (fleet commands) ----------------------------------------------------------------------
  function toggle(id, on) {
    if (on) selection.add(id); else selection.delete(id);
    if (api.onSelect) api.onSelect(selected());
  }

  function selected() { return [...selection].filter(id => current.has(id)).sort(); }

  function setSelected(ids) {
    selection.clear();
    for (const id of ids) selection.add(id);
    for (const r of rows.values()) if (r.check) r.check.checked = selection.has(r.id);
  }

  const api = { render, selected, setSelected, onSelect: null, shownLags, catchUps,
                get visibleRows() { return [...rows.values()].filter(r => r.visible).length; } };
  return api;
})();
