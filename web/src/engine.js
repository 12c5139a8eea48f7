// LiteRT.js (WebAssembly, XNNPack) running the card's own model_int8.tflite: one compiled model,
// one call per image. Quantization, views and dequantization come from the card, as in
// device/engine.py; thresholds and states are postprocess.js's business.
import {Tensor, loadAndCompile, loadLiteRt} from '@litertjs/core';

import {CardError, fetchOrThrow} from './card.js';
import {centreZoom, dequantize, fitToInput, toInputTensor, ttaViews} from './preprocess.js';
import {meanScores} from './postprocess.js';

/** Load the LiteRT.js runtime from `wasmUrl` (a folder of the build, never a CDN). */
export async function startRuntime(wasmUrl) {
  // The runtime writes its own log lines to stderr, which Emscripten sends to console.error;
  // informational lines go to console.debug so real errors stay visible as errors.
  self.Module = {
    printErr: (line) => (/^(ERROR|FATAL)/.test(line) ? console.error(line) : console.debug(line)),
  };
  await loadLiteRt(wasmUrl);
}

/** Fetch the card's model file from `modelUrl`, check it against the card, compile it. */
export async function loadEngine(card, modelUrl) {
  const url = new URL(card.model_file.path, modelUrl);
  const bytes = new Uint8Array(await (await fetchOrThrow(url, 'model file')).arrayBuffer());
  if (bytes.length !== card.model_file.size_bytes) {
    throw new CardError(`${url}: ${bytes.length} bytes, the card's model_file.size_bytes is ${card.model_file.size_bytes}`);
  }
  // crypto.subtle exists only in secure contexts (https, localhost); over plain http on a LAN the size check stands alone.
  const verified = Boolean(globalThis.crypto?.subtle);
  if (verified) {
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)), (b) => b.toString(16).padStart(2, '0')).join('');
    if (digest !== card.model_file.sha256) {
      throw new CardError(`${url}: sha256 ${digest.slice(0, 12)}... does not match the card's model_file.sha256 ${card.model_file.sha256.slice(0, 12)}...`);
    }
  }
  let model;
  try {
    model = await loadAndCompile(bytes, {accelerator: 'wasm'});
  } catch (err) {
    throw new CardError(`${url}: not a loadable TFLite model (${err.message})`);
  }
  checkAgainstCard(model, card, url);
  return new Engine(model, card, {sha256Verified: verified});
}

function checkAgainstCard(model, card, url) {
  const inputs = model.getInputDetails();
  const outputs = model.getOutputDetails();
  const where = `${url} does not match its card`;
  if (inputs.length !== 1 || outputs.length !== 1) {
    throw new CardError(`expected one input and one output tensor, got ${inputs.length} and ${outputs.length}`);
  }
  const shape = Array.from(inputs[0].shape);
  const expected = [1, card.input.height, card.input.width, card.input.channels];
  if (shape.join() !== expected.join()) throw new CardError(`${where}: field 'input' says shape ${expected}, model has ${shape}`);
  const outShape = Array.from(outputs[0].shape);
  if (outShape.join() !== [1, card.labels.length].join()) {
    throw new CardError(`${where}: field 'labels' has ${card.labels.length} classes, model output is ${outShape}`);
  }
  // LiteRT.js reports dtypes but not quantization parameters, so scale and zero point are the card's word.
  for (const [name, details] of [['input', inputs[0]], ['output', outputs[0]]]) {
    if (details.dtype !== card[name].dtype) {
      throw new CardError(`${where}: field '${name}.dtype' is ${card[name].dtype}, model has ${details.dtype}`);
    }
  }
}

export class Engine {
  constructor(model, card, {sha256Verified}) {
    this.model = model;
    this.card = card;
    this.sha256Verified = sha256Verified;
  }

  /** Any-size RGB image -> {scores (dequantized, averaged over the card's views), preprocessMs, inferenceMs}. */
  async infer(img) {
    const {input, normalization, output, preprocessing} = this.card;
    const t0 = performance.now();
    const tensors = ttaViews(centreZoom(fitToInput(img, input.height, input.width), preprocessing.zoom), preprocessing.tta)
      .map((view) => toInputTensor(view, normalization, input));
    const t1 = performance.now();
    const views = [];
    for (const data of tensors) views.push(dequantize(await this.run(data), output));
    const t2 = performance.now();
    return {scores: views.length === 1 ? views[0] : meanScores(views), preprocessMs: t1 - t0, inferenceMs: t2 - t1};
  }

  async run(data) {
    const {height, width, channels} = this.card.input;
    const tensor = new Tensor(data, [1, height, width, channels]);
    let outputs;
    try {
      outputs = await this.model.run(tensor);
      return outputs[0].toTypedArray();
    } finally {
      tensor.delete();
      outputs?.forEach((t) => t.delete());
    }
  }
}
