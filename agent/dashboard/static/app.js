// The page's logic: poll /api/state every second, draw what it says; fetch the selected
// asset's spectra when its latest window changes. Every text from the wire is set with
// textContent (never parsed as HTML).
"use strict";

const POLL_MS = 1000;
const SPECTRUM_MS = 2000;
let selected = null;
let lastSpectrumKey = null;
let lastSpectrumAt = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function when(ts) {
  if (typeof ts !== "number") return "";
  return new Date(ts * 1000).toLocaleTimeString();
}

function pct(x) { return typeof x === "number" ? Math.round(x * 100) + " %" : ""; }

function severityText(sev) {
  if (!sev) return "";
  const parts = [];
  if (sev.zone) parts.push("zone " + sev.zone);
  if (typeof sev.velocity_rms_mm_s === "number") parts.push(sev.velocity_rms_mm_s.toFixed(2) + " mm/s");
  if (typeof sev.damage_stage === "number") parts.push("damage " + sev.damage_stage + "/4");
  return parts.join(", ");
}

function citedText(neighbours) {
  return (neighbours || []).slice(0, 3).map((n) => n.label + " " + String(n.id).slice(0, 8) + " (" + Number(n.score).toFixed(3) + ")").join("; ");
}

function renderGateways(state) {
  const box = document.getElementById("gateways");
  box.replaceChildren();
  for (const [id, status] of Object.entries(state.statuses)) {
    const lib = status.library && status.library.version ? " · library " + status.library.version : "";
    const outbox = status.outbox && typeof status.outbox.depth === "number" ? " · outbox " + status.outbox.depth : "";
    box.append(el("span", { class: "gateway" }, el("strong", {}, id), " " + (status.state || "?") + lib + outbox));
  }
  const live = state.live || {};
  const counts = live.counters || {};
  const shown = {
    "windows received": counts.received || 0,
    "alerts": counts.alerts || 0,
    "rejected": counts.rejected || 0,
    "duplicates": counts.duplicates || 0,
    "queue depth": live.queue_depth ?? 0,
    "outbox depth": live.outbox && live.outbox.depth !== undefined ? live.outbox.depth : "",
    "broker link": live.connected ? "up" : "down",
    "library": live.library ? live.library.version : "",
  };
  for (const [key, value] of Object.entries(live.stages || {})) {
    if (key === "diagnose" || key === "received_to_durable") shown[key + " p50 / p99 ms"] = value.p50_ms + " / " + value.p99_ms;
  }
  const dl = document.getElementById("counters");
  dl.replaceChildren(...Object.entries(shown).map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
}

function renderAssets(state) {
  const box = document.getElementById("assets");
  const names = Object.keys(state.assets);
  if (!names.length) return;
  if (selected === null || !(selected in state.assets)) {
    const latest = state.alerts[0];
    selected = latest ? latest.asset : names[0];
  }
  box.replaceChildren(...names.map((name) => {
    const entry = state.assets[name];
    const a = entry.alert;
    const card = el("div", { class: "card" + (a ? " label-" + a.label : "") + (name === selected ? " selected" : ""), "data-asset": name },
      el("h3", {}, name),
      a ? el("div", { class: "verdict" }, a.label + " ", el("span", { class: "muted" }, pct(a.confidence))) : el("div", { class: "muted" }, "no alert yet"),
      a ? el("div", {}, severityText(a.severity)) : null,
      a && a.evidence ? el("div", {}, "evidence: " + a.evidence) : null,
      a && a.reason ? el("div", { class: "muted" }, a.reason) : null,
      a ? el("div", { class: "muted" }, when(a.window_ts) + (a.rpm ? " · " + Math.round(a.rpm) + " rpm" : "")) : null);
    card.addEventListener("click", () => { selected = name; lastSpectrumKey = null; refreshSpectrum(state); renderAssets(state); });
    return card;
  }));
}

function renderAlerts(state) {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren(...state.alerts.slice(0, 50).map((a) => el("tr", { "data-message-id": a.message_id || "" },
    el("td", {}, when(a.window_ts)), el("td", {}, a.asset), el("td", {}, a.label), el("td", {}, pct(a.confidence)),
    el("td", {}, severityText(a.severity)), el("td", {}, a.evidence || a.reason || ""), el("td", {}, el("code", {}, citedText(a.neighbours))))));
}

function renderReports(state) {
  const box = document.getElementById("reports");
  if (!state.reports.length) return;
  box.replaceChildren(...state.reports.slice(0, 20).map((r) => {
    const verdict = r.verdict || {};
    const citations = (r.evidence && r.evidence.citations) || [];
    return el("div", { class: "report", "data-message-id": r.message_id || "" },
      el("strong", {}, r.asset + ": " + verdict.label + " " + pct(verdict.confidence)),
      el("span", { class: "muted" }, " · " + when(r.emitted_at) + " · written by " + (r.generated_by || "?")),
      el("p", {}, r.narrative || ""),
      el("ul", {}, ...(r.actions || []).map((x) => el("li", {}, x))),
      el("div", {}, "cites: ", ...citations.map((c) => el("code", {}, c.label + " " + c.id + " (" + Number(c.score).toFixed(3) + ") "))));
  }));
}

function renderErrors(state) {
  const body = document.querySelector("#errors tbody");
  body.replaceChildren(...state.errors.slice(0, 20).map((e) => el("tr", {},
    el("td", {}, when(e.ts)), el("td", {}, e.code), el("td", {}, e.asset || ""), el("td", {}, e.reason || ""))));
}

function renderLegend(markers) {
  const families = [...new Set(markers.map((m) => m.family))];
  document.getElementById("legend").replaceChildren(...families.map((f) => {
    const first = markers.find((m) => m.family === f);
    const swatch = el("i", {});
    swatch.style.background = MARKER_COLOURS[f] || "#555"; // CSSOM: allowed by the page's CSP
    return el("span", {}, swatch, f + " " + first.hz.toFixed(1) + " Hz ×1–" + markers.filter((m) => m.family === f).length);
  }));
}

async function refreshSpectrum(state) {
  if (selected === null) return;
  const entry = state.assets[selected];
  const key = selected + "|" + (entry && entry.alert ? entry.alert.window_ts : "");
  const now = Date.now();
  if (key === lastSpectrumKey && now - lastSpectrumAt < SPECTRUM_MS) return;
  lastSpectrumAt = now;
  const response = await fetch("/api/spectrum?asset=" + encodeURIComponent(selected));
  const data = await response.json();
  document.getElementById("spectrum-asset").textContent = selected;
  const spectrum = document.getElementById("spectrum");
  const envelope = document.getElementById("envelope");
  if (!data.available) {
    document.getElementById("spectrum-note").textContent = data.why;
    clearPlot(spectrum, data.why);
    clearPlot(envelope, data.why);
    return;
  }
  lastSpectrumKey = key;
  const speed = data.rpm ? Math.round(data.rpm) + " rpm" : "speed unknown (no markers)";
  document.getElementById("spectrum-note").textContent =
    "window " + when(data.ts) + " · " + data.fs + " Hz · " + speed + " · bearing " + data.bearing;
  const drawn = drawSpectrum(spectrum, data.spectrum, data.markers);
  spectrum.dataset.points = drawn.points; spectrum.dataset.markers = drawn.markers;
  spectrum.dataset.ts = data.ts;
  if (data.envelope) {
    const env = drawSpectrum(envelope, data.envelope, data.markers);
    envelope.dataset.points = env.points; envelope.dataset.markers = env.markers;
    const band = data.envelope.band;
    document.getElementById("band").textContent = "band " + Math.round(band.centre_hz - band.bandwidth_hz / 2) + "–" + Math.round(band.centre_hz + band.bandwidth_hz / 2) + " Hz, kurtosis " + band.kurtosis.toFixed(1);
  } else {
    clearPlot(envelope, "a sensor spectrum has no envelope");
  }
  renderLegend(data.markers);
}

async function poll() {
  const link = document.getElementById("link");
  try {
    const response = await fetch("/api/state");
    const state = await response.json();
    link.textContent = state.observer.connected ? "broker connected" : "broker disconnected";
    link.className = "pill " + (state.observer.connected ? "up" : "down");
    renderGateways(state);
    renderAssets(state);
    renderAlerts(state);
    renderReports(state);
    renderErrors(state);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    await refreshSpectrum(state);
  } catch (err) {
    link.textContent = "agent unreachable";
    link.className = "pill down";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
