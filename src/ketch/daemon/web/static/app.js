// ketch dashboard: the instances live from GET /v1/events, actions through the same API
// routes as the CLI, launch, settings, and each instance's shell and serial console.
// Everything that came from the daemon or a guest goes into the page as text only.
"use strict";

const S = { csrf: "", instances: new Map(), page: "", socket: null, term: null };
const SYMBOL = { Running: "▶", Stopped: "■", Suspended: "⏸", Starting: "…", Restarting: "…",
  Suspending: "…", "Delayed Shutdown": "◷", Deleted: "✖", Unknown: "?" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);  // strings become text nodes
  return node;
}

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes, u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return `${Math.round(n * 10) / 10}${units[u]}`;
}

function say(text, kind = "") {
  const list = document.getElementById("activity");
  const item = el("li", { class: kind, text });
  list.prepend(item);
  while (list.children.length > 50) list.lastChild.remove();
  return item;
}

function errorText(err) {
  return `error: ${err.message}` + (err.hint ? ` (${err.hint})` : "");
}

// -- the API ---------------------------------------------------------------------------

async function call(method, path, body) {
  const init = { method, headers: { "X-Ketch-CSRF": S.csrf }, credentials: "same-origin" };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && location.protocol === "https:") location.replace("/login");  // the session ended
  return resp;
}

async function read(path) {
  const resp = await call("GET", path);
  const doc = await resp.json();
  if (!resp.ok) throw doc.error;
  return doc;
}

async function* lines(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const parts = pending.split("\n");
    pending = parts.pop();
    for (const line of parts) if (line.trim()) yield JSON.parse(line);
  }
  if (pending.trim()) yield JSON.parse(pending);
}

// An operation: its steps and progress in the activity list, its error as the CLI says it.
async function operate(what, method, path, body) {
  const item = say(`${what}: asked`);
  let resp;
  try { resp = await call(method, path, body); } catch (e) { item.textContent = `${what}: ${e}`; item.className = "error"; return null; }
  const type = resp.headers.get("Content-Type") || "";
  if (!type.includes("ndjson")) {
    const doc = await resp.json().catch(() => ({}));
    if (!resp.ok) { item.textContent = `${what}: ${errorText(doc.error || { message: resp.statusText })}`; item.className = "error"; return null; }
    item.textContent = `${what}: done`; item.className = "done";
    return doc;
  }
  for await (const ev of lines(resp)) {
    if (ev.type === "step" || ev.type === "warning" || ev.type === "waiting") item.textContent = `${what}: ${ev.message}`;
    else if (ev.type === "progress") item.textContent = `${what}: ${ev.label} ${ev.total ? Math.round(100 * ev.done / ev.total) + " %" : size(ev.done)}`;
    else if (ev.type === "result") { item.textContent = `${what}: done`; item.className = "done"; return ev.result; }
    else if (ev.type === "error") { item.textContent = `${what}: ${errorText(ev.error)}`; item.className = "error"; return null; }
  }
  item.textContent = `${what}: the stream ended early`; item.className = "error";
  return null;
}

// -- live instances ---------------------------------------------------------------------

