// Sluice web UI — one ES module, no dependencies, no build step.
//
// Everything comes from the public API (../shared/API.md):
//   - sign-in: the API key is typed once, exchanged at once for tokens
//     (POST /v1/auth/token, the key as Bearer) and dropped. It is never stored
//     (no localStorage, sessionStorage or cookie) and never put in a URL. The
//     access token (a JWT) lives in memory only; the refresh token in
//     sessionStorage, so a reload of the tab stays signed in (docs/ui.md says
//     why). Tokens are renewed in the background at 80% of expires_in, and
//     once on a 401 (token_expired), with one refresh in flight shared by
//     every caller; a refresh refused (401) signs out to the form. Every
//     fetch sends `Authorization: Bearer <access token>` (authFetch);
//   - a dataset's files are listed newest first and kept in `state.files`;
//   - live updates: an EventSource on /v1/datasets/{id}/events?access_token=
//     <access JWT>. When the token is renewed the stream is reopened with the
//     new one and last_event_id; the old one is closed once the new one is
//     open, and an event both deliver is handled once (by seq). Each event
//     names a file; that file is refetched (GET /v1/files/{id}), debounced,
//     and its row re-rendered. While the stream is unavailable (not
//     deployed, dropped, a proxy in the way) the list is polled every 2 s and
//     the stream is retried with backoff, resuming from the last seq;
//   - uploads go one file per request (XMLHttpRequest, for upload progress),
//     a few at a time, so each file gets its own progress bar and a failure
//     costs only that file;
//   - thumbnails, previews and text are fetched with the access token
//     (fetch -> blob URL), since <img> cannot send an Authorization header;
//   - the reads polled again and again (a file, a dataset's files) are
//     conditional: the ETag of the last answer goes out as If-None-Match, and
//     a 304 means "unchanged" (getConditional: the kept body, changed=false).
// Names and values from the API are data: they only ever go through
// textContent / attributes, never innerHTML.

const REFRESH_STORAGE = "sluice.refresh"; // sessionStorage: the refresh token
const LEGACY_KEY_STORAGE = "sluice.key";  // where older versions kept the key: removed at load
const DATASET_STORAGE = "sluice.dataset";
const PAGE_SIZE = 200;
const POLL_MS = 2000;
const UPLOAD_CONCURRENCY = 3;
const REFETCH_DEBOUNCE_MS = 120;
const THUMB_CONCURRENCY = 4;
const FINAL = new Set(["done", "failed"]);
const RUN_ENDED = new Set(["succeeded", "failed", "cancelled"]);
const ETAG_KEEP = 500; // conditional reads remembered (path -> {etag, body}), oldest dropped
const REFRESH_AT = 0.8;          // renew the access token at this share of expires_in
const REFRESH_MIN_MS = 1000;     // never sooner than this after the last renewal
const REFRESH_RETRY_MS = 5000;   // a refresh that could not reach the server is retried after this
const EXPIRY_MARGIN_MS = 1000;   // an access token this close to expiry is renewed before use
const SEEN_KEEP = 5000;          // event seqs remembered to handle each event once

const $ = (id) => document.getElementById(id);

const state = {
  datasets: [],
  dataset: null,
  schemaProps: [],
  pipelines: [],            // [{name, match, steps}]
  files: new Map(),         // id -> file
  order: [],                // ids, newest first
  rows: new Map(),          // id -> <tr>
  nextCursor: null,
  waitReasons: new Map(),   // run id -> "waiting for textract"
  blobs: new Map(),         // artifact id -> Promise<object URL>
  selected: null,           // file id in the drawer
  tab: "overview",
  live: null,               // the Live connection of the current dataset
  uploads: [],
};

// ---------------------------------------------------------------- tiny DOM helper

// Icons: constant SVG markup of our own (never data), so no icon font or emoji
// font is needed.
const ICONS = {
  trash: '<path d="M3 4h10M6.5 4V2.5h3V4M4.5 4l.6 9.5h5.8l.6-9.5M6.8 6.5v5M9.2 6.5v5"/>',
  redo: '<path d="M13 3.5v3.2H9.8"/><path d="M12.7 6.6A5 5 0 1 0 13 9.5"/>',
  upload: '<path d="M8 11V2.5M4.5 6 8 2.5 11.5 6"/><path d="M2.5 10.5v3h11v-3"/>',
  folder: '<path d="M1.5 4.5v8h13v-6.5h-6.5L6.5 4.5z"/>',
  download: '<path d="M8 2.5V11M4.5 7.5 8 11l3.5-3.5"/><path d="M2.5 13.5h11"/>',
};
function icon(name, size = 16) {
  const t = document.createElement("template");
  t.innerHTML = '<svg class="icon" viewBox="0 0 16 16" width="' + size + '" height="' + size +
                '" fill="none" stroke="currentColor" stroke-width="1.4" stroke-linecap="round"' +
                ' stroke-linejoin="round" aria-hidden="true">' + ICONS[name] + "</svg>";
  return t.content.firstChild;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + " " + u[i];
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit",
                                       minute: "2-digit", second: "2-digit" });
}

function fmtDuration(ms) {
  if (!(ms >= 0)) return "";
  if (ms < 1000) return ms.toFixed(0) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}

// ---------------------------------------------------------------- toasts

