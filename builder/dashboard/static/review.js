// The review page: one harvested frame at a time, driven from the keyboard (see review.html).
// Boxes are normalized [x1, y1, x2, y2]; the server (builder/flywheel/review_http.py) writes the labels.
"use strict";
(() => {
  const COLORS = ["#4cf", "#fc4", "#f6c", "#6f6", "#f84", "#aaf", "#8ff", "#ff8", "#c8f", "#8f8"];
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const st = { items: [], names: [], i: 0, item: null, boxes: [], img: null, sel: -1, cls: 0, drag: null };

  const $ = (id) => document.getElementById(id);
  const msg = (text) => { $("msg").textContent = text || ""; };

  async function api(path, opts) {
    const r = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
    if (r.status === 401) { $("login").hidden = false; throw new Error("login required"); }
    if (!r.ok) { throw new Error((await r.json()).error || r.statusText); }
    return r;
  }

  function draw() {
    if (!st.img) return;
    ctx.drawImage(st.img, 0, 0, canvas.width, canvas.height);
    st.boxes.forEach((b, k) => {
      const [x1, y1, x2, y2] = b.box;
      ctx.strokeStyle = COLORS[b.class_id % COLORS.length];
      ctx.lineWidth = (k === st.sel ? 3 : 1.5) * canvas.width / canvas.clientWidth;
      ctx.strokeRect(x1 * canvas.width, y1 * canvas.height, (x2 - x1) * canvas.width, (y2 - y1) * canvas.height);
      ctx.fillStyle = ctx.strokeStyle;
      const label = (st.names[b.class_id] || b.class_id) + (b.score != null ? " " + b.score.toFixed(2) : "");
      ctx.fillText(label, x1 * canvas.width + 2, y1 * canvas.height + 11);
    });
    $("classes").innerHTML = "";
    st.names.forEach((n, k) => {
      const s = document.createElement("span");
      s.textContent = k + ": " + n;
      if (k === st.cls) s.className = "current";
      $("classes").appendChild(s);
    });
  }

  async function show(i) {
    if (!st.items.length) { $("pos").textContent = "nothing to review"; return; }
    st.i = Math.max(0, Math.min(i, st.items.length - 1));
    const key = encodeURIComponent(st.items[st.i].key);
    st.item = await (await api("/api/review/item?key=" + key)).json();
    st.boxes = st.item.boxes.map((b) => ({ class_id: b.class_id, box: b.box.slice(), score: b.score }));
    st.sel = -1;
    const img = new Image();
    img.onload = () => {
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      st.img = img; draw();
    };
    img.src = "/api/review/image?key=" + key;
    $("pos").textContent = (st.i + 1) + " / " + st.items.length + " · " + st.item.key;
    $("status").textContent = st.item.status;
    const c = st.item.capture || {};
    $("capture").textContent = "node " + c.node + ", camera " + c.camera + ", reasons: " + (c.reasons || []).join(", ");
    msg("");
  }

  async function verdict(action) {
    const body = { action: action };
    if (action !== "reject") body.boxes = st.boxes;
    const r = await api("/api/review/item?key=" + encodeURIComponent(st.items[st.i].key), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const item = await r.json();
    st.items[st.i].status = item.status;
    $("status").textContent = item.status;
    document.body.dataset.last = item.key + ":" + item.status;  // what a test (or a person) can read back
    if (st.i + 1 < st.items.length) await show(st.i + 1);
  }

  function at(ev) {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height];
  }

  function hit(p) {
    for (let k = st.boxes.length - 1; k >= 0; k--) {
      const [x1, y1, x2, y2] = st.boxes[k].box;
      if (p[0] >= x1 && p[0] <= x2 && p[1] >= y1 && p[1] <= y2) return k;
    }
    return -1;
  }

  canvas.addEventListener("mousedown", (ev) => {
    const p = at(ev);
    st.sel = hit(p);
    st.drag = { start: p, orig: st.sel >= 0 ? st.boxes[st.sel].box.slice() : null };
    draw();
  });
  canvas.addEventListener("mousemove", (ev) => {
    if (!st.drag) return;
    const p = at(ev), s = st.drag.start;
    if (st.drag.orig) {  // move the selected box
      const [x1, y1, x2, y2] = st.drag.orig, dx = p[0] - s[0], dy = p[1] - s[1];
      st.boxes[st.sel].box = [x1 + dx, y1 + dy, x2 + dx, y2 + dy];
      st.boxes[st.sel].score = null;
    } else if (Math.abs(p[0] - s[0]) > 0.005 && Math.abs(p[1] - s[1]) > 0.005) {  // draw a new one
      if (st.sel < 0) { st.boxes.push({ class_id: st.cls, box: [0, 0, 0, 0], score: null }); st.sel = st.boxes.length - 1; }
      st.boxes[st.sel].box = [Math.min(s[0], p[0]), Math.min(s[1], p[1]), Math.max(s[0], p[0]), Math.max(s[1], p[1])];
    }
    draw();
  });
  window.addEventListener("mouseup", () => { st.drag = null; });

  document.addEventListener("keydown", (ev) => {
    const run = (p) => p.catch((e) => msg(e.message));
    if (ev.key === "a") run(verdict("accept"));
    else if (ev.key === "r") run(verdict("reject"));
    else if (ev.key === "ArrowRight") run(show(st.i + 1));
    else if (ev.key === "ArrowLeft") run(show(st.i - 1));
    else if (ev.key === "Delete" || ev.key === "Backspace") { if (st.sel >= 0) st.boxes.splice(st.sel, 1); st.sel = -1; draw(); }
    else if (/^[0-9]$/.test(ev.key) && +ev.key < st.names.length) {
      st.cls = +ev.key;
      if (st.sel >= 0) { st.boxes[st.sel].class_id = st.cls; st.boxes[st.sel].score = null; }
      draw();
    } else return;
    ev.preventDefault();
  });

  (async () => {
    try {
      const data = await (await api("/api/review/items")).json();
      st.names = data.class_names; st.items = data.items;
      const first = st.items.findIndex((x) => x.status === "unverified");
      await show(first >= 0 ? first : 0);
      document.body.dataset.ready = "1";
    } catch (e) { msg(e.message); }
  })();
})();
