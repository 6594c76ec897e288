// The dashboard of `monitor --serve`: one Server-Sent Events stream (/events) brings each new
// snapshot; the page redraws from it. Every value from the run (item keys, reasons, stderr) is
// set as text, never as HTML.
"use strict";

const PAGE_SIZE = 100;
const RANK = { failed: 0, died: 1, stalled: 2, interrupted: 3, running: 4, pending: 5, done: 6 };
const view = { sort: "attention", asc: true, page: 0, filter: "", state: "" };
let last = null;

const $ = (id) => document.getElementById(id);
const fmtInt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
function fmtRate(r) {
  if (r == null) return "–";
  return r >= 100 ? fmtInt(r) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}
function fmtDur(s) {
  if (s == null) return "–";
  s = Math.round(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor((s % 86400) / 3600)).padStart(2, "0") + "h";
}
function fmtBytes(b) {
  if (b == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b) + " " + u[i];
}
const stateOf = (s) => (s.stalled ? "stalled" : s.state);
const progress = (s) => (s.items_total > 0 ? s.items_done / s.items_total : s.state === "done" ? 1 : 0);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// ---- summary ----------------------------------------------------------------------------------
function renderSummary(st) {
  const s = st.summary;
  $("run").textContent = st.run;
  document.title = "shardrun · " + st.run;
  for (const k of ["running", "done", "failed", "died", "interrupted", "pending", "stalled"]) {
    $("n-" + k).textContent = fmtInt(s[k]);
  }
  const total = s.items_total;
  const pct = total > 0 ? (100 * s.items_done) / total : 0;
  $("items").textContent = fmtInt(s.items_done) + " / " + fmtInt(total) + (s.items_total_complete ? "" : "+") +
    (total > 0 ? " (" + pct.toFixed(1) + "%)" : "");
  $("rows").textContent = fmtInt(s.rows);
  $("items-failed").textContent = fmtInt(s.items_failed);
  $("rate").textContent = s.rate == null ? "–" : fmtRate(s.rate) + " items/s";
  $("eta").textContent = fmtDur(s.eta_s);
  $("num-shards").textContent = fmtInt(st.num_shards);
  const bar = $("bar-all");
  bar.style.width = Math.min(100, pct).toFixed(2) + "%";
  const ended = st.shards.every((x) => !["pending", "running"].includes(x.state));
  bar.className = "fill" + (ended ? (s.done === st.num_shards ? " done" : " failed") : "");
  const p = $("ended");
  p.hidden = !ended;
  if (ended) {
    p.textContent = s.done === st.num_shards
      ? "The run has ended: every shard is done."
      : "The run has ended: " + (st.num_shards - s.done) + " shard(s) not done.";
  }
}

// ---- chart ------------------------------------------------------------------------------------
function renderChart(history, total) {
  const c = $("chart");
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight || 200;
  if (c.width !== Math.round(w * dpr)) c.width = Math.round(w * dpr);
  c.height = Math.round(h * dpr);
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const pad = { l: 64, r: 64, t: 12, b: 24 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  g.strokeStyle = "#e3e5e8";
  if (!history || history.length < 2) {
    g.fillText("the chart starts after two refreshes", pad.l, pad.t + ph / 2);
    return;
  }
  const t0 = history[0][0], t1 = history[history.length - 1][0];
  const maxItems = Math.max(total || 0, ...history.map((p) => p[1]), 1);
  const maxRate = Math.max(...history.map((p) => p[2] || 0), 1e-9);
  const x = (t) => pad.l + (t1 > t0 ? ((t - t0) / (t1 - t0)) * pw : 0);
  const yI = (v) => pad.t + ph - (v / maxItems) * ph;
  const yR = (v) => pad.t + ph - (v / (maxRate * 1.1)) * ph;
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (ph * i) / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
    g.textAlign = "right";
    g.fillText(fmtInt((maxItems * (4 - i)) / 4), pad.l - 6, y + 4);
    g.textAlign = "left";
    g.fillText(fmtRate((maxRate * 1.1 * (4 - i)) / 4), pad.l + pw + 6, y + 4);
  }
  g.textAlign = "center";
  g.fillText("-" + fmtDur(t1 - t0), pad.l, h - 6);
  g.fillText("now", pad.l + pw, h - 6);
  const line = (color, pick, y) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let started = false;
    for (const p of history) {
      const v = pick(p);
      if (v == null) continue;
      if (started) g.lineTo(x(p[0]), y(v)); else { g.moveTo(x(p[0]), y(v)); started = true; }
    }
    g.stroke();
  };
  line(css.getPropertyValue("--done").trim() || "#16a34a", (p) => p[1], yI);
  line(css.getPropertyValue("--running").trim() || "#2563eb", (p) => (p[2] == null ? 0 : p[2]), yR);
}

