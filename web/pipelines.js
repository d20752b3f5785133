// Sluice web UI — the Pipelines page. One ES module, no dependencies, no build step.
//
// Everything comes from the public API (../shared/API.md):
//   - GET /v1/pipelines: every flow, with its graph {nodes: [{id}], edges:
//     [{from, to, on: next | fallback | always}]} (the first node is the start);
//   - GET /v1/pipelines/{name}: one flow, with "versions" and "revision" when
//     the server keeps pipelines in the database (else its single version);
//   - for one file: GET /v1/files/{id} (its runs) and GET /v1/files/{id}/events
//     (the timeline), from which the run's path is rebuilt: the steps it
//     visited with their outcome, and the transitions it took.
// app.js owns the session: it hands us its `api(method, path, body)` (which
// sends the credentials), its `h()` DOM helper and its `report(e, title)`; this
// module never reads a key or a token.
//
// The graph is drawn as SVG (layout() below): columns by depth — the longest
// path from the start over forward edges, so a fallback chain reads left to
// right — and within a column, nodes ordered by their parents' rows. Edges to
// the next column are short curves; edges that skip columns arc over the top;
// back edges (retry loops) arc underneath; a step's edge to itself is a loop.
// next is solid, fallback dashed, always dotted. Names from the API only ever
// go through textContent and attributes.

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 148;
const NODE_H = 46;
const COL_GAP = 78;
const ROW_GAP = 34;
const PAD = 24;
const LABEL_CHARS = 18;   // a longer step name is cut, the full name is its title
const POLL_MS = 1500;     // a shown path whose run is still moving is refetched
const RUN_ENDED = new Set(["succeeded", "failed", "cancelled"]);
const KINDS = ["next", "fallback", "always"];
const KIND_TEXT = { next: "next (on success)", fallback: "fallback (on failure)", always: "always (either way)" };

let ctx = null;           // {api, h, report, dataset: () => {id, name} | null}
const page = {
  pipelines: [],          // GET /v1/pipelines
  name: null,             // the pipeline shown
  detail: null,           // GET /v1/pipelines/{name}
  fileId: null,           // the file whose path is shown
  files: [],              // the current dataset's files (the picker)
  token: 0,               // bumps on every change of what is shown: stale answers are dropped
  timer: null,
};

const $ = (id) => document.getElementById(id);

// An SVG element (document.createElement cannot make them).
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function shortVersion(v) {
  return typeof v === "string" && v.length > 12 ? v.slice(0, 12) : (v || "—");
}

function fmtTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
                                                   hour: "2-digit", minute: "2-digit" });
}

// ---------------------------------------------------------------- layout

