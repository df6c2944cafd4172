// The model picker the views share: run, checkpoint and weight format. A change fires "model-picked".
import { $, api, el } from "./api.js";

let runList = [];

export function runs() { return runList; }

// What the picker names: {run, checkpoint, dtype}, or null when there is no run.
export function picked() {
  const run = $("run").value;
  if (!run) return null;
  return { run, checkpoint: $("checkpoint").value || "best", dtype: $("dtype").value };
}

// Points the picker at a run and checkpoint (the runs view's buttons).
export function pick(run, checkpoint = "best") {
  $("run").value = run;
  fillCheckpoints();
  $("checkpoint").value = checkpoint;
  changed();
}

function changed() { window.dispatchEvent(new Event("model-picked")); }

// Replaces the options of a <select> only when they changed (the runs view refreshes the list
// every few seconds; rebuilding an open menu would close it under the user's pointer).
function setOptions(select, names) {
  if ([...select.options].map((o) => o.value).join("\n") === names.join("\n")) return;
  const current = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (names.includes(current)) select.value = current;
}

function fillCheckpoints() {
  const run = runList.find((r) => r.name === $("run").value);
  setOptions($("checkpoint"), ["best", "last", ...(run ? [...run.checkpoints].reverse() : [])]);
}

// Reads the list of runs again (new runs, new checkpoints), keeping the choice.
export async function refresh() {
  runList = await api("/api/runs");
  setOptions($("run"), runList.map((r) => r.name));
  fillCheckpoints();
  return runList;
}

export function wire() {
  $("run").addEventListener("change", () => { fillCheckpoints(); changed(); });
  $("checkpoint").addEventListener("change", changed);
  $("dtype").addEventListener("change", changed);
}
