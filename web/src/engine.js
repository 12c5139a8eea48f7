// LiteRT.js (WebAssembly, XNNPack) running the card's own model_int8.tflite: one compiled model,
// one call per image. Quantization, views and dequantization come from the card, as in
// device/engine.py; thresholds and states are postprocess.js's business.
import {Tensor, loadAndCompile, loadLiteRt} from '@litertjs/core';

import {CardError, fetchOrThrow} from './card.js';
import {dequantize, inputTensors} from './preprocess.js';
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
  return new Engine(model, card, {sha256Verified: verified, outputs: checkAgainstCard(model, card, url)});
}

// device/engine.py's model_tensors and check: one input; the class output, and the not-a-lesion
// output (shape [1, 1]) when the card has a gate. Outputs are told apart by shape, never by order.
// Returns the outputs' positions: {classes, gate} (gate null without one).
function checkAgainstCard(model, card, url) {
  const inputs = model.getInputDetails();
  const outputs = model.getOutputDetails();
  const where = `${url} does not match its card`;
  if (inputs.length !== 1 || ![1, 2].includes(outputs.length)) {
    throw new CardError(`expected one input and one or two output tensors, got ${inputs.length} and ${outputs.length}`);
  }
  const shape = Array.from(inputs[0].shape);
  const expected = [1, card.input.height, card.input.width, card.input.channels];
  if (shape.join() !== expected.join()) throw new CardError(`${where}: field 'input' says shape ${expected}, model has ${shape}`);
  const gates = outputs.map((o, i) => (Array.from(o.shape).join() === '1,1' ? i : -1)).filter((i) => i >= 0);
  if (outputs.length === 2 && gates.length !== 1) {
    throw new CardError(`expected a class output and a [1, 1] not-a-lesion output, got shapes ${outputs.map((o) => `[${Array.from(o.shape)}]`)}`);
  }
  const gate = outputs.length === 2 ? gates[0] : null;
  const classes = gate === 0 ? 1 : 0;
  if (card.gate && gate === null) throw new CardError(`${where}: field 'gate' needs a [1, 1] not-a-lesion output, the model has none`);
  if (!card.gate && gate !== null) throw new CardError(`${where}: the model has a not-a-lesion output, the card no field 'gate'`);
  const outShape = Array.from(outputs[classes].shape);
  if (outShape.join() !== [1, card.labels.length].join()) {
    throw new CardError(`${where}: field 'labels' has ${card.labels.length} classes, model output is ${outShape}`);
  }
  // LiteRT.js reports dtypes but not quantization parameters, so scale and zero point are the card's word.
  const checks = [['input', inputs[0], card.input], ['output', outputs[classes], card.output]];
  if (gate !== null) checks.push(['gate.output', outputs[gate], card.gate.output]);
  for (const [name, details, spec] of checks) {
    if (details.dtype !== spec.dtype) {
      throw new CardError(`${where}: field '${name}.dtype' is ${spec.dtype}, model has ${details.dtype}`);
    }
  }
  return {classes, gate};
}

export class Engine {
  constructor(model, card, {sha256Verified, outputs}) {
    this.model = model;
    this.card = card;
    this.sha256Verified = sha256Verified;
    this.outputs = outputs;
  }

  /**
   * Any-size RGB image -> {scores (dequantized, averaged over the card's views), notLesion (the
   * gate's score averaged likewise; null without a gate), preprocessMs, inferenceMs}.
   */
  async infer(img) {
    const {output, gate} = this.card;
    const t0 = performance.now();
    const tensors = inputTensors(img, this.card);
    const t1 = performance.now();
    const views = [];
    const gates = [];
    for (const data of tensors) {
      const raw = await this.run(data);
      views.push(dequantize(raw[this.outputs.classes], output));
      if (gate) gates.push(dequantize(raw[this.outputs.gate], gate.output));
    }
    const t2 = performance.now();
    return {
      scores: views.length === 1 ? views[0] : meanScores(views),
      notLesion: gate ? (gates.length === 1 ? gates[0] : meanScores(gates))[0] : null,
      preprocessMs: t1 - t0, inferenceMs: t2 - t1,
    };
  }

  /** One input tensor -> every output's raw values, in the model's output order. */
  async run(data) {
    const {height, width, channels} = this.card.input;
    const tensor = new Tensor(data, [1, height, width, channels]);
    let outputs;
    try {
      outputs = await this.model.run(tensor);
      return outputs.map((t) => t.toTypedArray());
    } finally {
      tensor.delete();
      outputs?.forEach((t) => t.delete());
    }
  }
}
