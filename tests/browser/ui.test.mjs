// ui.test.mjs — Sluice's web UI in a real browser.
//
// Debian's chromium (never a downloaded browser) driven by playwright-core:
// open the UI, enter the API key, create a dataset, upload the sample files
// through the file input, and watch every row reach its final state (done or
// failed) with no reload of the page; at least one thumbnail must load, and
// one file's timeline must open. Screenshots go to $SLUICE_ARTIFACTS
// (ui.png: the table; ui-timeline.png: the drawer; ui-failure.png on failure).
// SLUICE_UI_SCENARIO=waiting instead uploads one PDF to a server whose text
// services are down and checks its row shows "waiting for ..." (ui-waiting.png).
//
// Environment: SLUICE_URL, SLUICE_API_KEY (a tenant key with no datasets yet),
// SLUICE_SAMPLES (dir of files to upload), SLUICE_ARTIFACTS (screenshot dir),
// CHROMIUM (default /usr/bin/chromium), SLUICE_UI_TIMEOUT_S (default 240).
// Prints one JSON line of results; exit 0 on success, 1 on failure.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const BASE = (process.env.SLUICE_URL || "").replace(/\/$/, "");
const KEY = process.env.SLUICE_API_KEY || "";
const SAMPLES = process.env.SLUICE_SAMPLES || "";
const OUT = process.env.SLUICE_ARTIFACTS || "test-artifacts";
const EXE = process.env.CHROMIUM || "/usr/bin/chromium";
const SCENARIO = process.env.SLUICE_UI_SCENARIO || "samples";
const FINAL_TIMEOUT_MS = 1000 * Number(process.env.SLUICE_UI_TIMEOUT_S || 240);

if (!BASE || !KEY || !SAMPLES) {
  console.error("ui.test: set SLUICE_URL, SLUICE_API_KEY and SLUICE_SAMPLES");
  process.exit(2);
}

function assert(cond, msg) {
  if (!cond) throw new Error("assertion failed: " + msg);
}

async function apiGet(p) {
  const res = await fetch(BASE + p, { headers: { Authorization: "Bearer " + KEY } });
  assert(res.ok, `GET ${p} -> ${res.status}`);
  return res.json();
}

const files = fs.readdirSync(SAMPLES)
  .map((n) => path.join(SAMPLES, n))
  .filter((p) => fs.statSync(p).isFile())
  .sort();
assert(files.length > 0, "no sample files in " + SAMPLES);
fs.mkdirSync(OUT, { recursive: true });

// A run waiting for a service (the server's tika is unreachable and nothing
// else is configured): its row says so, with the timeline's reason.
async function waitingScenario(page, result) {
  const pdf = files.find((p) => path.basename(p) === "invoice-acme.pdf");
  assert(pdf, "invoice-acme.pdf is not among the samples");
  await page.setInputFiles("#file-input", [pdf]);
  const row = '#files-body tr[data-name="invoice-acme.pdf"]';
  const stage = row + ' td.stage[data-pipeline="ai_record"]';
  await page.locator(stage + '[data-state="waiting"]').waitFor({ timeout: 60000 });
  await page.waitForFunction((sel) => /waiting for \w+/.test(document.querySelector(sel)?.innerText || ""),
                             stage, { timeout: 30000 });
  result.waiting_badge = (await page.locator(stage).innerText()).trim();
  assert(await page.getAttribute(row, "data-status") === "processing", "a waiting file is processing");
  // The other pipeline is not held up by it.
  await page.locator(row + ' td.stage[data-pipeline="file_view"][data-state="succeeded"]').waitFor({ timeout: 60000 });
  // The run goes back to running at each retry (after 1, 2, 4... s): catch
  // it waiting again, with the summary counting it, for the screenshot.
  await page.mouse.move(0, 0);
  await page.waitForFunction((sel) => /waiting for \w+/.test(document.querySelector(sel)?.innerText || "") &&
                                      /waiting/.test(document.getElementById("counts").innerText),
                             stage, { timeout: 60000, polling: 50 });
  await page.screenshot({ path: path.join(OUT, "ui-waiting.png") });
  await page.locator(row + " td.c-name").click();
  await page.click('#tabs button[data-tab="timeline"]');
  await page.waitForFunction(() => [...document.querySelectorAll("#drawer-body ol.timeline li.waiting")]
    .some((li) => /waiting for/.test(li.innerText)));
  result.ok_waiting = true;
}

