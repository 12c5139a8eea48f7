// model card (models/<name>/card.json) -> the checked object the app uses. Like device/card.py,
// a wrong card is refused naming the field, before the model is ever compiled.

export class CardError extends Error {}

const DTYPES = ['int8', 'uint8', 'float32'];
const TTA_MODES = ['none', 'flips'];
// Per-image colour constancy before (x - mean) / std: preprocess.js's colourConstancy.
const COLOUR_MODES = ['none', 'shades_of_grey'];

/** Fetch and check `<modelUrl>/card.json`. */
export async function loadCard(modelUrl) {
  const url = new URL('card.json', modelUrl);
  const response = await fetchOrThrow(url, 'model card');
  let data;
  try {
    data = await response.json();
  } catch (err) {
    throw new CardError(`${url}: not valid JSON (${err.message})`);
  }
  try {
    return parseCard(data);
  } catch (err) {
    throw err instanceof CardError ? new CardError(`${url}: ${err.message}`) : err;
  }
}

export async function fetchOrThrow(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new CardError(`${what} could not be fetched: ${url} (${err.message})`);
  }
  if (!response.ok) throw new CardError(`${what} not found: ${url} (HTTP ${response.status})`);
  return response;
}

function field(obj, key, kind, where, fallback) {
  const path = where ? `${where}.${key}` : key;
  if (obj === null || typeof obj !== 'object' || !(key in obj)) {
    if (fallback !== undefined) return fallback;
    throw new CardError(`missing field '${path}'`);
  }
  const value = obj[key];
  const ok = kind === 'array' ? Array.isArray(value) : kind === 'int' ? Number.isInteger(value)
    : kind === 'object' ? value !== null && typeof value === 'object' && !Array.isArray(value) : typeof value === kind;
  if (!ok) throw new CardError(`field '${path}': expected ${kind}, got ${JSON.stringify(value)}`);
  return value;
}

function tensor(section, where) {
  const dtype = field(section, 'dtype', 'string', where);
  if (!DTYPES.includes(dtype)) throw new CardError(`field '${where}.dtype': expected one of ${DTYPES}, got '${dtype}'`);
  const scale = field(section, 'scale', 'number', where, 0);
  if (dtype !== 'float32' && !(scale > 0)) throw new CardError(`field '${where}.scale': must be > 0 for ${dtype} tensors`);
  return {dtype, scale, zero_point: field(section, 'zero_point', 'int', where, 0)};
}

function triple(section, key, where) {
  const values = field(section, key, 'array', where);
  if (values.length !== 3 || !values.every((v) => typeof v === 'number')) {
    throw new CardError(`field '${where}.${key}': expected 3 numbers, got ${JSON.stringify(values)}`);
  }
  return values;
}

function referral(data, codes) {
  const rule = data.referral;
  if (rule === undefined || rule === null) return null;
  field(data, 'referral', 'object', '');
  const classes = field(rule, 'classes', 'array', 'referral');
  if (!classes.length || !classes.every((c) => codes.includes(c))) {
    throw new CardError(`field 'referral.classes': expected label codes from ${codes}, got ${JSON.stringify(classes)}`);
  }
  const threshold = field(rule, 'threshold', 'number', 'referral');
  if (threshold < 0 || threshold > 1) throw new CardError("field 'referral.threshold': expected a number in [0, 1]");
  return {
    classes, threshold,
    sensitivity: field(rule, 'sensitivity', 'number', 'referral', null),
    specificity: field(rule, 'specificity', 'number', 'referral', null),
    advice: field(rule, 'advice', 'string', 'referral', ''),
  };
}