async function watch() {
  const live = document.getElementById("live");
  for (;;) {
    try {
      const resp = await call("GET", "/v1/events");
      if (!resp.ok) { live.textContent = resp.status === 401 ? "not logged in: run 'ketch dashboard'" : `events: HTTP ${resp.status}`; return; }
      live.textContent = "live";
      for await (const ev of lines(resp)) apply(ev);
    } catch (e) { /* the daemon went away: try again */ }
    live.textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function apply(ev) {
  if (ev.type === "snapshot") {
    S.instances = new Map(ev.instances.map((i) => [i.name, i]));
    render();
  } else if (ev.type === "instance") {
    S.instances.set(ev.instance.name, ev.instance);
    render();
  } else if (ev.type === "removed") {
    S.instances.delete(ev.name);
    render();
  } else if (ev.type === "inconsistency") {
    say(`${ev.name}: inconsistent: ${ev.inconsistency.message} (${ev.inconsistency.action})`, "error");
  } else if (ev.type === "lagged") {
    say(`the page fell behind (${ev.dropped} events); resynchronised`);
  }
}

const ACTIONS = [
  ["Start", (n) => operate(`start ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/start`, {})],
  ["Stop", (n) => operate(`stop ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/stop`, {})],
  ["Suspend", (n) => operate(`suspend ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/suspend`, {})],
  ["Restart", (n) => operate(`restart ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/restart`, {})],
  ["Snapshot", (n) => operate(`snapshot ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/snapshots`, {})],
  ["Clone", (n) => operate(`clone ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/clone`, {})],
  ["Delete", (n) => operate(`delete ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/delete`, {})],
  ["Recover", (n) => operate(`recover ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/recover`, {})],
  ["Purge", (n) => window.confirm(`Delete ${n} for good?`) && operate(`delete --purge ${n}`, "POST", `/v1/instances/${encodeURIComponent(n)}/delete`, { purge: true })],
];

function row(i) {
  const actions = el("div", { class: "actions" });
  for (const [label, run] of ACTIONS) {
    const b = el("button", { type: "button", "data-action": label.toLowerCase(), "aria-label": `${label} ${i.name}`, text: label });
    b.addEventListener("click", async () => { b.disabled = true; try { await run(i.name); } finally { b.disabled = false; } });
    actions.append(b);
  }
  actions.append(
    el("a", { href: `#/shell/${encodeURIComponent(i.name)}`, "data-action": "shell", "aria-label": `Shell in ${i.name}`, text: "Shell" }),
    el("a", { href: `#/console/${encodeURIComponent(i.name)}`, "data-action": "console", "aria-label": `Serial console of ${i.name}`, text: "Console" }),
  );
  const fw = i.forwards.filter((f) => f.host_port !== null).map((f) => `${f.host_address}:${f.host_port}→${f.guest_port}/${f.protocol}`);
  const bad = i.inconsistencies.map((x) => `${x.message} (${x.action})`);
  return el("tr", { "data-name": i.name },
    el("th", { scope: "row", class: "name", text: i.name }),
    el("td", { class: "state", "data-state": i.state, text: `${SYMBOL[i.state] || "•"} ${i.state}` }),
    el("td", { class: "ipv4", text: i.ipv4.join(", ") || "—" }),
    el("td", { text: i.image }),
    el("td", { text: String(i.cpus) }),
    el("td", { text: size(i.memory) }),
    el("td", { text: size(i.disk) }),
    el("td", { text: fw.join(", ") || "—" }),
    el("td", { text: i.mounts.join(", ") || "—" }),
    el("td", { class: bad.length ? "inconsistencies bad" : "inconsistencies", text: bad.length ? `⚠ ${bad.join("; ")}` : "none" }),
    el("td", {}, actions),
  );
}

function render() {
  const body = document.querySelector("#instances tbody");
  const focused = document.activeElement && document.activeElement.getAttribute("aria-label");
  body.replaceChildren(...[...S.instances.values()].sort((a, b) => a.name.localeCompare(b.name)).map(row));
  document.getElementById("empty").hidden = S.instances.size > 0;
  if (focused) {  // keep a keyboard user's place across live updates
    const again = [...body.querySelectorAll("[aria-label]")].find((n) => n.getAttribute("aria-label") === focused);
    if (again) again.focus();
  }
}

// -- launch and settings --------------------------------------------------------------

async function loadImages() {
  const select = document.getElementById("launch-image");
  if (select.options.length) return;
  select.append(el("option", { value: "tiny", text: "tiny (ketch's own, built here)" }));
  try {
    const doc = await read("/v1/find");
    for (const r of doc.images) {
      if (r.error) continue;
      for (const a of r.aliases.length ? [r.aliases[0]] : []) {
        const value = r.remote && r.remote !== "release" ? `${r.remote}:${a}` : a;
        if (value === "tiny") continue;
        select.append(el("option", { value, text: `${value} — ${r.description || r.release}` }));
      }
    }
  } catch (err) { say(`find: ${errorText(err)}`, "error"); }
}

async function launch(e) {
  e.preventDefault();
  const f = e.target;
  const body = { image: f.image.value, cpus: parseInt(f.cpus.value, 10), memory: f.memory.value, disk: f.disk.value };
  if (f.name.value.trim()) body.name = f.name.value.trim();
  if (f.cloud_init.value.trim()) body.cloud_init = f.cloud_init.value;
  const button = document.getElementById("launch-submit");
  button.disabled = true;
  location.hash = "#/instances";
  try { await operate(`launch ${body.name || ""}`.trim(), "POST", "/v1/instances", body); } finally { button.disabled = false; }
}

async function loadSettings() {
  const body = document.querySelector("#settings tbody");
  body.replaceChildren();
  let keys;
  try { keys = (await read("/v1/settings")).keys; } catch (err) { say(`settings: ${errorText(err)}`, "error"); return; }
  for (const key of keys.filter((k) => !k.includes("<"))) {
    const input = el("input", { "aria-label": key, spellcheck: "false" });
    read(`/v1/settings/${encodeURIComponent(key)}`).then((d) => { input.value = d.value; }).catch(() => {});
    const save = el("button", { type: "button", text: "Save", "aria-label": `Save ${key}` });
    save.addEventListener("click", async () => {
      const resp = await call("PUT", `/v1/settings/${encodeURIComponent(key)}`, { value: input.value });
      const doc = await resp.json().catch(() => ({}));
      say(resp.ok ? `set ${key}: done` : `set ${key}: ${errorText(doc.error || {})}`, resp.ok ? "done" : "error");
    });
    body.append(el("tr", {}, el("th", { scope: "row", text: key }), el("td", {}, input), el("td", {}, save)));
  }
}

// -- terminals -------------------------------------------------------------------------

function openTerminal(kind, name) {
  closeTerminal();
  document.getElementById("terminal-title").textContent = kind === "shell" ? `Shell in ${name}` : `Serial console of ${name} (read-only)`;
  document.getElementById("terminal-help").hidden = kind !== "shell";
  const keys = document.getElementById("keys");
  keys.hidden = kind !== "shell";
  const screen = document.getElementById("screen");
  S.term = new window.PlainTerminal(screen);
  S.term.render();
  const url = new URL(`/ws/${kind}/${encodeURIComponent(name)}`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("csrf", S.csrf);
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (m) => { if (S.socket === ws) S.term.write(new Uint8Array(m.data)); };
  ws.onclose = () => { if (S.socket === ws) S.term.feed("\r\n[closed]\r\n"); };
  S.socket = ws;
  if (kind === "shell") keys.focus();
}

function closeTerminal() {
  if (S.socket) { const ws = S.socket; S.socket = null; ws.close(); }
}

function sendKeys(text) {
  if (S.socket && S.socket.readyState === WebSocket.OPEN && text) S.socket.send(JSON.stringify({ data: text }));
}

function terminalKeys() {
  const keys = document.getElementById("keys");
  keys.addEventListener("keydown", (e) => {
    if (e.ctrlKey && e.key === "]") { e.preventDefault(); document.querySelector("#page-terminal a").focus(); return; }
    const bytes = window.keyBytes(e);
    if (bytes === null) return;
    e.preventDefault();
    sendKeys(bytes);
  });
  keys.addEventListener("paste", (e) => { e.preventDefault(); sendKeys(e.clipboardData.getData("text")); });
  keys.addEventListener("input", () => { sendKeys(keys.value); keys.value = ""; });  // IME, dictation
}

// -- pages -----------------------------------------------------------------------------

function route() {
  const [, page = "instances", arg] = location.hash.split("/").map(decodeURIComponent);
  const which = page === "shell" || page === "console" ? "terminal" : page;
  for (const s of document.querySelectorAll("main > section[id^=page-]")) s.hidden = s.id !== `page-${which}`;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.id === `nav-${which}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (which !== "terminal") closeTerminal();
  if (which === "launch") loadImages();
  if (which === "settings") loadSettings();
  if (which === "terminal" && arg) openTerminal(page, arg);
  document.title = `ketch: ${which === "terminal" ? `${page} ${arg}` : which}`;
}

// The session's second secret: in the login's redirect fragment (never sent to a server),
// then in this tab's sessionStorage (this origin only: not another port's).
function secret() {
  const m = /^#s=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("ketch-session", m[1]);
    history.replaceState(null, "", "/#/instances");
  }
  return sessionStorage.getItem("ketch-session") || "";
}

async function main() {
  S.csrf = secret();
  if (!S.csrf && location.protocol === "https:") { location.replace("/login"); return; }  // ketchd's TLS listener: the passphrase
  if (!S.csrf) { document.getElementById("live").textContent = "this tab is not logged in: open a new URL from 'ketch dashboard'"; return; }
  document.getElementById("launch-form").addEventListener("submit", launch);
  terminalKeys();
  window.addEventListener("hashchange", route);
  route();
  watch();
}

main();