function toast(message, kind = "error", title = null) {
  const el = h("div", { class: "toast " + kind, role: kind === "error" ? "alert" : "status" },
               title ? h("strong", {}, title) : null, h("span", {}, message));
  el.addEventListener("click", () => el.remove());
  $("toasts").append(el);
  setTimeout(() => el.classList.add("leaving"), kind === "error" ? 7000 : 3500);
  setTimeout(() => el.remove(), kind === "error" ? 7400 : 3900);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(res) {
  let code = "http_" + res.status;
  let message = res.statusText || ("HTTP " + res.status);
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(res.status, code, message);
}

// ---------------------------------------------------------------- session (tokens)

// The tokens of the signed-in tab. The API key is not here: signIn() hands it
// to exchangeKey() and forgets it.
const session = {
  access: "",          // the access JWT: memory only
  expiresAt: 0,        // Date.now() at which it expires
  timer: null,         // the background renewal
  inflight: null,      // the one refresh in flight (a Promise), shared by every caller
  epoch: 0,            // bumped by forgetSession(): answers to older requests are dropped
  renewed: new Set(),  // callbacks run after each new pair (the live stream reopens)
};

function hasSession() {
  return session.access !== "" || sessionStorage.getItem(REFRESH_STORAGE) !== null;
}

function forgetSession() {
  session.epoch++;
  clearTimeout(session.timer);
  session.timer = null;
  session.access = "";
  session.expiresAt = 0;
  session.inflight = null;
  sessionStorage.removeItem(REFRESH_STORAGE);
}

// Takes a {access_token, expires_in, refresh_token} answer and schedules the
// next renewal at REFRESH_AT of the token's life.
function setTokens(pair) {
  if (!pair || typeof pair.access_token !== "string" || !pair.access_token ||
      typeof pair.refresh_token !== "string" || !pair.refresh_token) {
    throw new ApiError(0, "bad_response", "The server's token answer is malformed.");
  }
  const ttlMs = (Number(pair.expires_in) > 0 ? Number(pair.expires_in) : 900) * 1000;
  session.access = pair.access_token;
  session.expiresAt = Date.now() + ttlMs;
  sessionStorage.setItem(REFRESH_STORAGE, pair.refresh_token);
  scheduleRefresh(Math.max(REFRESH_MIN_MS, ttlMs * REFRESH_AT));
  for (const fn of session.renewed) {
    try { fn(); } catch (e) { console.error(e); }
  }
}

function scheduleRefresh(ms) {
  clearTimeout(session.timer);
  session.timer = setTimeout(() => { refreshTokens().catch(() => {}); }, ms);
}

// POST /v1/auth/token with the key as Bearer: the key's only use.
async function exchangeKey(key) {
  const epoch = ++session.epoch;
  let res;
  try {
    res = await fetch("/v1/auth/token", { method: "POST", headers: { Authorization: "Bearer " + key },
                                          cache: "no-store", credentials: "omit" });
  } catch (e) {
    throw new ApiError(0, "network_error", "The server could not be reached.");
  }
  if (!res.ok) throw await errorFrom(res);
  const pair = await res.json();
  if (epoch !== session.epoch) throw new ApiError(0, "cancelled", "Signed out meanwhile.");
  setTokens(pair);
}

// POST /v1/auth/refresh: one at a time; concurrent callers share it. The
// refresh token used is spent by the server, so it is never sent twice. A
// refusal (401, or 400: not a refresh token) signs out; a server that could
// not be reached or is busy keeps the session and is asked again later.
function refreshTokens() {
  if (session.inflight) return session.inflight;
  const refresh = sessionStorage.getItem(REFRESH_STORAGE);
  if (refresh === null) return Promise.reject(new ApiError(401, "signed_out", "Not signed in."));
  const epoch = session.epoch;
  const p = (async () => {
    let res;
    try {
      res = await fetch("/v1/auth/refresh", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: refresh }), cache: "no-store", credentials: "omit" });
    } catch (e) {
      if (epoch === session.epoch) scheduleRefresh(REFRESH_RETRY_MS);
      throw new ApiError(0, "network_error", "The server could not be reached.");
    }
    if (epoch !== session.epoch) throw new ApiError(401, "signed_out", "Signed out meanwhile.");
    if (res.ok) {
      const pair = await res.json();
      if (epoch !== session.epoch) throw new ApiError(401, "signed_out", "Signed out meanwhile.");
      setTokens(pair);
      return;
    }
    const err = await errorFrom(res);
    if (epoch !== session.epoch) throw err;
    if (res.status === 401 || res.status === 400) {
      signOut("Your session has ended. Sign in again with your API key.", false);
      throw new ApiError(401, err.code, err.message);
    }
    scheduleRefresh(REFRESH_RETRY_MS);
    throw err;
  })();
  session.inflight = p;
  p.catch(() => {}).finally(() => { if (session.inflight === p) session.inflight = null; });
  return p;
}

// The access token to send now: renewed first when it is (nearly) expired. A
// renewal that cannot reach the server falls back to the token held.
async function accessToken() {
  if (session.access && Date.now() < session.expiresAt - EXPIRY_MARGIN_MS) return session.access;
  try {
    await refreshTokens();
  } catch (e) {
    if (e.status === 401 || !session.access) throw e;
  }
  if (!session.access) throw new ApiError(401, "signed_out", "Not signed in.");
  return session.access;
}

// fetch() with `Authorization: Bearer <access token>`. A 401 (token_expired,
// or a token the server no longer takes) renews the tokens once — unless
// another call already renewed them since this one started — and tries again;
// a second 401 signs out. Returns the Response; throws ApiError when the
// server cannot be reached or the session is gone.
async function authFetch(path, init) {
  for (let attempt = 0; ; attempt++) {
    const token = await accessToken();
    const headers = Object.assign({}, (init && init.headers) || {}, { Authorization: "Bearer " + token });
    let res;
    try {
      res = await fetch(path, Object.assign({ credentials: "omit" }, init, { headers }));
    } catch (e) {
      throw new ApiError(0, "network_error", "The server could not be reached.");
    }
    if (res.status !== 401) return res;
    if (attempt > 0) {
      const err = await errorFrom(res);
      if (session.access === token) signOut("Your session is no longer accepted. Sign in again.", false);
      throw err;
    }
    if (session.access === token) await refreshTokens(); // signs out and throws if refused
  }
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await authFetch(path, init);
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  return res.json();
}

// GET with If-None-Match: {body, changed}. A 304 gives back the body kept from
// the last 200 of the same path (changed=false). The browser's own cache is
// bypassed so the 304 reaches us.
const etags = new Map();
async function getConditional(path) {
  const headers = {};
  const kept = etags.get(path);
  if (kept) headers["If-None-Match"] = kept.etag;
  const res = await authFetch(path, { method: "GET", headers, cache: "no-store" });
  if (res.status === 304 && kept) {
    etags.delete(path); // most recently used last
    etags.set(path, kept);
    return { body: kept.body, changed: false };
  }
  if (!res.ok) {
    etags.delete(path);
    throw await errorFrom(res);
  }
  const body = await res.json();
  const etag = res.headers.get("ETag");
  etags.delete(path);
  if (etag) {
    etags.set(path, { etag, body });
    if (etags.size > ETAG_KEEP) etags.delete(etags.keys().next().value);
  }
  return { body, changed: true };
}

function report(e, title) {
  if (!hasSession()) return; // signed out meanwhile: the form says why
  if (e instanceof ApiError) toast(e.message + (e.code ? " (" + e.code + ")" : ""), "error", title);
  else toast(String(e && e.message ? e.message : e), "error", title);
}

// A blob URL for an artifact (cached). The token goes in a header, so this
// works where a plain <img src> could not.
function artifactBlobUrl(artifact) {
  if (!state.blobs.has(artifact.id)) {
    const p = authFetch(artifact.url)
      .then(async (res) => {
        if (!res.ok) throw await errorFrom(res);
        return URL.createObjectURL(await res.blob());
      });
    p.catch(() => state.blobs.delete(artifact.id));
    state.blobs.set(artifact.id, p);
  }
  return state.blobs.get(artifact.id);
}

// A small queue so a table of hundreds of thumbnails doesn't fire them all at once.
const thumbQueue = [];
let thumbActive = 0;
function loadThumb(img, artifact) {
  thumbQueue.push([img, artifact]);
  pumpThumbs();
}
function pumpThumbs() {
  while (thumbActive < THUMB_CONCURRENCY && thumbQueue.length) {
    const [img, artifact] = thumbQueue.shift();
    if (!img.isConnected) continue;
    thumbActive++;
    artifactBlobUrl(artifact)
      .then((url) => { img.src = url; })
      .catch(() => img.replaceWith(thumbPlaceholder("?")))
      .finally(() => { thumbActive--; pumpThumbs(); });
  }
}

