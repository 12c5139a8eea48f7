// The page: load the card and the model, classify each picked photo, show the result.
// The model folder is `?model=<url>` or config.json's "model", so any card the build or a host
// provides is used as it is; nothing about a particular model is written here.
import {CardError, loadCard} from './card.js';
import {loadEngine, startRuntime} from './engine.js';
import {decodeFile} from './image.js';
import {POSTPROCESS_DEFAULTS, buildResult, measureQuality, showsClass} from './postprocess.js';
import {fitToInput} from './preprocess.js';

const $ = (id) => document.getElementById(id);
const pct = (p) => `${(100 * p).toFixed(1)}%`;

async function modelFolder() {
  const given = new URLSearchParams(location.search).get('model');
  if (given) return new URL(given.endsWith('/') ? given : `${given}/`, location.href);
  const config = await (await fetch('config.json')).json();
  return new URL(config.model, location.href);
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

function showModel(card) {
  $('model-description').textContent = `${card.name}: ${card.description}`;
  const m = card.metrics.int8 ?? card.metrics.float;
  const rows = [];
  if (m) {
    rows.push(['Test split', `${card.metrics.split ?? 'test'}, ${m.n} images (int8 model)`],
      ['Accuracy', pct(m.accuracy)], ['Balanced accuracy', pct(m.balanced_accuracy)],
      ['Macro-F1', pct(m.macro_f1)], ['Macro AUC', m.macro_auc.toFixed(3)]);
    for (const label of card.labels) {
      const c = m.per_class?.[label.code];
      if (c) rows.push([`Recall ${label.code} (${label.name})`, `${pct(c.recall)} of ${c.support}`]);
    }
  }
  if (card.referral) {
    rows.push(['Referral rule', `${card.referral.classes.join(' + ')} ≥ ${pct(card.referral.threshold)}`],
      ['Referral sensitivity / specificity', `${pct(card.referral.sensitivity)} / ${pct(card.referral.specificity)}`]);
  }
  if (card.gate) rows.push(['Not-a-lesion check', `no class at a score ≥ ${pct(card.gate.threshold)} (${card.gate.method})`]);
  $('metrics').replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement('tr');
    tr.append(Object.assign(document.createElement('th'), {textContent: k}), Object.assign(document.createElement('td'), {textContent: v}));
    return tr;
  }));
  const weak = m ? card.labels.filter((l) => m.per_class?.[l.code]?.recall < 0.5)
    .map((l) => `${l.name} (${pct(m.per_class[l.code].recall)})`) : [];
  const limits = [
    ...card.limitations,
    `Trained and tested on ${card.dataset.name ?? 'one dataset'} only; photos unlike those images are outside what was measured.`,
    `It knows only these ${card.labels.length} classes: ${card.labels.map((l) => l.name).join(', ')}.`,
    ...(weak.length ? [`It misses many lesions of some classes (test recall): ${weak.join(', ')}.`] : []),
  ];
  $('limitations').replaceChildren(...limits.map((t) => Object.assign(document.createElement('li'), {textContent: t})));
}

// What a result says is its headline and advice (postprocess.js's message, device/types.py's):
// the same words as the device's page, overlay, CLI and MQTT. A class only where it shows one.
function showResult(card, result, img) {
  const shows = showsClass(result);
  $('class-name').textContent = shows ? `${result.headline} (${result.class_code})` : result.headline;
  $('state').textContent = result.state.replace('_', ' ');
  $('state').className = `state ${result.state}`;
  $('confidence').textContent = shows ? `confidence ${pct(result.confidence)}` : '';
  $('top3').replaceChildren(...(shows ? result.top3 : []).map(({class_code: code, confidence}) => Object.assign(
    document.createElement('li'), {textContent: `${card.labels.find((l) => l.code === code).name}: ${pct(confidence)}`})));
  $('advice').hidden = !result.advice;
  $('advice').textContent = result.advice;
  $('advice').className = result.refer ? 'advice refer' : 'advice';
  $('result-disclaimer').textContent = result.disclaimer;
  const {preprocess, inference} = result.latency_ms;
  $('timing').textContent = `preprocess ${preprocess.toFixed(1)} ms, inference ${inference.toFixed(1)} ms, in this browser`;
  const fitted = fitToInput(img, card.input.height, card.input.width);
  const canvas = $('preview');
  canvas.width = fitted.width;
  canvas.height = fitted.height;
  const rgba = new ImageData(fitted.width, fitted.height);
  fitted.data.forEach((v, i) => { rgba.data[Math.floor(i / 3) * 4 + (i % 3)] = v; });
  for (let i = 3; i < rgba.data.length; i += 4) rgba.data[i] = 255;
  canvas.getContext('2d').putImageData(rgba, 0, 0);
  $('result').dataset.result = JSON.stringify(result);
  $('result').hidden = false;
}

async function classify(engine, file) {
  const card = engine.card;
  setStatus('busy', `Classifying ${file.name}…`);
  showError('');
  try {
    const t0 = performance.now();
    const img = await decodeFile(file);
    const {scores, notLesion, preprocessMs, inferenceMs} = await engine.infer(img);
    const quality = measureQuality(img, POSTPROCESS_DEFAULTS, [card.input.height, card.input.width]);
    const result = buildResult(card, scores, quality, POSTPROCESS_DEFAULTS, {
      latencyMs: {preprocess: preprocessMs, inference: inferenceMs, total: performance.now() - t0}, source: file.name,
      notLesion,
    });
    showResult(card, result, img);
  } catch (err) {
    $('result').hidden = true;
    delete $('result').dataset.result;
    showError(err.message);
  } finally {
    setStatus('ready', `Ready: ${card.name}. Pick another photo.`);
    document.body.dataset.seq = Number(document.body.dataset.seq) + 1;
  }
}

async function main() {
  let engine;
  try {
    const folder = await modelFolder();
    const t0 = performance.now();
    await startRuntime(new URL('wasm/', location.href).href);
    const card = await loadCard(folder);
    showModel(card);
    engine = await loadEngine(card, folder);
    const loadMs = performance.now() - t0;
    document.body.dataset.loadMs = loadMs.toFixed(1);
    setStatus('ready', `Model ${card.name} loaded in ${loadMs.toFixed(0)} ms (LiteRT.js, WebAssembly${engine.sha256Verified ? ', sha256 checked' : ''}). Pick a photo.`);
  } catch (err) {
    setStatus('error', 'The model could not be loaded.');
    showError(err instanceof CardError ? err.message : `${err.name}: ${err.message}`);
    return;
  }
  for (const input of [$('file'), $('camera')]) {
    input.disabled = false;
    input.addEventListener('change', async () => {
      const file = input.files[0];
      input.value = '';
      if (file) await classify(engine, file);
    });
  }
}

main();
