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
// SLUICE_UI_SCENARIO=tokens (a server with auth.access_ttl_s: 3) checks the
// page runs on tokens: background refreshes, the stream reopened with each new
// token, 401s, reload, refused refresh, sign-out (see tokensScenario).
// Every scenario logs every request of the browser and checks the API key is
// in no URL, sent only to POST /v1/auth/token, and kept nowhere in the page
// (checkKeyKeptOut).
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
// ---------------------------------------------------------------- tokens

// Every request the browser makes (page, workers, popups): method, URL, the
// Authorization header it carried and the response status.
const netLog = [];
const pathOf = (u) => new URL(u).pathname;
const redact = (s) => String(s).split(KEY).join("<API KEY>");
const isStream = (e) => /^\/v1\/datasets\/[^/]+\/events$/.test(pathOf(e.url));
const isRefresh = (e) => e.method === "POST" && pathOf(e.url) === "/v1/auth/refresh";
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

async function waitUntil(cond, ms, what) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The key is in no URL, was sent (as a header) only to POST /v1/auth/token,
// and is kept nowhere in the page (storage, cookies, the form); every stream
// URL carries a JWT, not the key.
async function checkKeyKeptOut(page, context, result) {
  for (const e of netLog) {
    assert(!e.url.includes(KEY) && !e.url.includes(encodeURIComponent(KEY)),
           "the API key is in a URL: " + e.method + " " + redact(e.url));
    if (e.authorization && e.authorization.includes(KEY)) {
      assert(e.method === "POST" && pathOf(e.url) === "/v1/auth/token",
             "the API key was sent to " + e.method + " " + pathOf(e.url));
    }
  }
  const kept = await page.evaluate(() => {
    const out = [];
    for (const name of ["localStorage", "sessionStorage"]) {
      const st = window[name];
      for (let i = 0; i < st.length; i++) out.push([name + ":" + st.key(i), st.getItem(st.key(i))]);
    }
    out.push(["#key-input", document.getElementById("key-input").value]);
    return out;
  });
  for (const c of await context.cookies()) kept.push(["cookie:" + c.name, c.value]);
  for (const [where, v] of kept) {
    assert(!where.includes(KEY) && !String(v).includes(KEY), "the API key is kept in " + redact(where));
  }
  const streams = netLog.filter(isStream);
  for (const e of streams) {
    const tok = new URL(e.url).searchParams.get("access_token") || "";
    assert(JWT.test(tok), "a stream URL carries no JWT: " + redact(e.url));
    assert(tok !== KEY, "a stream URL carries the key");
    const head = JSON.parse(Buffer.from(tok.split(".")[0], "base64url").toString("utf8"));
    assert(typeof head.alg === "string" && head.alg.toLowerCase() !== "none", "JWT header: " + JSON.stringify(head));
  }
  assert(netLog.some((e) => e.method === "POST" && pathOf(e.url) === "/v1/auth/token"),
         "the page never exchanged the key for tokens");
  result.requests_checked = netLog.length;
  result.stream_urls_checked = streams.length;
  result.storage_checked = kept.map(([w]) => w);
}

