// scitagd collector dashboard pages: what every page shares (formatting, the JSON API, the
// auto-refresh timer). Plain JavaScript, no external code: the machines it runs on have no internet.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04",
  "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
let timer = null;

function fmtBytes(n) {
  if (n == null) return "";
  const u = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  const whole = i === 0 && Number.isInteger(n);
  return (whole ? n : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + u[i];
}
function fmtBits(n) { return n == null ? "" : fmtBytes(n).replace("B", "b") + "/s"; }
function fmtTime(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z"; }
function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
}

async function api(path, p) {
  const r = await fetch(path + (p ? "?" + p.toString() : ""));
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// `refresh` every 10 s while the page's "auto" box is ticked
function schedule() {
  if (timer) clearInterval(timer);
  timer = $("auto").checked ? setInterval(refresh, 10000) : null;
}

function updated(p) {
  $("status").textContent = "updated " + new Date().toISOString().slice(11, 19) + "Z · " + p.toString();
}

// A stacked area chart as SVG: one layer per series of [bucket start, value] points, in the
// order given. o: {W, H, L, R, T, B} (size and margins), ticks (axis labels per axis),
// value(v, step) (what a point adds to its bucket), yLabel(v), xLabel(t), look(series, j)
// (returns {color, cls, opacity}).
function stackedSvg(ts, series, o) {
  const { W, H, L, R, T, B } = o;
  const step = ts.step;
  const t0 = Math.floor(ts.from / step) * step, t1 = Math.ceil(ts.to / step) * step;
  const n = Math.max(1, Math.round((t1 - t0) / step));
  const stack = new Array(n + 1).fill(0);
  const layers = series.map((s) => {
    const vals = new Array(n + 1).fill(0);
    for (const [b, v] of s.points) {
      const i = Math.round((b - t0) / step);
      if (i >= 0 && i <= n) vals[i] += o.value(v, step);
    }
    return { s, vals };
  });
  const tops = layers.map((l) => l.vals.map((v, i) => (stack[i] += v)));
  const max = Math.max(1, ...stack);
  const x = (i) => L + (i / n) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  let svg = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">`;
  for (let k = 0; k <= o.ticks; k++) {
    const v = (max * k) / o.ticks, yy = y(v);
    svg += `<line class="axis" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"/>`;
    svg += `<text x="${L - 6}" y="${yy + 4}" text-anchor="end">${o.yLabel(v)}</text>`;
  }
  for (let k = 0; k <= o.ticks; k++) {
    const i = Math.round((n * k) / o.ticks);
    const anchor = k === 0 ? "start" : k === o.ticks ? "end" : "middle";
    svg += `<text x="${x(i)}" y="${H - B / 4}" text-anchor="${anchor}">${o.xLabel(t0 + i * step)}</text>`;
  }
  layers.forEach((l, j) => {
    const top = tops[j], bottom = j ? tops[j - 1] : new Array(n + 1).fill(0);
    let d = `M${x(0)},${y(top[0])}`;
    for (let i = 1; i <= n; i++) d += `L${x(i)},${y(top[i])}`;
    for (let i = n; i >= 0; i--) d += `L${x(i)},${y(bottom[i])}`;
    const look = o.look(l.s, j);
    svg += `<path class="layer${look.cls || ""}" data-key="${esc(l.s.id)}" d="${d}Z" fill="${look.color}" ` +
      `fill-opacity="${look.opacity}" stroke="${look.color}"><title>${esc(l.s.name)}</title></path>`;
  });
  return svg + "</svg>";
}
