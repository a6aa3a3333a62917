// The amoeba front page: plain JS, no library, no external fetch. Data comes from the service's
// JSON routes (/devices, /fronts/{device}/{flow}, /query, /web/shapes/{device}/{flow}); with a
// token set, every call carries "Authorization: Bearer <token>" (token from #token=... or the form).
"use strict";

const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const W = 760, H = 420, M = { l: 62, r: 18, t: 16, b: 46 };
const SOURCES = {  // colour and meaning of each latency source (order: most to least trustworthy)
  measured: ["#12b76a", "measured on this device through this flow (a row of its latency table)"],
  "per-layer": ["#2e90fa", "composed from measured per-layer rows (embedding + head + sum of layers)"],
  predicted: ["#f79009", "predicted from measured shapes of this table (interpolated)"],
  extrapolated: ["#d92d20", "predicted outside the measured shapes (extrapolated): treat with care"],
  transferred: ["#7a5af8", "transferred from other devices/flows (few-shot), not measured here"],
  roofline: ["#667085", "roofline: the device's physical limit (bytes / bandwidth, FLOPs / peak), not a measurement"],
};
const state = { want: {}, token: null, devices: {}, shapes: [], front: [], lo: 1, hi: 10, budget: null, seq: 0, log: false };

class AuthError extends Error {}

// ---- token and view from the URL fragment (#token=...&device=...&flow=...&variant=...&phase=...&budget=...) ----
const VIEW = ["device", "flow", "variant", "phase", "budget"];

function readFragment() {
  const h = new URLSearchParams(location.hash.replace(/^#/, ""));
  if (h.has("token")) sessionStorage.setItem("amoeba-token", h.get("token"));
  state.token = sessionStorage.getItem("amoeba-token");
  state.want = Object.fromEntries(VIEW.filter((k) => h.get(k)).map((k) => [k, h.get(k)]));
  if (state.want.phase) $("phase").value = state.want.phase;
  writeFragment();  // the token never stays in the address bar
}

function writeFragment() {  // a link to what is shown (no token in it)
  const sel = selection(), v = { ...sel, budget: state.budget };
  const h = new URLSearchParams(VIEW.filter((k) => v[k] != null && v[k] !== "").map((k) => [k, String(v[k])]));
  if (!sel.device) for (const [k, x] of Object.entries(state.want || {})) h.set(k, x);
  history.replaceState(null, "", location.pathname + location.search + (String(h) ? "#" + h : ""));
}

async function api(path, params) {
  const qs = params ? "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== "")) : "";
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(path + qs, { headers });
  if (r.status === 401) {
    $("login").hidden = false;
    $("login-msg").textContent = state.token ? "the server refused this token" : "this service needs a token";
    throw new AuthError("token needed");
  }
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) {
    const d = body && body.detail;
    throw new Error(typeof d === "string" ? d : (d ? JSON.stringify(d) : `${r.status} ${r.statusText}`));
  }
  return body;
}

function showError(e) {
  if (e instanceof AuthError) return;
  $("error").hidden = false;
  $("error").textContent = "error: " + (e && e.message ? e.message : e);
}

// ---- what the service knows: device -> flow -> [variants] -----------------------------------------
function parseDevices(j) {  // /devices: {devices: {device: [flow]}, variants: {device: {flow: [variant]}}}
  const out = {};
  for (const [dev, flows] of Object.entries(j.devices || {})) {
    out[dev] = Object.fromEntries(flows.map((f) => [f, ((j.variants || {})[dev] || {})[f] || []]));
  }
  return out;
}

function fill(select, values, keep) {
  const want = state.want[select.id], prev = keep ? select.value : null;
  select.replaceChildren(...values.map((v) => new Option(v, v)));
  if (want && values.includes(want)) select.value = want;
  else if (prev && values.includes(prev)) select.value = prev;
}

function syncSelects() {
  fill($("device"), Object.keys(state.devices), true);
  const flows = state.devices[$("device").value] || {};
  fill($("flow"), Object.keys(flows), true);
  const variants = flows[$("flow").value] || [];
  fill($("variant"), variants, true);
  $("variant-label").hidden = variants.length === 0;
}

function selection() {
  return {
    device: $("device").value, flow: $("flow").value, phase: $("phase").value,
    variant: $("variant-label").hidden ? null : $("variant").value,
  };
}

// ---- numbers --------------------------------------------------------------------------------------
// a shape's key is "<grid>-<layer hash>", the grid being d24-w0.750 or, with its own attention width, d24-a0.667-m0.750
const grid = (p) => p.key.slice(0, p.key.lastIndexOf("-"));
const sig = (x, n = 4) => Number(Number(x).toPrecision(n));
// a budget just fitting latency x: 6 significant digits, rounded up
const sigUp = (x) => { const r = sig(x, 6); return r >= x ? r : sig(x + Math.pow(10, Math.floor(Math.log10(x)) - 5), 6); };
const fmtMs = (x) => (x >= 100 ? x.toFixed(1) : x >= 10 ? x.toFixed(2) : x.toPrecision(3));

function pair(lo, hi) {
  return lo != null && hi != null && Number.isFinite(lo) && Number.isFinite(hi) ? [lo, hi] : null;
}
const accInterval = (p) => pair(p.accuracy_lo, p.accuracy_hi);  // 90% bootstrap interval, when stored
const latInterval = (p) => pair(p.lo_ms, p.hi_ms);  // the latency's interval, when the table gives one

function sourceOf(p) {
  const s = String(p.latency_source || "unknown");
  if (p.extrapolated === true && !s.includes("extrapolated")) return s + " (extrapolated)";
  return s;
}
function sourceKey(s) {
  const order = ["extrapolated", "transferred", "roofline", "per-layer", "predicted", "measured"];
  return order.find((k) => s.includes(k)) || null;
}
const colourOf = (p) => (SOURCES[sourceKey(sourceOf(p))] || ["#475467"])[0];

// ---- chart ----------------------------------------------------------------------------------------
function el(name, attrs, parent, text) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function niceTicks(lo, hi, n) {
  const step0 = (hi - lo) / Math.max(1, n), mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) out.push(sig(t, 6));
  return out;
}
function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) { const t = m * Math.pow(10, e); if (t >= lo && t <= hi) out.push(sig(t, 6)); }
  }
  return out.length >= 2 ? out : niceTicks(lo, hi, 5);
}

