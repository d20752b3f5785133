// pipelines.test.mjs — the web UI's Pipelines page (web/pipelines.js) in a real browser.
//
// First, without a browser, the page's pure parts on made-up flows: the path
// of a run rebuilt from a timeline (a retry, a fallback, an always), and the
// layout (a retry loop is a back edge; long edges arc; boxes never overlap).
// Then Debian's chromium (never a downloaded browser) driven by playwright-core:
// sign in, create a dataset, open Pipelines: ai_record is an SVG graph with
// the API's nodes and edges (each edge by from/to/kind), fallback edges dashed,
// next edges solid, a legend, a versions table. Upload a text file, follow its
// row's "show path" link: tika and record are highlighted as succeeded and the
// transition tika -> record is taken; ocr and textract are not, nor any
// fallback edge — all checked against the file's timeline from the API too.
// The file picker shows the same path; a damaged PDF's failed path (with
// SLUICE_SAMPLES) matches its timeline. A made-up 30-step flow drawn in the
// page has no overlapping boxes. Screenshots: $SLUICE_ARTIFACTS/pipelines.png
// (the graph), pipelines-files.png (the "show path" link), pipelines-path.png
// (a file's path), pipelines-failed.png, pipelines-30.png (30 steps),
// pipelines-failure.png on failure.
//
// Environment: SLUICE_URL, SLUICE_API_KEY (a tenant key with no datasets yet),
// SLUICE_ARTIFACTS (screenshot dir), SLUICE_SAMPLES (optional), CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line of results; exit 0 on success, 1 on failure.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

// The page's module, loaded as it is served (web/ has no package.json saying
// "module", so node would read a plain path to it as CommonJS).
const { layout, runPath } = await import("data:text/javascript;base64," + fs.readFileSync(
  new URL("../../web/pipelines.js", import.meta.url)).toString("base64"));

const BASE = (process.env.SLUICE_URL || "").replace(/\/$/, "");
const KEY = process.env.SLUICE_API_KEY || "";
const OUT = process.env.SLUICE_ARTIFACTS || "test-artifacts";
const SAMPLES = process.env.SLUICE_SAMPLES || ""; // optional: truncated.pdf, a file that fails
const EXE = process.env.CHROMIUM || "/usr/bin/chromium";

if (!BASE || !KEY) {
  console.error("pipelines.test: set SLUICE_URL and SLUICE_API_KEY");
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

// ---- the pure parts, on made-up flows

function offlineChecks(result) {
  const g = {
    nodes: [{ id: "fetch" }, { id: "parse" }, { id: "repair" }, { id: "store" }, { id: "notify" }],
    edges: [{ from: "fetch", to: "parse", on: "next" }, { from: "parse", to: "store", on: "next" },
            { from: "parse", to: "repair", on: "fallback" }, { from: "repair", to: "parse", on: "next" },
            { from: "store", to: "notify", on: "always" }],
  };
  const L = layout(g);
  const kindOf = (f, t) => L.edges.find((r) => r.edge.from === f && r.edge.to === t).kind;
  assert(L.edges.length === g.edges.length, "every edge is routed");
  assert(kindOf("repair", "parse") === "back", "the retry loop repair -> parse is a back edge");
  assert(kindOf("fetch", "parse") === "forward", "fetch -> parse goes to the next column");
  assert(L.nodes.get("fetch").col === 0 && L.start === "fetch", "the first node starts, in column 0");
  assert(L.terminals.has("notify") && !L.terminals.has("store"), "notify ends, store does not");

  const ev = (kind, step, detail) => ({ run_id: "r1", kind, step, detail: detail || {} });
  const events = [
    ev("started", "fetch"), ev("step_started", "fetch", { attempt: 1 }), ev("step_succeeded", "fetch"),
    ev("step_started", "parse", { attempt: 1 }), ev("step_failed", "parse", { error: "timeout" }),
    ev("retry", "parse", { attempt: 2 }), ev("step_started", "parse", { attempt: 2 }),
    ev("step_failed", "parse", { error: "bad_input" }),
    ev("fallback", "parse", { from: "parse", to: "repair", error: "bad_input" }),
    ev("step_started", "repair", { attempt: 1 }), ev("step_succeeded", "repair"),
    ev("step_started", "parse", { attempt: 1 }), ev("step_succeeded", "parse"),
    ev("step_started", "store", { attempt: 1 }), ev("step_failed", "store", { error: "unavailable" }),
    ev("always", "store", { from: "store", to: "notify", error: "unavailable" }),
    ev("step_started", "notify", { attempt: 1 }), ev("step_succeeded", "notify"), ev("succeeded", "notify"),
    { run_id: "other", kind: "step_started", step: "repair", detail: {} },
  ];
  const p = runPath(events, "r1", g);
  const key = (t) => t.from + ">" + t.to + ":" + t.on;
  assert(JSON.stringify(p.taken.map(key)) === JSON.stringify(
    ["fetch>parse:next", "parse>repair:fallback", "repair>parse:next", "parse>store:next", "store>notify:always"]),
    "transitions taken: " + JSON.stringify(p.taken.map(key)));
  assert(p.steps.get("parse").retries === 1 && p.steps.get("parse").outcome === "succeeded",
         "parse: retried once, then succeeded (after its repair)");
  assert(p.steps.get("store").outcome === "failed" && p.steps.get("store").error === "unavailable", "store failed");
  assert(p.ended === "succeeded", "the run ended succeeded");
  assert(!p.taken.some((t) => t.from === "store" && t.on === "next"), "no next edge out of a failed step");
  result.offline = "ok";
}

// ---- the page

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-chromium-"));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-pipelines-"));
const result = {};
let context;
let page;
const pageErrors = [];
let exitCode = 0;

