// Tabs mounted by a higher layer: the review page appears in the header only when the dashboard serves it
// (`edge-builder dashboard --review DATASET`, docs/FLYWHEEL.md).
"use strict";
fetch("/review", { credentials: "same-origin" }).then(r => {
  if (r.ok) document.getElementById("review-link").hidden = false;
}).catch(() => {});
