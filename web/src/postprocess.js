// The browser's copy of device/postprocess.py for single images: probabilities, the quality
// gate, the not-a-lesion gate, the uncertain state, top-3, the card's referral rule and what the
// result says (headline, advice: device/types.py, docs/results.md), as one result object with
// the keys of device.types.Result.to_dict().

import {centerCrop, resizeArea, roundHalfEven} from './preprocess.js';

const fround = Math.fround;
// device.postprocess.QUALITY_SIZE: quality is measured on a copy scaled to fit this (width, height).
export const QUALITY_SIZE = [320, 240];
// device.config.PostprocessConfig() defaults; web/test/parity.json checks they still agree.
export const POSTPROCESS_DEFAULTS = Object.freeze({
  smoothing: 1,
  min_confidence: 0.5,
  min_brightness: 40.0,
  max_brightness: 220.0,
  min_sharpness: 20.0,
});
// Scores that are non-negative and sum to 1 within this are already probabilities.
const PROB_SUM_TOLERANCE = 0.05;
export const DISCLAIMER = 'Screening aid, not a diagnosis.';
// device.types: what a result says where it has no class or no certain one.
export const UNCERTAIN_REFER = 'The class is uncertain, but this lesion should be seen by a dermatologist.';
export const UNCERTAIN = 'The class is uncertain: no class is likely enough to show as an answer.';
export const RETAKE = 'Retake the photo: it is {reason}. A poor photo says nothing about the lesion.';
export const NOT_LESION = 'Not a skin lesion';

/** device.types.Result.shows_class: whether a person is shown the class and its confidence. */
export const showsClass = (result) => result.state === 'ok' || result.state === 'uncertain';

/** device.types.Result.headline and .advice: the result's few words and its one piece of advice. */
export function message(result, gateAdvice = '') {
  const reason = result.quality?.reason ?? '';
  if (result.state === 'poor_quality') {
    return {headline: `Poor image quality${reason ? ` (${reason})` : ''}`, advice: RETAKE.replace('{reason}', reason || 'of poor quality')};
  }
  if (result.state === 'not_lesion') return {headline: NOT_LESION, advice: gateAdvice};
  if (result.state === 'uncertain') return {headline: `Uncertain: ${result.class_name}?`, advice: result.refer ? UNCERTAIN_REFER : UNCERTAIN};
  return {headline: result.class_name, advice: result.refer ? result.referral.advice : ''};
}

/** Class probabilities (float32, sum 1) from dequantized probabilities or logits. */
export function toProbabilities(scores) {
  let total = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const s of scores) {
    total = fround(total + s);
    min = Math.min(min, s);
    max = Math.max(max, s);
  }
  if (min >= 0 && Math.abs(total - 1) <= PROB_SUM_TOLERANCE) return Float32Array.from(scores, (s) => fround(s / total));
  const exps = Float32Array.from(scores, (s) => fround(Math.exp(fround(s - max))));
  const sum = exps.reduce((a, b) => fround(a + b), 0);
  return exps.map((e) => fround(e / sum));
}

/** Mean of the per-view scores (test-time augmentation), in float32 as the engine averages. */
export function meanScores(views) {
  const out = new Float32Array(views[0].length);
  for (const view of views) view.forEach((v, i) => { out[i] = fround(out[i] + v); });
  return out.map((v) => fround(v / views.length));
}

// cv2.cvtColor(RGB2GRAY) on uint8: BT.601 weights in 15-bit fixed point (checked equal to
// OpenCV 5 on all 2^24 colours; the 14-bit weights of older OpenCV differ on a few).
function grey(img) {
  const out = new Uint8Array(img.height * img.width);
  const d = img.data;
  for (let i = 0, j = 0; i < out.length; i++, j += 3) {
    out[i] = (d[j] * 9798 + d[j + 1] * 19235 + d[j + 2] * 3735 + 16384) >> 15;
  }
  return out;
}

// OpenCV's default border (BORDER_REFLECT_101): -1 -> 1, n -> n - 2.
function reflect101(i, n) {
  if (n === 1) return 0;
  if (i < 0) return -i;
  if (i >= n) return 2 * n - 2 - i;
  return i;
}