try {
  offlineChecks(result);
  fs.mkdirSync(OUT, { recursive: true });
  const textFile = path.join(tmp, "note.txt");
  fs.writeFileSync(textFile, "Invoice INV-7 from Acme Ltd.\nTotal due: 120.50 EUR\nDate: 2026-03-01\n");

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

  await page.goto(BASE + "/", { waitUntil: "load" });
  await page.locator("#auth-view").waitFor({ state: "visible" });
  await page.fill("#key-input", KEY);
  await page.click("#auth-form button[type=submit]");
  await page.locator("#create-view").waitFor({ state: "visible" });
  await page.fill("#ds-name", "pipelines page");
  await page.click("#create-form button[type=submit]");
  await page.locator("#dataset-view").waitFor({ state: "visible" });
  await page.evaluate(() => document.getElementById("toasts").replaceChildren()); // clean screenshots

  // ---- the graph of ai_record, against the API
  const api = await apiGet("/v1/pipelines/ai_record");
  assert(api.graph && api.graph.nodes.length === 4, "the API's ai_record has 4 nodes: " + JSON.stringify(api.graph));
  await page.click("#pipelines-btn");
  await page.locator("#pipelines-view").waitFor({ state: "visible" });
  assert(await page.locator("#dataset-view").isHidden(), "the files view is hidden on the Pipelines page");
  await page.click('.pg-item[data-name="ai_record"]');
  const svgSel = 'svg.pgraph[data-pipeline="ai_record"]';
  await page.locator(svgSel).waitFor();
  // Read the graph in the page, in one go, once it is drawn and styled: the click
  // re-renders it, and a read between the wait and the read once saw a detached
  // copy whose computed dash is "" (under ASan, and once in CI without it). So
  // the wait itself returns the reading; after 10 s the graph is read as it is,
  // and a graph that is never dashed still fails below.
  const read = ([sel, stable]) => {
    // the one on screen: a hidden copy (a view drawn before) computes no dash
    const all = [...document.querySelectorAll(sel)];
    const svg = all.find((e) => e.getClientRects().length > 0) || all[0];
    if (!svg || !svg.isConnected) return null;
    const r = {
      nodes: [...svg.querySelectorAll("g.node")].map((g) => g.dataset.id),
      edges: [...svg.querySelectorAll("path.edge")].map((p) => ({
        from: p.dataset.from, to: p.dataset.to, on: p.dataset.on,
        dash: getComputedStyle(p).strokeDasharray, title: p.querySelector("title")?.textContent || "" })),
      label: svg.getAttribute("aria-label"),
      titles: [...svg.querySelectorAll("g.node > title")].length,
    };
    const fb = r.edges.filter((e) => e.on === "fallback");
    return !stable || (fb.length > 0 && fb.every((e) => e.dash !== "")) ? r : null;
  };
  const stable = await page.waitForFunction(read, [svgSel, true], { timeout: 10000 })
    .then((h) => h.jsonValue()).catch(() => null);
  const drawn = stable || await page.evaluate(read, [svgSel, false]);
  result.nodes = drawn.nodes;
  result.edges = drawn.edges.length;
  assert(JSON.stringify([...drawn.nodes].sort()) === JSON.stringify(api.graph.nodes.map((n) => n.id).sort()),
         "nodes drawn " + JSON.stringify(drawn.nodes) + " vs the API's " + JSON.stringify(api.graph.nodes));
  assert(drawn.edges.length === api.graph.edges.length,
         `${drawn.edges.length} edges drawn, the API has ${api.graph.edges.length}`);
  const k = (e) => e.from + ">" + e.to + ":" + e.on;
  assert(JSON.stringify(drawn.edges.map(k).sort()) === JSON.stringify(api.graph.edges.map(k).sort()),
         "edges drawn " + JSON.stringify(drawn.edges.map(k)) + " vs the API's " + JSON.stringify(api.graph.edges.map(k)));
  const fallbacks = drawn.edges.filter((e) => e.on === "fallback");
  assert(fallbacks.length >= 1, "ai_record has a fallback edge");
  assert(fallbacks.every((e) => e.dash && e.dash !== "none"), "fallback edges are dashed: " + JSON.stringify(fallbacks));
  assert(drawn.edges.filter((e) => e.on === "next").every((e) => e.dash === "none"), "next edges are solid");
  assert(drawn.edges.every((e) => e.title.includes("→")), "every edge has a title");
  assert(drawn.titles === 4 && /ai_record: 4 steps, 5 transitions|ai_record: 4 steps/.test(drawn.label),
         "the graph and its nodes are labelled: " + drawn.label);
  assert(await page.locator(".pg-legend").innerText().then((t) => /fallback/.test(t) && /always/.test(t)),
         "a legend names the edge kinds");
  assert(await page.locator("table.pg-versions tbody tr").count() >= 1, "a versions table");
  const vtext = await page.locator("table.pg-versions").innerText();
  assert(!api.version || vtext.includes(api.version.slice(0, 12)), "the version is shown: " + vtext);
  await page.screenshot({ path: path.join(OUT, "pipelines.png"), fullPage: true });

  // Versions kept by the server (GET /v1/pipelines/{name} with "versions"):
  // newest revision first, the config's seed last, only the current marked.
  const vers = await page.evaluate(async () => {
    const m = await import("/ui/pipelines.js");
    const t = m.versionsTable({ name: "x", version: "c".repeat(64), revision: 2, source: "api", versions: [
      { version: "a".repeat(64), revision: null, created_at: null, source: "config" },
      { version: "b".repeat(64), revision: 1, created_at: "2026-12-01T10:00:00Z" },
      { version: "c".repeat(64), revision: 2, created_at: "2026-12-02T10:00:00Z" },
      { version: "c".repeat(64), revision: 3, created_at: "2026-12-03T10:00:00Z" }] });
    return [...t.querySelectorAll("tbody tr")].map((tr) => [tr.cells[0].textContent, tr.cells[2].textContent,
                                                           tr.classList.contains("current")]);
  });
  assert(JSON.stringify(vers) === JSON.stringify([["3", "api", false], ["2", "api", true], ["1", "api", false],
                                                  ["—", "config", false]]), "versions: " + JSON.stringify(vers));

  // ---- a text file's path
  await page.click("#files-btn");
  await page.locator("#dataset-view").waitFor({ state: "visible" });
  await page.setInputFiles("#file-input", [textFile]);
  const row = '#files-body tr[data-name="note.txt"]';
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.status === "done", row,
                             { timeout: 90000, polling: 250 });
  const fileId = await page.getAttribute(row, "data-id");
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(OUT, "pipelines-files.png") });
  await page.click(row + ' td.stage[data-pipeline="ai_record"] button.pg-pathlink');
  await page.locator("#pipelines-view").waitFor({ state: "visible" });
  await page.locator(svgSel + ".has-path").waitFor();
  const events = (await apiGet(`/v1/files/${fileId}/events`)).events;
  const runId = (await apiGet(`/v1/files/${fileId}`)).runs.find((r) => r.pipeline === "ai_record").id;
  const ran = new Set(events.filter((e) => e.run_id === runId && e.kind === "step_started").map((e) => e.step));
  result.steps_in_timeline = [...ran];
  assert(ran.has("tika") && ran.has("record") && !ran.has("ocr") && !ran.has("textract"),
         "the text file went tika -> record: " + JSON.stringify([...ran]));
  const lit = await page.$$eval(svgSel + " g.node", (gs) => Object.fromEntries(gs.map((g) =>
    [g.dataset.id, { visited: g.classList.contains("visited"), outcome: g.dataset.outcome || null,
                     aria: g.getAttribute("aria-label") }])));
  result.highlighted = lit;
  for (const id of ["tika", "record"]) {
    assert(lit[id].visited && lit[id].outcome === "succeeded", id + " is highlighted as succeeded: " + JSON.stringify(lit[id]));
    assert(/succeeded/.test(lit[id].aria), id + "'s label says succeeded");
  }
  for (const id of ["ocr", "textract"]) {
    assert(!lit[id].visited && !lit[id].outcome, id + " is not highlighted: " + JSON.stringify(lit[id]));
  }
  const taken = await page.$$eval(svgSel + " path.edge.taken", (ps) => ps.map((p) => p.dataset.from + ">" + p.dataset.to + ":" + p.dataset.on));
  result.taken = taken;
  assert(JSON.stringify(taken) === JSON.stringify(["tika>record:next"]), "only tika -> record is taken: " + JSON.stringify(taken));
  const takenStroke = await page.$eval(svgSel + " path.edge.taken", (p) => getComputedStyle(p).strokeWidth);
  const otherStroke = await page.$eval(svgSel + ' path.edge:not(.taken)[data-on="next"]', (p) => getComputedStyle(p).strokeWidth);
  assert(parseFloat(takenStroke) > parseFloat(otherStroke), `the taken edge stands out (${takenStroke} vs ${otherStroke})`);
  const summary = await page.locator("#pg-summary").innerText();
  assert(/note\.txt/.test(summary) && /tika/.test(summary) && /record/.test(summary), "the path in words: " + summary);
  assert(await page.$eval("#pg-file", (s) => s.value) === fileId, "the picker shows the file");
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(OUT, "pipelines-path.png"), fullPage: true });

  // The picker: clear, then pick the file again.
  await page.click(".pg-pathbar button");
  await page.locator(svgSel + ":not(.has-path)").waitFor();
  await page.selectOption("#pg-file", fileId);
  await page.locator(svgSel + ".has-path").waitFor();
  assert(await page.getAttribute(svgSel + ' g.node[data-id="record"]', "data-outcome") === "succeeded",
         "picking the file shows its path again");

  // ---- a file that failed (a damaged PDF), if the samples are there: what
  // the graph shows is what its timeline says — each step that started is
  // highlighted with its last outcome, each fallback taken is, nothing else.
  if (SAMPLES && fs.existsSync(path.join(SAMPLES, "truncated.pdf"))) {
    await page.click("#files-btn");
    await page.setInputFiles("#file-input", [path.join(SAMPLES, "truncated.pdf")]);
    const bad = '#files-body tr[data-name="truncated.pdf"]';
    await page.waitForFunction((sel) => ["done", "failed"].includes(document.querySelector(sel)?.dataset.status), bad,
                               { timeout: 120000, polling: 250 });
    const badId = await page.getAttribute(bad, "data-id");
    const f = await apiGet(`/v1/files/${badId}`);
    const run = f.runs.filter((r) => r.pipeline === "ai_record").sort((a, b) => (a.started_at < b.started_at ? 1 : -1))[0];
    const evs = (await apiGet(`/v1/files/${badId}/events`)).events.filter((e) => e.run_id === run.id);
    const want = {};
    for (const e of evs) {
      if (e.kind === "step_started") want[e.step] ||= "running";
      if (e.kind === "step_succeeded") want[e.step] = "succeeded";
      if (e.kind === "step_failed") want[e.step] = "failed";
    }
    const wantFallbacks = evs.filter((e) => e.kind === "fallback").map((e) => e.detail.from + ">" + e.detail.to + ":fallback");
    await page.click("#pipelines-btn");
    await page.locator(svgSel).waitFor();
    await page.selectOption("#pg-file", badId);
    await page.locator(svgSel + ".has-path").waitFor();
    const got = await page.$$eval(svgSel + " g.node.visited", (gs) => Object.fromEntries(gs.map((g) => [g.dataset.id, g.dataset.outcome])));
    const gotTaken = await page.$$eval(svgSel + ' path.edge.taken[data-on="fallback"]',
                                       (ps) => ps.map((p) => p.dataset.from + ">" + p.dataset.to + ":fallback"));
    result.failed_file = { run: run.state, want, got, fallbacks: gotTaken };
    assert(JSON.stringify(got, Object.keys(got).sort()) === JSON.stringify(want, Object.keys(want).sort()),
           "the failed file's steps: page " + JSON.stringify(got) + ", timeline " + JSON.stringify(want));
    assert(JSON.stringify(gotTaken.sort()) === JSON.stringify([...new Set(wantFallbacks)].sort()),
           "fallbacks taken: page " + JSON.stringify(gotTaken) + ", timeline " + JSON.stringify(wantFallbacks));
    assert(Object.values(got).includes("failed"), "a failed step is shown as failed");
    await page.mouse.move(0, 0);
    await page.screenshot({ path: path.join(OUT, "pipelines-failed.png"), fullPage: true });
  }

  // ---- 30 made-up steps, drawn by the page's own module: no boxes overlap.
  const big = await page.evaluate(async () => {
    const m = await import("/ui/pipelines.js");
    const nodes = Array.from({ length: 30 }, (_, i) => ({ id: "step_" + String(i).padStart(2, "0") }));
    // a tree (next to 2i+1, fallback to 2i+2), three retry loops, one long always
    const edges = [];
    for (let i = 0; i < 30; i++) {
      if (2 * i + 1 < 30) edges.push({ from: nodes[i].id, to: nodes[2 * i + 1].id, on: "next" });
      if (2 * i + 2 < 30) edges.push({ from: nodes[i].id, to: nodes[2 * i + 2].id, on: "fallback" });
    }
    for (const i of [15, 20, 25]) edges.push({ from: nodes[i].id, to: nodes[Math.floor((i - 3) / 4)].id, on: "next" });
    edges.push({ from: nodes[3].id, to: nodes[29].id, on: "always" });
    const svg = m.drawGraph({ name: "thirty", graph: { nodes, edges } }, null);
    const box = document.createElement("div");
    box.id = "pg-thirty";
    box.className = "card pg-card";
    box.append(svg);
    document.querySelector(".pg-main").append(box);
    const rects = [...svg.querySelectorAll("g.node")].map((g) => g.getBoundingClientRect());
    let overlaps = 0;
    for (let i = 0; i < rects.length; i++) {
      for (let j = i + 1; j < rects.length; j++) {
        const a = rects[i]; const b = rects[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++;
      }
    }
    return { nodes: rects.length, edges: svg.querySelectorAll("path.edge").length, overlaps,
             back: svg.querySelectorAll("path.edge.back").length };
  });
  result.thirty = big;
  assert(big.nodes === 30 && big.edges === 29 + 3 + 1, "30 steps drawn: " + JSON.stringify(big));
  assert(big.overlaps === 0, "boxes overlap: " + JSON.stringify(big));
  assert(big.back === 3, "the 3 loops are back edges: " + JSON.stringify(big));
  await page.locator("#pg-thirty").screenshot({ path: path.join(OUT, "pipelines-30.png") });

  assert(pageErrors.length === 0, "uncaught errors in the page: " + pageErrors.join("; "));
  result.ok = true;
} catch (e) {
  exitCode = 1;
  result.ok = false;
  result.error = String(e && e.stack ? e.stack : e);
  result.page_errors = pageErrors;
  if (page) {
    try {
      await page.screenshot({ path: path.join(OUT, "pipelines-failure.png"), fullPage: true });
    } catch (_) { /* the page is gone */ }
  }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
  fs.rmSync(tmp, { recursive: true, force: true });
}

console.log(JSON.stringify(result));
process.exit(exitCode);
