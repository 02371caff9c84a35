// scitagd collector dashboard: plain JavaScript and SVG, no external code (the machines it
// runs on have no internet). Everything comes from the collector's JSON API.
"use strict";
// shared helpers ($, COLORS, fmtBytes, fmtBits, fmtTime, esc, api, schedule, updated): common.js

let registry = { experiments: [] };
let extent = { from: null, to: null };

function fmtDur(s) {
  if (s == null) return "";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function hp(ip, port) { return (ip.includes(":") ? "[" + ip + "]" : ip) + ":" + port; }

function params() {
  const p = new URLSearchParams();
  const r = $("range").value;
  if (r === "all") {
    if (extent.from != null) { p.set("from", Math.floor(extent.from) - 60); p.set("to", Math.ceil(extent.to) + 60); }
  } else {
    p.set("from", "-" + r + "s");
  }
  if ($("experiment").value) p.set("experiment", $("experiment").value);
  if ($("activity").value) p.set("activity", $("activity").value);
  if ($("host").value.trim()) p.set("host", $("host").value.trim());
  return p;
}

function fillExperiments() {
  const sel = $("experiment");
  for (const e of registry.experiments) {
    const o = document.createElement("option");
    o.value = e.id; o.textContent = e.name + " (" + e.id + ")";
    sel.appendChild(o);
  }
}

// Ids seen in the data but not in the registry (ids changed over the years): still selectable.
const seen = new Map(); // experiment id -> Set of activity ids

function noteSeen(totals) {
  const sel = $("experiment");
  for (const r of totals) {
    if (!seen.has(r.exp)) seen.set(r.exp, new Set());
    seen.get(r.exp).add(r.act);
    if (![...sel.options].some((o) => o.value === String(r.exp))) {
      const o = document.createElement("option");
      o.value = r.exp; o.textContent = r.experiment + (r.experiment === String(r.exp) ? " (not in registry)" : "");
      sel.appendChild(o);
    }
  }
}

function fillActivities() {
  const sel = $("activity");
  sel.innerHTML = '<option value="">all</option>';
  const id = $("experiment").value;
  const known = registry.experiments.find((x) => String(x.id) === id);
  const e = known || (id && seen.has(Number(id))
    ? { activities: [...seen.get(Number(id))].map((a) => ({ id: a, name: String(a) })) } : null);
  sel.disabled = !e;
  if (!e) return;
  for (const a of e.activities) {
    const o = document.createElement("option");
    o.value = a.id; o.textContent = a.name;
    sel.appendChild(o);
  }
}

function drawChart(ts) {
  const box = $("chart");
  const legend = $("legend");
  const flows = ts.measure === "flows";
  $("chart-title").textContent = (flows ? "Flows started" : "Traffic") + " over time by " + ts.by;
  legend.innerHTML = "";
  if (!ts.series.length) {
    box.innerHTML = '<div class="empty">no traffic in this range</div>';
    return;
  }
  box.innerHTML = stackedSvg(ts, ts.series, {
    W: box.clientWidth || 900, H: 300, L: 64, R: 12, T: 10, B: 24, ticks: 4,
    value: (v, step) => (flows ? v : v / step), // flows per step, or bytes per second
    yLabel: (v) => (flows ? (v >= 10 ? Math.round(v) : v.toFixed(1)) + " flows" : fmtBits(v * 8)),
    xLabel: (t) => fmtTime(t).slice(5, 16),
    look: (s, j) => ({ color: COLORS[j % COLORS.length], opacity: 0.8 }),
  });
  ts.series.forEach((s, j) => {
    const c = COLORS[j % COLORS.length];
    const b = document.createElement("button");
    b.type = "button";
    b.innerHTML = `<i style="background:${c}"></i>${esc(s.name)}`;
    b.title = ts.by === "experiment" ? "show activities of " + s.name : s.name;
    b.onclick = () => {
      if (ts.by === "experiment") { $("experiment").value = s.id; fillActivities(); refresh(); }
    };
    legend.appendChild(b);
  });
}

function rows(tbody, items, cells) {
  $(tbody).querySelector("tbody").innerHTML = items.length
    ? items.map((it) => "<tr>" + cells(it).map((c) => `<td${c.n ? ' class="n"' : ""}>${c.n ? c.v : esc(c.v)}</td>`).join("") + "</tr>").join("")
    : '<tr><td colspan="9" class="empty">none</td></tr>';
}

async function refresh() {
  const p = params();
  try {
    if ($("range").value === "all") extent = await api("/api/v1/extent");
    const q = params();
    const measure = $("measure").value;
    const tq = new URLSearchParams(q);
    tq.set("measure", measure === "flows" ? "flows" : "bytes");
    const [ts0, totals, pairs, active, recent] = await Promise.all([
      api("/api/v1/timeseries", tq),
      api("/api/v1/totals", (() => { const t = new URLSearchParams(q); t.set("by", "activity"); return t; })()),
      api("/api/v1/top", (() => { const t = new URLSearchParams(q); t.set("n", "10"); return t; })()),
      api("/api/v1/active", null),
      api("/api/v1/flows", (() => { const t = new URLSearchParams(q); t.set("limit", "25"); return t; })()),
    ]);
    let ts = ts0;
    if (measure === "auto" && !ts.series.length) {
      tq.set("measure", "flows");
      ts = await api("/api/v1/timeseries", tq); // fireflies without usage: count flows instead
    }
    noteSeen(totals.totals);
    drawChart(ts);
    rows("totals", totals.totals, (r) => [{ v: r.experiment + " / " + r.activity }, { v: r.flows, n: 1 },
      { v: fmtBytes(r.bytes), n: 1 }]);
    rows("pairs", pairs.top, (r) => [{ v: r.src }, { v: r.dst }, { v: r.flows, n: 1 }, { v: fmtBytes(r.bytes), n: 1 }]);
    const exp = $("experiment").value, act = $("activity").value, host = $("host").value.trim();
    const act_rows = active.flows.filter((f) => (!exp || String(f.exp) === exp) && (!act || String(f.act) === act) &&
      (!host || f.src === host || f.dst === host || f.reporter === host));
    const filtered = exp || act || host;
    $("active-count").textContent = "(" + (filtered ? act_rows.length + " of the latest " + active.flows.length
      : active.count) + ")";
    rows("active", act_rows.slice(0, 50), (f) => [{ v: fmtTime(f.start) }, { v: f.experiment + " / " + f.activity },
      { v: hp(f.src, f.sport) }, { v: hp(f.dst, f.dport) }, { v: f.reporter }, { v: fmtBytes(f.sent + f.received), n: 1 }]);
    rows("recent", recent.flows, (f) => [{ v: fmtTime(f.start) }, { v: fmtDur(f.duration) }, { v: f.experiment + " / " + f.activity },
      { v: hp(f.src, f.sport) }, { v: hp(f.dst, f.dport) }, { v: fmtBytes(f.sent + f.received), n: 1 },
      { v: fmtBits(f.throughput_bps), n: 1 }]);
    updated(p);
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}

async function main() {
  const q = new URLSearchParams(location.search);
  registry = await api("/api/v1/registry");
  fillExperiments();
  if (q.get("range")) $("range").value = q.get("range");
  if (q.get("experiment")) { $("experiment").value = q.get("experiment"); }
  fillActivities();
  if (q.get("activity")) $("activity").value = q.get("activity");
  if (q.get("host")) $("host").value = q.get("host");
  if (q.get("measure")) $("measure").value = q.get("measure");
  $("range").onchange = refresh;
  $("measure").onchange = refresh;
  $("experiment").onchange = () => { fillActivities(); refresh(); };
  $("activity").onchange = refresh;
  $("host").onchange = refresh;
  $("auto").onchange = schedule;
  await refresh();
  schedule();
}

main();
