// The RJS dashboard's only script: live updates of a submission page over server-sent
// events. The page works without it (a reload shows the truth); with it, the summary, the
// progress bar and the rows of the tasks shown update as jobs change.
"use strict";
(function () {
  const main = document.querySelector("main[data-live]");
  if (!main || !window.EventSource) return;
  const source = new EventSource(main.getAttribute("data-live"));
  const labels = { queued: "queued", leased: "running", done: "done", failed: "failed" };

  function setBar(bar, s) {
    if (!bar || !s.tasks) return;
    const scale = 1000 / s.tasks;
    const done = s.states.done * scale, failed = s.states.failed * scale, leased = s.states.leased * scale;
    const rect = (cls) => bar.querySelector("rect." + cls);
    rect("done").setAttribute("width", done);
    rect("failed").setAttribute("x", done);
    rect("failed").setAttribute("width", failed);
    rect("leased").setAttribute("x", done + failed);
    rect("leased").setAttribute("width", leased);
  }

  function text(el, value) {
    if (el && el.textContent !== value) el.textContent = value;
  }

  source.addEventListener("summary", (e) => {
    const s = JSON.parse(e.data);
    setBar(document.querySelector('svg.bar[data-bar="' + s.id + '"]'), s);
    const counts = Object.assign({}, s.states, s.outcomes);
    for (const k of Object.keys(counts)) {
      text(document.querySelector('[data-count="' + k + '"]'), String(counts[k]));
    }
    if (s.elapsed !== undefined) text(document.querySelector("[data-elapsed]"), s.elapsed);
    main.setAttribute("data-updated", String(Date.now()));
  });

  source.addEventListener("job", (e) => {
    const row = JSON.parse(e.data);
    const tr = document.getElementById("job-" + row.id);
    if (!tr) return;
    tr.className = "state-" + row.state;
    const pill = tr.querySelector('[data-f="state"] .pill');
    if (pill) {
      pill.className = "pill " + row.state;
      text(pill, labels[row.state] || row.state);
    }
    for (const f of ["attempts", "node", "outcome", "time", "answer", "updated", "why"]) {
      text(tr.querySelector('[data-f="' + f + '"]'), row[f] === undefined ? "" : String(row[f]));
    }
  });
})();
