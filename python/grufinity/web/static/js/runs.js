// The Runs view: the runs under the server's directory; for one, its curves (loss, validation
// loss, learning rate, throughput), config, checkpoints and the samples written at each
// evaluation. A run that is training is read again every few seconds.
import { $, api, el, fmt, showError } from "./api.js";
import { lineChart } from "./plot.js";
import * as picker from "./picker.js";

const LIVE_MS = 3000;      // refresh of a run being trained
const LIST_MS = 15000;     // refresh of the list (new runs)
const CONFIG_KEYS = ["data_description", "tokenizer", "vocab_size", "params", "batch_size", "chunk_len", "lr",
  "schedule", "warmup", "weight_decay", "max_steps", "max_time", "eval_every", "device", "seed"];
let selected = null;
let shown = false;
let timer = null;
let listed = "";  // the list as last drawn: redrawn only when it changed

function summary(run) {
  const meta = run.error ? run.error
    : [run.model, `${fmt(run.step)} steps`, run.best_val_loss !== null ? `best val ${fmt(run.best_val_loss)}` : ""].filter(Boolean).join(" · ");
  return el("li", { dataset: { run: run.name }, class: run.name === selected ? "active" : "", onclick: () => open(run.name) },
    el("div", { class: "name", text: run.name },
      run.training ? el("span", { class: "badge", text: "training" }) : null,
      run.error ? el("span", { class: "badge bad", text: "unreadable" }) : null),
    el("div", { class: "meta", text: meta }));
}

async function listRuns() {
  const runs = await picker.refresh();
  const drawn = JSON.stringify([selected, runs]);
  if (drawn === listed) return runs;
  listed = drawn;
  $("run-list").replaceChildren(...runs.map(summary));
  if (runs.length === 0) $("run-list").append(el("li", { class: "placeholder", text: "No runs yet." }));
  return runs;
}

function table(pairs) {
  return el("table", { class: "kv" }, ...pairs.map(([k, v]) =>
    el("tr", {}, el("td", { text: k }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : String(v) }))));
}

function render(run) {
  const c = run.curves;
  const model = run.config.model || {};
  const chat = (checkpoint) => () => { picker.pick(run.name, checkpoint); location.hash = "generate"; };
  const look = (checkpoint) => () => { picker.pick(run.name, checkpoint); location.hash = "inside"; };
  const head = el("div", { class: "run-head" },
    el("h2", { class: "run-name", text: run.name },
      run.training ? el("span", { class: "badge", text: `training · refreshed every ${LIVE_MS / 1000} s` }) : null),
    el("p", { class: "status", text: `${fmt(run.step)} steps` +
      (run.best_val_loss !== null ? ` · best validation loss ${fmt(run.best_val_loss)} nats/token` : "") +
      (run.skipped ? ` · ${run.skipped} skipped steps` : "") }),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "primary", text: "Chat with it", onclick: chat("best") }),
      el("button", { type: "button", text: "Look inside", onclick: look("best") })));
  const charts = el("div", { class: "charts" },
    lineChart({ title: "Loss (nats/token)", id: "loss-chart", series: [
      { name: "train loss", points: c.loss, color: "#2f5fd0" },
      { name: "validation loss", points: c.val_loss, color: "#d0502f", dash: "5 3" }] }),
    lineChart({ title: "Learning rate", id: "lr-chart", series: [{ name: "lr", points: c.lr, color: "#3c8f5a" }] }),
    lineChart({ title: "Training throughput", id: "speed-chart", yLabel: "tokens/s",
      series: [{ name: "tokens/s", points: c.tokens_per_sec, color: "#8a5bd0" }] }));
  const checkpoints = el("table", { class: "kv" }, ...[...run.checkpoints].reverse().map((ck) => el("tr", {},
    el("td", { text: ck.name + (ck.best ? " (best)" : "") + (ck.last ? " (last)" : "") }),
    el("td", {}, el("button", { type: "button", text: "chat", onclick: chat(ck.name) }), " ",
      el("button", { type: "button", text: "inside", onclick: look(ck.name) })))));
  const config = el("div", {},
    el("h3", { text: "Model" }), table(Object.entries(model)),
    el("h3", { text: "Training" }), table(CONFIG_KEYS.filter((k) => run.config[k] !== undefined && run.config[k] !== null)
      .map((k) => [k, run.config[k]])),
    el("details", {}, el("summary", { text: "Full config" }),
      el("pre", { class: "config", text: JSON.stringify(run.config, null, 2) })),
    el("h3", { text: "Checkpoints" }), run.checkpoints.length ? checkpoints : el("p", { class: "placeholder", text: "none yet" }));
  const samples = el("div", { class: "samples" }, el("h3", { text: "Samples at each evaluation" }),
    ...(run.samples.length ? run.samples.flatMap((s) => [el("div", { class: "step", text: `step ${fmt(s.step)}` }),
      el("pre", { text: s.text })]) : [el("p", { class: "placeholder", text: "none yet" })]));
  $("run-detail").replaceChildren(head, charts, el("div", { class: "cols" }, config, samples));
}

async function open(name) {
  selected = name;
  for (const li of $("run-list").querySelectorAll("li")) li.classList.toggle("active", li.dataset.run === name);
  await load();
}

async function load() {
  clearTimeout(timer);
  if (!selected || !shown) return;
  let training = false;
  try {
    const run = await api(`/api/runs/${encodeURIComponent(selected)}`);
    render(run);
    training = run.training;
  } catch (e) {
    showError(e.message);
  }
  timer = setTimeout(tick, training ? LIVE_MS : LIST_MS);
}

async function tick() {
  if (!shown) return;
  try { await listRuns(); } catch (e) { showError(e.message); }
  await load();
}

export async function init() {
  const runs = await listRuns();
  if (runs.length) selected = runs[0].name;
}

export function visible(on) {
  shown = on;
  if (on) tick(); else clearTimeout(timer);
}