function scales() {
  // x: the shapes' latencies; latency intervals may widen it by at most 2x each way (longer bars are clipped)
  const pts = state.shapes.concat(state.front), ys = [];
  const lats = pts.map((p) => p.latency_ms), p0 = Math.min(...lats), p1 = Math.max(...lats);
  let x0 = p0, x1 = p1;
  for (const p of pts) {
    ys.push(p.accuracy);
    const li = latInterval(p), ai = accInterval(p);
    if (li) { x0 = Math.min(x0, Math.max(li[0], p0 / 2)); x1 = Math.max(x1, Math.min(li[1], p1 * 2)); }
    if (ai) ys.push(ai[0], ai[1]);
  }
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  state.log = x1 / x0 > 8;
  if (state.log) { x0 /= 1.15; x1 *= 1.15; } else { const d = (x1 - x0) * 0.06 || x0 * 0.1; x0 = Math.max(0, x0 - d); x1 += d; }
  const dy = (y1 - y0) * 0.08 || 0.01; y0 -= dy; y1 += dy;
  const iw = W - M.l - M.r, ih = H - M.t - M.b;
  const fx = state.log ? (v) => M.l + iw * Math.log(v / x0) / Math.log(x1 / x0) : (v) => M.l + iw * (v - x0) / (x1 - x0);
  const fy = (v) => M.t + ih * (1 - (v - y0) / (y1 - y0));
  const cx = (v) => Math.min(Math.max(fx(v), M.l), W - M.r);  // clipped to the plot
  return { fx, fy, cx, x0, x1, y0, y1 };
}

