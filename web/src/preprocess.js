// The browser's copy of device/preprocess.py: centre crop, resize, zoom, flips, colour constancy,
// normalization and quantization, on HxWx3 RGB uint8 images ({data: Uint8Array, height, width}).
//
// The resize functions repeat OpenCV's integer and float32 arithmetic step by step (cv2.resize,
// INTER_AREA when shrinking, INTER_LINEAR when enlarging), because the device's numbers are the
// ones the model card's metrics were measured with. web/test/parity.json holds the Python side's
// outputs and the node tests compare against them.

const fround = Math.fround;
// cv2 INTER_LINEAR's fixed-point weights: INTER_RESIZE_COEF_BITS.
const COEF_BITS = 11;
const COEF_SCALE = 1 << COEF_BITS;

/** Round half to even, as numpy.rint, Python's round() and OpenCV's cvRound do. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function makeImage(height, width, data = new Uint8Array(height * width * 3)) {
  if (data.length !== height * width * 3) {
    throw new Error(`image data has ${data.length} bytes, expected ${height}x${width}x3`);
  }
  return {data, height, width};
}

/** RGBA bytes (canvas ImageData) -> RGB image; alpha is dropped, as cv2's BGRA2RGB does. */
export function fromRgba(rgba, height, width) {
  const out = new Uint8Array(height * width * 3);
  for (let i = 0, j = 0; j < out.length; i += 4, j += 3) {
    out[j] = rgba[i];
    out[j + 1] = rgba[i + 1];
    out[j + 2] = rgba[i + 2];
  }
  return makeImage(height, width, out);
}

/** The largest centred box of aspect width/height in an h x w image: [y0, x0, cropH, cropW]. */
export function centerCropBox(h, w, height, width) {
  const target = width / height;
  if (w / h > target) {
    const cropW = Math.max(1, roundHalfEven(h * target));
    return [0, Math.floor((w - cropW) / 2), h, cropW];
  }
  const cropH = Math.max(1, roundHalfEven(w / target));
  return [Math.floor((h - cropH) / 2), 0, cropH, w];
}

export function crop(img, [y0, x0, cropH, cropW]) {
  if (y0 === 0 && x0 === 0 && cropH === img.height && cropW === img.width) return img;
  const out = new Uint8Array(cropH * cropW * 3);
  for (let y = 0; y < cropH; y++) {
    const from = ((y0 + y) * img.width + x0) * 3;
    out.set(img.data.subarray(from, from + cropW * 3), y * cropW * 3);
  }
  return makeImage(cropH, cropW, out);
}

export function centerCrop(img, height, width) {
  return crop(img, centerCropBox(img.height, img.width, height, width));
}

/** cv2.resize(..., INTER_AREA) for a shrink (both factors >= 1). */
export function resizeArea(img, dh, dw) {
  const scaleX = 1 / (dw / img.width);
  const scaleY = 1 / (dh / img.height);
  if (scaleX < 1 || scaleY < 1) throw new Error('resizeArea only shrinks');
  const fast = Math.abs(scaleX - Math.round(scaleX)) < Number.EPSILON &&
    Math.abs(scaleY - Math.round(scaleY)) < Number.EPSILON;
  return fast ? resizeAreaInteger(img, dh, dw, Math.round(scaleX), Math.round(scaleY))
    : resizeAreaGeneral(img, dh, dw, scaleX, scaleY);
}

// Integer factors: block sums. OpenCV rounds the 2x2 case as (sum + 2) >> 2 (half up) and
// the others as cvRound(sum * (1.f / area)) (half to even).
function resizeAreaInteger(img, dh, dw, sx, sy) {
  const out = new Uint8Array(dh * dw * 3);
  const rowValues = dw * 3;
  const halfUp = sx === 2 && sy === 2;
  const inv = fround(1 / (sx * sy));
  const src = img.data;
  for (let dy = 0; dy < dh; dy++) {
    for (let v = 0; v < rowValues; v++) {
      const dx = Math.floor(v / 3);
      const c = v % 3;
      let sum = 0;
      for (let ky = 0; ky < sy; ky++) {
        const row = (dy * sy + ky) * img.width;
        for (let kx = 0; kx < sx; kx++) sum += src[(row + dx * sx + kx) * 3 + c];
      }
      out[dy * rowValues + v] = halfUp ? (sum + 2) >> 2 : saturateU8(fround(sum * inv));
    }
  }
  return makeImage(dh, dw, out);
}

