// The web app's preprocessing and postprocessing against values exported from device/ (Python):
// web/test/parity.json, rebuilt by `.venv/bin/python -m tests.web.parity_golden`.
import assert from 'node:assert/strict';
import {createHash} from 'node:crypto';
import {readFileSync} from 'node:fs';
import {test} from 'node:test';

import {
  centerCropBox, centreZoom, colourConstancy, dequantize, fitToInput, inputTensors, makeImage, shadesOfGreyLevels,
  toInputTensor,
} from '../src/preprocess.js';
import {MAX_DECODE_PIXELS} from '../src/image.js';
import {POSTPROCESS_DEFAULTS, QUALITY_SIZE, buildResult, measureQuality, toProbabilities} from '../src/postprocess.js';
import {CardError, parseCard} from '../src/card.js';
import {cast, syntheticImage} from './synthetic.js';

const golden = JSON.parse(readFileSync(new URL('./parity.json', import.meta.url)));
const card = JSON.parse(readFileSync(new URL(`../../${golden.card}`, import.meta.url)));
const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));
const aspect = [card.input.height, card.input.width];

test('constants agree with device/', () => {
  assert.equal(MAX_DECODE_PIXELS, golden.max_decode_pixels);
  assert.deepEqual(QUALITY_SIZE, golden.quality_size);
  assert.deepEqual({...POSTPROCESS_DEFAULTS}, golden.postprocess_defaults);
});

test('centre-crop boxes match center_crop_to_aspect', () => {
  for (const {size, box} of golden.crops) {
    assert.deepEqual(centerCropBox(size[0], size[1], ...aspect), box, `size ${size}`);
  }
});

for (const c of golden.fit) {
  const linear = c.height < c.target[0];
  test(`fit_to_input ${c.kind} ${c.height}x${c.width} -> ${c.target.join('x')}${linear ? ' (linear)' : ''}`, () => {
    const got = fitToInput(syntheticImage(c.kind, c.seed, c.height, c.width), ...c.target).data;
    const want = bytes(c.pixels);
    assert.equal(got.length, want.length);
    let worst = 0;
    let first = -1;
    for (let i = 0; i < want.length; i++) {
      const d = Math.abs(got[i] - want[i]);
      if (d > worst) [worst, first] = [d, first < 0 ? i : first];
    }
    assert.equal(worst, 0, `max |diff| ${worst}, first at value ${first}`);
  });
}

for (const c of golden.zoom) {
  test(`centre_zoom ${c.kind} ${c.height}x${c.width} at ${c.zoom}`, () => {
    const got = centreZoom(syntheticImage(c.kind, c.seed, c.height, c.width), c.zoom).data;
    const want = bytes(c.pixels);
    assert.equal(got.length, want.length);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.equal(worst, 0, `max |diff| ${worst}`);
    assert.notDeepEqual(Array.from(got), Array.from(syntheticImage(c.kind, c.seed, c.height, c.width).data));
  });
}

test('normalize and quantize match the device input tensor', () => {
  const c = golden.fit[golden.quantize.case];
  const fitted = fitToInput(syntheticImage(c.kind, c.seed, c.height, c.width), ...aspect);
  const got = toInputTensor(fitted, card.normalization, card.input);
  const want = new Int8Array(bytes(golden.quantize.values).buffer);
  assert.equal(golden.quantize.dtype, card.input.dtype);
  assert.deepEqual(Array.from(got), Array.from(want));
});

test('dequantize and probabilities match', () => {
  for (const s of golden.scores) {
    const deq = dequantize(Int8Array.from(s.q), card.output);
    assert.deepEqual(Array.from(deq), s.dequantized);
    toProbabilities(deq).forEach((p, i) => assert.ok(Math.abs(p - s.probabilities[i]) < 1e-6, `${p} vs ${s.probabilities[i]}`));
  }
  toProbabilities(Float32Array.from(golden.softmax.logits)).forEach((p, i) =>
    assert.ok(Math.abs(p - golden.softmax.probabilities[i]) < 1e-6));
});

test('quality gate matches measure_quality', () => {
  for (const q of golden.quality) {
    const got = measureQuality(syntheticImage(q.kind, q.seed, q.height, q.width), POSTPROCESS_DEFAULTS, aspect);
    const where = `${q.kind} ${q.height}x${q.width}`;
    assert.ok(Math.abs(got.brightness - q.brightness) <= 1e-9 * Math.max(1, q.brightness), `${where}: brightness ${got.brightness} vs ${q.brightness}`);
    assert.ok(Math.abs(got.sharpness - q.sharpness) <= 1e-9 * Math.max(1, q.sharpness), `${where}: sharpness ${got.sharpness} vs ${q.sharpness}`);
    assert.equal(got.reason, q.reason, where);
  }
});