function drawChart(answer) {
  const svg = $("chart");
  svg.replaceChildren();
  if (!state.front.length) return;
  const { fx, fy, cx: clipx, x0, x1, y0, y1 } = scales();
  const g = el("g", {}, svg);
  for (const t of state.log ? logTicks(x0, x1) : niceTicks(x0, x1, 7)) {
    el("line", { class: "grid", x1: fx(t), x2: fx(t), y1: M.t, y2: H - M.b }, g);
    el("text", { x: fx(t), y: H - M.b + 16, "text-anchor": "middle" }, g, String(t));
  }
  for (const t of niceTicks(y0, y1, 6)) {
    el("line", { class: "grid", x1: M.l, x2: W - M.r, y1: fy(t), y2: fy(t) }, g);
    el("text", { x: M.l - 6, y: fy(t) + 4, "text-anchor": "end" }, g, String(t));
  }
  el("line", { class: "axis", x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }, g);
  el("line", { class: "axis", x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }, g);
  const sel = selection();
  el("text", { x: (M.l + W - M.r) / 2, y: H - 8, "text-anchor": "middle" }, g,
     `${sel.phase} latency, ms${state.log ? " (log scale)" : ""} — ${sel.device} / ${sel.flow}${sel.variant ? " / " + sel.variant : ""}`);
  el("text", { x: 14, y: (M.t + H - M.b) / 2, "text-anchor": "middle",
               transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})` }, g, "top-1 accuracy");

  const frontKeys = new Set(state.front.map((p) => p.key));
  for (const p of state.shapes) {
    if (frontKeys.has(p.key)) continue;
    const c = el("circle", { class: "eval", cx: fx(p.latency_ms), cy: fy(p.accuracy), r: 3 }, svg);
    el("title", {}, c, `${grid(p)}: top-1 ${p.accuracy.toFixed(4)}, ${fmtMs(p.latency_ms)} ms (${sourceOf(p)})`);
  }
  // the front as the step function a budget query follows
  let d = "";
  state.front.forEach((p, i) => {
    d += (i ? `H${fx(p.latency_ms)}V${fy(p.accuracy)}` : `M${fx(p.latency_ms)},${fy(p.accuracy)}`);
  });
  d += `H${W - M.r}`;
  el("path", { class: "frontline", d }, svg);
  for (const p of state.front) {
    const col = colourOf(p), cx = fx(p.latency_ms), cy = fy(p.accuracy);
    const ai = accInterval(p), li = latInterval(p);
    if (ai) el("line", { class: "err", stroke: col, x1: cx, x2: cx, y1: fy(ai[0]), y2: fy(ai[1]) }, svg);
    if (li) el("line", { class: "err", stroke: col, x1: clipx(li[0]), x2: clipx(li[1]), y1: cy, y2: cy }, svg);
    const c = el("circle", { class: "pick", cx, cy, r: 5, fill: col, stroke: "#fff", "stroke-width": 1 }, svg);
    c.addEventListener("click", () => setBudget(sigUp(p.latency_ms), false));  // this shape's latency as the budget
    el("title", {}, c, `${grid(p)}: top-1 ${p.accuracy.toFixed(4)}${ai ? ` [${ai[0].toFixed(4)}, ${ai[1].toFixed(4)}]` : ""}, ` +
       `${fmtMs(p.latency_ms)} ms${li ? ` [${fmtMs(li[0])}, ${fmtMs(li[1])}]` : ""} (${sourceOf(p)})`);
  }
  if (state.budget != null) {
    const bx = Math.min(Math.max(fx(state.budget), M.l), W - M.r);
    el("line", { class: "budget", x1: bx, x2: bx, y1: M.t, y2: H - M.b }, svg);
    const left = bx > W - M.r - 130;  // the label stays inside the plot
    el("text", { x: left ? bx - 4 : bx + 4, y: M.t + 12, fill: "#b42318", "text-anchor": left ? "end" : "start" }, svg,
       `budget ${state.budget} ms`);
  }
  if (answer && answer.shape) {
    el("circle", { class: "chosen", cx: fx(answer.shape.latency_ms), cy: fy(answer.shape.accuracy), r: 9 }, svg);
  }
  drawLegend();
}

function drawLegend() {
  const present = new Set(state.front.map((p) => sourceKey(sourceOf(p))));
  const items = [["#c0c6d0", `evaluated shape (${state.shapes.length})`]];
  for (const [k, [c]] of Object.entries(SOURCES)) if (present.has(k)) items.push([c, `front: ${k}`]);
  const anyInt = state.front.some((p) => accInterval(p) || latInterval(p));
  $("legend").replaceChildren(...items.map(([c, t]) => {
    const s = document.createElement("span"); s.style.setProperty("--c", c); s.textContent = t; return s;
  }));
  if (anyInt) { const s = document.createElement("em"); s.textContent = "bars: intervals"; $("legend").appendChild(s); }
}

function drawTable(answer) {
  const body = $("front-table").tBodies[0];
  body.replaceChildren();
  for (const p of state.front) {
    const tr = body.insertRow();
    tr.addEventListener("click", () => setBudget(sigUp(p.latency_ms), false));
    if (answer && answer.shape && answer.shape.key === p.key) tr.className = "chosen";
    const ai = accInterval(p), li = latInterval(p);
    const cells = [grid(p), p.depth, Number(p.width).toFixed(3),
      p.accuracy.toFixed(4) + (ai ? ` [${ai[0].toFixed(4)}, ${ai[1].toFixed(4)}]` : ""),
      fmtMs(p.latency_ms) + (li ? ` [${fmtMs(li[0])}, ${fmtMs(li[1])}]` : "")];
    for (const c of cells) tr.insertCell().textContent = String(c);
    const b = document.createElement("span");
    b.className = "badge"; b.style.setProperty("--c", colourOf(p)); b.textContent = sourceOf(p);
    tr.insertCell().appendChild(b);
  }
  $("front-count").textContent = `${state.front.length} shapes on the front of ${state.shapes.length} evaluated`;
}

// ---- budget ---------------------------------------------------------------------------------------
const sliderToMs = (v) => sig(state.lo * Math.pow(state.hi / state.lo, v / 1000));
const msToSlider = (ms) => Math.round(1000 * Math.log(ms / state.lo) / Math.log(state.hi / state.lo));

function setBudget(ms, fromSlider) {
  state.budget = sig(ms, 6);
  if (!fromSlider) $("budget").value = String(Math.min(1000, Math.max(0, msToSlider(state.budget))));
  $("budget-ms").value = String(state.budget);
  $("budget-phase").textContent = selection().phase === "decode" ? "per token" : "";
  ask();
}

async function ask() {
  const seq = ++state.seq, budget = state.budget, sel = selection();
  $("answer").dataset.state = "loading";
  try {
    const a = await api("query", { ...sel, budget_ms: budget });
    if (seq !== state.seq) return;  // a newer budget was asked meanwhile
    showAnswer(a, budget);
  } catch (e) {
    if (seq === state.seq) { $("answer").dataset.state = "error"; showError(e); }
  }
}

function showAnswer(a, budget) {
  const box = $("answer"), p = a.shape;
  box.dataset.budget = String(budget);
  box.dataset.key = p ? p.key : "";
  box.dataset.feasible = String(a.feasible);
  $("ans-shape").textContent = p ? grid(p) : "none fits";
  $("ans-shape").title = p ? p.key : "";
  const q = p || a.fastest;
  const ai = accInterval(q), li = latInterval(q);
  $("ans-acc").textContent = p ? p.accuracy.toFixed(4) + (ai ? ` [${ai[0].toFixed(4)}, ${ai[1].toFixed(4)}]` : "") : "—";
  $("ans-lat").textContent = p ? `${fmtMs(p.latency_ms)} ms` + (li ? ` [${fmtMs(li[0])}, ${fmtMs(li[1])}]` : "")
    + ([["measured_ms", "measured"], ["predicted_ms", "predicted"]].filter(([k]) => p[k] != null && p[k] !== p.latency_ms)
      .map(([k, n]) => ` · ${n} ${fmtMs(p[k])} ms`).join("")) : `fastest: ${grid(a.fastest)} at ${fmtMs(a.fastest.latency_ms)} ms`;
  const src = $("ans-src");
  src.replaceChildren();
  const s = sourceOf(q), info = SOURCES[sourceKey(s)];
  const b = document.createElement("span");
  b.className = "badge"; b.id = "ans-source"; b.style.setProperty("--c", colourOf(q)); b.textContent = s;
  src.appendChild(b);
  $("ans-src-note").textContent = info ? "Where that number came from: " + info[1] + "." : "";
  $("ans-msg").textContent = a.message;
  $("ans-export").textContent = a.export_command || "— (no shape fits this budget)";
  $("copy").disabled = !a.export_command;
  drawChart(a);
  drawTable(a);
  writeFragment();
  box.dataset.state = "ready";
}

// ---- loading --------------------------------------------------------------------------------------
async function load() {
  $("error").hidden = true;
  const sel = selection();
  if (!sel.device || !sel.flow) return;
  const q = { phase: sel.phase, variant: sel.variant };
  const path = `${encodeURIComponent(sel.device)}/${encodeURIComponent(sel.flow)}`;
  try {
    const [front, shapes] = await Promise.all([api(`fronts/${path}`, q), api(`web/shapes/${path}`, q)]);
    state.front = front.front;
    state.shapes = shapes.shapes;
    const lats = state.shapes.map((p) => p.latency_ms);
    state.lo = sig(Math.min(...lats) * 0.9);
    state.hi = sig(Math.max(...lats) * 1.1);
    const link = Number(state.want.budget), prev = state.budget;
    const mid = state.front[Math.floor(state.front.length / 2)].latency_ms;
    state.want = {};  // a link's view is applied once; later choices are the person's
    setBudget(link > 0 ? link : prev != null && prev >= state.lo && prev <= state.hi ? prev : mid * 1.01, false);
  } catch (e) {
    clear();
    showError(e);
  }
}

function clear() {  // nothing shown may belong to an earlier selection
  state.front = []; state.shapes = []; state.seq++;
  drawChart(null); drawTable(null);
  for (const id of ["ans-shape", "ans-acc", "ans-lat", "ans-src", "ans-export"]) $(id).textContent = "—";
  $("ans-msg").textContent = ""; $("ans-src-note").textContent = ""; $("legend").replaceChildren();
  $("answer").dataset.state = "empty"; $("answer").dataset.key = "";
}

async function start() {
  try {
    const j = await api("devices");
    $("login").hidden = true;
    $("docs-link").hidden = Boolean(state.token);  // a link cannot carry the bearer token /docs then needs
    $("model").textContent = j.model ? "· " + j.model : "";
    state.devices = parseDevices(j);
    syncSelects();
    if (!Object.keys(state.devices).length) { showError(new Error("no device has a latency table for this run's model")); return; }
    await load();
  } catch (e) {
    showError(e);
  }
}

function wire() {
  $("device").addEventListener("change", () => { syncSelects(); load(); });
  $("flow").addEventListener("change", () => { syncSelects(); load(); });
  $("variant").addEventListener("change", load);
  $("phase").addEventListener("change", () => { state.budget = null; load(); });
  $("budget").addEventListener("input", (e) => setBudget(sliderToMs(Number(e.target.value)), true));
  $("budget-ms").addEventListener("change", (e) => { const v = Number(e.target.value); if (v > 0) setBudget(v, false); });
  $("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("ans-export").textContent));
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("amoeba-token", state.token);
    start();
  });
}

readFragment();
wire();
window.addEventListener("hashchange", () => { readFragment(); start(); });  // a link pasted into this tab
start();
