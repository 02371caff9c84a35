// scitagd collector, links view: per link (exporter, domain, interface, direction) the tagged
// share and the traffic stacked by experiment, from router flow exports. Plain JavaScript and
// SVG, no external code; everything comes from /api/v1/links, /api/v1/links/timeseries and
// /api/v1/exporters.
"use strict";
// shared helpers ($, COLORS, fmtBytes, fmtBits, fmtTime, esc, api, schedule, updated): common.js

const UNTAGGED = "#cbd5e1";

function pct(x) { return x == null ? "–" : x >= 0.1 ? (x * 100).toFixed(1) + "%" : (x * 100).toFixed(2) + "%"; }
// the same experiment has the same colour on every link
function colorOf(id) { return id == null ? UNTAGGED : id < 0 ? "#6b7280" : COLORS[id % COLORS.length]; }
function ifaceText(l) { return l.interface == null ? "–" : String(l.interface); }
function linkName(l) {
  return `${l.exporter} · ${l.domain === 0 ? "" : "domain " + l.domain + " · "}if ${ifaceText(l)} · ${l.direction}`;
}
function linkQuery(l) {
  const p = new URLSearchParams();
  p.set("exporter", l.exporter);
  p.set("domain", String(l.domain));
  p.set("interface", l.interface == null ? "none" : String(l.interface));
  p.set("direction", l.direction);
  return p;
}

function range() {
  const p = new URLSearchParams();
  p.set("from", "-" + $("range").value + "s");
  return p;
}

function shareBar(l) {
  const s = l.tagged_share || 0;
  const fp = l.expected_false_positive_bytes && l.bytes ? l.expected_false_positive_bytes / l.bytes : 0;
  return `<span class="share" title="tagged ${pct(s)}; expected false positives ${pct(fp)} of the link">` +
    `<i style="width:${Math.min(100, s * 100).toFixed(2)}%"></i><b style="left:${Math.min(100, fp * 100).toFixed(2)}%"></b></span> ${pct(s)}`;
}

function drawLinks(data) {
  const rows = data.links;
  $("link-count").textContent = "(" + rows.length + ")";
  $("links").querySelector("tbody").innerHTML = rows.length ? rows.map((l) => "<tr>" +
    `<td>${esc(l.exporter)}</td><td>${esc(l.domain)}</td><td>${esc(ifaceText(l))}</td><td>${esc(l.direction)}</td>` +
    `<td class="n">${fmtBytes(l.bytes)}</td><td class="sharecell">${shareBar(l)}</td>` +
    `<td class="n">${fmtBytes(l.expected_false_positive_bytes)}${l.expected_false_positive_share != null ? " (" + pct(l.expected_false_positive_share) + " of tagged)" : ""}</td>` +
    `<td>${l.tags.slice(0, 4).map((t) => `<span class="chip"><i style="background:${colorOf(t.exp)}"></i>${esc(t.experiment)}/${esc(t.activity)} ${fmtBytes(t.bytes)}</span>`).join(" ")}</td>` +
    "</tr>").join("") : '<tr><td colspan="8" class="empty">no flow exports in this range</td></tr>';
  $("fp-note").textContent = "Expected false positives: unmarked IPv6 flows whose random flow label decodes to an " +
    "accepted tag, " + pct(data.false_positive_rate) + " of them under this collector's rules (untagged IPv6 bytes × p/(1−p)).";
  const sel = $("exporter");
  for (const ex of new Set(rows.map((l) => l.exporter))) {
    if (![...sel.options].some((o) => o.value === ex)) {
      const o = document.createElement("option");
      o.value = ex; o.textContent = ex;
      sel.appendChild(o);
    }
  }
}

function stacked(box, ts, showUntagged) {
  const series = ts.series.filter((s) => showUntagged || s.tagged);
  if (!series.length) { box.innerHTML = '<div class="empty">no traffic in this range</div>'; return; }
  // tagged experiments at the bottom, untagged on top
  const order = series.filter((s) => s.tagged).concat(series.filter((s) => !s.tagged));
  box.innerHTML = stackedSvg(ts, order, {
    W: box.clientWidth || 600, H: 180, L: 64, R: 8, T: 8, B: 20, ticks: 2,
    value: (v, step) => v / step, // bytes per second
    yLabel: (v) => fmtBits(v * 8),
    xLabel: (t) => fmtTime(t).slice(11, 16),
    look: (s) => ({ color: s.tagged ? colorOf(s.id) : UNTAGGED, cls: s.tagged ? "" : " untagged", opacity: 0.85 }),
  });
}

async function drawCards(links) {
  const box = $("cards");
  const top = links.slice(0, Number($("charts").value));
  const all = await Promise.all(top.map((l) => {
    const p = new URLSearchParams([...range(), ...linkQuery(l)]);
    return api("/api/v1/links/timeseries", p);
  }));
  box.innerHTML = "";
  const charts = [];
  top.forEach((l, k) => {
    const card = document.createElement("section");
    card.className = "card link";
    const ts = all[k];
    const legend = ts.series.map((s) => `<span class="chip"><i style="background:${s.tagged ? colorOf(s.id) : UNTAGGED}"></i>${esc(s.name)} ${fmtBytes(s.points.reduce((a, p) => a + p[1], 0))}</span>`).join(" ");
    card.innerHTML = `<h2>${esc(linkName(l))}</h2><div class="linkshare">tagged ${shareBar(l)} of ${fmtBytes(l.bytes)}` +
      ` · IPv6 ${pct(l.tagged_share_ipv6)} tagged · expected false positives ${fmtBytes(l.expected_false_positive_bytes)}</div>` +
      `<div class="chart"></div><div class="legend">${legend}</div>`;
    box.appendChild(card);
    charts.push([card.querySelector(".chart"), ts]);
  });
  // drawn once every card is in the grid: a chart's width is its final one
  for (const [el, ts] of charts) stacked(el, ts, $("untagged").checked);
}

function drawExporters(ex) {
  const rows = ex.sections || [];
  $("exporters").querySelector("tbody").innerHTML = rows.length ? rows.map((s) => {
    const rej = s.rejected.reduce((a, r) => a + r.count, 0);
    const last = s.last_rejected.length ? s.last_rejected[s.last_rejected.length - 1] : null;
    return "<tr>" + `<td>${esc(s.section)}</td><td>${esc(s.ports.join(", "))}</td><td class="n">${s.datagrams}</td>` +
      `<td class="n">${s.records}</td><td class="n">${s.kernel_drops}</td><td class="n">${rej}</td>` +
      `<td>${last ? esc(last.exporter + " " + last.reason + ": " + last.detail) : ""}</td></tr>`;
  }).join("") : `<tr><td colspan="7" class="empty">${esc(ex.note || "none")}</td></tr>`;
}

async function refresh() {
  try {
    const p = range();
    if ($("exporter").value) p.set("exporter", $("exporter").value);
    const [links, ex] = await Promise.all([api("/api/v1/links", p), api("/api/v1/exporters", null)]);
    drawLinks(links);
    drawExporters(ex);
    await drawCards(links.links);
    updated(p);
  } catch (e) {
    $("status").textContent = "error: " + e.message;
  }
}

async function main() {
  const q = new URLSearchParams(location.search);
  if (q.get("range")) $("range").value = q.get("range");
  if (q.get("charts")) $("charts").value = q.get("charts");
  for (const id of ["range", "exporter", "charts", "untagged"]) $(id).onchange = refresh;
  $("auto").onchange = schedule;
  await refresh();
  schedule();
}

main();