// ---------------------------------------------------------------- views

function show(view) {
  for (const id of ["auth-view", "create-view", "dataset-view", "pipelines-view"]) $(id).hidden = id !== view;
  const signedIn = view !== "auth-view";
  $("signout-btn").hidden = !signedIn;
  $("dsnav").hidden = !signedIn || state.datasets.length === 0;
  $("live").hidden = view !== "dataset-view";
  $("pagenav").hidden = !signedIn; // Files | Pipelines (web/pipelines.js)
  $("pagenav").dataset.view = view;
}

// Back to the sign-in form. `everything` (the Sign out button): also forget
// which dataset was open. Always forgotten: the tokens, the stream, the
// uploads in progress, and every answer kept from the API.
function signOut(message, everything) {
  forgetSession();
  stopLive();
  closeDrawer();
  for (const u of state.uploads) {
    u.cancelled = true;
    if (u.xhr) u.xhr.abort();
  }
  state.uploads = [];
  $("upload-list").replaceChildren();
  $("uploads").hidden = true;
  etags.clear();
  for (const p of state.blobs.values()) p.then((url) => URL.revokeObjectURL(url), () => {});
  state.blobs.clear();
  state.datasets = [];
  state.dataset = null;
  state.files.clear();
  state.order = [];
  state.rows.clear();
  $("files-body").replaceChildren();
  if (everything) localStorage.removeItem(DATASET_STORAGE);
  $("key-input").value = "";
  $("auth-error").textContent = message || "";
  show("auth-view");
  $("key-input").focus();
}

// The key is used once, for the exchange, and not kept anywhere.
async function signIn(key) {
  $("auth-error").textContent = "";
  $("auth-submit").disabled = true;
  try {
    await exchangeKey(key);
  } catch (e) {
    if (e.code === "cancelled") return;
    forgetSession();
    $("auth-error").textContent = e.status === 401 ? "That key was not accepted." : e.message;
    show("auth-view");
    return;
  } finally {
    $("auth-submit").disabled = false;
  }
  await enter();
}

// A tab reloaded while signed in: the refresh token kept in sessionStorage
// gets a new pair (a refusal shows the form with a message).
async function resume() {
  try {
    await refreshTokens();
  } catch (e) {
    if (e.status !== 401) {
      // The server could not be reached or is busy: the form, with the
      // session kept for "Try again".
      $("auth-error").textContent = e.message;
      $("resume-btn").hidden = false;
    }
    show("auth-view");
    return;
  }
  await enter();
}

// Signed in: the datasets, the pipelines, then the last dataset opened.
async function enter() {
  $("resume-btn").hidden = true;
  let body;
  try {
    body = await api("GET", "/v1/datasets");
  } catch (e) {
    if (hasSession()) {
      $("auth-error").textContent = e.message;
      show("auth-view");
    }
    return;
  }
  $("auth-error").textContent = "";
  state.datasets = body.datasets || [];
  try {
    state.pipelines = (await api("GET", "/v1/pipelines")).pipelines || [];
  } catch (e) {
    state.pipelines = [];
  }
  if (!hasSession()) return;
  renderDatasetSelect();
  const remembered = localStorage.getItem(DATASET_STORAGE);
  const pick = state.datasets.find((d) => d.id === remembered) || state.datasets[0];
  if (pick) openDataset(pick.id);
  else showCreate(true);
}

function renderDatasetSelect() {
  const sel = $("dataset-select");
  sel.replaceChildren(...state.datasets.map((d) =>
    h("option", { value: d.id, selected: state.dataset && d.id === state.dataset.id }, d.name)));
  $("dsnav").hidden = state.datasets.length === 0 || $("auth-view").hidden === false;
}

function showCreate(first) {
  $("create-title").textContent = first ? "Create your first dataset" : "New dataset";
  $("create-cancel").hidden = !!first || !state.dataset;
  $("ds-name").value = "";
  $("ds-schema").value = "";
  show("create-view");
  $("ds-name").focus();
}

async function createDataset(ev) {
  ev.preventDefault();
  const name = $("ds-name").value.trim();
  const body = { name };
  const schemaText = $("ds-schema").value.trim();
  if (schemaText) {
    try {
      body.record_schema = JSON.parse(schemaText);
    } catch (e) {
      toast("The record schema is not valid JSON: " + e.message, "error");
      return;
    }
  }
  try {
    const ds = await api("POST", "/v1/datasets", body);
    state.datasets.unshift(ds);
    renderDatasetSelect();
    toast("Dataset “" + ds.name + "” created.", "ok");
    openDataset(ds.id);
  } catch (e) {
    report(e, "Could not create the dataset");
  }
}

// ---------------------------------------------------------------- one dataset

async function openDataset(id) {
  stopLive();
  closeDrawer();
  state.files.clear();
  state.order = [];
  state.rows.clear();
  state.nextCursor = null;
  state.waitReasons.clear();
  let ds;
  try {
    ds = await api("GET", "/v1/datasets/" + encodeURIComponent(id));
  } catch (e) {
    report(e, "Could not open the dataset");
    if (e.status === 404) localStorage.removeItem(DATASET_STORAGE);
    return;
  }
  if (!hasSession()) return; // signed out meanwhile
  state.dataset = ds;
  localStorage.setItem(DATASET_STORAGE, ds.id);
  const props = ds.record_schema && ds.record_schema.properties;
  state.schemaProps = props && typeof props === "object" ? Object.keys(props) : [];
  renderDatasetSelect();
  $("ds-title").textContent = ds.name;
  $("ds-meta").replaceChildren("Created " + fmtTime(ds.created_at) + " · ", h("code", {}, ds.id));
  renderHead();
  $("files-body").replaceChildren();
  show("dataset-view");
  await loadFiles(null);
  if (!hasSession() || state.dataset !== ds) return;
  startLive(ds.id);
}

function renderHead() {
  const cols = [h("th", { class: "c-thumb" }, ""), h("th", {}, "File"), h("th", {}, "Status")];
  for (const p of pipelineNames()) cols.push(h("th", {}, p));
  for (const p of state.schemaProps) cols.push(h("th", { class: "c-field" }, p));
  cols.push(h("th", { class: "c-actions" }, ""));
  $("files-head").replaceChildren(...cols);
}

function pipelineNames() {
  const names = state.pipelines.map((p) => p.name);
  return names.length ? names : ["ai_record", "file_view"];
}

function pipelineSteps(name) {
  const p = state.pipelines.find((x) => x.name === name);
  return p ? p.steps : [];
}

