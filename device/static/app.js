// DermEdge device page: live view, latest result, upload, captures, health, model card.
// Plain DOM, no libraries (the device is offline). Text from the device is always set with
// textContent, never parsed as HTML.
"use strict";

const POLL_MS = 700;
const STREAM_RETRY_MS = 2000;
const DISCLAIMER = "Screening aid, not a diagnosis.";

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

// One Result (the daemon's JSON) -> its panel: class, confidence, state, top-3 bars, referral.
function renderResult(container, result, { live }) {
  const title = result.state === "poor_quality"
    ? `Poor image quality${result.quality && result.quality.reason ? ` (${result.quality.reason})` : ""}`
    : result.state === "uncertain" ? `Uncertain: ${result.class_name}?` : result.class_name;
  const meta = [`${pct(result.confidence)} confidence`];
  if (live) meta.push(`${result.fps.toFixed(1)} FPS`);
  if (result.source) meta.push(`source ${result.source}`);
  const bars = el("ul", { class: "bars" });
  for (const entry of result.top3) {
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, entry.confidence)) * 100}%`;
    bars.append(el("li", {}, [el("span", { text: entry.class_code }), el("span", { class: "bar" }, [fill]),
      el("span", { class: "pct", text: pct(entry.confidence) })]));
  }
  const parts = [
    el("p", { class: "class", text: title }),
    el("p", { class: "meta" }, [el("span", { class: `state state-${result.state}`, text: result.state.replace("_", " ") }),
      ` ${meta.join(" · ")}`]),
    bars,
  ];
  if (result.refer === true && result.referral) {
    parts.push(el("p", { class: "referral", role: "alert", text: result.referral.advice }));
  }
  parts.push(el("p", { class: "disclaimer", text: result.disclaimer || DISCLAIMER }));
  container.replaceChildren(...parts);
  container.dataset.frame = String(result.frame_id);
  container.dataset.classCode = result.class_code;
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
        `caught ${pct(r.sensitivity)} of those lesions (sensitivity), specificity ${pct(r.specificity)}.` }));
  }
  parts.push(el("p", { class: "disclaimer", text: card.disclaimer }));
  $("model").replaceChildren(...parts);
}

function renderCaptures(list) {
  if (!list.captures.length) {
    $("captures").replaceChildren(el("li", { class: "muted", text: "None yet." }));
    return;
  }
  $("captures").replaceChildren(...list.captures.map((c) => el("li", {}, [
    el("a", { href: c.image, target: "_blank" }, [el("img", { src: c.image, alt: `Capture ${c.id}`, loading: "lazy" })]),
    el("span", {}, [el("strong", { text: c.class_name || c.class_code }), ` ${pct(c.confidence)} ${c.state}`,
      el("br"), el("span", { class: "muted", text: `${c.timestamp} · ` }), el("a", { href: c.sidecar, target: "_blank", text: "JSON" })]),
  ])));
}

let timer = null;
let lastFrame = -1;

async function poll() {
  try {
    const health = await api("/health");
    renderHealth(health);
    if (health.frames > 0 && health.frames !== lastFrame) {
      lastFrame = health.frames;
      renderResult($("latest"), await api("/latest"), { live: true });
    }
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin();
  }
  timer = setTimeout(poll, POLL_MS);
}

async function refreshCaptures() {
  try {
    renderCaptures(await api("/captures"));
  } catch (err) {
    if (err instanceof Unauthorized) showLogin();
  }
}

function startStream() {
  const img = $("stream");
  img.onerror = () => setTimeout(() => { img.src = `/stream.mjpg?retry=${Date.now()}`; }, STREAM_RETRY_MS);
  img.src = "/stream.mjpg";
}

async function startApp(session) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout-button").hidden = !session.token_required;
  startStream();
  poll();
  try {
    renderModel(await api("/model"));
    await refreshCaptures();
  } catch (err) {
    if (err instanceof Unauthorized) showLogin();
  }
}

function showLogin(message = "") {
  clearTimeout(timer);
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
      const info = await api("/capture", { method: "POST" });
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
