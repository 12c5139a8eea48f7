// Drive the built app in headless Chromium: node scripts/drive.mjs <app url> [image ...] [--screenshot png]
//
// Loads the page, waits for the model (or its error), then picks each image with the file input
// as a person would and records what the page shows. Prints one JSON object: load time, status,
// per-image result (the page's result JSON) or error message, and every console message and page
// error. Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM).
import {chromium} from 'playwright-core';
import {parseArgs} from 'node:util';

const {values: opts, positionals: [url, ...images]} = parseArgs({
  allowPositionals: true,
  options: {screenshot: {type: 'string'}, timeout: {type: 'string', default: '60000'}},
});
const timeout = Number(opts.timeout);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const report = {url, console: [], pageErrors: [], results: []};
try {
  const page = await browser.newPage({viewport: {width: 900, height: 1000}});
  page.on('console', (m) => { if (m.type() !== 'debug') report.console.push({type: m.type(), text: m.text()}); });
  page.on('pageerror', (err) => report.pageErrors.push(err.message));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('status').dataset.state !== 'loading', null, {timeout});
  report.status = await page.getAttribute('#status', 'data-state');
  report.statusText = await page.textContent('#status');
  report.error = await page.$eval('#error', (e) => (e.hidden ? '' : e.textContent));
  report.loadMs = Number(await page.getAttribute('body', 'data-load-ms'));
  for (const [i, file] of images.entries()) {
    await page.setInputFiles('#file', file);
    await page.waitForFunction((n) => Number(document.body.dataset.seq) >= n, i + 1, {timeout});
    const shown = await page.evaluate(() => ({
      result: document.getElementById('result').dataset.result,
      error: document.getElementById('error').hidden ? '' : document.getElementById('error').textContent,
      advice: document.getElementById('advice').hidden ? '' : document.getElementById('advice').textContent,
      disclaimer: document.getElementById('result-disclaimer').textContent,
      status: document.getElementById('status').dataset.state,
    }));
    report.results.push({file, ...shown, result: shown.result ? JSON.parse(shown.result) : null});
  }
  if (opts.screenshot) await page.screenshot({path: opts.screenshot, fullPage: true});
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
