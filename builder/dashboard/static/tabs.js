// Tabs mounted by a higher layer (the flywheel's review page: `edge-builder dashboard --review DATASET`,
// docs/FLYWHEEL.md): /api/session lists them for a logged-in browser; the header links to each.
"use strict";
fetch("/api/session", { credentials: "same-origin" }).then(r => r.json()).then(s => {
  for (const [label, href] of s.tabs || []) {
    if (href === "/review") document.getElementById("review-link").hidden = false;
    else document.querySelector("header").append(Object.assign(document.createElement("a"), { className: "pill", href, textContent: label }));
  }
}).catch(() => {});