// ---- shard table ------------------------------------------------------------------------------
const KEYS = {
  shard: (s) => s.shard,
  state: (s) => RANK[stateOf(s)],
  progress: progress,
  items_done: (s) => s.items_done,
  items_failed: (s) => s.items_failed,
  rows: (s) => s.rows,
  rate: (s) => (s.rate == null ? -1 : s.rate),
  eta: (s) => (s.eta_s == null ? Infinity : s.eta_s),
  silent: (s) => (s.silent_s == null ? -1 : s.silent_s),
  cpu: (s) => (s.cpu_pct == null ? -1 : s.cpu_pct),
  rss: (s) => (s.rss_bytes == null ? -1 : s.rss_bytes),
};

// Failed, died, stalled, interrupted first; then running, slowest first; then pending, done.
function attention(a, b) {
  const r = RANK[stateOf(a)] - RANK[stateOf(b)];
  if (r) return r;
  if (a.state === "running") {
    const d = (a.rate == null ? -1 : a.rate) - (b.rate == null ? -1 : b.rate);
    if (d) return d;
  }
  return a.shard - b.shard;
}

function visibleShards(st) {
  const f = view.filter.trim().toLowerCase();
  let list = st.shards.filter((s) => {
    const state = stateOf(s);
    if (view.state === "attention" && !["failed", "died", "stalled", "interrupted"].includes(state)) return false;
    if (view.state && view.state !== "attention" && s.state !== view.state) return false;
    if (!f) return true;
    if (/^\d+$/.test(f)) return String(s.shard) === f;
    return state.includes(f) || (s.host || "").toLowerCase().includes(f) ||
      (s.current || "").toLowerCase().includes(f);
  });
  if (view.sort === "attention") {
    list.sort(view.asc ? attention : (a, b) => attention(b, a));
  } else {
    const key = KEYS[view.sort];
    const dir = view.asc ? 1 : -1;
    list.sort((a, b) => (key(a) - key(b)) * dir || a.shard - b.shard);
  }
  return list;
}

function shardRow(s) {
  const tr = el("tr");
  tr.dataset.shard = s.shard;
  tr.dataset.state = s.state;
  const flag = s.stalled ? "stalled" : s.state === "failed" || s.state === "died" ? "!" : "";
  tr.append(el("td", "flag", flag), el("td", "num shard", String(s.shard)));
  const st = el("td", "state " + s.state, s.state + (s.stalled ? " (stalled)" : ""));
  tr.append(st);
  const pc = el("td", "progress");
  const bar = el("div", "bar");
  const fill = el("div", "fill " + s.state);
  fill.style.width = (100 * progress(s)).toFixed(1) + "%";
  bar.append(fill);
  pc.append(bar);
  tr.append(pc);
  tr.append(
    el("td", "num items", fmtInt(s.items_done) + " / " + fmtInt(s.items_total)),
    el("td", "num failed", fmtInt(s.items_failed)),
    el("td", "num rows", fmtInt(s.rows)),
    el("td", "num", fmtRate(s.rate)),
    el("td", "num", fmtDur(s.eta_s)),
    el("td", "num", fmtDur(s.silent_s)),
    el("td", "num", s.cpu_pct == null ? "–" : s.cpu_pct.toFixed(0) + "%"),
    el("td", "num", fmtBytes(s.rss_bytes)),
    el("td", "host", s.host ? s.host + " · " + s.pid : "–"),
  );
  const cur = el("td", "cur", s.current || "");
  cur.title = s.current || "";
  tr.append(cur);
  return tr;
}

