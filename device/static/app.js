// DermEdge device page: live view with its result, upload, captures, health, model card.
// Plain DOM, no libraries (the device is offline). Text from the device is always set with
// textContent, never parsed as HTML. The live view shows one frame and its own result at a time
// (GET /view), so the picture, the result and a capture of it are always the same frame; what a
// result says is its headline and advice, the same words as everywhere else (docs/results.md).
"use strict";

const HEALTH_MS = 2000;
const RETRY_MS = 2000;

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

class Unauthorized extends Error {}

// fetch + JSON; a 401 means the session is gone, so the page asks for the token again.
async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

// device.types.Result.shows_class: only these results show a class and its confidence.
const showsClass = (result) => result.state === "ok" || result.state === "uncertain";

// One Result (the daemon's JSON) -> its panel: headline, state, top-3 bars where it shows a class,
// and its one piece of advice (a referral is an alert).
function renderResult(container, result, { live }) {
  const meta = showsClass(result) ? [`${pct(result.confidence)} confidence`] : [];
  if (live && result.fps > 0) meta.push(`${result.fps.toFixed(1)} FPS`);
  if (result.source) meta.push(`source ${result.source}`);
  if (result.state === "not_lesion" && result.lesion_gate) {
    meta.push(`not-a-lesion score ${pct(result.lesion_gate.score)} (at ${pct(result.lesion_gate.threshold)} or more: no class)`);
  }
  const parts = [
    el("p", { class: "class", text: result.headline }),
    el("p", { class: "meta" }, [el("span", { class: `state state-${result.state}`, text: result.state.replace("_", " ") }),
      ` ${meta.join(" · ")}`]),
  ];
  if (showsClass(result)) {
    const bars = el("ul", { class: "bars" });
    for (const entry of result.top3) {
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(1, entry.confidence)) * 100}%`;
      bars.append(el("li", {}, [el("span", { text: entry.class_code }), el("span", { class: "bar" }, [fill]),
        el("span", { class: "pct", text: pct(entry.confidence) })]));
    }
    parts.push(bars);
  }
  if (result.advice) {
    parts.push(result.refer === true ? el("p", { class: "referral", role: "alert", text: result.advice })
      : el("p", { class: "advice", text: result.advice }));
  }
  container.replaceChildren(...parts);
  container.dataset.frame = String(result.frame_id);
  container.dataset.state = result.state;
}

function renderHealth(health) {
  const rows = [["Status", health.status], ["Camera", health.camera], ["Inference", health.inference],
    ["MQTT", health.mqtt], ["FPS", health.fps === undefined ? "" : health.fps.toFixed(1)],
    ["Frames", health.frames], ["Model", health.model]];
  const bad = new Set(["degraded", "stalled", "disconnected", "stopped", "error"]);
  const items = [];
  for (const [name, value] of rows) {
    if (value === undefined || value === null) continue;
    const text = String(value);
    const detail = health.details && health.details[name.toLowerCase()];
    items.push(el("dt", { text: name }), el("dd", { class: bad.has(text) ? "bad" : "",
      text: detail && bad.has(text) ? `${text}: ${detail}` : text }));
  }
  $("health").replaceChildren(...items);
}

function renderModel(card) {
  $("disclaimer").textContent = card.disclaimer;
  const m = card.metrics || {};
  const metric = (key) => (typeof m[key] === "number" ? pct(m[key]) : "n/a");
  const facts = el("dl", { class: "grid" }, [
    el("dt", { text: "Name" }), el("dd", { text: card.name }),
    el("dt", { text: "Test accuracy" }), el("dd", { text: metric("accuracy") }),
    el("dt", { text: "Balanced accuracy" }), el("dd", { text: metric("balanced_accuracy") }),
    el("dt", { text: "Macro AUC" }), el("dd", { text: typeof m.macro_auc === "number" ? m.macro_auc.toFixed(3) : "n/a" }),
    el("dt", { text: "Test set" }), el("dd", {
      text: `${card.test_images ?? "?"} ${card.dataset} images, ${card.split}-grouped split` }),
  ]);
  const parts = [facts, el("p", { text: card.description }), el("h2", { text: "Intended use" }),
    el("p", { text: card.intended_use }), el("h2", { text: "Limitations" }),
    el("ul", {}, card.limitations.map((text) => el("li", { text })))];
  if (card.referral) {
    const r = card.referral;
    parts.push(el("h2", { text: "Referral rule" }), el("p", {
      text: `Advises a dermatologist when ${r.classes.join(" + ")} reach ${pct(r.threshold)}; on the test split this ` +
        `caught ${pct(r.sensitivity)} of those lesions (sensitivity), specificity ${pct(r.specificity)}. ` +
        "A poor-quality frame never refers: retake it." }));
  }
  if (card.gate) {
    parts.push(el("h2", { text: "Not-a-lesion check" }), el("p", {
      text: `Frames scoring ${pct(card.gate.threshold)} or more as "not a lesion" get no class: "${card.gate.advice}" ` +
        `(${card.gate.method}).` }));
  }
  $("model").replaceChildren(...parts);
}

function renderCaptures(list) {
  // A read-only or failing disk: the earlier captures still show, no new one can be saved.
  const status = $("capture-status");
  $("capture-button").disabled = Boolean(list.unavailable);
  if (list.unavailable) status.textContent = `Captures unavailable: ${list.unavailable}`;
  else if (status.textContent.startsWith("Captures unavailable")) status.textContent = "";
  if (!list.captures.length) {
    $("captures").replaceChildren(el("li", { class: "muted", text: "None yet." }));
    return;
  }
  $("captures").replaceChildren(...list.captures.map((c) => el("li", {}, [
    el("a", { href: c.image, target: "_blank" }, [el("img", { src: c.image, alt: `Capture ${c.id}`, loading: "lazy" })]),
    el("span", {}, [el("strong", { text: c.headline || c.class_name || c.state }),
      ` ${typeof c.confidence === "number" && showsClass(c) ? `${pct(c.confidence)} ` : ""}${c.state.replace("_", " ")}`,
      el("br"), el("span", { class: "muted", text: `${c.timestamp} · ` }), el("a", { href: c.sidecar, target: "_blank", text: "JSON" })]),
  ])));
}

let healthTimer = null;
let live = 0; // the running live view's number; a new one (or sign-out) ends the old
let shown = null; // the frame id the live view shows now: "Save capture" saves that one

async function pollHealth() {
  try {
    renderHealth(await api("/health"));
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin();
  }
  healthTimer = setTimeout(pollHealth, HEALTH_MS);
}

// A base64 JPEG from /view -> an object URL the CSP allows (img-src blob:).
function jpegUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
}

// The live view: ask for the next frame, show it and its own result together, repeat.
async function runLive() {
  const mine = ++live;
  const img = $("stream");
  let seq = -1;
  while (mine === live) {
    let response;
    try {
      response = await fetch(`/view?after=${seq}`, { credentials: "same-origin", cache: "no-store" });
    } catch (err) {
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      continue;
    }
    if (response.status === 401) return showLogin();
    if (response.status !== 200) {
      if (response.status !== 204) await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      continue;
    }
    const view = await response.json();
    if (mine !== live) return;
    seq = view.seq;
    const url = jpegUrl(view.jpeg);
    const old = img.src;
    img.src = url;
    await img.decode().catch(() => {});
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    renderResult($("latest"), view.result, { live: true });
    img.dataset.frame = String(view.result.frame_id);
    shown = view.result.frame_id;
  }
}

async function refreshCaptures() {
  try {
    renderCaptures(await api("/captures"));
  } catch (err) {
    if (err instanceof Unauthorized) showLogin();
  }
}

async function startApp(session) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout-button").hidden = !session.token_required;
  runLive();
  pollHealth();
  try {
    renderModel(await api("/model"));
    await refreshCaptures();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin();
  }
}

function showLogin(message = "") {
  clearTimeout(healthTimer);
  live += 1;
  shown = null;
  $("stream").removeAttribute("src");
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message;
  $("token").focus();
}

async function init() {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("/login", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token").value }) });
      $("token").value = "";
      startApp(await api("/session"));
    } catch (err) {
      showLogin(err instanceof Unauthorized ? "Wrong token." : String(err.message || err));
    }
  });
  $("logout-button").addEventListener("click", async () => {
    await api("/logout", { method: "POST" }).catch(() => {});
    showLogin();
  });
  $("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = $("upload-result");
    out.replaceChildren(el("p", { class: "muted", text: "Classifying..." }));
    try {
      const result = await api("/predict", { method: "POST", body: new FormData($("upload-form")) });
      renderResult(out, result, { live: false });
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin();
      out.replaceChildren(el("p", { class: "error", text: `Not classified: ${err.message}` }));
    }
  });
  $("capture-button").addEventListener("click", async () => {
    const status = $("capture-status");
    try {
      const info = await api("/capture", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(shown === null ? {} : { frame_id: shown }) });
      status.textContent = `Saved ${info.id}`;
      await refreshCaptures();
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin();
      status.textContent = `Not saved: ${err.message}`;
    }
  });
  const session = await api("/session");
  if (session.signed_in) startApp(session);
  else showLogin();
}

document.addEventListener("DOMContentLoaded", init);