test('every state says what device.types.Result says (headline, advice, referral, gate)', () => {
  assert.ok(golden.results.length >= 8);
  const states = new Set();
  for (const c of golden.results) {
    const variant = parseCard({...card, referral: c.referral, gate: c.gate});
    const quality = measureQuality(syntheticImage(c.kind, c.seed, c.height, c.width), POSTPROCESS_DEFAULTS, aspect);
    const got = buildResult(variant, Float32Array.from(c.probabilities), quality, POSTPROCESS_DEFAULTS,
      {latencyMs: {}, source: 'parity', notLesion: c.not_lesion});
    const want = c.expected;
    const where = `${want.state} ${c.kind} gate ${c.not_lesion}`;
    for (const key of ['state', 'class_code', 'refer', 'headline', 'advice']) assert.equal(got[key], want[key], `${where}: ${key}`);
    assert.deepEqual(got.top3.map((t) => t.class_code), want.top3.map((t) => t.class_code), where);
    if (want.confidence === null) assert.equal(got.confidence, null, where);
    else assert.ok(Math.abs(got.confidence - want.confidence) < 1e-6, where);
    assert.deepEqual(got.lesion_gate && {score: Math.round(got.lesion_gate.score * 1e6) / 1e6, threshold: got.lesion_gate.threshold},
      want.lesion_gate, where);
    states.add(want.state);
  }
  assert.deepEqual([...states].sort(), ['not_lesion', 'ok', 'poor_quality', 'uncertain']);
});

test('a card gate field out of range or missing is refused by name', () => {
  const gate = {output: {dtype: 'int8', scale: 1 / 256, zero_point: -128}, threshold: 0.5, method: 'm', advice: 'a'};
  assert.throws(() => parseCard({...card, gate: {...gate, threshold: 1.5}}), /field 'gate.threshold': expected a number in \[0, 1\], got 1.5/);
  const {output, ...noOutput} = gate;
  assert.throws(() => parseCard({...card, gate: noOutput}), /missing field 'gate.output'/);
  assert.equal(parseCard(card).gate, null);
});

// Shades-of-grey colour constancy (normalization.colour): the real photo travels in parity.json.
const real = makeImage(...golden.colour.real.size, bytes(golden.colour.real.pixels));
const colourSource = ({kind, seed, height, width, gains}) =>
  cast(kind === 'real' ? real : syntheticImage(kind, seed, height, width), gains);

for (const c of golden.colour.levels) {
  test(`shades_of_grey_levels ${c.kind} ${c.kind === 'real' ? golden.colour.real.file : `${c.height}x${c.width}`} cast ${c.gains}`, () => {
    assert.deepEqual(Array.from(shadesOfGreyLevels(colourSource(c))), Array.from(bytes(c.levels)));
  });
}

test('colour constancy maps each pixel through its levels, and "none" leaves the image alone', () => {
  const img = colourSource(golden.colour.levels[1]);
  const levels = shadesOfGreyLevels(img);
  const balanced = colourConstancy(img, 'shades_of_grey');
  assert.deepEqual(Array.from(balanced.data), Array.from(img.data, (v, i) => levels[v * 3 + (i % 3)]));
  assert.equal(colourConstancy(img, 'none'), img);
  assert.throws(() => colourConstancy(img, 'grey_world'), /normalization.colour/);
  assert.throws(() => shadesOfGreyLevels(makeImage(0, 4)), /empty image/);
});

test('a card with colour shades_of_grey gives the device input tensors, view for view', () => {
  const colourCard = parseCard({...card, ...golden.colour.card});
  assert.equal(colourCard.normalization.colour, 'shades_of_grey');
  for (const c of golden.colour.tensors) {
    const rgb = c.cases === 'colour' ? colourSource(golden.colour.levels[c.index])
      : cast(syntheticImage(...['kind', 'seed', 'height', 'width'].map((k) => golden.fit[c.index][k])), c.gains);
    const where = `${c.cases} case ${c.index}`;
    const zoomed = centreZoom(fitToInput(rgb, colourCard.input.height, colourCard.input.width), colourCard.preprocessing.zoom);
    assert.deepEqual(Array.from(shadesOfGreyLevels(zoomed)), Array.from(bytes(c.levels)), `${where}: levels`);
    const tensors = inputTensors(rgb, colourCard);
    const hashes = tensors.map((t) => createHash('sha256').update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength)).digest('hex'));
    assert.deepEqual(hashes, c.sha256, `${where}: tensors`);
    // The colour step did something: without it the first view differs.
    const plain = inputTensors(rgb, {...colourCard, normalization: {...colourCard.normalization, colour: 'none'}});
    assert.notDeepEqual(Array.from(plain[0]), Array.from(tensors[0]), where);
  }
});

test('normalization.colour: "none" when absent, anything else refused by name as device/card.py does', () => {
  assert.equal(parseCard(card).normalization.colour, 'none');
  const withColour = (colour) => parseCard({...card, normalization: {...card.normalization, colour}});
  assert.equal(withColour('none').normalization.colour, 'none');
  assert.throws(() => withColour('grey_world'), (err) => err instanceof CardError &&
    err.message === "field 'normalization.colour': expected one of ('none', 'shades_of_grey'), got 'grey_world'");
  assert.throws(() => withColour(1), /field 'normalization.colour': expected string/);
});
