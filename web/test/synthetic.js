// tests/web/parity_golden.py's synthetic_image, byte for byte.
import {makeImage} from '../src/preprocess.js';

export function syntheticImage(kind, seed, height, width) {
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const i = (y * width + x) * 3 + c;
        data[i] = pixel(kind, seed, y, x, c, i);
      }
    }
  }
  return makeImage(height, width, data);
}

function pixel(kind, seed, y, x, c, i) {
  if (kind === 'noise') {
    let v = (Math.imul(i + 1, 0x9e3779b1) + seed) >>> 0;
    v = (v ^ (v >>> 15)) >>> 0;
    v = Math.imul(v, 0x85ebca77) >>> 0;
    v = (v ^ (v >>> 13)) >>> 0;
    return v >>> 24;
  }
  if (kind === 'gradient') return (y * 3 + x * 5 + c * 40 + seed) % 256;
  if (kind === 'dark') return (x + y + seed) % 20;
  if (kind === 'flat') return 100 + seed;
  throw new Error(`unknown kind ${kind}`);
}

// tests/web/parity_golden.py's cast: each channel times its gain / 256, clipped at 255.
export function cast(img, gains) {
  const data = img.data.map((v, i) => Math.min(255, (v * gains[i % 3]) >> 8));
  return makeImage(img.height, img.width, data);
}
