// The "inside the model" view: per token of a text, the model's surprise (-log p, nats) and each
// layer's mean update gate z, as a colour over the text and as strips (one row per measure).
import { $, api, clearError, el, fmt, showError } from "./api.js";
import { picked } from "./picker.js";

const NO_VALUE = "hsl(0, 0%, 88%)";  // the first token: nothing predicted it
let result = null;
let measures = [];
let current = 0;

// Surprise: white to red over [0, high]; z: blue (holds its memory) below the layer's median,
// orange (overwrites it) above, scaled by the layer's spread so every layer shows its contrast.
function scale(values, kind) {
  const finite = values.filter((v) => v !== null).sort((a, b) => a - b);
  const at = (q) => finite[Math.min(finite.length - 1, Math.floor(q * finite.length))];
  if (kind === "surprise") {
    const high = Math.max(at(0.98) || 1, 1e-6);
    return { lo: 0, mid: null, hi: high, colour: (v) => `hsl(8, 85%, ${97 - 47 * Math.min(v / high, 1)}%)` };
  }
  const mid = at(0.5), spread = Math.max(mid - at(0.02), at(0.98) - mid, 1e-6);
  return {
    lo: mid - spread, mid, hi: mid + spread,
    colour: (v) => {
      const d = Math.max(-1, Math.min(1, (v - mid) / spread));
      return d < 0 ? `hsl(212, 80%, ${97 - 42 * -d}%)` : `hsl(32, 95%, ${97 - 45 * d}%)`;
    },
  };
}

function describeToken(i) {
  const r = result;
  const z = r.gates.map((layer, l) => `L${l + 1} ${fmt(layer[i], 3)}`).join("  ");
  const surprise = r.surprise[i] === null ? "– (first token)" : `${fmt(r.surprise[i], 3)} nats`;
  return `token ${i + 1} ${JSON.stringify(r.pieces[i])} (id ${r.tokens[i]}) · surprise ${surprise} · z: ${z}`;
}

function paint() {
  const m = measures[current];
  const spans = $("tokens").children;
  for (let i = 0; i < spans.length; i++) {
    const v = m.values[i];
    spans[i].style.backgroundColor = v === null ? NO_VALUE : m.scale.colour(v);
  }
  const s = m.scale;
  const bar = el("span", { class: "bar" });
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => s.colour(s.lo + t * (s.hi - s.lo)));
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const [left, right] = m.kind === "surprise" ? ["0 (expected)", `${fmt(s.hi, 3)} nats (surprised)`]
    : [`${fmt(s.lo, 3)} (holds memory)`, `${fmt(s.hi, 3)} (overwrites)`];
  $("legend").replaceChildren(el("span", { text: left }), bar, el("span", { text: right }),
    el("span", { text: `· mean ${fmt(m.mean, 4)}${s.mid !== null ? ` · median ${fmt(s.mid, 3)}` : ""}` }));
}

function strips() {
  const canvas = $("strips");
  const n = result.tokens.length, rows = measures.length, rowH = 16, labelW = 92;
  const width = Math.max(canvas.parentElement.clientWidth, 300);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = rows * rowH * ratio;
  canvas.style.height = `${rows * rowH}px`;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.font = "11px system-ui, sans-serif";
  g.textBaseline = "middle";
  const w = (width - labelW) / n;
  measures.forEach((m, r) => {
    g.fillStyle = "#5d6678";
    g.fillText(m.short, 4, r * rowH + rowH / 2);
    m.values.forEach((v, i) => {
      g.fillStyle = v === null ? NO_VALUE : m.scale.colour(v);
      g.fillRect(labelW + i * w, r * rowH + 1, Math.max(w, 1), rowH - 2);
    });
  });
  $("strips-caption").textContent = `One row per measure, one column per token (${fmt(n)} tokens, left to right): ` +
    "surprise, then each layer's mean update gate z, coloured as above.";
}

function render(r) {
  result = r;
  const mean = (vs) => { const f = vs.filter((v) => v !== null); return f.reduce((a, b) => a + b, 0) / (f.length || 1); };
  measures = [{ kind: "surprise", label: "surprise", short: "surprise", values: r.surprise },
    ...r.gates.map((values, l) => ({ kind: "z", label: `layer ${l + 1} z`, short: `layer ${l + 1} z`, values }))];
  for (const m of measures) { m.scale = scale(m.values, m.kind); m.mean = mean(m.values); }
  current = Math.min(current, measures.length - 1);
  $("colour-by").replaceChildren(el("span", { class: "status", text: "colour by:" }), ...measures.map((m, i) =>
    el("label", { class: "check" }, el("input", { type: "radio", name: "colour-by", value: String(i), checked: i === current,
      onchange: () => { current = i; paint(); } }), m.label)));
  $("tokens").replaceChildren(...r.pieces.map((piece, i) => el("span", { class: "tok", text: piece, dataset: { i: String(i) },
    title: describeToken(i) })));
  paint();
  strips();
  $("inspect-status").textContent = `${fmt(r.tokens.length)} tokens · checkpoint ${r.checkpoint} · ` +
    `mean surprise ${fmt(measures[0].mean, 4)} nats/token`;
}

async function inspect() {
  const model = picked();
  if (!model) { showError("No run to inspect with."); return; }
  clearError();
  $("inspect").disabled = true;
  $("inspect-status").textContent = "running the model over the text…";
  try {
    render(await api("/api/inspect", { ...model, text: $("inspect-text").value }));
  } catch (e) {
    showError(e.message);
    $("inspect-status").textContent = "";
  } finally {
    $("inspect").disabled = false;
  }
}

export async function init() {
  $("inspect").addEventListener("click", inspect);
  $("tokens").addEventListener("mouseover", (e) => {
    const i = e.target.dataset && e.target.dataset.i;
    if (i !== undefined) $("token-info").textContent = describeToken(Number(i));
  });
  window.addEventListener("resize", () => { if (result) strips(); });
}

export function visible() {}
