// The page: three views behind tabs (the hash names the view: #generate, #runs, #inside) and
// the model picker they share.
import { $, api, clearError, showError } from "./api.js";
import * as generate from "./generate.js";
import * as inside from "./inside.js";
import * as picker from "./picker.js";
import * as runs from "./runs.js";

const VIEWS = { generate, runs, inside };

function show(name) {
  if (!VIEWS[name]) name = "generate";
  for (const view of Object.keys(VIEWS)) $(`view-${view}`).hidden = view !== name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === name);
  for (const [view, module] of Object.entries(VIEWS)) module.visible(view === name);
}

async function start() {
  $("error-close").addEventListener("click", clearError);
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => { location.hash = b.dataset.view; });
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  picker.wire();
  try {
    const info = await api("/api/info");
    const found = await picker.refresh();
    if (found.length === 0) showError(`No runs under ${info.root} yet: train one with \`grufinity train\`.`);
    for (const module of Object.values(VIEWS)) await module.init(info);
  } catch (e) {
    showError(e.message);
  }
  show(location.hash.slice(1));
  document.body.dataset.ready = "1";  // for tests: the page is wired up
}

start();