// SLUICE_UI_SCENARIO=tokens, on a server with auth.access_ttl_s = 3: the
// access token is renewed in the background (a POST /v1/auth/refresh) and
// the stream reopened with the new one, resuming with last_event_id; files
// uploaded and re-processed after renewals still go live, and every
// timeline event reached the page through one stream or another; a 401
// token_expired renews once and retries; a reload stays signed in; sign-out
// returns to the form and stops everything.
async function tokensScenario(page, context, result) {
  const streams = () => netLog.filter(isStream);
  const tokenOf = (e) => new URL(e.url).searchParams.get("access_token");
  const goodRefreshes = () => netLog.filter((e) => isRefresh(e) && e.status === 200);

  // 1. A background refresh, and the stream reopened with the new token.
  await waitUntil(() => goodRefreshes().length >= 1 && streams().length >= 2, 20000,
                  "a background refresh and a second stream");
  assert(new Set(streams().map(tokenOf)).size >= 2, "the stream was not reopened with a new token");
  const firstRefreshAt = goodRefreshes()[0].at;

  // 2. Files uploaded after it go live.
  // Two with a thumbnail (step 5 needs them), one without.
  const pick = files.filter((p) => /(invoice-acme\.pdf|photo\.jpg|notes\.txt)$/.test(p));
  const some = pick.length === 3 ? pick : files.slice(0, 3);
  await page.setInputFiles("#file-input", some);
  await page.waitForFunction((n) => {
    const rows = [...document.querySelectorAll("#files-body tr")];
    return rows.length === n && rows.every((tr) => tr.dataset.status === "done" || tr.dataset.status === "failed");
  }, some.length, { timeout: FINAL_TIMEOUT_MS, polling: 250 });
  const statusLog = await page.evaluate(() => window.__statusLog);
  const changed = Object.values(statusLog).filter((s) => s.length >= 2 && !["done", "failed"].includes(s[0]));
  assert(changed.length > 0, "no row was seen changing state: " + JSON.stringify(statusLog));

  // 3. One more renewal, then a re-process: the row goes back and ends again,
  // heard on a stream opened (with last_event_id) after the renewal.
  const n0 = streams().length;
  await waitUntil(() => streams().length > n0, 15000, "one more stream renewal");
  const resumed = streams().slice(n0).filter((e) => new URL(e.url).searchParams.has("last_event_id"));
  assert(resumed.length > 0, "a renewed stream did not resume with last_event_id");
  const name = path.basename(some[0]);
  const before = (await page.evaluate((n) => window.__statusLog[n], name)).length;
  await page.click(`#files-body tr[data-name="${name}"] button[aria-label="Re-process ${name}"]`);
  await page.waitForFunction(([n, k]) => {
    const s = window.__statusLog[n] || [];
    return s.length >= k + 2 && (s[s.length - 1] === "done" || s[s.length - 1] === "failed");
  }, [name, before], { timeout: FINAL_TIMEOUT_MS, polling: 100 });
  result.reprocess_log = (await page.evaluate((n) => window.__statusLog[n], name)).slice(before - 1);
  const modes = await page.evaluate(() => window.__liveModes);
  assert(modes.slice(modes.indexOf("on")).every((m) => m === "on"), "the stream dropped: " + JSON.stringify(modes));

  // Nothing lost: every event of the files' timelines reached the page on a
  // stream (the streams are recorded by the EventSource wrapper), and the
  // streams opened after the first renewal delivered some of them.
  const sse = await page.evaluate(() => window.__sse);
  const got = new Set(sse.flatMap((s) => s.seqs));
  const dsId = await page.evaluate(() => localStorage.getItem("sluice.dataset"));
  const listed = (await apiGet(`/v1/datasets/${dsId}/files?limit=1000`)).files;
  const missing = [];
  for (const f of listed) {
    for (const ev of (await apiGet(`/v1/files/${f.id}/events`)).events) if (!got.has(ev.seq)) missing.push(ev.seq);
  }
  assert(missing.length === 0, "events never delivered to the page: " + missing.join(","));
  const later = sse.filter((s) => s.openedAt > firstRefreshAt && s.seqs.length > 0);
  assert(later.length > 0, "no stream opened after a renewal delivered an event");
  result.streams = sse.map((s) => ({ resumed_from: new URL(s.url, BASE).searchParams.get("last_event_id"),
                                      events: s.seqs.length }));
  result.refreshes = goodRefreshes().length;

  // 4. A 401 token_expired (answered here, once) renews once and retries.
  await page.locator(`#files-body tr[data-name="${name}"] td.c-name`).click();
  await page.locator("#drawer").waitFor({ state: "visible" });
  let faked = 0;
  const fileId = listed.find((f) => f.name === name).id;
  await page.route(`**/v1/files/${fileId}/events`, async (route) => {
    if (faked++ === 0) {
      await route.fulfill({ status: 401, contentType: "application/json",
                            body: JSON.stringify({ error: { code: "token_expired", message: "expired" } }) });
    } else {
      await route.continue();
    }
  });
  const r0 = netLog.filter(isRefresh).length;
  await page.click('#tabs button[data-tab="timeline"]');
  await page.waitForFunction(() => document.querySelectorAll("#drawer-body ol.timeline li").length >= 3);
  await page.unroute(`**/v1/files/${fileId}/events`);
  assert(faked === 2, `the timeline was asked ${faked} times, expected 2 (401, then once after renewing)`);
  assert(netLog.filter(isRefresh).length > r0, "no refresh after a 401 token_expired");
  await page.click("#drawer-close");
  await checkKeyKeptOut(page, context, result);

  // 5. A reload stays signed in (the refresh token in sessionStorage), with
  // no key typed, and the stream comes back.
  // Its thumbnails load two at once: each first answered (here) 401
  // token_expired, after a pause, so both calls hold the same expired token
  // together; they must share one refresh (two would send one refresh token
  // twice, and the server would revoke the family).
  const faked401 = new Set();
  await page.route("**/v1/artifacts/**", async (route) => {
    const u = route.request().url();
    if (faked401.has(u)) return route.continue();
    faked401.add(u);
    await new Promise((r) => setTimeout(r, 400));
    await route.fulfill({ status: 401, contentType: "application/json",
                          body: JSON.stringify({ error: { code: "token_expired", message: "expired" } }) });
  });
  const s0 = streams().length;
  await page.reload({ waitUntil: "load" });
  await page.locator("#dataset-view").waitFor({ state: "visible" });
  await page.waitForFunction(() => !document.getElementById("auth-view").hidden ||
    [...document.querySelectorAll("#files-body img.thumb")]
      .filter((img) => img.complete && img.naturalWidth > 0).length >= 2, null, { timeout: 30000 });
  await page.unroute("**/v1/artifacts/**");
  assert(faked401.size >= 2, "fewer than two thumbnails were asked for: " + faked401.size);
  assert(await page.locator("#auth-view").isHidden(),
         "signed out by two concurrent 401s: " + await page.locator("#auth-error").innerText());
  await waitUntil(() => streams().length > s0, 15000, "a stream after the reload");
  await page.waitForFunction(() => document.getElementById("live").dataset.mode === "on", null, { timeout: 15000 });
  assert(await page.locator("#files-body tr").count() === some.length, "the reloaded page lost the rows");
  result.reload_signed_in = true;

  // One refresh at a time, each refresh token sent once (a spent one would
  // revoke the family).
  const refs = netLog.filter(isRefresh);
  for (let i = 1; i < refs.length; i++) {
    assert(refs[i - 1].answeredAt !== null && refs[i - 1].answeredAt <= refs[i].at,
           "two refreshes were in flight at once");
  }
  const sent = refs.map((e) => JSON.parse(e.body || "{}").refresh_token);
  assert(sent.every((t) => typeof t === "string" && t) && new Set(sent).size === sent.length,
         "a refresh token was sent twice (or not at all)");
  result.refresh_tokens_sent = sent.length;

  // 6. A refresh refused (401, answered here) signs out to the form with a
  // message; signing in again reopens the same dataset.
  await page.route("**/v1/auth/refresh", (route) => route.fulfill({
    status: 401, contentType: "application/json",
    body: JSON.stringify({ error: { code: "invalid_grant", message: "refresh token revoked" } }) }));
  await page.locator("#auth-view").waitFor({ state: "visible", timeout: 15000 });
  await page.unroute("**/v1/auth/refresh");
  const said = await page.locator("#auth-error").innerText();
  assert(/session has ended/i.test(said), "no message on a refused refresh: " + said);
  assert(await page.evaluate(() => sessionStorage.length) === 0, "a refused session kept its refresh token");
  await page.fill("#key-input", KEY);
  await page.click("#auth-form button[type=submit]");
  await page.locator("#dataset-view").waitFor({ state: "visible" });
  await page.waitForFunction((n) => document.querySelectorAll("#files-body tr").length === n, some.length);
  result.refused_refresh_signs_out = true;

  // 7. Sign out: the form, nothing kept, and no request after it (no
  // refresh, no stream), over more than one token lifetime.
  await page.click("#signout-btn");
  await page.locator("#auth-view").waitFor({ state: "visible" });
  const left = await page.evaluate(() => [localStorage.length, sessionStorage.length,
                                          document.getElementById("files-body").children.length]);
  assert(left[1] === 0, "sessionStorage is not empty after sign-out");
  assert(left[2] === 0, "the table is still there after sign-out");
  assert(await page.evaluate(() => localStorage.getItem("sluice.dataset")) === null,
         "sign-out kept the dataset id");
  const outAt = Date.now();
  await page.waitForTimeout(4500);
  const after = netLog.filter((e) => e.at > outAt + 200 && pathOf(e.url).startsWith("/v1/"));
  assert(after.length === 0, "requests after sign-out: " + after.map((e) => e.method + " " + pathOf(e.url)).join(", "));
  result.signed_out = true;
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

  // The network log (see checkKeyKeptOut): every request of the context.
  const byRequest = new Map();
  context.on("request", (req) => {
    const e = { method: req.method(), url: req.url(), at: Date.now(),
                authorization: req.headers().authorization || "", status: null, answeredAt: null,
                body: req.method() === "POST" && pathOf(req.url()).startsWith("/v1/auth/") ? req.postData() : null };
    netLog.push(e);
    byRequest.set(req, e);
  });
  context.on("response", (res) => {
    const e = byRequest.get(res.request());
    if (e) { e.status = res.status(); e.answeredAt = Date.now(); }
  });
  // Every EventSource the page opens, with the seqs it delivered.
  await context.addInitScript(() => {
    window.__sse = [];
    const Native = window.EventSource;
    window.EventSource = class extends Native {
      constructor(url, init) {
        super(url, init);
        const rec = { url: String(url), openedAt: Date.now(), seqs: [] };
        window.__sse.push(rec);
        const note = (ev) => {
          try { rec.seqs.push(JSON.parse(ev.data).seq); } catch (_) { /* not JSON */ }
        };
        this.addEventListener("run", note);
        this.addEventListener("file", note);
      }
    };
  });

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
  await checkKeyKeptOut(page, context, result);
  const docs = await page.getAttribute("#api-docs", "href");
  assert(docs === "/v1/openapi.json", "no API docs link to /v1/openapi.json: " + docs);
  // The link works as a plain link (no key, no token): the OpenAPI document.
  const openapi = await page.evaluate(async (u) => {
    const res = await fetch(u, { credentials: "omit" });
    return [res.status, res.ok ? (await res.json()).openapi : null];
  }, docs);
  assert(openapi[0] === 200 && /^3\.1\./.test(openapi[1] || ""),
         "the API docs link does not give an OpenAPI 3.1 document: " + JSON.stringify(openapi));
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
  else if (SCENARIO === "tokens") await tokensScenario(page, context, result);
  else await samplesScenario(page, result);
  await checkKeyKeptOut(page, context, result);

  // No reload (but the tokens scenario's own), no navigation, no uncaught error.
  const reloads = SCENARIO === "tokens" ? 1 : 0;
  const marker = await page.evaluate(() => window.__sluiceNoReload);
  assert(reloads || marker === "marker", "the page was reloaded");
  assert(navigations === 1 + reloads && loads === 1 + reloads, `navigations=${navigations} loads=${loads}`);
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
