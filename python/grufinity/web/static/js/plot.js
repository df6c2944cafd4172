// Line charts as SVG: axes with a few round ticks, one path per series, a legend.
const NS = "http://www.w3.org/2000/svg";
const W = 560, M = { left: 58, right: 14, top: 28, bottom: 36 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// About `count` round numbers spanning [lo, hi].
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
  return +v.toPrecision(4) + "";
}

// series: [{name, points: [[x, y], ...], color, dash}]; yZero: the y axis starts at 0; height
// in the 560-wide drawing's units. Returns the <svg>.
export function lineChart({ title, series, xLabel = "step", yLabel = "", id, yZero = false, height = 250 }) {
  const H = height;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  if (id) root.id = id;
  root.append(svg("text", { x: M.left, y: 17, class: "title" }, title));
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (all.length === 0) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (yZero) y0 = Math.min(0, y0);  // a time axis from zero shows flat as flat
  const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  const sx = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const sy = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  for (const t of ticks(y0, y1)) {
    root.append(svg("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), class: "grid" }));
    root.append(svg("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, label(t)));
  }
  for (const t of ticks(x0, x1, 6)) {
    root.append(svg("line", { x1: sx(t), x2: sx(t), y1: H - M.bottom, y2: H - M.bottom + 4, class: "axis" }));
    root.append(svg("text", { x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle" }, label(t)));
  }
  root.append(svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  root.append(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }));
  root.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
  if (yLabel) root.append(svg("text", { x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})` }, yLabel));
  let legendX = W - M.right;
  for (const s of [...series].reverse()) {
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, class: "series", stroke: s.color, "data-name": s.name,
      "stroke-dasharray": s.dash || "none" }));
    if (pts.length === 1) root.append(svg("circle", { cx: sx(pts[0][0]), cy: sy(pts[0][1]), r: 3, fill: s.color }));
    const text = svg("text", { x: legendX, y: 17, "text-anchor": "end", class: "legend-item" }, s.name);
    text.style.fill = s.color;  // a style beats the stylesheet's text colour; an attribute would not
    root.append(text);
    legendX -= 9 + 7 * s.name.length;
  }
  return root;
}
