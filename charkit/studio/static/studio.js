// charkit studio: actions, the job queue and copy buttons. Plain JS, served by the studio itself.
// Every text from the server goes into the page through textContent (never innerHTML): a prompt or a
// file name can hold markup, and here it stays text.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  const watch = document.body.dataset.watch || "";
  const seen = new Map(); // job id -> last known state
  let timer = null;

  function flash(text, isError) {
    const el = document.getElementById("flash");
    el.textContent = text;
    el.hidden = false;
    el.classList.toggle("error", Boolean(isError));
  }

  function jobItem(job) {
    const li = document.createElement("li");
    li.className = "job " + job.state;
    li.dataset.job = job.id;
    li.dataset.state = job.state;
    li.dataset.episode = job.episode || "";
    li.dataset.scene = job.scene || "";
    const parts = [
      ["job-title", job.title],
      ["job-state", job.state + (job.seconds != null ? " · " + job.seconds + " s" : "")],
    ];
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.appendChild(span);
    }
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = job.progress;
    li.appendChild(bar);
    const msg = document.createElement("span");
    msg.className = "job-message";
    msg.textContent = job.message;
    li.appendChild(msg);
    if (job.error) {
      const err = document.createElement("span");
      err.className = "job-error";
      err.textContent = job.error;
      li.appendChild(err);
    }
    return li;
  }

  function render(jobs) {
    const list = document.getElementById("jobs");
    list.replaceChildren(...(jobs.length ? jobs.map(jobItem) : [Object.assign(document.createElement("li"), { className: "empty", textContent: "no jobs yet" })]));
  }

  async function poll() {
    timer = null;
    let jobs = [];
    try {
      const r = await fetch("/jobs.json", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!r.ok) throw new Error("queue: " + r.status);
      jobs = (await r.json()).jobs;
    } catch (e) {
      schedule(3000);
      return;
    }
    render(jobs);
    let reload = false;
    for (const j of jobs) {
      const before = seen.get(j.id);
      if (before && (before === "queued" || before === "running") && j.state === "done" && j.episode === watch) reload = true;
      seen.set(j.id, j.state);
    }
    if (reload) {
      window.location.reload();
      return;
    }
    schedule(jobs.some((j) => j.state === "queued" || j.state === "running") ? 400 : 3000);
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  for (const li of document.querySelectorAll("#jobs li[data-job]")) seen.set(li.dataset.job, li.dataset.state);

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("form[data-post]")) return;
    ev.preventDefault();
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const r = await fetch(form.action, { method: "POST", body: new FormData(form), headers: { "X-CSRF-Token": csrf, Accept: "application/json" } });
      let data = {};
      try {
        data = await r.json();
      } catch (e) {
        data = { error: "the studio answered " + r.status };
      }
      if (!r.ok || data.error) {
        flash(data.error || "the studio answered " + r.status, true);
        return;
      }
      flash(data.message || "done", false);
      if (data.job) {
        seen.set(data.job.id, data.job.state);
        const list = document.getElementById("jobs");
        const empty = list.querySelector(".empty");
        if (empty) empty.remove();
        list.prepend(jobItem(data.job));
        schedule(100);
      }
      if (data.reload) window.location.reload();
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  });

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-copy]");
    if (!btn) return;
    const src = document.getElementById(btn.dataset.copy);
    if (!src) return;
    const text = src.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(src);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.execCommand("copy");
    }
    btn.dataset.copied = "1";
    btn.textContent = "copied";
  });

  schedule(seen.size ? 400 : 3000);
})();
