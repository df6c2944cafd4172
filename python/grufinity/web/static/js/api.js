// Talking to the server, and small DOM helpers. The session id travels in a header and is kept
// in sessionStorage: one recurrent state per browser tab.
const SESSION = "x-grufinity-session";

export function sessionId() { return sessionStorage.getItem(SESSION); }

// The server names a new session when it did not know ours (it restarted, or forgot an idle
// one): listeners then clear what they showed of the old conversation.
function noteSession(response) {
  const id = response.headers.get(SESSION);
  if (!id) return;
  const old = sessionId();
  sessionStorage.setItem(SESSION, id);
  if (old && old !== id) window.dispatchEvent(new CustomEvent("session-lost"));
}

// fetch with the session header; a POST when `body` is given. Returns the Response.
export async function request(path, body, signal) {
  const headers = {};
  if (sessionId()) headers[SESSION] = sessionId();
  const options = { headers, signal };
  if (body !== undefined) {
    options.method = "POST";
    headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  noteSession(response);
  return response;
}

// The JSON answer, or an Error carrying the server's one-line message.
export async function api(path, body) {
  const response = await request(path, body);
  return json(response);
}

export async function json(response) {
  let data = null;
  try { data = await response.json(); } catch (e) { /* not JSON: use the status below */ }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

// el("div", {class: "x", text: "hi", title: "..."}, child, ...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export const $ = (id) => document.getElementById(id);

export function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

export function clearError() { $("error").hidden = true; }

export function fmt(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Number(x).toPrecision(digits);
}