async function loadFiles(cursor) {
  const ds = state.dataset;
  let q = "?limit=" + PAGE_SIZE;
  if (cursor) q += "&cursor=" + encodeURIComponent(cursor);
  let body;
  try {
    body = await api("GET", "/v1/datasets/" + encodeURIComponent(ds.id) + "/files" + q);
  } catch (e) {
    report(e, "Could not list the files");
    return;
  }
  if (state.dataset !== ds) return;
  for (const f of body.files) upsertFile(f, "append");
  state.nextCursor = body.next_cursor;
  $("more").hidden = !state.nextCursor;
  renderCounts();
}

// Where a new file goes so the table keeps the API's newest-first order: uploads
// finish out of order (three run at once), so "at the top" is not enough.
// RFC 3339 strings of one format compare in time order; ties go first (newer).
function newestFirstIndex(f) {
  let i = 0;
  while (i < state.order.length) {
    const o = state.files.get(state.order[i]);
    if (!o || o.created_at <= f.created_at) break;
    i++;
  }
  return i;
}

// Inserts or updates a file; `where` says where a new one goes.
function upsertFile(f, where) {
  if (!state.dataset || f.dataset_id !== state.dataset.id) return;
  const known = state.files.has(f.id);
  state.files.set(f.id, f);
  if (!known) {
    if (where === "append") state.order.push(f.id);
    else state.order.splice(newestFirstIndex(f), 0, f.id);
  }
  renderRow(f, known ? null : where);
  if (state.selected === f.id) renderDrawer();
  noteWaiting(f);
}

function removeFile(id) {
  state.files.delete(id);
  state.order = state.order.filter((x) => x !== id);
  const tr = state.rows.get(id);
  if (tr) tr.remove();
  state.rows.delete(id);
  if (state.selected === id) closeDrawer();
  renderCounts();
}

function renderCounts() {
  const c = { uploaded: 0, queued: 0, processing: 0, done: 0, failed: 0 };
  let waiting = 0;
  for (const f of state.files.values()) {
    c[f.status] = (c[f.status] || 0) + 1;
    if ((f.runs || []).some((r) => r.state === "waiting")) waiting++;
  }
  const total = state.files.size;
  const chip = (label, n, cls) => h("span", { class: "count " + cls, title: label },
                                    h("b", {}, n), " ", label);
  $("counts").replaceChildren(...[
    chip(total === 1 ? "file" : "files", total + (state.nextCursor ? "+" : ""), "total"),
    c.uploaded ? chip("not processed", c.uploaded, "uploaded") : null,
    c.queued ? chip("queued", c.queued, "queued") : null,
    c.processing ? chip("processing", c.processing, "running") : null,
    waiting ? chip("waiting", waiting, "waiting") : null,
    total ? chip("done", c.done, "done") : null,
    c.failed ? chip("failed", c.failed, "failed") : null].filter(Boolean));
  $("files-empty").hidden = total !== 0;
  $("files-table").hidden = total === 0;
}

// ---------------------------------------------------------------- rows

const STATE_LABEL = {
  uploaded: "uploaded", queued: "queued", running: "running", waiting: "waiting", succeeded: "succeeded",
  failed: "failed", cancelled: "cancelled", processing: "processing", done: "done",
};

function badge(st, text) {
  return h("span", { class: "badge " + st }, h("i", { class: "dot" }), text || STATE_LABEL[st] || st);
}

function runFor(f, pipeline) {
  // Newest run of that pipeline (re-processing adds runs).
  let best = null;
  for (const r of f.runs || []) {
    if (r.pipeline !== pipeline) continue;
    if (!best || (r.started_at || "") >= (best.started_at || "") ) best = r;
  }
  return best;
}

function thumbnailOf(f) {
  for (const r of f.runs || []) {
    for (const a of r.artifacts || []) if (a.kind === "thumbnail") return a;
  }
  return null;
}

function artifactOf(f, kind) {
  let found = null;
  for (const r of f.runs || []) {
    for (const a of r.artifacts || []) if (a.kind === kind) found = a;
  }
  return found;
}

function thumbPlaceholder(label) {
  return h("div", { class: "thumb placeholder" }, label);
}

function extLabel(f) {
  const m = /\.([A-Za-z0-9]{1,5})$/.exec(f.name || "");
  return m ? m[1].toUpperCase() : (f.mime || "file").split("/")[0].slice(0, 4).toUpperCase();
}

function stageCell(f, pipeline) {
  const r = runFor(f, pipeline);
  if (!r) return h("td", { class: "stage none" }, h("span", { class: "muted" }, "—"));
  const steps = pipelineSteps(pipeline);
  const idx = steps.indexOf(r.step);
  // One segment per step: those before the active one were visited (a
  // fallback chain skips none of them), the active one carries the state.
  const track = h("div", { class: "steps", title: steps.join(" → ") },
                  ...steps.map((s, i) => {
                    let cls = "step";
                    if (r.state === "succeeded") cls += " succeeded";
                    else if (i === idx) cls += " current " + r.state;
                    else if (i < idx) cls += " visited";
                    return h("span", { class: cls, title: s });
                  }));
  let label;
  if (r.state === "waiting") {
    label = state.waitReasons.get(r.id) || "waiting" + (r.error ? " (" + r.error + ")" : "");
  } else if (r.state === "running" || r.state === "queued") {
    label = r.state === "queued" ? "queued" : r.step || "running";
  } else if (r.state === "failed") {
    label = (r.step ? r.step + ": " : "") + (r.error || "failed");
  } else if (r.state === "succeeded" && r.note) {
    // done, with a reason for having no output ("no_text": a photo)
    label = r.note === "no_text" ? "done: no text" : "done: " + r.note;
  } else {
    label = STATE_LABEL[r.state] || r.state;
  }
  return h("td", { class: "stage", dataset: { pipeline, state: r.state, step: r.step || "" } },
           h("div", { class: "stage-line" }, badge(r.state, label), " ", pathLink(f.id, pipeline, showPipelines)),
           track);
}