async function samplesScenario(page, result) {
  // Upload through the file input (the same path as the picker).
  await page.setInputFiles("#file-input", files);
  await page.waitForFunction((n) => document.querySelectorAll("#files-body tr").length === n,
                             files.length, { timeout: 60000 });
  await page.waitForFunction((n) => document.querySelectorAll("#upload-list .up-item.done").length === n,
                             files.length, { timeout: 60000 });

  // Every row reaches done or failed, live.
  const t0 = Date.now();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#files-body tr")];
    return rows.length > 0 && rows.every((tr) => tr.dataset.status === "done" || tr.dataset.status === "failed");
  }, null, { timeout: FINAL_TIMEOUT_MS, polling: 250 });
  result.final_after_s = (Date.now() - t0) / 1000;

  const rows = await page.$$eval("#files-body tr", (trs) =>
    trs.map((tr) => ({ name: tr.dataset.name, id: tr.dataset.id, status: tr.dataset.status })));
  const statusLog = await page.evaluate(() => window.__statusLog);
  result.rows = Object.fromEntries(rows.map((r) => [r.name, r.status]));
  result.status_log = statusLog;
  result.live_mode = await page.getAttribute("#live", "data-mode");
  result.live_modes = await page.evaluate(() => window.__liveModes);
  // The rows moved on events from the stream: it stayed up the whole time
  // (no fallback to polling after it first opened).
  assert(result.live_modes.slice(result.live_modes.indexOf("on")).every((m) => m === "on"),
         "the event stream dropped: " + JSON.stringify(result.live_modes));

  // The rows agree with the API, one per uploaded file.
  const dsId = await page.evaluate(() => localStorage.getItem("sluice.dataset"));
  const listed = (await apiGet(`/v1/datasets/${dsId}/files?limit=1000`)).files;
  assert(listed.length === files.length, `API lists ${listed.length} files, expected ${files.length}`);
  assert(rows.length === files.length, `${rows.length} rows, expected ${files.length}`);
  const names = new Set(files.map((p) => path.basename(p)));
  for (const f of listed) {
    const row = rows.find((r) => r.id === f.id);
    assert(row, `no row for ${f.name}`);
    assert(row.status === f.status, `${f.name}: row says ${row.status}, API says ${f.status}`);
    assert(names.has(f.name), `unexpected file ${f.name}`);
  }
  // Newest first, as the API lists them.
  assert(JSON.stringify(rows.map((r) => r.id)) === JSON.stringify(listed.map((f) => f.id)) ||
         new Set(listed.map((f) => f.created_at)).size < listed.length,
         "rows are not in the API's order (newest first)");
  if (names.has("truncated.pdf")) assert(result.rows["truncated.pdf"] === "failed", "truncated.pdf should fail");
  if (names.has("invoice-acme.pdf")) assert(result.rows["invoice-acme.pdf"] === "done", "invoice-acme.pdf should be done");
  // Live: some row was seen before its final state and then changed without a reload.
  const changed = Object.values(statusLog).filter((s) => s.length >= 2 && !["done", "failed"].includes(s[0]));
  assert(changed.length > 0, "no row was seen changing state: " + JSON.stringify(statusLog));
  result.rows_seen_changing = changed.length;

  // Record fields as columns: the invoice's total is in its row.
  if (names.has("invoice-acme.pdf")) {
    const text = await page.locator('#files-body tr[data-name="invoice-acme.pdf"]').innerText();
    assert(/INV-2026-0042/.test(text), "the invoice's record fields are not in its row: " + text);
  }

  // Stage badges: a failed file shows its error in the stage cell.
  if (names.has("truncated.pdf")) {
    const stage = await page.locator('#files-body tr[data-name="truncated.pdf"] td.stage[data-pipeline="ai_record"]').innerText();
    assert(/failed|bad_input|no_text|:/.test(stage), "truncated.pdf's ai_record stage shows no failure: " + stage);
  }

  // At least one thumbnail loaded.
  await page.waitForFunction(() => [...document.querySelectorAll("#files-body img.thumb")]
    .some((img) => img.complete && img.naturalWidth > 0), null, { timeout: 30000 });
  result.thumbnails_loaded = await page.$$eval("#files-body img.thumb",
    (imgs) => imgs.filter((i) => i.complete && i.naturalWidth > 0).length);

  await page.mouse.move(0, 0);
  await page.waitForTimeout(1000); // let the last row's change highlight fade
  await page.screenshot({ path: path.join(OUT, "ui.png"), fullPage: true });

  // One file's timeline.
  const pick = names.has("invoice-acme.pdf") ? "invoice-acme.pdf" : rows[0].name;
  await page.locator(`#files-body tr[data-name="${pick}"] td.c-name`).click();
  await page.locator("#drawer").waitFor({ state: "visible" });
  await page.click('#tabs button[data-tab="timeline"]');
  await page.waitForFunction(() => document.querySelectorAll("#drawer-body ol.timeline li").length >= 3);
  const tl = await page.locator("#drawer-body ol.timeline").innerText();
  assert(/succeeded|failed/i.test(tl), "the timeline shows no ending: " + tl);
  result.timeline_entries = await page.locator("#drawer-body ol.timeline li").count();
  await page.waitForTimeout(250); // the drawer's slide-in
  await page.screenshot({ path: path.join(OUT, "ui-timeline.png") });

  // The preview opens too.
  if (pick === "invoice-acme.pdf") {
    await page.click('#tabs button[data-tab="preview"]');
    await page.waitForFunction(() => {
      const img = document.querySelector("#drawer-body img.preview-img");
      return img && img.complete && img.naturalWidth > 0;
    });
    await page.click('#tabs button[data-tab="text"]');
    await page.waitForFunction(() => /ACME|INVOICE/i.test(document.querySelector("#drawer-body pre.text")?.textContent || ""));
  }

}
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-chromium-"));
const result = { files: files.length };
let context;
let page;
const pageErrors = [];
let exitCode = 0;

