// A picked file -> HxWx3 RGB pixels, refusing what device/decode.py's decode_image refuses.
import {fromRgba} from './preprocess.js';

// device.decode.MAX_DECODE_PIXELS: larger images are refused before their pixels are decoded.
export const MAX_DECODE_PIXELS = 40_000_000;

export class ImageDecodeError extends Error {}

/** An image File or Blob -> {data, height, width} RGB uint8; ImageDecodeError with the reason. */
export async function decodeFile(file) {
  const name = file.name || 'image';
  if (!file.size) throw new ImageDecodeError(`${name}: empty file`);
  const [width, height] = await declaredSize(file, name);
  if (width * height > MAX_DECODE_PIXELS) {
    throw new ImageDecodeError(`${name}: image too large: ${width}x${height} pixels (limit ${MAX_DECODE_PIXELS})`);
  }
  let bitmap;
  try {
    // No colour management: the device (OpenCV) uses the stored pixel values as they are.
    bitmap = await createImageBitmap(file, {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  } catch (err) {
    throw new ImageDecodeError(`${name}: not a decodable image (${err.message})`);
  }
  try {
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(bitmap, 0, 0);
    return fromRgba(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data, bitmap.height, bitmap.width);
  } finally {
    bitmap.close();
  }
}

// An <img> reads the header and reports the size without the page holding the pixels, so a
// small file that declares a huge image is refused before anything large is allocated.
async function declaredSize(file, name) {
  const url = URL.createObjectURL(file);
  try {
    const img = new Image();
    img.decoding = 'async';
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new ImageDecodeError(`${name}: not a decodable image`));
      img.src = url;
    });
    return [img.naturalWidth, img.naturalHeight];
  } finally {
    URL.revokeObjectURL(url);
  }
}