function fieldText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return v.toLocaleString(undefined, { maximumFractionDigits: 4 });
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function renderRow(f, where) {
  const tr = h("tr", { dataset: { id: f.id, status: f.status, name: f.name } });
  tr.addEventListener("click", (ev) => {
    if (ev.target.closest("button")) return;
    openDrawer(f.id);
  });
  const thumb = thumbnailOf(f);
  let thumbEl;
  let thumbToLoad = null;
  if (thumb) {
    const old = state.rows.get(f.id);
    const oldImg = old && old.querySelector("img.thumb");
    if (oldImg && oldImg.dataset.artifact === thumb.id) {
      thumbEl = oldImg; // loaded or on its way: moved over, no flicker on updates
    } else {
      thumbEl = h("img", { class: "thumb", alt: "", dataset: { artifact: thumb.id } });
      thumbToLoad = thumbEl;
    }
  } else {
    thumbEl = thumbPlaceholder(extLabel(f));
  }
  const cells = [
    h("td", { class: "c-thumb" }, thumbEl),
    h("td", { class: "c-name" },
      h("div", { class: "fname", title: f.name }, f.name),
      h("div", { class: "muted small" }, fmtBytes(f.size) + (f.mime ? " · " + f.mime : ""))),
    h("td", { class: "c-status", title: f.reason }, badge(f.status, f.reason && "done: no pipeline")),
  ];
  for (const p of pipelineNames()) cells.push(stageCell(f, p));
  for (const p of state.schemaProps) {
    const v = f.record ? f.record[p] : undefined;
    cells.push(h("td", { class: "c-field" + (typeof v === "number" ? " num" : ""), title: fieldText(v) },
                 fieldText(v)));
  }
  cells.push(h("td", { class: "c-actions" },
    h("button", { type: "button", class: "icon-btn", title: "Re-process",
                  "aria-label": "Re-process " + f.name, onclick: () => reprocess(f.id) }, icon("redo")),
    h("button", { type: "button", class: "icon-btn danger", title: "Delete",
                  "aria-label": "Delete " + f.name, onclick: () => deleteFile(f.id) }, icon("trash"))));
  tr.append(...cells);
  if (state.selected === f.id) tr.classList.add("selected");

  const body = $("files-body");
  const old = state.rows.get(f.id);
  if (old) {
    old.replaceWith(tr);
    if (old.dataset.status !== f.status) flash(tr);
  } else if (where === "append") {
    body.append(tr);
  } else {
    const at = state.order.indexOf(f.id);
    const next = at >= 0 && at + 1 < state.order.length ? state.rows.get(state.order[at + 1]) : null;
    if (next) body.insertBefore(tr, next);
    else body.append(tr);
    flash(tr);
  }
  state.rows.set(f.id, tr);
  if (thumbToLoad) loadThumb(thumbToLoad, thumb); // now in the document
}

function flash(tr) {
  tr.classList.add("flash");
  setTimeout(() => tr.classList.remove("flash"), 900);
}

// A waiting run's reason ("waiting for textract") is in the timeline.
const waitFetches = new Set();
function noteWaiting(f) {
  const waiting = (f.runs || []).filter((r) => r.state === "waiting");
  if (!waiting.length || waitFetches.has(f.id)) return;
  waitFetches.add(f.id);
  api("GET", "/v1/files/" + f.id + "/events").then((body) => {
    for (const r of waiting) {
      const evs = body.events.filter((e) => e.run_id === r.id && e.kind === "waiting");
      const last = evs[evs.length - 1];
      if (last && last.detail && last.detail.reason) state.waitReasons.set(r.id, last.detail.reason);
    }
    const cur = state.files.get(f.id);
    if (cur) renderRow(cur, null);
  }).catch(() => {}).finally(() => waitFetches.delete(f.id));
}

// ---------------------------------------------------------------- actions

async function reprocess(id) {
  try {
    const f = await api("POST", "/v1/files/" + id + "/process", {});
    upsertFile(f, "prepend");
    renderCounts();
    toast("Re-processing “" + f.name + "”.", "ok");
  } catch (e) {
    report(e, "Could not re-process");
  }
}

async function deleteFile(id) {
  const f = state.files.get(id);
  if (!f) return;
  if (!window.confirm("Delete “" + f.name + "”, its artifacts and its record?")) return;
  try {
    await api("DELETE", "/v1/files/" + id);
    removeFile(id);
    toast("Deleted “" + f.name + "”.", "ok");
  } catch (e) {
    if (e.status === 404) removeFile(id);
    else report(e, "Could not delete");
  }
}

// ---------------------------------------------------------------- live updates

// One per open dataset: an EventSource when the server has the stream, polling
// while it has not (and while the stream is down), both feeding refetch().
class Live {
  constructor(datasetId) {
    this.datasetId = datasetId;
    this.lastSeq = null;
    this.seen = new Set();    // seqs handled (the last SEEN_KEEP), so none is handled twice
    this.es = null;           // the current stream
    this.old = null;          // the stream `es` takes over from (a token renewal), until `es` opens
    this.pollTimer = null;
    this.retryTimer = null;
    this.retryMs = 1000;
    this.pending = new Set();
    this.flushTimer = null;
    this.closed = false;
    this.onRenewed = () => this.renewed();
    session.renewed.add(this.onRenewed);
    this.connect(null);
  }

  setMode(mode, text) {
    const el = $("live");
    el.className = "live " + mode;
    $("live-text").textContent = text;
    el.dataset.mode = mode;
  }

  // A new access token: the stream was opened with the old one (checked only
  // when it opened, and no longer valid for the browser's own reconnects), so
  // it is reopened with the new one, resuming after the last seq. An open
  // stream keeps delivering until its successor is open.
  renewed() {
    if (this.closed || !this.es) return; // none open: the next connect() takes the new token
    if (this.es.readyState === EventSource.OPEN) {
      if (!this.old) this.connect(this.es);
      else this.connect(this.old); // a renewal during a renewal: replace the pending one
      return;
    }
    // CONNECTING: the browser is reconnecting with the old token; start over.
    this.dropStreams();
    this.connect(null);
  }

  dropStreams() {
    if (this.es) this.es.close();
    if (this.old) this.old.close();
    this.es = null;
    this.old = null;
  }

  // Opens a stream with the current access token. `replacing`: the open
  // stream this one takes over from (closed once this one opens).
  async connect(replacing) {
    if (this.closed) return;
    let token;
    try {
      token = await accessToken();
    } catch (e) {
      if (this.closed || replacing) return; // signed out, or the old stream goes on
      this.setMode("poll", "polling");
      this.startPolling();
      this.retryTimer = setTimeout(() => this.connect(null), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 30000);
      return;
    }
    if (this.closed) return;
    if (replacing) {
      if (this.es !== replacing && this.old !== replacing) return; // superseded meanwhile
      if (this.es !== replacing) this.es.close(); // the pending successor of `replacing`
      this.old = replacing;
    }
    let url = "/v1/datasets/" + encodeURIComponent(this.datasetId) + "/events?access_token=" +
              encodeURIComponent(token);
    if (this.lastSeq !== null) url += "&last_event_id=" + encodeURIComponent(this.lastSeq);
    const es = new EventSource(url);
    this.es = es;
    const onEvent = (ev) => this.onEvent(ev);
    es.addEventListener("run", onEvent);
    es.addEventListener("file", onEvent);
    es.addEventListener("message", onEvent);
    es.onopen = () => {
      if (this.es !== es) return;
      this.retryMs = 1000;
      if (this.old) {
        // A token swap: the old stream delivered up to now, this one replays
        // what came after lastSeq; nothing was missed, so no poll.
        this.old.close();
        this.old = null;
        this.setMode("on", "live");
        return;
      }
      this.setMode("on", "live");
      // Anything that changed before the stream opened (or while it was down,
      // if the server could not replay it) comes in with one poll.
      if (this.pollTimer) { clearInterval(this.pollTimer); this.pollTimer = null; }
      this.poll();
    };
    es.onerror = () => {
      if (this.closed) return;
      if (this.es !== es) {
        // The old stream of a swap dropping: its successor takes over.
        if (this.old === es) { es.close(); this.old = null; }
        return;
      }
      if (this.old) {
        // The successor failed while the old one still runs: keep the old one
        // (its token may have expired; it is retried at the next renewal or drop).
        es.close();
        this.es = this.old;
        this.old = null;
        if (this.es.readyState === EventSource.OPEN) return;
      }
      const cur = this.es;
      if (cur.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself (sending Last-Event-ID); poll meanwhile.
        this.setMode("retry", "reconnecting");
        this.startPolling();
        return;
      }
      // CLOSED: an HTTP error (the endpoint is not there, or the token was
      // refused). Poll, retry later with the current token.
      cur.close();
      this.es = null;
      this.setMode("poll", "polling");
      this.startPolling();
      this.retryTimer = setTimeout(() => this.connect(null), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 30000);
    };
  }

