// The Generate view: sampling controls built from the core's schema (/api/info), a transcript
// the model's text streams into, Stop, and the per-token time against the context length.
import { $, api, clearError, el, fmt, json, request, showError } from "./api.js";
import { lineChart } from "./plot.js";
import { picked } from "./picker.js";

const STORE = "grufinity-transcript";
const STORE_MAX = 200000;  // characters of transcript kept across reloads of the tab
let keys = [];
let running = false;

function sliderRange(key, limits) {
  const ui = key.ui || {};
  const cap = { max_new_tokens: limits.max_new_tokens, beams: limits.max_beams }[key.name];
  const min = ui.min ?? (key.min ? key.min[0] : 0);
  const max = cap ?? ui.max ?? (key.max ? key.max[0] : null);
  return max === null ? null : { min, max, step: ui.step ?? (key.kind === "int" ? 1 : 0.01) };
}

function initial(key, limits) {
  if (key.name === "max_new_tokens") return Math.min(key.default, limits.max_new_tokens);
  if (key.kind === "strs") return (key.default || []).join("\n");
  return key.default ?? "";
}

function control(key, limits) {
  const id = `s-${key.name}`;
  const value = initial(key, limits);
  const box = key.kind === "strs"
    ? el("textarea", { id, rows: 2, class: "wide", placeholder: "one per line; \\n is a newline" })
    : el("input", { id, type: key.kind === "int" || key.kind === "float" ? "number" : "text", step: "any",
      placeholder: key.optional ? "none" : "" });
  box.value = value;
  const row = el("div", { class: "row" });
  const range = key.main && (key.kind === "int" || key.kind === "float") ? sliderRange(key, limits) : null;
  if (range) {
    const slider = el("input", { type: "range", min: range.min, max: range.max, step: range.step, "aria-label": key.name });
    slider.value = value;
    slider.addEventListener("input", () => { box.value = slider.value; });
    box.addEventListener("input", () => { slider.value = box.value; });
    row.append(slider);
  }
  row.append(box);
  if (key.name === "seed") {
    row.append(el("button", { type: "button", text: "random", title: "a new random seed",
      onclick: () => { box.value = Math.floor(Math.random() * 2 ** 31); } }));
  }
  return el("div", { class: "knob", title: key.help },
    el("label", { for: id }, el("span", { text: key.name.replaceAll("_", " ") })), row,
    el("div", { class: "help", text: key.help }));
}

// The sampling keywords as the core takes them; a box that does not parse is sent as typed,
// so the core's message names it.
function sampling() {
  const out = {};
  for (const key of keys) {
    const raw = $(`s-${key.name}`).value.trim();
    if (key.kind === "strs") {
      out[key.name] = raw ? raw.split("\n") : [];
    } else if (raw === "") {
      if (!key.optional) out[key.name] = key.default;
    } else if (key.kind === "int" || key.kind === "float") {
      const n = Number(raw);
      out[key.name] = Number.isFinite(n) ? n : raw;
    } else {
      out[key.name] = raw;
    }
  }
  return out;
}

// Transcript: spans of class prompt / gen / note, kept in sessionStorage for reloads.
function addSpan(cls, text) {
  const t = $("transcript");
  t.querySelector(".placeholder")?.remove();
  const span = el("span", { class: cls, text });
  t.append(span);
  return span;
}

function save() {
  const parts = [...$("transcript").querySelectorAll("span")].map((s) => [s.className.replace(" running", ""), s.textContent]);
  let total = parts.reduce((n, p) => n + p[1].length, 0);
  while (total > STORE_MAX && parts.length) total -= parts.shift()[1].length;
  sessionStorage.setItem(STORE, JSON.stringify(parts));
}

function restore() {
  try {
    for (const [cls, text] of JSON.parse(sessionStorage.getItem(STORE) || "[]")) addSpan(cls, text);
  } catch (e) { sessionStorage.removeItem(STORE); }
}

function clearTranscript(message) {
  $("transcript").replaceChildren(el("p", { class: "placeholder", text: message }));
  sessionStorage.removeItem(STORE);
}

function describe(session) {
  const parts = [`${fmt(session.tokens_seen)} tokens in the state`];
  const last = session.last;
  if (last) {
    parts.push(`last reply: ${fmt(last.generated)} tokens, ${fmt(last.ms_per_token, 3)} ms/token`);
    parts.push(`prompt: ${fmt(last.prompt_tokens)} tokens in ${fmt(last.prompt_ms, 3)} ms`);
    parts.push(`ended by ${last.finish}`);
  }
  return parts.join(" · ");
}

function showSession(session) {
  $("gen-status").textContent = describe(session);
  $("timing-plot").replaceChildren(lineChart({
    title: "Time per generated token", id: "timing-chart", xLabel: "tokens in the state", yLabel: "ms / token",
    yZero: true, height: 200, series: [{ name: "ms/token", points: session.timeline, color: "#2f5fd0" }],
  }));
}

function setRunning(on) {
  running = on;
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("reset").disabled = on;
}

// Reads the NDJSON stream of /api/generate into `out`.
async function follow(response, out) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const msg = JSON.parse(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 1);
      if (msg.type === "start" && msg.note) out.before(el("span", { class: "note", text: msg.note }));
      else if (msg.type === "text") {
        out.append(msg.text);
        $("transcript").scrollTop = $("transcript").scrollHeight;
        $("gen-status").textContent = `${fmt(msg.tokens_seen)} tokens in the state · ${fmt(msg.ms_per_token, 3)} ms/token`;
      } else if (msg.type === "done") showSession(msg.session);
      else if (msg.type === "error") showError(msg.error);
    }
    if (done) return;
  }
}

async function send() {
  const model = picked();
  if (!model || running) { if (!model) showError("No run to generate with."); return; }
  clearError();
  const chat = $("chat-mode").checked;
  const prompt = $("prompt").value + (chat ? "\n" : "");
  const settings = sampling();
  if (chat && settings.stop.length === 0) settings.stop = ["\n"];
  setRunning(true);
  const spans = [addSpan("prompt", prompt), addSpan("gen running", "")];
  try {
    const response = await request("/api/generate", { ...model, prompt, sampling: settings });
    if (!response.ok) await json(response);  // throws the server's message
    $("prompt").value = "";
    await follow(response, spans[1]);
  } catch (e) {
    showError(e.message);
    if (!spans[1].textContent) for (const s of spans) s.remove();
  } finally {
    spans[1].classList.remove("running");
    setRunning(false);
    save();
  }
}

async function reset() {
  try {
    showSession(await api("/api/reset", {}));
    clearTranscript("A new conversation: the next prompt starts from a fresh state.");
  } catch (e) { showError(e.message); }
}

export async function init(info) {
  keys = info.sampling;
  for (const key of keys.filter((k) => k.main)) $("sampling-main").append(control(key, info.limits));
  for (const key of keys.filter((k) => !k.main)) $("sampling-extra").append(control(key, info.limits));
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => api("/api/stop", {}).catch((e) => showError(e.message)));
  $("reset").addEventListener("click", reset);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(); });
  window.addEventListener("session-lost", () => clearTranscript(
    "The server no longer had this conversation (it restarted, or forgot an idle session): starting afresh."));
  const session = await api("/api/session");
  if (session.tokens_seen > 0) restore(); else sessionStorage.removeItem(STORE);
  showSession(session);
}

export function visible() {}
