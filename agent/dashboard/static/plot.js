// Line plots on a canvas with vertical frequency markers. No library: what a spectrum
// needs is an x axis in Hz, a y axis in dB and a few labelled lines.
"use strict";

const MARKER_COLOURS = { "1x": "#555555", BPFO: "#c62828", BPFI: "#1565c0", BSF: "#2e7d32", FTF: "#8e24aa" };

function toDb(values) {
  let peak = 0;
  for (const v of values) { if (v > peak) peak = v; }
  const ref = peak > 0 ? peak : 1;
  return values.map((v) => 20 * Math.log10(Math.max(v, ref * 1e-5) / ref));
}

function niceStep(span, ticks) {
  const raw = span / ticks;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) { if (raw <= m * mag) return m * mag; }
  return 10 * mag;
}

// Draws `series` ({df, values}) and `markers` ([{family, k, hz}]) on `canvas`.
// Returns what was drawn, which the page records on the canvas (data-*) for tests.
function drawSpectrum(canvas, series, markers) {
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || canvas.width;
  const cssHeight = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, cssWidth, cssHeight);
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, cssWidth, cssHeight);
  const pad = { left: 44, right: 10, top: 16, bottom: 26 };
  const w = cssWidth - pad.left - pad.right;
  const h = cssHeight - pad.top - pad.bottom;
  const db = toDb(series.values);
  const hzMax = series.df * Math.max(1, db.length - 1);
  const dbMin = -100;
  const x = (hz) => pad.left + (hz / hzMax) * w;
  const y = (v) => pad.top + (Math.min(0, Math.max(dbMin, v)) / dbMin) * h;

  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#e3e6ea";
  ctx.fillStyle = "#6a7380";
  ctx.lineWidth = 1;
  const xStep = niceStep(hzMax, 8);
  for (let hz = 0; hz <= hzMax + 1e-9; hz += xStep) {
    ctx.beginPath(); ctx.moveTo(x(hz), pad.top); ctx.lineTo(x(hz), pad.top + h); ctx.stroke();
    ctx.fillText(hz >= 1000 ? (hz / 1000) + "k" : String(Math.round(hz)), x(hz) - 8, pad.top + h + 14);
  }
  for (let v = 0; v >= dbMin; v -= 20) {
    ctx.beginPath(); ctx.moveTo(pad.left, y(v)); ctx.lineTo(pad.left + w, y(v)); ctx.stroke();
    ctx.fillText(String(v), 8, y(v) + 4);
  }
  ctx.fillText("Hz", pad.left + w - 14, pad.top + h + 24 > cssHeight ? pad.top + h + 14 : pad.top + h + 24);

  let shown = 0;
  for (const m of markers) {
    if (m.hz <= 0 || m.hz > hzMax) continue;
    shown += 1;
    ctx.strokeStyle = MARKER_COLOURS[m.family] || "#555555";
    ctx.globalAlpha = m.k === 1 ? 0.9 : 0.55;
    ctx.setLineDash(m.k === 1 ? [] : [4, 3]);
    ctx.beginPath(); ctx.moveTo(x(m.hz), pad.top); ctx.lineTo(x(m.hz), pad.top + h); ctx.stroke();
    if (m.k === 1) {
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(m.family, x(m.hz) + 2, pad.top + 10);
    }
  }
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;

  ctx.strokeStyle = "#1d232b";
  ctx.lineWidth = 1;
  ctx.beginPath();
  db.forEach((v, i) => {
    const px = x(i * series.df);
    if (i === 0) ctx.moveTo(px, y(v)); else ctx.lineTo(px, y(v));
  });
  ctx.stroke();
  return { points: db.length, markers: shown };
}

function clearPlot(canvas, text) {
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#6a7380";
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillText(text, 20, 30);
  canvas.dataset.points = "0";
  canvas.dataset.markers = "0";
}