// Positions for every node and a route for every edge of `graph` (a layered
// drawing, after Sugiyama): columns by depth; an edge that skips columns, or
// goes back (a retry loop, drawn reversed), passes one waypoint per column
// it crosses, so it runs between the boxes and never through one; the
// columns are ordered by the mean position of their neighbours (a few sweeps
// each way); a box sits level with its first real parent when there is room.
// Returns {nodes: Map id -> {id, col, x, y}, edges: [{edge, kind: "forward" |
// "long" | "back" | "self", d}], minY, width, height, start, terminals: Set}.
export function layout(graph) {
  const ids = [];
  const seen = new Set();
  for (const n of (graph && graph.nodes) || []) {
    if (n && typeof n.id === "string" && !seen.has(n.id)) { seen.add(n.id); ids.push(n.id); }
  }
  const edges = ((graph && graph.edges) || []).filter((e) => e && seen.has(e.from) && seen.has(e.to));
  const out = new Map(ids.map((id) => [id, []]));
  for (const e of edges) out.get(e.from).push(e);
  const start = ids[0];

  // Back edges: those closing a cycle in a depth-first walk from the start
  // (then from any node not reached, in order).
  const back = new Set();
  const color = new Map();
  const dfs = (root) => {
    const stack = [[root, 0]];
    color.set(root, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const list = out.get(top[0]);
      if (top[1] >= list.length) { color.set(top[0], 2); stack.pop(); continue; }
      const e = list[top[1]++];
      const c = color.get(e.to) || 0;
      if (c === 1) back.add(e);
      else if (c === 0) { color.set(e.to, 1); stack.push([e.to, 0]); }
    }
  };
  for (const id of ids) if (!color.get(id)) dfs(id);

  // Depth: the longest path over forward edges (a topological walk). A graph
  // with no edges yet (the flow not loaded) keeps its steps in order.
  const depth = new Map(ids.map((id, i) => [id, edges.length ? 0 : i]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of edges) if (!back.has(e) && e.from !== e.to) indeg.set(e.to, indeg.get(e.to) + 1);
  const queue = ids.filter((id) => indeg.get(id) === 0);
  const order = [];
  while (queue.length) {
    const u = queue.shift();
    order.push(u);
    for (const e of out.get(u)) {
      if (back.has(e) || e.from === e.to) continue;
      depth.set(e.to, Math.max(depth.get(e.to), depth.get(u) + 1));
      indeg.set(e.to, indeg.get(e.to) - 1);
      if (indeg.get(e.to) === 0) queue.push(e.to);
    }
  }

  // Items: the nodes, and one waypoint per column crossed by a long or back
  // edge. chains[i]: the items of edge i from its left end to its right end.
  const items = new Map(ids.map((id) => [id, { key: id, real: true, col: depth.get(id), preds: [], succs: [] }]));
  const cols = [];
  for (const id of order) (cols[depth.get(id)] ||= []).push(id);
  const chains = edges.map((e, i) => {
    if (e.from === e.to) return null;
    const [u, v] = back.has(e) ? [e.to, e.from] : [e.from, e.to];
    const chain = [u];
    for (let c = depth.get(u) + 1; c < depth.get(v); c++) {
      const key = "\u0000" + i + ":" + c;
      items.set(key, { key, real: false, col: c, preds: [], succs: [] });
      (cols[c] ||= []).push(key);
      chain.push(key);
    }
    chain.push(v);
    for (let j = 1; j < chain.length; j++) {
      items.get(chain[j]).preds.push(chain[j - 1]);
      items.get(chain[j - 1]).succs.push(chain[j]);
    }
    return chain;
  });
  for (let c = 0; c < cols.length; c++) cols[c] ||= [];

  // Order within columns: barycentre sweeps, down then up; ties keep real
  // boxes above waypoints, then the previous order.
  const pos = new Map();
  const index = () => cols.forEach((col) => col.forEach((k, i) => pos.set(k, i - (col.length - 1) / 2)));
  index();
  const sweep = (c, side) => {
    const col = cols[c];
    const key = new Map(col.map((k, i) => {
      const ns = items.get(k)[side];
      return [k, ns.length ? ns.reduce((a, n) => a + pos.get(n), 0) / ns.length : pos.get(k)];
    }));
    const was = new Map(col.map((k, i) => [k, i]));
    col.sort((a, b) => key.get(a) - key.get(b) || (items.get(a).real ? 0 : 1) - (items.get(b).real ? 0 : 1) ||
                       was.get(a) - was.get(b));
    index();
  };
  for (let round = 0; round < 4; round++) {
    for (let c = 1; c < cols.length; c++) sweep(c, "preds");
    if (round < 3) for (let c = cols.length - 2; c >= 0; c--) sweep(c, "succs");
  }

  // Vertical places, column by column: level with the real parents' mean (else
  // the waypoints'), never closer than a gap to the item above.
  const center = new Map();
  for (const col of cols) {
    let prev = null;
    for (const k of col) {
      const it = items.get(k);
      const h = it.real ? NODE_H : 0;
      const realPreds = it.preds.filter((p) => items.get(p).real);
      const ps = realPreds.length ? realPreds : it.preds;
      let want = ps.length ? ps.reduce((a, p) => a + center.get(p), 0) / ps.length : null;
      let top = want === null ? null : want - h / 2;
      if (prev) {
        const gap = prev.real && it.real ? ROW_GAP : 16;
        const min = prev.bottom + gap;
        top = top === null ? min : Math.max(top, min);
      } else if (top === null) {
        top = 0;
      }
      center.set(k, top + h / 2);
      prev = { real: it.real, bottom: top + h };
    }
  }

  const colX = (c) => c * (NODE_W + COL_GAP);
  const nodes = new Map(ids.map((id) => [id, { id, col: depth.get(id), x: colX(depth.get(id)),
                                               y: center.get(id) - NODE_H / 2 }]));
  const half = (k) => (items.get(k).real ? NODE_H / 2 : 6);
  let minY = Math.min(0, ...[...center.keys()].map((k) => center.get(k) - half(k)));
  const maxY = Math.max(NODE_H, ...[...center.keys()].map((k) => center.get(k) + half(k)));
  let maxX = Math.max(1, cols.length) * (NODE_W + COL_GAP) - COL_GAP;

  // Routes: smooth curves through the points, level at each end and at each
  // waypoint. Where several edges meet a box on one side, their ends are
  // spread along it in the order of where they come from.
  const ports = new Map(); // "id\u0000side" -> [{pt, toward}]
  const port = (id, side, pt, toward) => {
    const key = id + "\u0000" + side;
    if (!ports.has(key)) ports.set(key, []);
    ports.get(key).push({ pt, toward });
  };
  const routes = edges.map((e, i) => {
    if (e.from === e.to) return null;
    const chain = chains[i];
    const u = nodes.get(chain[0]);
    const v = nodes.get(chain[chain.length - 1]);
    const pts = [[u.x + NODE_W, u.y + NODE_H / 2]];
    for (const key of chain.slice(1, -1)) {
      const it = items.get(key);
      pts.push([colX(it.col) - 4, center.get(key)], [colX(it.col) + NODE_W + 4, center.get(key)]);
    }
    pts.push([v.x, v.y + NODE_H / 2]);
    port(u.id, "right", pts[0], pts[1][1] + i * 1e-3);
    port(v.id, "left", pts[pts.length - 1], pts[pts.length - 2][1] + i * 1e-3);
    return pts;
  });
  for (const list of ports.values()) {
    list.sort((p, q) => p.toward - q.toward);
    const step = Math.min(10, (NODE_H - 12) / Math.max(1, list.length - 1));
    list.forEach((p, j) => { p.pt[1] += (j - (list.length - 1) / 2) * step; });
  }
  const routed = edges.map((e, i) => {
    const a = nodes.get(e.from);
    if (e.from === e.to) {
      const x0 = a.x + NODE_W - 30;
      const y0 = a.y;
      const x1 = a.x + NODE_W;
      const y1 = a.y + 14;
      minY = Math.min(minY, y0 - 30);
      maxX = Math.max(maxX, x1 + 30);
      return { edge: e, kind: "self", d: `M${x0} ${y0} C${x0} ${y0 - 34} ${x1 + 34} ${y1} ${x1} ${y1}` };
    }
    const isBack = back.has(e);
    const pts = isBack ? [...routes[i]].reverse() : routes[i]; // drawn from e.from: the arrow ends at e.to
    let d = `M${pts[0][0]} ${pts[0][1]}`;
    for (let j = 1; j < pts.length; j++) {
      const [x0, y0] = pts[j - 1];
      const [x1, y1] = pts[j];
      const mx = (x0 + x1) / 2;
      d += Math.abs(y1 - y0) < 0.5 ? ` L${x1} ${y1}` : ` C${mx} ${y0} ${mx} ${y1} ${x1} ${y1}`;
    }
    return { edge: e, kind: isBack ? "back" : routes[i].length > 2 ? "long" : "forward", d };
  });
  return { nodes, edges: routed, minY, width: maxX, height: maxY - minY, start,
           terminals: new Set(ids.filter((id) => out.get(id).length === 0)) };
}

// ---------------------------------------------------------------- a run's path

// The path of run `runId` from a file's timeline: which steps it visited
// (outcome, retries, error) and which transitions it took, in order.
// Returns {steps: Map id -> {outcome, retries, error, note, reason}, taken:
// [{from, to, on}], visits: [id...], ended: "succeeded" | "failed" | "cancelled" | null}.
export function runPath(events, runId, graph) {
  const steps = new Map();
  const taken = [];
  const visits = [];
  let ended = null;
  let justOk = null; // the step that just succeeded: the next step_started is its "next"/"always"
  const step = (id) => {
    if (!steps.has(id)) steps.set(id, { outcome: null, retries: 0, error: null, note: null, reason: null });
    return steps.get(id);
  };
  const kindOf = (from, to) => {
    const es = ((graph && graph.edges) || []).filter((e) => e.from === from && e.to === to);
    return es.some((e) => e.on === "always") ? "always" : "next";
  };
  for (const e of events || []) {
    if (e.run_id !== runId) continue;
    const d = e.detail || {};
    switch (e.kind) {
      case "step_started": {
        if (!e.step) break;
        const st = step(e.step);
        st.outcome = "running";
        if (justOk && justOk !== e.step) taken.push({ from: justOk, to: e.step, on: kindOf(justOk, e.step) });
        if (visits[visits.length - 1] !== e.step) visits.push(e.step);
        justOk = null;
        break;
      }
      case "step_succeeded":
        if (e.step) { step(e.step).outcome = "succeeded"; step(e.step).note = d.note || null; }
        justOk = e.step;
        break;
      case "step_failed":
        if (e.step) { step(e.step).outcome = "failed"; step(e.step).error = d.error || null; }
        justOk = null;
        break;
      case "retry":
        if (e.step) { step(e.step).retries++; step(e.step).outcome = "retrying"; }
        break;
      case "fallback":
      case "always":
        if (d.from && d.to) taken.push({ from: d.from, to: d.to, on: e.kind });
        break;
      case "waiting":
        if (e.step) { step(e.step).outcome = "waiting"; step(e.step).reason = d.reason || null; }
        break;
      case "succeeded":
      case "failed":
      case "cancelled":
        ended = e.kind;
        if (e.kind === "failed" && e.step && steps.has(e.step)) {
          const st = step(e.step);
          st.outcome = "failed";
          st.error = st.error || d.error || null;
        }
        break;
      default:
        break;
    }
  }
  return { steps, taken, visits, ended };
}

function outcomeText(st) {
  if (!st) return "";
  let t = st.outcome === "retrying" ? "retrying" : st.outcome || "";
  if (st.outcome === "failed" && st.error) t += " · " + st.error;
  if (st.outcome === "succeeded" && st.note) t += " · " + st.note;
  if (st.retries) t = "retried ×" + st.retries + " · " + t;
  return t;
}

// ---------------------------------------------------------------- drawing

let markerSeq = 0;

// The SVG of `p` (a pipeline document); `path` (runPath) highlights a run.
export function drawGraph(p, path) {
  const L = layout(p.graph);
  const w = L.width + 2 * PAD + 40;
  const hgt = L.height + 2 * PAD;
  const ids = ++markerSeq;
  const nEdges = L.edges.length;
  const title = "Graph of " + p.name + ": " + L.nodes.size + " steps, " + nEdges + " transitions" +
                (path ? ", with a file's path" : "");
  const svg = s("svg", { class: "pgraph" + (path ? " has-path" : ""), viewBox: `${-PAD} ${L.minY - PAD} ${w} ${hgt}`,
                         width: w, height: hgt, role: "group", "aria-label": title,
                         "data-pipeline": p.name },
                s("title", {}, title));
  const defs = s("defs");
  for (const k of [...KINDS, "taken"]) {
    defs.append(s("marker", { id: `pg${ids}-${k}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
                              markerWidth: k === "taken" ? 12 : 10, markerHeight: k === "taken" ? 12 : 10,
                              markerUnits: "userSpaceOnUse", orient: "auto-start-reverse", class: "pg-arrow " + k },
                  s("path", { d: "M0 0 L10 5 L0 10 z" })));
  }
  svg.append(defs);

  const takenKey = new Set(((path && path.taken) || []).map((t) => t.from + "\u0000" + t.to + "\u0000" + t.on));
  const gEdges = s("g", { class: "pg-edges" });
  for (const r of L.edges) {
    const e = r.edge;
    const on = KINDS.includes(e.on) ? e.on : "next";
    const isTaken = takenKey.has(e.from + "\u0000" + e.to + "\u0000" + on);
    gEdges.append(s("path", { class: `edge ${on} ${r.kind}` + (isTaken ? " taken" : ""), d: r.d,
                              "marker-end": `url(#pg${ids}-${isTaken ? "taken" : on})`,
                              "data-from": e.from, "data-to": e.to, "data-on": on,
                              "data-taken": isTaken ? "true" : null },
                    s("title", {}, e.from + " → " + e.to + " (" + on + ")" + (isTaken ? ", taken" : ""))));
  }
  svg.append(gEdges);

  const gNodes = s("g", { class: "pg-nodes" });
  for (const n of L.nodes.values()) {
    const st = path ? path.steps.get(n.id) : null;
    const role = n.id === L.start ? "start" : L.terminals.has(n.id) ? "end" : "";
    const outcome = st ? st.outcome : null;
    const cls = "node" + (role ? " " + role : "") + (st ? " visited " + outcome : "") +
                (st && st.retries ? " retried" : "");
    const sub = st ? outcomeText(st) : (path ? "not visited" : role);
    const label = n.id.length > LABEL_CHARS ? n.id.slice(0, LABEL_CHARS - 1) + "…" : n.id;
    const aria = n.id + (role ? " (" + role + " step)" : "") + (path ? ": " + (sub || "not visited") : "");
    const g = s("g", { class: cls, transform: `translate(${n.x} ${n.y})`, tabindex: 0, role: "img",
                       "aria-label": aria, "data-id": n.id, "data-outcome": outcome || null,
                       "data-retries": st && st.retries ? st.retries : null },
                s("title", {}, aria),
                s("rect", { width: NODE_W, height: NODE_H, rx: 9 }),
                s("text", { class: "pg-label", x: NODE_W / 2, y: sub ? 19 : NODE_H / 2 + 5 }, label),
                sub ? s("text", { class: "pg-sub", x: NODE_W / 2, y: 35 },
                        sub.length > 24 ? sub.slice(0, 23) + "…" : sub) : null);
    if (st && st.retries) {
      g.append(s("g", { class: "pg-retries", transform: `translate(${NODE_W - 4} 2)` },
                 s("circle", { r: 9 }), s("text", { y: 4 }, "↻" + st.retries)));
    }
    if (role === "start") {
      g.append(s("path", { class: "pg-entry", d: `M-20 ${NODE_H / 2} L-3 ${NODE_H / 2}`,
                           "marker-end": `url(#pg${ids}-next)` }),
               s("circle", { class: "pg-entry-dot", cx: -22, cy: NODE_H / 2, r: 3.5 }));
    }
    gNodes.append(g);
  }
  svg.append(gNodes);
  return svg;
}

function legend() {
  const h = ctx.h;
  const item = (k, text) => {
    const sv = s("svg", { width: 40, height: 10, "aria-hidden": "true" },
                 s("path", { class: "edge " + k, d: "M2 5 L38 5" }));
    return h("span", { class: "pg-legend-item" }, sv, text);
  };
  return h("div", { class: "pg-legend", "aria-label": "Legend" },
           ...KINDS.map((k) => item(k, KIND_TEXT[k])),
           h("span", { class: "pg-legend-item" }, h("i", { class: "pg-swatch succeeded" }), "succeeded"),
           h("span", { class: "pg-legend-item" }, h("i", { class: "pg-swatch failed" }), "failed"),
           h("span", { class: "pg-legend-item" }, h("i", { class: "pg-swatch retried" }), "retried"));
}

// ---------------------------------------------------------------- the page

// Called once by app.js. deps: {api, h, report, dataset: () => the open dataset or null}.
export function initPipelines(deps) {
  ctx = deps;
}

// Shows the page (app.js has made #pipelines-view visible). opts: {pipeline, fileId}.
export async function openPipelines(opts) {
  const o = opts || {};
  if (o.pipeline) page.name = o.pipeline;
  page.fileId = o.fileId || null;
  const token = ++page.token;
  clearTimeout(page.timer);
  const root = $("pipelines-view");
  if (!page.pipelines.length) root.replaceChildren(ctx.h("div", { class: "spinner" }));
  try {
    page.pipelines = (await ctx.api("GET", "/v1/pipelines")).pipelines || [];
  } catch (e) {
    if (token !== page.token) return;
    ctx.report(e, "Could not list the pipelines");
    root.replaceChildren(ctx.h("p", { class: "muted" }, e.message));
    return;
  }
  if (token !== page.token) return;
  if (!page.pipelines.some((p) => p.name === page.name)) page.name = page.pipelines.length ? page.pipelines[0].name : null;
  render(token);
}

// A "show path" link for one run's cell in the files table.
export function pathLink(fileId, pipeline, onOpen) {
  return ctx.h("button", { type: "button", class: "linkish pg-pathlink", title: "Show this file's path through " + pipeline,
                           "aria-label": "Show the path of this file through " + pipeline,
                           onclick: (ev) => { ev.stopPropagation(); onOpen({ pipeline, fileId }); } },
               "show path");
}

async function render(token) {
  const h = ctx.h;
  const root = $("pipelines-view");
  const list = h("nav", { class: "pg-list", "aria-label": "Pipelines" },
                 h("h3", {}, "Pipelines"),
                 ...page.pipelines.map((p) => h("button", {
                   type: "button", class: "pg-item" + (p.name === page.name ? " active" : ""),
                   "aria-current": p.name === page.name ? "true" : null, dataset: { name: p.name },
                   onclick: () => { page.fileId = null; openPipelines({ pipeline: p.name }); } },
                   h("strong", {}, p.name),
                   h("span", { class: "muted small" },
                     (p.steps || []).length + " steps · " + (p.source || "config") +
                     (p.version ? " · " + String(p.version).slice(0, 7) : "")))));
  if (!page.pipelines.length) {
    root.replaceChildren(h("div", { class: "card" }, h("strong", {}, "No pipelines"),
                           h("p", { class: "muted" }, "This server has no pipeline configured.")));
    return;
  }
  let p;
  let file = null;
  let events = null;
  try {
    p = await ctx.api("GET", "/v1/pipelines/" + encodeURIComponent(page.name));
    if (page.fileId) {
      [file, events] = await Promise.all([
        ctx.api("GET", "/v1/files/" + encodeURIComponent(page.fileId)),
        ctx.api("GET", "/v1/files/" + encodeURIComponent(page.fileId) + "/events").then((b) => b.events || []),
      ]);
    }
  } catch (e) {
    if (token !== page.token) return;
    if (page.fileId && e.status === 404) {
      page.fileId = null;
      return render(token);
    }
    root.replaceChildren(h("div", { class: "pg-layout" }, list,
                           h("div", { class: "pg-main" }, h("p", { class: "muted" }, e.message))));
    return;
  }
  if (token !== page.token) return;
  page.detail = p;
  const ds = ctx.dataset();
  if (ds) {
    try {
      page.files = (await ctx.api("GET", "/v1/datasets/" + encodeURIComponent(ds.id) + "/files?limit=200")).files || [];
    } catch (_) {
      page.files = [];
    }
    if (token !== page.token) return;
  } else {
    page.files = [];
  }
  // Built whole, then swapped in: a refresh of a moving run does not flicker.
  root.replaceChildren(h("div", { class: "pg-layout" }, list,
                         h("div", { class: "pg-main" }, ...pipelineView(p, file, events, ds))));

  // A run still moving: look again shortly (only while this is what is shown).
  const run = file ? newestRun(file, p.name) : null;
  if (run && !RUN_ENDED.has(run.state)) {
    page.timer = setTimeout(() => {
      if (token === page.token && !$("pipelines-view").hidden) {
        page.token++;
        render(page.token);
      }
    }, POLL_MS);
  }
}

function newestRun(f, pipeline) {
  let best = null;
  for (const r of f.runs || []) {
    if (r.pipeline !== pipeline) continue;
    if (!best || (r.started_at || "") >= (best.started_at || "")) best = r;
  }
  return best;
}

function pipelineView(p, file, events, ds) {
  const h = ctx.h;
  const run = file ? newestRun(file, p.name) : null;
  const path = run ? runPath(events, run.id, p.graph) : null;
  const graph = p.graph || { nodes: [], edges: [] };

  const head = h("div", { class: "pg-head" },
    h("div", {},
      h("h1", {}, p.name),
      h("div", { class: "muted small" },
        "matches ", h("code", { title: (p.match || []).join(", ") },
                      ((p.match || []).slice(0, 3).join(", ") || "—") +
                      ((p.match || []).length > 3 ? " and " + ((p.match || []).length - 3) + " more" : "")), " · ",
        (graph.nodes || []).length + " steps, " + (graph.edges || []).length + " transitions · source ",
        h("span", { class: "chip" }, p.source || "config"), " version ",
        h("code", { title: p.version || "" }, shortVersion(p.version)),
        p.revision !== undefined && p.revision !== null ? " · revision " + p.revision : "")));

  // The file picker: files of the open dataset that have a run of this pipeline.
  const withRun = page.files.filter((f) => (f.runs || []).some((r) => r.pipeline === p.name));
  if (file && !withRun.some((f) => f.id === file.id)) withRun.unshift(file);
  const picker = h("select", { id: "pg-file", "aria-label": "A file whose path to show" },
    h("option", { value: "" }, ds ? (withRun.length ? "— pick a file —" : "no file of " + ds.name + " ran " + p.name)
                                  : "open a dataset to pick a file"),
    ...withRun.map((f) => h("option", { value: f.id, selected: file && f.id === file.id },
                            f.name + " · " + f.status)));
  picker.addEventListener("change", () => openPipelines({ pipeline: p.name, fileId: picker.value || null }));
  const pathBar = h("div", { class: "pg-pathbar" },
    h("label", { for: "pg-file" }, "Path of a file"), picker,
    file ? h("button", { type: "button", class: "btn ghost small", onclick: () => openPipelines({ pipeline: p.name }) },
             "Clear") : null);

  let summary = null;
  if (file && !run) {
    summary = h("p", { class: "muted pg-summary" }, "“" + file.name + "” has no run of " + p.name + ".");
  } else if (file && run) {
    const items = path.visits.map((id, i) => {
      const st = path.steps.get(id);
      return [i ? h("span", { class: "pg-arrow-text", "aria-hidden": "true" }, " → ") : null,
              h("span", { class: "pg-visit " + (st ? st.outcome : ""), dataset: { step: id } },
                h("strong", {}, id), " ", outcomeText(st))];
    });
    const versionNote = run.flow_version && p.version && run.flow_version !== p.version
      ? h("div", { class: "small pg-note" }, "This run ran on version " + shortVersion(run.flow_version) +
          ", not the one drawn (" + shortVersion(p.version) + "): its steps may differ.")
      : null;
    summary = h("div", { class: "pg-summary", id: "pg-summary", dataset: { state: run.state } },
      h("div", {}, h("strong", {}, file.name), " · run ",
        h("span", { class: "badge " + run.state }, h("i", { class: "dot" }), run.state),
        run.error ? h("span", { class: "run-error" }, " " + run.error) : null),
      h("div", { class: "pg-visits" }, ...items.flat()),
      versionNote);
  }

  const svg = drawGraph(p, path);
  const graphCard = h("div", { class: "pg-graph-wrap" }, svg);
  const text = h("details", { class: "pg-text" }, h("summary", {}, "Steps and transitions as text"),
    h("ul", {}, ...(graph.edges || []).map((e) => h("li", {}, e.from + " → " + e.to + " (" + e.on + ")"))));

  return [head,
    h("div", { class: "card pg-card" }, pathBar, summary, graphCard, legend(), text),
    h("h3", {}, "Versions"),
    h("div", { class: "card pg-card" }, versionsTable(p))];
}

// The versions of pipeline document p: its "versions" when the server keeps
// them (newest revision first; the config file's seed, with no revision,
// last), else the one loaded. The current one is marked.
export function versionsTable(p) {
  const h = ctx.h;
  const hasRev = (v) => v.revision !== undefined && v.revision !== null;
  const versions = (Array.isArray(p.versions) && p.versions.length ? [...p.versions]
    : [{ version: p.version, revision: p.revision, created_at: p.created_at, source: p.source }])
    .sort((x, y) => (hasRev(y) ? y.revision : -1) - (hasRev(x) ? x.revision : -1));
  const isCurrent = (v) => (hasRev(p) ? hasRev(v) && v.revision === p.revision : !hasRev(v) && v.version === p.version);
  const vt = h("table", { class: "pg-versions" },
    h("thead", {}, h("tr", {}, h("th", {}, "Revision"), h("th", {}, "Version"), h("th", {}, "Source"),
                     h("th", {}, "Created"), h("th", {}, ""))),
    h("tbody", {}, ...versions.map((v) => {
      const current = isCurrent(v);
      const source = v.source || (hasRev(v) ? "api" : "config");
      return h("tr", { class: current ? "current" : "", dataset: { version: v.version || "" } },
        h("td", {}, hasRev(v) ? String(v.revision) : "—"),
        h("td", {}, h("code", { title: v.version || "" }, shortVersion(v.version))),
        h("td", {}, source),
        h("td", {}, v.created_at ? fmtTime(v.created_at) : source === "config" ? "from the config file" : "—"),
        h("td", {}, current ? h("span", { class: "badge succeeded" }, h("i", { class: "dot" }), "current") : ""));
    })));
  return vt;
}