  onEvent(ev) {
    let data;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    // Handled once: a swap's two streams can both deliver an event, and a
    // late event (no id line) is still new.
    const seq = data && Number.isFinite(Number(data.seq)) ? Number(data.seq) : null;
    if (seq !== null) {
      if (this.seen.has(seq)) return;
      this.seen.add(seq);
      if (this.seen.size > SEEN_KEEP) this.seen.delete(this.seen.values().next().value);
      if (this.lastSeq === null || seq > this.lastSeq) this.lastSeq = seq;
    } else if (ev.lastEventId) {
      const n = Number(ev.lastEventId);
      if (Number.isFinite(n) && (this.lastSeq === null || n > this.lastSeq)) this.lastSeq = n;
    }
    if (data && data.file_id) this.refetch(data.file_id);
  }

  refetch(fileId) {
    this.pending.add(fileId);
    if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), REFETCH_DEBOUNCE_MS);
  }

  async flush() {
    this.flushTimer = null;
    const ids = [...this.pending];
    this.pending.clear();
    await Promise.all(ids.map(async (id) => {
      try {
        const { body: f, changed } = await getConditional("/v1/files/" + id);
        if (!this.closed && (changed || !state.files.has(id))) upsertFile(f, "prepend");
      } catch (e) {
        if (e.status === 404 && !this.closed) removeFile(id);
      }
    }));
    if (!this.closed) renderCounts();
  }

  startPolling() {
    if (this.pollTimer || this.closed) return;
    this.poll();
    this.pollTimer = setInterval(() => this.poll(), POLL_MS);
  }

  // One page covering what is loaded (newest first): new files appear, changed
  // ones update; files older than the page that are still moving are
  // refetched one by one.
  async poll() {
    if (this.polling) return;
    this.polling = true;
    try {
      const limit = Math.min(1000, Math.max(PAGE_SIZE, state.order.length));
      const { body } = await getConditional("/v1/datasets/" +
                                            encodeURIComponent(this.datasetId) +
                                            "/files?limit=" + limit);
      if (this.closed) return;
      const seen = new Set();
      const fresh = body.files.filter((f) => !state.files.has(f.id));
      for (const f of body.files) {
        seen.add(f.id);
        const old = state.files.get(f.id);
        if (old && JSON.stringify(old) === JSON.stringify(f)) continue;
        if (old) upsertFile(f, null);
      }
      for (const f of fresh.reverse()) upsertFile(f, "prepend");
      for (const f of state.files.values()) {
        if (!seen.has(f.id) && !FINAL.has(f.status)) this.refetch(f.id);
      }
      // With the whole dataset on one page, a file missing from two polls in a
      // row was deleted elsewhere (one miss may be an upload racing the poll).
      if (!body.next_cursor) {
        const missing = new Set([...state.files.keys()].filter((id) => !seen.has(id)));
        for (const id of missing) if (this.missing && this.missing.has(id)) removeFile(id);
        this.missing = missing;
      }
      renderCounts();
    } catch (e) {
      if (e.status !== 401) this.setMode("down", "offline");
    } finally {
      this.polling = false;
    }
  }

  close() {
    this.closed = true;
    session.renewed.delete(this.onRenewed);
    this.dropStreams();
    clearInterval(this.pollTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.flushTimer);
  }
}

function startLive(datasetId) {
  state.live = new Live(datasetId);
}

function stopLive() {
  if (state.live) state.live.close();
  state.live = null;
}

// ---------------------------------------------------------------- uploads

function addFiles(fileList) {
  if (!state.dataset) return;
  const files = [...fileList].filter((f) => f && f.size >= 0);
  if (!files.length) return;
  for (const file of files) {
    const bar = h("div", { class: "bar" }, h("i"));
    const status = h("span", { class: "up-status muted small" }, "waiting");
    const li = h("li", { class: "up-item queued" },
                 h("div", { class: "up-line" }, h("span", { class: "up-name", title: file.name }, file.name),
                   h("span", { class: "muted small" }, fmtBytes(file.size)), status),
                 bar);
    $("upload-list").prepend(li);
    state.uploads.push({ file, li, bar, status, dataset: state.dataset.id, done: false });
  }
  $("uploads").hidden = false;
  renderUploadSummary();
  pumpUploads();
}

let uploadsActive = 0;
function pumpUploads() {
  while (uploadsActive < UPLOAD_CONCURRENCY) {
    const u = state.uploads.find((x) => !x.started);
    if (!u) break;
    u.started = true;
    uploadsActive++;
    uploadOne(u).finally(() => {
      uploadsActive--;
      renderUploadSummary();
      pumpUploads();
    });
  }
}

// One file, one request. A 429/503 (rate limited, overloaded) is retried
// after Retry-After, a few times; a 401 renews the tokens once and tries
// again (as authFetch does); any other error fails just this file.
async function uploadOne(u) {
  let renewed = false;
  for (let attempt = 1; ; attempt++) {
    let token;
    try {
      token = await accessToken();
    } catch (e) {
      if (!u.cancelled) failUpload(u, e.message);
      return;
    }
    if (u.cancelled) return;
    const xhr = await sendOnce(u, token);
    if (u.cancelled) return; // signed out meanwhile
    if (xhr.status === 202 && xhr.response && xhr.response.files) {
      u.done = true;
      u.li.className = "up-item done";
      u.bar.firstChild.style.width = "100%";
      u.status.textContent = "uploaded";
      if (state.dataset && state.dataset.id === u.dataset) {
        for (const f of xhr.response.files) upsertFile(f, "prepend");
        renderCounts();
      }
      return;
    }
    if (xhr.status === 401 && !renewed) {
      renewed = true;
      if (session.access === token) {
        try { await refreshTokens(); } catch (e) { if (!u.cancelled) failUpload(u, e.message); return; }
      }
      attempt--;
      continue;
    }
    if ((xhr.status === 429 || xhr.status === 503) && attempt < 6) {
      const ra = Number(xhr.getResponseHeader("Retry-After"));
      const wait = (ra > 0 ? ra : Math.min(2 ** attempt, 30)) * 1000;
      u.li.className = "up-item queued";
      u.status.textContent = "busy, retrying in " + Math.round(wait / 1000) + " s";
      await new Promise((r) => setTimeout(r, wait));
      continue;
    }
    let msg;
    if (xhr.status === 0) {
      msg = "network error";
    } else {
      const err = xhr.response && xhr.response.error;
      msg = err ? err.message + " (" + err.code + ")" : "HTTP " + xhr.status;
    }
    failUpload(u, msg);
    if (xhr.status === 401 && session.access === token) {
      signOut("Your session is no longer accepted. Sign in again.", false);
    }
    return;
  }
}

