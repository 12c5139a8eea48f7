// Build the static app: node build.mjs [--model ../models/<name>] [--out dist]
//
// Writes <out>/index.html, app.js (everything bundled), style.css, wasm/ (LiteRT.js's runtime,
// copied from node_modules, no CDN), models/<name>/ (card.json and its model file) and
// config.json naming that folder. The folder works from any static host and from the device at /app/.
import {copyFile, mkdir, readFile, rm, writeFile} from 'node:fs/promises';
import {basename, dirname, join, resolve} from 'node:path';
import {fileURLToPath} from 'node:url';
import {parseArgs} from 'node:util';

import * as esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const {values: args} = parseArgs({options: {
  // models/DEFAULT names the default model, for the device, the Makefile and this build alike
  model: {type: 'string', default: join(here, '..', 'models', (await readFile(join(here, '..', 'models', 'DEFAULT'), 'utf8')).trim())},
  out: {type: 'string', default: join(here, 'dist')},
}});
const runtime = join(here, 'node_modules', '@litertjs', 'core');
// The relaxed-SIMD build and the plain one for browsers without it; LiteRT.js picks at run time.
// The threaded builds need cross-origin isolation headers a plain static host does not send.
const WASM_FILES = ['litert_wasm_internal', 'litert_wasm_compat_internal'].flatMap((n) => [`${n}.js`, `${n}.wasm`]);

// LiteRT.js 2.5.3 maps only float32, int32 and uint8 tensors to JavaScript and throws
// "Element type INT8 is not supported." for a full-integer model (its WebAssembly runs int8
// fine). This adds int8 (Int8Array) to its table at bundle time; the build fails if the table
// changes, so a new LiteRT.js version gets looked at rather than silently patched.
const DTYPE_TABLE_END = `    dtype: "uint8",
    typedArrayConstructor: Uint8Array,
    elementType: ElementType.UINT8
  }
]);`;
const int8Tensors = {
  name: 'litert-int8-tensors',
  setup(build) {
    build.onLoad({filter: /@litertjs[\\/]core[\\/]dist[\\/]index\.js$/}, async ({path}) => {
      const source = await readFile(path, 'utf8');
      if (!source.includes(DTYPE_TABLE_END)) throw new Error(`${path}: LiteRT.js dtype table not found; check int8 support`);
      const int8 = '  },\n  {\n    dtype: "int8",\n    typedArrayConstructor: Int8Array,\n    elementType: ElementType.INT8\n  }\n]);';
      return {contents: source.replace(DTYPE_TABLE_END, DTYPE_TABLE_END.slice(0, -'  }\n]);'.length) + int8), loader: 'js'};
    });
  },
};

async function copyModel(modelDir, out) {
  const cardPath = join(modelDir, 'card.json');
  const card = JSON.parse(await readFile(cardPath, 'utf8').catch(() => { throw new Error(`model card not found: ${cardPath}`); }));
  const name = basename(resolve(modelDir));
  const target = join(out, 'models', name);
  await mkdir(target, {recursive: true});
  await copyFile(cardPath, join(target, 'card.json'));
  const modelFile = join(modelDir, card.model_file.path);
  await copyFile(modelFile, join(target, card.model_file.path)).catch(() => { throw new Error(`model file not found: ${modelFile}`); });
  return `models/${name}/`;
}

async function main() {
  const out = resolve(args.out);
  await rm(out, {recursive: true, force: true});
  await mkdir(join(out, 'wasm'), {recursive: true});
  await esbuild.build({
    entryPoints: [join(here, 'src', 'main.js')], bundle: true, format: 'esm', target: 'es2022',
    minify: true, sourcemap: true, outfile: join(out, 'app.js'), plugins: [int8Tensors], logLevel: 'warning',
  });
  for (const file of ['index.html', 'style.css']) await copyFile(join(here, 'src', file), join(out, file));
  for (const file of WASM_FILES) await copyFile(join(runtime, 'wasm', file), join(out, 'wasm', file));
  const model = await copyModel(resolve(args.model), out);
  await writeFile(join(out, 'config.json'), JSON.stringify({model}, null, 1) + '\n');
  console.log(`built ${out} (model ${model})`);
}

main().catch((err) => {
  console.error(`build failed: ${err.message}`);
  process.exit(1);
});