try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: EXE,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
  });
  page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => pageErrors.push(String(e)));

  // Every main-frame navigation (a reload included) is counted; exactly one is
  // allowed: the first load.
  let navigations = 0;
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations++; });
  let loads = 0;
  page.on("load", () => loads++);

  await page.goto(BASE + "/", { waitUntil: "load" });
  await page.evaluate(() => { window.__sluiceNoReload = "marker"; });

  // Sign in.
  await page.locator("#auth-view").waitFor({ state: "visible" });
  await page.fill("#key-input", KEY);
  await page.click("#auth-form button[type=submit]");

  // A new tenant has no dataset: the page asks for the first one.
  await page.locator("#create-view").waitFor({ state: "visible" });
  await page.fill("#ds-name", "browser samples");
  await page.click("#create-form button[type=submit]");
  await page.locator("#dataset-view").waitFor({ state: "visible" });
  await page.locator("#files-empty").waitFor({ state: "visible" });

  // How the page hears about changes: "on" (the event stream), "retry",
  // "poll" (fallback), "down". Every change is kept.
  await page.evaluate(() => {
    const live = document.getElementById("live");
    window.__liveModes = [live.dataset.mode || ""];
    new MutationObserver(() => {
      const m = live.dataset.mode || "";
      if (window.__liveModes[window.__liveModes.length - 1] !== m) window.__liveModes.push(m);
    }).observe(live, { attributes: true });
  });
  await page.waitForFunction(() => document.getElementById("live").dataset.mode === "on",
                             null, { timeout: 15000 });

  // Watch each row's data-status from inside the page: the first status seen
  // and every change, so "live" means a row was seen changing, not only ending.
  await page.evaluate(() => {
    window.__statusLog = {};
    const log = (tr) => {
      const name = tr.dataset.name;
      const st = tr.dataset.status;
      const seen = (window.__statusLog[name] ||= []);
      if (seen[seen.length - 1] !== st) seen.push(st);
    };
    new MutationObserver(() => {
      for (const tr of document.querySelectorAll("#files-body tr")) log(tr);
    }).observe(document.getElementById("files-body"), { childList: true, subtree: true, attributes: true });
  });

  if (SCENARIO === "waiting") await waitingScenario(page, result);
  else await samplesScenario(page, result);

  // No reload, no navigation, no uncaught error.
  const marker = await page.evaluate(() => window.__sluiceNoReload);
  assert(marker === "marker", "the page was reloaded");
  assert(navigations === 1 && loads === 1, `navigations=${navigations} loads=${loads}`);
  assert(pageErrors.length === 0, "uncaught errors in the page: " + pageErrors.join("; "));
  result.navigations = navigations;
  result.ok = true;
} catch (e) {
  exitCode = 1;
  result.ok = false;
  result.error = String(e && e.stack ? e.stack : e);
  result.page_errors = pageErrors;
  if (page) {
    try {
      result.rows_at_failure = await page.$$eval("#files-body tr", (trs) =>
        trs.map((tr) => tr.dataset.name + "=" + tr.dataset.status));
      const shot = SCENARIO === "samples" ? "ui-failure.png" : "ui-" + SCENARIO + "-failure.png";
      await page.screenshot({ path: path.join(OUT, shot), fullPage: true });
    } catch (_) { /* the page is gone */ }
  }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

console.log(JSON.stringify(result));
process.exit(exitCode);
