// The depot status page: polls /v1/status with the API token and draws it (no libraries, no network).
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const KEY = "sscard-token";

function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  return sessionStorage.getItem(KEY);
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function el(tag, attrs, content) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (content !== undefined && content !== null) node.textContent = String(content);
  return node;
}

function rows(tableId, list, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...list.map((item) => {
    const row = el("tr");
    for (const cell of cells(item)) row.append(el("td", {}, cell === null || cell === undefined ? "–" : cell));
    return row;
  }));
}

function seconds(value) {
  if (value === null || value === undefined) return "0 s";
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toTimeString().slice(0, 5);
}

function drawMinutes(series) {
  const svg = document.getElementById("minute-chart");
  const counts = series.counts;
  const width = 960, height = 170, left = 34, bottom = 20, top = 8;
  const peak = Math.max(1, ...counts);
  const step = (width - left) / counts.length;
  const y = (v) => height - bottom - (v / peak) * (height - bottom - top);
  const parts = [
    el("svg:line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, stroke: "#999" }),
    el("svg:text", { x: 2, y: top + 8 }, peak),
    el("svg:text", { x: 2, y: height - bottom }, 0),
  ];
  const points = counts.map((v, i) => `${(left + i * step).toFixed(1)},${y(v).toFixed(1)}`);
  parts.push(el("svg:polyline", { points: points.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": 1.5 }));
  counts.forEach((v, i) => {
    if (v > 0) parts.push(el("svg:circle", { cx: (left + i * step).toFixed(1), cy: y(v).toFixed(1), r: 2, fill: "#2563eb", "data-count": v }));
  });
  for (let i = 0; i < counts.length; i += 60) {
    parts.push(el("svg:text", { x: left + i * step, y: height - 4 }, clock(series.start + i * series.step_s)));
  }
  svg.setAttribute("data-total", counts.reduce((a, b) => a + b, 0));
  svg.replaceChildren(...parts);
  text("window-hours", Math.round((counts.length * series.step_s) / 3600));
}

function drawReasons(byReason) {
  const svg = document.getElementById("reason-chart");
  const entries = Object.entries(byReason);
  const peak = Math.max(1, ...entries.map(([, n]) => n));
  const bar = 18, gap = 6, labelWidth = 170, width = 460;
  const height = Math.max(40, entries.length * (bar + gap));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  const parts = [];
  entries.forEach(([reason, count], i) => {
    const yTop = i * (bar + gap);
    const length = ((width - labelWidth - 40) * count) / peak;
    parts.push(el("svg:text", { x: 0, y: yTop + 13 }, reason));
    parts.push(el("svg:rect", {
      x: labelWidth, y: yTop, width: Math.max(1, length).toFixed(1), height: bar,
      fill: reason === "ok" ? "#17803d" : "#c0262d", "data-reason": reason, "data-count": count,
    }));
    parts.push(el("svg:text", { x: labelWidth + length + 4, y: yTop + 13 }, count));
  });
  if (!entries.length) parts.push(el("svg:text", { x: 0, y: 20 }, "no taps yet"));
  svg.replaceChildren(...parts);
}

function render(status) {
  text("terminal", status.terminal);
  text("profile", status.profile);
  const health = document.getElementById("health");
  health.textContent = status.healthy ? "healthy" : "UNHEALTHY";
  health.className = status.healthy ? "ok" : "bad";
  text("uptime", seconds(status.uptime_s));
  const queue = status.queue;
  text("queue-depth", queue.depth);
  text("uplink-lag", seconds(queue.oldest_age_s));
  const state = document.getElementById("queue-state");
  state.textContent = queue.out_of_service ? `out of service: ${queue.out_of_service}` : "in service";
  state.className = queue.out_of_service ? "figure bad" : "figure ok";
  text("taps-total", status.taps.total);
  const uplinks = Object.values(status.uplinks);
  if (!uplinks.length) uplinks.push({ name: "none configured", alive: false, connected: null, delivered: null, delivery_rate_per_s: 0, failures: null, last_error: null });
  rows("uplinks", uplinks, (u) => [
    u.name, u.alive ? "yes" : "NO", u.connected === null ? "–" : (u.connected ? "yes" : "no"),
    u.delivered, u.delivery_rate_per_s.toFixed(2), u.failures, u.last_error,
  ]);
  rows("readers", status.readers, (r) => [r.reader, r.state, r.alive ? "yes" : "NO", r.taps, r.failures]);
  const psam = status.psam;
  text("psam", psam ? `${psam.reader}: ${psam.open ? "open" : "NOT OPEN"} (opened ${psam.generation}×)` : "none configured");
  text("hotlist", status.hotlist_version || "none loaded");
  text("pending", status.pending_debits);
  drawMinutes(status.taps.per_minute);
  drawReasons(status.taps.by_reason);
  rows("recent", status.taps.recent, (t) => [
    (t.time || "").replace("T", " ").slice(0, 19), t.reader, t.result, t.reason, t.fare, t.region, t.card,
  ]);
  text("updated", new Date().toTimeString().slice(0, 8));
  document.body.setAttribute("data-updated", String(status.now));
}

function showLogin(message) {
  document.getElementById("board").hidden = true;
  document.getElementById("login").hidden = false;
  text("problem", message || "");
}

let timer = null;

async function poll() {
  const token = sessionStorage.getItem(KEY);
  if (!token) { showLogin(); return; }
  try {
    const response = await fetch("/v1/status", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      showLogin("the token was refused");
      return;
    }
    if (!response.ok) throw new Error(`status ${response.status}`);
    render(await response.json());
    document.getElementById("login").hidden = true;
    document.getElementById("board").hidden = false;
    text("problem", "");
  } catch (error) {
    text("problem", `no answer from the terminal (${error.message})`);
  }
  timer = setTimeout(poll, POLL_MS);
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  clearTimeout(timer);
  poll();
});

takeToken();
poll();