// cv2's computeResizeAreaTab: (source index, destination index, weight) for one axis.
function areaTable(ssize, dsize, scale) {
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1);
    const sx2 = Math.min(Math.floor(fsx2), ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([sx1 - 1, dx, fround((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([sx, dx, fround(1 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([sx2, dx, fround(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
  }
  return tab;
}

// Non-integer factors: float32 weighted sums over the covered source cells, row by row.
function resizeAreaGeneral(img, dh, dw, scaleX, scaleY) {
  const xtab = areaTable(img.width, dw, scaleX);
  const ytab = areaTable(img.height, dh, scaleY);
  const n = dw * 3;
  const out = new Uint8Array(dh * n);
  const buf = new Float32Array(n);
  const sum = new Float32Array(n);
  const src = img.data;
  let prevDy = ytab[0][1];
  const flush = (dy) => {
    for (let i = 0; i < n; i++) out[dy * n + i] = saturateU8(sum[i]);
  };
  for (const [sy, dy, beta] of ytab) {
    buf.fill(0);
    const row = sy * img.width * 3;
    for (const [sx, dx, alpha] of xtab) {
      for (let c = 0; c < 3; c++) {
        buf[dx * 3 + c] = fround(buf[dx * 3 + c] + fround(src[row + sx * 3 + c] * alpha));
      }
    }
    if (dy !== prevDy) {
      flush(prevDy);
      for (let i = 0; i < n; i++) sum[i] = fround(beta * buf[i]);
      prevDy = dy;
    } else {
      for (let i = 0; i < n; i++) sum[i] = fround(sum[i] + fround(beta * buf[i]));
    }
  }
  flush(prevDy);
  return makeImage(dh, dw, out);
}

function saturateU8(x) {
  return Math.min(255, Math.max(0, roundHalfEven(x)));
}

// cv2 INTER_LINEAR's sample positions and 11-bit weights for one axis.
function linearTable(ssize, dsize) {
  const scale = 1 / (dsize / ssize);
  const index = new Int32Array(dsize);
  const weights = new Int32Array(dsize * 2);
  for (let d = 0; d < dsize; d++) {
    let f = fround((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = fround(f - s);
    if (s < 0) [f, s] = [0, 0];
    if (s >= ssize - 1) [f, s] = [0, ssize - 1];
    index[d] = s;
    weights[d * 2] = roundHalfEven(fround(fround(1 - f) * COEF_SCALE));
    weights[d * 2 + 1] = roundHalfEven(fround(f * COEF_SCALE));
  }
  return {index, weights};
}

/** device.preprocess.resize_linear: OpenCV INTER_LINEAR's fixed-point arithmetic in integers, the
 * same bytes on every machine (the device does not use cv2.resize here for that reason). */
export function resizeLinear(img, dh, dw) {
  const xs = linearTable(img.width, dw);
  const ys = linearTable(img.height, dh);
  const out = new Uint8Array(dh * dw * 3);
  const horizontal = (sy) => {
    const row = new Int32Array(dw * 3);
    const base = sy * img.width * 3;
    for (let dx = 0; dx < dw; dx++) {
      const s = xs.index[dx];
      const next = Math.min(s + 1, img.width - 1);
      for (let c = 0; c < 3; c++) {
        row[dx * 3 + c] = img.data[base + s * 3 + c] * xs.weights[dx * 2] +
          img.data[base + next * 3 + c] * xs.weights[dx * 2 + 1];
      }
    }
    return row;
  };
  for (let dy = 0; dy < dh; dy++) {
    const s = ys.index[dy];
    const r0 = horizontal(s);
    const r1 = horizontal(Math.min(s + 1, img.height - 1));
    const b0 = ys.weights[dy * 2];
    const b1 = ys.weights[dy * 2 + 1];
    for (let i = 0; i < r0.length; i++) {
      out[dy * dw * 3 + i] = Math.min(255, Math.max(0, (r0[i] * b0 + r1[i] * b1 + (1 << (2 * COEF_BITS - 1))) >> (2 * COEF_BITS)));
    }
  }
  return makeImage(dh, dw, out);
}

/** device.preprocess.fit_to_input: centre-crop to the model's aspect, then resize to height x width. */
export function fitToInput(img, height, width) {
  const cropped = centerCrop(img, height, width);
  if (cropped.height === height && cropped.width === width) return cropped;
  return cropped.height >= height ? resizeArea(cropped, height, width) : resizeLinear(cropped, height, width);
}

/** device.preprocess.centre_zoom: the centred `zoom` share of each side, enlarged back to the
 * image's size (the card's preprocessing.zoom; 1 returns `img`). */
export function centreZoom(img, zoom) {
  if (zoom === 1) return img;
  const cropH = Math.max(1, roundHalfEven(img.height * zoom));
  const cropW = Math.max(1, roundHalfEven(img.width * zoom));
  const box = [Math.floor((img.height - cropH) / 2), Math.floor((img.width - cropW) / 2), cropH, cropW];
  return resizeLinear(crop(img, box), img.height, img.width);
}

function flip(img, {rows, columns}) {
  const {height, width, data} = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < height; y++) {
    const sy = rows ? height - 1 - y : y;
    for (let x = 0; x < width; x++) {
      const sx = columns ? width - 1 - x : x;
      const to = (y * width + x) * 3;
      const from = (sy * width + sx) * 3;
      out[to] = data[from];
      out[to + 1] = data[from + 1];
      out[to + 2] = data[from + 2];
    }
  }
  return makeImage(height, width, out);
}

/** device.preprocess.tta_views: the views whose outputs a card's test-time augmentation averages. */
export function ttaViews(img, mode) {
  if (mode === 'none') return [img];
  if (mode === 'flips') {
    return [img, flip(img, {columns: true}), flip(img, {rows: true}), flip(img, {rows: true, columns: true})];
  }
  throw new Error(`preprocessing.tta: expected "none" or "flips", got ${JSON.stringify(mode)}`);
}

// device/preprocess.py's shades of grey (Finlayson & Trezzi 2004): each channel's illuminant is its
// Minkowski p-norm mean, p = 6, and a fixed-point gain brings the three to their average. The sums
// of count * level**6 outgrow a double's 53 bits, so they are BigInts, exact as Python's ints; from
// there on it is the same double and integer arithmetic as the device's, so the same bytes.
const SHADES_OF_GREY_POWER = 6;
const GAIN_BITS = 12;
const POWERS = Array.from({length: 256}, (_, level) => BigInt(level) ** BigInt(SHADES_OF_GREY_POWER));

/** device.preprocess.shades_of_grey_levels: what each level of each channel of `img` becomes, as
 * 256 x 3 bytes (level * 3 + channel). A channel that is all zero keeps its levels. */
export function shadesOfGreyLevels(img) {
  const n = img.height * img.width;
  if (!n) throw new Error('shades of grey: empty image');
  const counts = new Uint32Array(256 * 3);
  for (let i = 0; i < img.data.length; i++) counts[img.data[i] * 3 + (i % 3)]++;
  const norms = [0, 1, 2].map((c) => {
    let total = 0n;
    for (let level = 1; level < 256; level++) total += BigInt(counts[level * 3 + c]) * POWERS[level];
    return Math.pow(Number(total) / n, 1 / SHADES_OF_GREY_POWER);
  });
  const grey = (norms[0] + norms[1] + norms[2]) / 3;
  const one = 2 ** GAIN_BITS;
  const gains = norms.map((norm) => (norm > 0 ? Math.floor(grey / norm * one + 0.5) : one));
  const levels = new Uint8Array(256 * 3);
  for (let level = 0; level < 256; level++) {
    // Python's (level * gain + one / 2) >> GAIN_BITS; a division, since `>>` would cut to 32 bits.
    for (let c = 0; c < 3; c++) levels[level * 3 + c] = Math.min(255, Math.floor((level * gains[c] + one / 2) / one));
  }
  return levels;
}

/** device.preprocess.colour_constancy on one image: its colours balanced as the card's
 * normalization.colour says ('none' returns `img`). */
export function colourConstancy(img, mode) {
  if (mode === 'none') return img;
  if (mode !== 'shades_of_grey') {
    throw new Error(`normalization.colour: expected "none" or "shades_of_grey", got ${JSON.stringify(mode)}`);
  }
  const levels = shadesOfGreyLevels(img);
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = levels[img.data[i] * 3 + (i % 3)];
  return makeImage(img.height, img.width, out);
}

const INTEGER_TYPES = {int8: [Int8Array, -128, 127], uint8: [Uint8Array, 0, 255]};

/** (x - mean) / std per channel in float32, then the input tensor's quantization (none for float32). */
export function toInputTensor(img, {mean, std}, {dtype, scale, zero_point: zeroPoint}) {
  const m = mean.map(fround);
  const s = std.map(fround);
  const n = img.data.length;
  if (dtype === 'float32') {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = fround(fround(img.data[i] - m[i % 3]) / s[i % 3]);
    return out;
  }
  const [Type, lo, hi] = INTEGER_TYPES[dtype] ?? [];
  if (!Type) throw new Error(`input.dtype: expected int8, uint8 or float32, got ${JSON.stringify(dtype)}`);
  const qs = fround(scale);
  const out = new Type(n);
  for (let i = 0; i < n; i++) {
    const x = fround(fround(img.data[i] - m[i % 3]) / s[i % 3]);
    out[i] = Math.min(hi, Math.max(lo, roundHalfEven(fround(x / qs)) + zeroPoint));
  }
  return out;
}

/** device.engine's tensors for any-size `img`: fitted, zoomed, colour balanced, then each
 * test-time view's input tensor, as the card (parseCard's object) asks. */
export function inputTensors(img, {input, normalization, preprocessing}) {
  const zoomed = centreZoom(fitToInput(img, input.height, input.width), preprocessing.zoom);
  // Colour constancy before the flips: they share the zoomed view's histogram, so once is enough.
  return ttaViews(colourConstancy(zoomed, normalization.colour), preprocessing.tta)
    .map((view) => toInputTensor(view, normalization, input));
}

/** Integer output tensor -> float32 scores with the card's output scale and zero point. */
export function dequantize(q, {dtype, scale, zero_point: zeroPoint}) {
  if (dtype === 'float32') return Float32Array.from(q);
  const s = fround(scale);
  return Float32Array.from(q, (v) => fround((v - zeroPoint) * s));
}