function renderShards(st) {
  const list = visibleShards(st);
  const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
  view.page = Math.min(view.page, pages - 1);
  const from = view.page * PAGE_SIZE;
  // Only one page of rows is in the document, whatever the shard count.
  const rows = list.slice(from, from + PAGE_SIZE).map(shardRow);
  document.querySelector("#shards tbody").replaceChildren(...rows);
  $("shown").textContent = list.length === st.shards.length
    ? "(" + fmtInt(list.length) + ")"
    : "(" + fmtInt(list.length) + " of " + fmtInt(st.shards.length) + " match)";
  $("page").textContent = list.length
    ? "rows " + fmtInt(from + 1) + "–" + fmtInt(from + rows.length) + " · page " + (view.page + 1) + " of " + pages
    : "no shard matches";
  $("prev").disabled = view.page === 0;
  $("next").disabled = view.page >= pages - 1;
  for (const th of document.querySelectorAll("#shards th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === view.sort);
    th.classList.toggle("asc", th.dataset.sort === view.sort && view.asc);
  }
}

// ---- failures ---------------------------------------------------------------------------------
function renderFailures(f) {
  const rows = f.items.map((it) => {
    const tr = el("tr");
    tr.dataset.shard = it.shard;
    tr.dataset.key = it.key;
    const pre = el("pre", null, it.stderr_tail.join("\n"));
    const td = el("td");
    td.append(pre);
    tr.append(el("td", "num", String(it.shard)), el("td", "key", it.key), el("td", "num", String(it.attempts)),
      el("td", "reason", it.reason || ""), td);
    return tr;
  });
  document.querySelector("#failures tbody").replaceChildren(...rows);
  $("failures").hidden = rows.length === 0;
  $("no-failures").hidden = f.failed_items > 0;
  $("failed-count").textContent = f.failed_items > f.items.length
    ? "(" + fmtInt(f.failed_items) + "; the first " + fmtInt(f.items.length) + " shown, all at /api/failures)"
    : "(" + fmtInt(f.failed_items) + " in " + fmtInt(f.shards_with_failures) + " shard(s))";
  const err = $("failures-errors");
  err.hidden = f.errors.length === 0;
  err.textContent = f.errors.join("; ");
}

// ---- wiring -----------------------------------------------------------------------------------
function render() {
  if (!last) return;
  renderSummary(last.status);
  renderChart(last.history, last.status.summary.items_total);
  renderShards(last.status);
  renderFailures(last.failures);
  $("updated").textContent = "updated " + new Date(last.updated).toLocaleTimeString();
}

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("status", (e) => {
    last = JSON.parse(e.data);
    $("conn").textContent = "live";
    $("conn").className = "conn live";
    render();
  });
  es.onerror = () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "conn wait";
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const th of document.querySelectorAll("#shards th[data-sort]")) {
    th.addEventListener("click", () => {
      if (view.sort === th.dataset.sort) view.asc = !view.asc;
      else { view.sort = th.dataset.sort; view.asc = th.dataset.sort === "shard" || th.dataset.sort === "attention"; }
      view.page = 0;
      render();
    });
  }
  $("filter").addEventListener("input", (e) => { view.filter = e.target.value; view.page = 0; render(); });
  $("state-filter").addEventListener("change", (e) => { view.state = e.target.value; view.page = 0; render(); });
  $("prev").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); render(); });
  $("next").addEventListener("click", () => { view.page += 1; render(); });
  window.addEventListener("resize", () => last && renderChart(last.history, last.status.summary.items_total));
  connect();
});