function failUpload(u, msg) {
  u.done = true;
  u.failed = true;
  u.li.className = "up-item failed";
  u.status.textContent = msg;
  toast(msg, "error", "Upload of “" + u.file.name + "” failed");
}

// Resolves with the finished XMLHttpRequest (status 0: the connection failed
// or was aborted).
function sendOnce(u, token) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    u.xhr = xhr;
    xhr.open("POST", "/v1/datasets/" + encodeURIComponent(u.dataset) + "/files");
    xhr.setRequestHeader("Authorization", "Bearer " + token);
    xhr.responseType = "json";
    u.li.className = "up-item running";
    u.status.textContent = "0%";
    u.bar.firstChild.style.width = "0%";
    xhr.upload.onprogress = (ev) => {
      if (!ev.lengthComputable) return;
      const pct = Math.min(100, Math.floor((ev.loaded / ev.total) * 100));
      u.bar.firstChild.style.width = pct + "%";
      u.status.textContent = pct < 100 ? pct + "%" : "storing…";
    };
    xhr.onload = () => { u.xhr = null; resolve(xhr); };
    xhr.onerror = xhr.onabort = xhr.ontimeout = () => { u.xhr = null; resolve(xhr); };
    const form = new FormData();
    form.append("file", u.file, u.file.name);
    xhr.send(form);
  });
}

function renderUploadSummary() {
  const total = state.uploads.length;
  const done = state.uploads.filter((u) => u.done && !u.failed).length;
  const failed = state.uploads.filter((u) => u.failed).length;
  const active = total - done - failed;
  let text = done + " of " + total + " uploaded";
  if (failed) text += " · " + failed + " failed";
  if (active) text += " · " + active + " in progress";
  $("uploads-summary").textContent = text;
  $("uploads-clear").disabled = active > 0;
}

// ---------------------------------------------------------------- drawer

function openDrawer(id) {
  state.selected = id;
  for (const tr of state.rows.values()) tr.classList.toggle("selected", tr.dataset.id === id);
  $("drawer").hidden = false;
  $("scrim").hidden = false;
  requestAnimationFrame(() => $("drawer").classList.add("open"));
  renderDrawer(true);
}

function closeDrawer() {
  state.selected = null;
  for (const tr of state.rows.values()) tr.classList.remove("selected");
  $("drawer").classList.remove("open");
  $("drawer").hidden = true;
  $("scrim").hidden = true;
}

function setTab(tab) {
  state.tab = tab;
  for (const b of $("tabs").querySelectorAll("button")) {
    b.classList.toggle("active", b.dataset.tab === tab);
    b.setAttribute("aria-selected", b.dataset.tab === tab ? "true" : "false");
  }
  renderDrawer(true);
}

let drawerToken = 0;
function renderDrawer(force) {
  const f = state.files.get(state.selected);
  if (!f) return;
  $("drawer-title").textContent = f.name;
  $("drawer-meta").replaceChildren(badge(f.status), " ", fmtBytes(f.size), " · ", f.mime || "",
                                   " · uploaded ", fmtTime(f.created_at));
  // Live tabs re-render on every update; the heavy ones only when asked.
  if (!force && (state.tab === "preview" || state.tab === "text")) return;
  const token = ++drawerToken;
  const body = $("drawer-body");
  body.dataset.tab = state.tab;
  if (state.tab === "overview") body.replaceChildren(overview(f));
  else if (state.tab === "preview") body.replaceChildren(previewPane(f, token));
  else if (state.tab === "text") body.replaceChildren(textPane(f, token));
  else timelinePane(f, token, force);
}

function overview(f) {
  const box = h("div", { class: "overview" });
  box.append(h("h3", {}, "Record"));
  if (f.record && Object.keys(f.record).length) {
    const keys = state.schemaProps.length ? state.schemaProps.filter((k) => k in f.record) : [];
    for (const k of Object.keys(f.record)) if (!keys.includes(k)) keys.push(k);
    box.append(h("dl", { class: "record" },
                 ...keys.map((k) => [h("dt", {}, k), h("dd", {}, fieldText(f.record[k]))])));
  } else {
    box.append(h("p", { class: "muted" }, FINAL.has(f.status) ? "No record for this file."
                                                               : "The record appears when ai_record finishes."));
  }
  box.append(h("h3", {}, "Runs"));
  // A file no pipeline takes says why (`reason`); one stored with
  // ?process=false waits for Re-process (POST /v1/files/{id}/process).
  if (f.reason) box.append(h("p", { class: "muted" }, f.reason + "."));
  else if (f.status === "uploaded") box.append(h("p", { class: "muted" }, "Stored, not processed: Re-process starts it."));
  else if (!(f.runs || []).length) box.append(h("p", { class: "muted" }, "No pipeline matches this file type."));
  for (const r of f.runs || []) {
    const dur = r.started_at && r.finished_at ? fmtDuration(new Date(r.finished_at) - new Date(r.started_at)) : "";
    box.append(h("div", { class: "run" },
      h("div", { class: "run-head" }, h("strong", {}, r.pipeline), badge(r.state,
        r.state === "waiting" ? state.waitReasons.get(r.id) || "waiting" : null)),
      h("div", { class: "muted small" },
        "step " + (r.step || "—") + " · attempt " + r.attempt + (dur ? " · " + dur : "")),
      r.error ? h("div", { class: "run-error" }, r.error) : null,
      (r.artifacts || []).length ? h("div", { class: "arts" },
        ...(r.artifacts || []).map((a) => h("span", { class: "chip" }, a.kind + " · " + fmtBytes(a.size)))) : null));
  }
  if (f.text_source) box.append(h("p", { class: "muted small" }, "Text from " + f.text_source + "."));
  box.append(h("p", { class: "muted small mono" }, "sha256 " + f.sha256));
  return box;
}

function previewPane(f, token) {
  const a = artifactOf(f, "preview") || artifactOf(f, "thumbnail");
  if (!a) {
    return h("div", { class: "empty small-empty" }, h("strong", {}, "No preview"),
             h("span", { class: "muted" }, FINAL.has(f.status) ? "This file has no preview."
                                                                : "It appears when file_view is done."));
  }
  const wrap = h("div", { class: "preview" }, h("div", { class: "spinner" }));
  artifactBlobUrl(a).then((url) => {
    if (token !== drawerToken) return;
    wrap.replaceChildren(h("img", { src: url, alt: "Preview of " + f.name, class: "preview-img" }));
  }).catch((e) => { if (token === drawerToken) wrap.replaceChildren(h("p", { class: "muted" }, e.message)); });
  return wrap;
}