// The not-a-lesion gate (device/card.py's Gate): a second (1, 1) model output and its threshold.
function gate(data) {
  const section = data.gate;
  if (section === undefined || section === null) return null;
  field(data, 'gate', 'object', '');
  const threshold = field(section, 'threshold', 'number', 'gate');
  if (threshold < 0 || threshold > 1) throw new CardError(`field 'gate.threshold': expected a number in [0, 1], got ${threshold}`);
  const advice = field(section, 'advice', 'string', 'gate').trim();
  if (!advice) throw new CardError("field 'gate.advice': must not be empty");
  return {
    output: tensor(field(section, 'output', 'object', 'gate'), 'gate.output'), threshold, advice,
    method: field(section, 'method', 'string', 'gate'),
  };
}

export function parseCard(data) {
  field({card: data}, 'card', 'object', '');
  const labels = field(data, 'labels', 'array', '').map((item, i) => ({
    code: field(item, 'code', 'string', `labels[${i}]`), name: field(item, 'name', 'string', `labels[${i}]`),
  }));
  if (!labels.length) throw new CardError("field 'labels': must not be empty");
  const codes = labels.map((l) => l.code);
  const inputSection = field(data, 'input', 'object', '');
  const input = {
    ...tensor(inputSection, 'input'),
    height: field(inputSection, 'height', 'int', 'input'),
    width: field(inputSection, 'width', 'int', 'input'),
    channels: field(inputSection, 'channels', 'int', 'input'),
    layout: field(inputSection, 'layout', 'string', 'input', 'NHWC'),
    color_order: field(inputSection, 'color_order', 'string', 'input', 'RGB'),
  };
  if (input.height <= 0 || input.width <= 0 || input.channels !== 3) {
    throw new CardError("field 'input': height and width must be > 0 and channels 3");
  }
  if (input.layout !== 'NHWC' || input.color_order !== 'RGB') throw new CardError("field 'input': only NHWC RGB input is supported");
  const norm = field(data, 'normalization', 'object', '');
  const colour = field(norm, 'colour', 'string', 'normalization', 'none');
  if (!COLOUR_MODES.includes(colour)) {
    // Word for word device/card.py's message, Python's tuple included.
    const modes = COLOUR_MODES.map((m) => `'${m}'`).join(', ');
    throw new CardError(`field 'normalization.colour': expected one of (${modes}), got '${colour}'`);
  }
  const normalization = {mean: triple(norm, 'mean', 'normalization'), std: triple(norm, 'std', 'normalization'), colour};
  if (Math.min(...normalization.std) <= 0) throw new CardError("field 'normalization.std': must be > 0");
  const pre = field(data, 'preprocessing', 'object', '');
  const policy = field(pre, 'policy', 'string', 'preprocessing');
  if (policy !== 'center_crop_resize') throw new CardError(`field 'preprocessing.policy': expected center_crop_resize, got '${policy}'`);
  const tta = field(pre, 'tta', 'string', 'preprocessing', 'none');
  if (!TTA_MODES.includes(tta)) throw new CardError(`field 'preprocessing.tta': expected one of ${TTA_MODES}, got '${tta}'`);
  const zoom = field(pre, 'zoom', 'number', 'preprocessing', 1);
  if (!(zoom > 0 && zoom <= 1)) throw new CardError(`field 'preprocessing.zoom': expected a share in (0, 1], got ${zoom}`);
  const file = field(data, 'model_file', 'object', '');
  return {
    name: field(data, 'name', 'string', ''),
    description: field(data, 'description', 'string', '', ''),
    disclaimer: field(data, 'disclaimer', 'string', '', ''),
    labels, input, normalization,
    output: tensor(field(data, 'output', 'object', ''), 'output'),
    preprocessing: {policy, tta, zoom},
    model_file: {
      path: field(file, 'path', 'string', 'model_file'),
      sha256: field(file, 'sha256', 'string', 'model_file'),
      size_bytes: field(file, 'size_bytes', 'int', 'model_file'),
    },
    referral: referral(data, codes),
    gate: gate(data),
    metrics: field(data, 'metrics', 'object', '', {}),
    dataset: field(data, 'dataset', 'object', '', {}),
    limitations: field(data, 'limitations', 'array', '', []),
  };
}
