// Drives Debian's headless Chromium through the device page and prints what it saw as one JSON
// object; tests/device/test_page_browser.py starts the real daemon and judges the report.
//
//   node tests/browser/check_page.mjs '{"base": "http://127.0.0.1:5000", "token": "t", "wrong_token": "x",
//                                       "image": "photo.jpg", "screenshot": "out.png"}'
import { createRequire } from "node:module";

// The repository pins one playwright-core, web/'s (web/package-lock.json; tests' web_deps installs it).
const { chromium } = createRequire(new URL("../../web/package.json", import.meta.url))("playwright-core");

const options = JSON.parse(process.argv[2]);
const TIMEOUT_MS = 20000;
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// page.waitForFunction polls with eval, which the page's CSP (rightly) forbids; page.evaluate
// goes through the DevTools protocol and is not subject to it, so poll with that.
async function waitUntil(page, predicate, arg, what) {
  const deadline = Date.now() + TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (await page.evaluate(predicate, arg)) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const report = { console_errors: [], console_errors_after_wrong_token: [], page_errors: [], requests_elsewhere: [] };
const browser = await chromium.launch({ executablePath: options.chromium || "/usr/bin/chromium", args: FLAGS });
try {
  const context = await browser.newContext({ viewport: options.viewport || { width: 1280, height: 960 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  let wrongTokenTried = false;
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      (wrongTokenTried ? report.console_errors_after_wrong_token : report.console_errors).push(msg.text());
    }
  });
  page.on("pageerror", (err) => report.page_errors.push(String(err)));
  page.on("request", (req) => {
    // blob: URLs are the live view's frames, made in the page from /view's JPEGs
    if (!req.url().startsWith(options.base) && !req.url().startsWith(`blob:${options.base}/`)) {
      report.requests_elsewhere.push(req.url());
    }
  });

  const response = await page.goto(options.base + "/");
  report.csp = response.headers()["content-security-policy"] || "";
  report.disclaimer_on_load = await page.locator("header .disclaimer").innerText();

  if (options.token) {
    await page.locator("#login").waitFor({ state: "visible" });
    report.login_shown = true;
    report.app_hidden_before_login = await page.locator("#app").isHidden();
    wrongTokenTried = true;  // Chromium logs the refused POST /login (401) as a console error
    await page.fill("#token", options.wrong_token);
    await page.click("#login-form button[type=submit]");
    await page.locator("#login-error").waitFor({ state: "visible" });
    report.wrong_token_message = await page.locator("#login-error").innerText();
    report.app_hidden_after_wrong_token = await page.locator("#app").isHidden();
    await page.fill("#token", options.token);
    await page.click("#login-form button[type=submit]");
  }
  await page.locator("#app").waitFor({ state: "visible" });

  // The result panel fills in from the live stream, and keeps changing.
  const latest = page.locator("#latest[data-frame]");
  await latest.waitFor();
  const firstFrame = Number(await latest.getAttribute("data-frame"));
  await waitUntil(page, (f) => Number(document.querySelector("#latest").dataset.frame) > f, firstFrame,
    "a newer live result");
  report.latest_frames = [firstFrame, Number(await latest.getAttribute("data-frame"))];
  report.latest_text = await page.locator("#latest").innerText();
  report.latest_bars = await page.locator("#latest .bars li").count();
  await waitUntil(page, () => document.querySelector("#stream").naturalWidth > 0, null, "the live view");
  // The picture and the result beside it are one frame, whenever one looks.
  report.frame_pairs = [];
  for (let i = 0; i < 8; i++) {
    report.frame_pairs.push(await page.evaluate(() => [document.querySelector("#stream").dataset.frame,
      document.querySelector("#latest").dataset.frame]));
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  report.stream_size = await page.evaluate(() => [document.querySelector("#stream").naturalWidth,
    document.querySelector("#stream").naturalHeight]);
  await page.locator("#health dd").first().waitFor();
  report.health_text = await page.locator("#health").innerText();
  await page.locator("#model dl").waitFor();
  report.model_text = await page.locator("#model").innerText();

  // An upload shows a classification.
  await page.setInputFiles("#upload-file", options.image);
  await page.click("#upload-form button[type=submit]");
  await page.locator("#upload-result .class").waitFor();
  report.upload_text = await page.locator("#upload-result").innerText();

  // A capture from the page appears in the list, and is the frame the page showed.
  const shownBefore = Number(await page.getAttribute("#stream", "data-frame"));
  await page.click("#capture-button");
  await page.locator("#captures li img").first().waitFor();
  report.capture_status = await page.locator("#capture-status").innerText();
  report.capture_frames = [shownBefore, Number(await page.getAttribute("#stream", "data-frame"))];
  report.captures_listed = await page.locator("#captures li").count();
  await waitUntil(page, () => document.querySelector("#captures li img").naturalWidth > 0, null,
    "the capture's thumbnail");

  report.cookies = (await context.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));
  report.document_cookie = await page.evaluate(() => document.cookie);
  report.url = page.url();
  report.disclaimers_visible = await page.locator(".disclaimer:visible").count();
  if (options.screenshot) await page.screenshot({ path: options.screenshot, fullPage: true });

  if (options.token) {
    await page.click("#logout-button");
    await page.locator("#login").waitFor({ state: "visible" });
    report.after_logout_latest_status = await page.evaluate(async () => (await fetch("/latest")).status);
  }
  report.ok = true;
} catch (err) {
  report.ok = false;
  report.error = String(err && err.stack ? err.stack : err);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + "\n");