/** device.postprocess.measure_quality: mean luma and variance of the Laplacian of the model's view. */
export function measureQuality(img, cfg, aspect) {
  let view = centerCrop(img, aspect[0], aspect[1]);
  const scale = Math.min(QUALITY_SIZE[0] / view.width, QUALITY_SIZE[1] / view.height, 1);
  if (scale < 1) {
    const w = Math.max(1, roundHalfEven(view.width * scale));
    const h = Math.max(1, roundHalfEven(view.height * scale));
    view = resizeArea(view, h, w);
  }
  const {height, width} = view;
  const g = grey(view);
  let sum = 0;
  let lapSum = 0;
  let lapSq = 0;
  for (let y = 0; y < height; y++) {
    const up = reflect101(y - 1, height) * width;
    const down = reflect101(y + 1, height) * width;
    for (let x = 0; x < width; x++) {
      const v = g[y * width + x];
      sum += v;
      const lap = g[up + x] + g[down + x] + g[y * width + reflect101(x - 1, width)] +
        g[y * width + reflect101(x + 1, width)] - 4 * v;
      lapSum += lap;
      lapSq += lap * lap;
    }
  }
  const n = height * width;
  const brightness = sum / n;
  const lapMean = lapSum / n;
  const sharpness = Math.max(lapSq / n - lapMean * lapMean, 0);
  let reason = '';
  if (brightness < cfg.min_brightness) reason = 'too dark';
  else if (brightness > cfg.max_brightness) reason = 'too bright';
  else if (sharpness < cfg.min_sharpness) reason = 'too blurry';
  return {brightness, sharpness, ok: !reason, reason};
}

/** The card's referral decision: {refer, referral} (both null when the card has no rule). */
export function referralFor(card, probabilities) {
  const rule = card.referral;
  if (!rule) return {refer: null, referral: null};
  const codes = card.labels.map((l) => l.code);
  const score = rule.classes.reduce((acc, code) => acc + probabilities[codes.indexOf(code)], 0);
  return {
    refer: score >= rule.threshold,
    referral: {
      score, threshold: rule.threshold, sensitivity: rule.sensitivity ?? null,
      specificity: rule.specificity ?? null, advice: rule.advice ?? '',
    },
  };
}

/**
 * One result for one image, keyed like device.types.Result.to_dict(). `notLesion` is the gate
 * output (null for a card without a gate). States, first match wins: poor_quality (no referral),
 * not_lesion (no class, confidence or referral), uncertain, ok.
 */
export function buildResult(card, scores, quality, cfg, {latencyMs, source, notLesion = null}) {
  const probs = toProbabilities(scores);
  if (probs.length !== card.labels.length) {
    throw new Error(`model returned ${probs.length} scores for ${card.labels.length} labels`);
  }
  if (card.gate && notLesion === null) throw new Error('the card has a not-a-lesion gate but the model gave no gate score');
  const gate = card.gate ? {score: notLesion, threshold: card.gate.threshold} : null;
  const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a] || a - b);
  const best = order[0];
  const confidence = probs[best];
  let state = 'ok';
  if (!quality.ok) state = 'poor_quality';
  else if (gate && gate.score >= gate.threshold) state = 'not_lesion';
  else if (confidence < cfg.min_confidence) state = 'uncertain';
  const all = {};
  card.labels.forEach((label, i) => { all[label.code] = probs[i]; });
  const shown = state !== 'not_lesion';
  const result = {
    class_code: shown ? card.labels[best].code : null,
    class_name: shown ? card.labels[best].name : null,
    class_index: shown ? best : null,
    confidence: shown ? confidence : null,
    all_probabilities: shown ? all : {},
    top3: shown ? order.slice(0, 3).map((i) => ({class_code: card.labels[i].code, confidence: probs[i]})) : [],
    state,
    model: card.name,
    latency_ms: latencyMs,
    quality: {brightness: round1(quality.brightness), sharpness: round1(quality.sharpness), reason: quality.reason},
    disclaimer: card.disclaimer || DISCLAIMER,
    ...(state === 'ok' || state === 'uncertain' ? referralFor(card, Array.from(probs)) : {refer: null, referral: null}),
    lesion_gate: gate,
    source,
  };
  return {...result, ...message(result, card.gate?.advice ?? '')};
}

function round1(x) {
  return Math.round(x * 10) / 10;
}