function textPane(f, token) {
  const a = artifactOf(f, "text");
  if (!a) {
    return h("div", { class: "empty small-empty" }, h("strong", {}, "No text"),
             h("span", { class: "muted" }, FINAL.has(f.status) ? "No text was extracted from this file."
                                                                : "It appears when a text step succeeds."));
  }
  const pre = h("pre", { class: "text" }, "Loading…");
  authFetch(a.url)
    .then(async (res) => { if (!res.ok) throw await errorFrom(res); return res.text(); })
    .then((t) => { if (token === drawerToken) pre.textContent = t || "(empty)"; })
    .catch((e) => { if (token === drawerToken) pre.textContent = e.message; });
  return h("div", {}, f.text_source ? h("p", { class: "muted small" }, "Source: " + f.text_source) : null, pre);
}

const KIND_CLASS = {
  queued: "queued", started: "running", step_started: "running", step_succeeded: "succeeded",
  succeeded: "succeeded", step_failed: "failed", failed: "failed", retry: "waiting",
  fallback: "waiting", always: "running", waiting: "waiting", cancelled: "cancelled",
};

function describe(e) {
  const d = e.detail || {};
  const bits = [];
  if (d.reason) bits.push(d.reason);
  if (d.error) bits.push(d.error);
  if (d.from && d.to) bits.push(d.from + " → " + d.to);
  if (d.attempt && e.kind !== "step_started") bits.push("attempt " + d.attempt);
  if (d.delay_ms) bits.push("in " + fmtDuration(d.delay_ms));
  if (d.retry_in_s) bits.push("retry in " + fmtDuration(d.retry_in_s * 1000));
  if (d.duration_s !== undefined) bits.push(fmtDuration(d.duration_s * 1000));
  return bits.join(" · ");
}

function timelinePane(f, token, force) {
  const body = $("drawer-body");
  if (force) body.replaceChildren(h("div", { class: "spinner" }));
  api("GET", "/v1/files/" + f.id + "/events").then((res) => {
    if (token !== drawerToken) return;
    const evs = res.events || [];
    if (!evs.length) {
      body.replaceChildren(h("div", { class: "empty small-empty" }, h("strong", {}, "Nothing yet"),
                             h("span", { class: "muted" }, "No pipeline has touched this file.")));
      return;
    }
    body.replaceChildren(h("ol", { class: "timeline" }, ...evs.map((e) =>
      h("li", { class: "tl " + (KIND_CLASS[e.kind] || "") },
        h("i", { class: "tl-dot" }),
        h("div", { class: "tl-main" },
          h("div", {}, h("strong", {}, e.kind.replace(/_/g, " ")),
            e.step ? h("span", { class: "chip" }, e.step) : null,
            h("span", { class: "muted small tl-pipe" }, e.pipeline || "")),
          describe(e) ? h("div", { class: "small tl-detail" }, describe(e)) : null),
        h("time", { class: "muted small", datetime: e.at, title: e.at }, fmtTime(e.at))))));
  }).catch((e) => { if (token === drawerToken) body.replaceChildren(h("p", { class: "muted" }, e.message)); });
}

async function download(id) {
  const f = state.files.get(id);
  try {
    const res = await authFetch("/v1/files/" + id + "/content");
    if (!res.ok) throw await errorFrom(res);
    const url = URL.createObjectURL(await res.blob());
    const a = h("a", { href: url, download: f ? f.name : "file" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    report(e, "Could not download");
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  // Static icons of the page shell.
  for (const el of document.querySelectorAll("[data-icon]")) el.prepend(icon(el.dataset.icon, Number(el.dataset.iconSize) || 16));
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key-input").value.trim();
    $("key-input").value = ""; // the key leaves the page with the exchange
    if (key) signIn(key);
  });
  $("signout-btn").addEventListener("click", () => signOut("", true));
  $("resume-btn").addEventListener("click", () => resume());
  // A hidden tab's timers are throttled: back in view, a token past its
  // renewal time is renewed at once.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && session.access && Date.now() > session.expiresAt - EXPIRY_MARGIN_MS * 5) {
      refreshTokens().catch(() => {});
    }
  });
  $("dataset-select").addEventListener("change", (ev) => openDataset(ev.target.value));
  $("new-dataset-btn").addEventListener("click", () => { stopLive(); showCreate(false); });
  $("create-form").addEventListener("submit", createDataset);
  $("create-cancel").addEventListener("click", () => state.dataset && openDataset(state.dataset.id));
  $("more-btn").addEventListener("click", () => loadFiles(state.nextCursor));

  const input = $("file-input");
  const dz = $("dropzone");
  $("pick-btn").addEventListener("click", (ev) => { ev.stopPropagation(); input.click(); });
  dz.addEventListener("click", () => input.click());
  dz.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  for (const t of ["dragenter", "dragover"]) {
    dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.add("over"); });
  }
  for (const t of ["dragleave", "drop"]) {
    dz.addEventListener(t, (ev) => { ev.preventDefault(); dz.classList.remove("over"); });
  }
  dz.addEventListener("drop", (ev) => addFiles(ev.dataTransfer.files));
  // A file dropped outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());

  $("uploads-clear").addEventListener("click", () => {
    state.uploads = state.uploads.filter((u) => !u.done);
    $("upload-list").replaceChildren(...state.uploads.map((u) => u.li));
    $("uploads").hidden = state.uploads.length === 0;
  });

  $("drawer-close").addEventListener("click", closeDrawer);
  $("scrim").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && state.selected) closeDrawer(); });
  $("tabs").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-tab]");
    if (b) setTab(b.dataset.tab);
  });
  $("drawer-reprocess").addEventListener("click", () => state.selected && reprocess(state.selected));
  $("drawer-delete").addEventListener("click", () => state.selected && deleteFile(state.selected));
  $("drawer-download").addEventListener("click", () => state.selected && download(state.selected));
}

// ---------------------------------------------------------------- Pipelines page (web/pipelines.js)

import { initPipelines, openPipelines, pathLink } from "./pipelines.js";

// The page gets the API through api() (the session's credentials) and never
// reads them itself. opts: {pipeline, fileId} (a file's "show path" link).
function showPipelines(opts) {
  closeDrawer();
  show("pipelines-view");
  openPipelines(opts);
}
initPipelines({ api, h, report, dataset: () => state.dataset });
$("pipelines-btn").addEventListener("click", () => showPipelines({}));
$("files-btn").addEventListener("click", () => (state.dataset ? show("dataset-view") : showCreate(true)));

wire();
localStorage.removeItem(LEGACY_KEY_STORAGE); // a key kept by an older version of this page
if (sessionStorage.getItem(REFRESH_STORAGE) !== null) resume();
else show("auth-view");
