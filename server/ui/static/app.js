// The phpo web view: tasks, a task's plots, points and segments, workflows as a DAG.
// Vanilla JS, no build step. Every value shown comes from the phpo REST API, called with the
// user's bearer token (kept in sessionStorage: it ends with the browser tab). Pages refresh
// themselves by polling; nothing here needs a reload.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "phpo.token";
const POLL_MS = 2000;
const LIVE = new Set(["ready", "leased"]);   // point states whose MLflow run may still be to come
const RUNS_RECHECK_MS = 5000;
const PAGE = 25;
let timer = null;          // the current page's poll
let view = 0;              // bumped on every navigation: a late answer for an old page is dropped

// ---- helpers -------------------------------------------------------------------------------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined)
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}

const fmt = (v) => v === null || v === undefined ? "–"
  : Array.isArray(v) ? "[" + v.map(fmt).join(", ") + "]"
  : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4))
  : typeof v === "object" ? JSON.stringify(v) : String(v);
const when = (t) => t ? new Date(t).toLocaleString() : "–";
const state = (s) => h("span", { class: `state state-${s}`, "data-state": s }, s);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status; this.code = body && body.code;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, opts = {}) {
  const r = await fetch(API + path, { ...opts, headers: { Authorization: `Bearer ${token()}`, ...(opts.headers || {}) } });
  if (r.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin("your token is not valid (unknown or revoked)"); throw new ApiError(401, null); }
  if (!r.ok) { let body = null; try { body = await r.json(); } catch (e) { /* not JSON */ } throw new ApiError(r.status, body); }
  return opts.raw ? r : r.json();
}

function budget(t) { return Math.max(1, t.spec.maxPoints * Math.max(1, t.n_segments)); }

function progressBar(t) {
  const c = t.counts, n = budget(t), pc = (x) => `${Math.min(100, 100 * x / n)}%`;
  return h("span", { class: "progress", "data-evaluated": c.evaluated, "data-total": n },
    h("span", { class: "bar", title: `${c.evaluated} evaluated, ${c.failed} failed, ${c.leased} running of ${n}` },
      h("span", { class: "done", style: `width:${pc(c.evaluated)}` }),
      h("span", { class: "fail", style: `width:${pc(c.failed)}` }),
      h("span", { class: "run", style: `width:${pc(c.leased)}` })),
    ` ${c.evaluated + c.failed}/${n}`);
}

function poll(fn) {
  clearInterval(timer);
  const v = view;
  const run = () => { if (v === view && !document.hidden) fn().catch(showError); };
  run();
  timer = setInterval(run, POLL_MS);
}

function showError(e) {
  if (e && e.status === 401) return;
  const main = document.getElementById("main");
  let box = document.getElementById("page-error");
  if (!box) { box = h("p", { id: "page-error", class: "error" }); main.prepend(box); }
  box.textContent = e.message || String(e);
}

// ---- sortable, paginated table fed by the API ---------------------------------------------

function pagedTable({ columns, fetchPage, sort, onRow, id }) {
  let offset = 0, key = sort || "id", total = 0;
  const wrap = h("div", { id });
  const info = h("span", { class: "muted" });
  const prev = h("button", { onclick: () => { offset = Math.max(0, offset - PAGE); load(); } }, "‹ prev");
  const next = h("button", { onclick: () => { if (offset + PAGE < total) { offset += PAGE; load(); } } }, "next ›");
  const table = h("table");
  wrap.append(h("div", { class: "pager" }, prev, next, info), table);
  async function load() {
    const page = await fetchPage({ sort: key, limit: PAGE, offset });
    total = page.total;
    info.textContent = `${total ? offset + 1 : 0}–${Math.min(total, offset + page.items.length)} of ${total}`;
    prev.disabled = offset === 0; next.disabled = offset + PAGE >= total;
    const head = h("tr", {}, columns.map((c) => {
      const sorted = c.sort && (key === c.sort ? "ascending" : key === "-" + c.sort ? "descending" : null);
      return h("th", { class: c.sort ? "sortable" : "", "aria-sort": sorted, "data-col": c.title,
        onclick: c.sort ? () => { key = key === c.sort ? "-" + c.sort : c.sort; offset = 0; load().catch(showError); } : null },
      c.title);
    }));
    const rows = page.items.map((item) => h("tr", { class: onRow ? "clickable" : "", "data-id": item.id,
      onclick: onRow ? () => onRow(item) : null }, columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.cell(item)))));
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, rows));
  }
  return { el: wrap, load };
}

// ---- pages ---------------------------------------------------------------------------------

function showLogin(message) {
  clearInterval(timer); view++;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const main = document.getElementById("main");
  main.replaceChildren(document.getElementById("login-tpl").content.cloneNode(true));
  if (message) document.getElementById("login-error").textContent = message;
  document.getElementById("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    try { await whoami(); route(); } catch (e) { if (e.status !== 401) showLogin(e.message); }
  });
}

async function whoami() {
  const me = await api("/me");
  document.getElementById("who").textContent = `${me.name} (${me.role})`;
  document.getElementById("logout").hidden = false;
  return me;
}

async function tasksPage(main) {
  const body = h("tbody");
  main.replaceChildren(h("h1", {}, "Your tasks"), h("table", { id: "tasks" },
    h("thead", {}, h("tr", {}, ["id", "name", "state", "progress", "running", "failed", "best loss", "updated"].map((x) => h("th", {}, x)))),
    body));
  poll(async () => {
    const page = await api("/tasks?limit=100");
    body.replaceChildren(...page.items.map((t) => h("tr", { class: "clickable", "data-id": t.id, onclick: () => { location.hash = `#/task/${t.id}`; } },
      h("td", {}, h("a", { href: `#/task/${t.id}` }, t.id)), h("td", {}, t.name || ""), h("td", {}, state(t.state)),
      h("td", {}, progressBar(t)), h("td", { class: "num" }, t.counts.leased), h("td", { class: "num" }, t.counts.failed),
      h("td", { class: "num best" }, fmt(t.best_loss)), h("td", {}, when(t.updated_at)))));
    if (!page.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no tasks yet: phpo submit …")));
  });
}

const PLOTS = ["history", "parallel", "importance", "intermediate"];
let plotly = null;

// plotly.js (served by the phpo server from the plotly package) is most of the page's weight:
// it is loaded the first time a page draws a plot, not with the tasks list
function loadPlotly() {
  if (!plotly) plotly = new Promise((resolve, reject) => {
    const s = h("script", { src: "plotly.min.js" });
    s.onload = () => resolve(window.Plotly);
    s.onerror = () => { plotly = null; reject(new Error("could not load plotly.min.js from the server")); };
    document.head.append(s);
  });
  return plotly;
}

async function drawPlot(box, taskId, kind) {
  try {
    const fig = await api(`/tasks/${taskId}/plots/${kind}`);
    const Plotly = await loadPlotly();
    if (box.firstChild && box.firstChild.classList && box.firstChild.classList.contains("msg")) box.replaceChildren();
    Plotly.react(box, fig.data, { ...fig.layout, autosize: true, height: 380 }, { responsive: true, displaylogo: false });
    box.dataset.points = String(fig.data.reduce((n, d) => n + (d.x ? d.x.length : 0), 0));
  } catch (e) {
    if (e.status === 401) return;
    box.replaceChildren(h("div", { class: "msg" }, `${kind}: ${e.message}`));
  }
}

async function taskPage(main, id, pointId) {
  const v = view;
  const task = await api(`/tasks/${id}`);
  const runs = await api(`/tasks/${id}/runs`).catch(() => ({ points: {}, segments: {} }));
  const head = h("div", { id: "task-head" });
  const plots = h("div", { class: "plots" });
  const kinds = [...PLOTS];
  if ((task.spec.directions || []).length > 1) kinds.push("pareto");
  if (task.n_segments > 1) kinds.push("segments");
  const boxes = Object.fromEntries(kinds.map((k) => [k, h("div", { class: "plot", id: `plot-${k}`, "data-kind": k },
    h("div", { class: "msg loading" }, "drawing the plot…"))]));
  plots.append(...Object.values(boxes));
  const detail = h("div", { id: "point-detail" });
  const paramNames = new Set();
  let shown = [];   // the points on the page now
  const points = pagedTable({
    id: "points",
    sort: "loss",
    fetchPage: async (q) => {
      const page = await api(`/tasks/${id}/points?sort=${encodeURIComponent(q.sort)}&limit=${q.limit}&offset=${q.offset}`);
      page.items.forEach((p) => Object.keys(p.params).forEach((k) => paramNames.add(k)));
      shown = page.items;
      return page;
    },
    onRow: (p) => { location.hash = `#/task/${id}/point/${p.id}`; },
    columns: [
      { title: "id", sort: "id", cell: (p) => p.id, num: true },
      task.n_segments > 1 ? { title: "segment", cell: (p) => p.segment || p.segment_id } : null,
      { title: "serial", sort: "serial", cell: (p) => p.serial, num: true },
      { title: "state", cell: (p) => state(p.state) },
      { title: "loss", sort: "loss", cell: (p) => fmt(p.loss), num: true },
      { title: "attempts", cell: (p) => p.attempts, num: true },
      { title: "params", cell: (p) => Object.entries(p.params).map(([k, x]) => `${k}=${fmt(x)}`).join("  ") },
      { title: "evaluated", sort: "evaluated_at", cell: (p) => when(p.evaluated_at) },
      { title: "MLflow", cell: (p) => runLink(runs.points[p.id]) },
    ].filter(Boolean),
  });
  const parts = [head, h("h2", {}, "Plots"), plots, h("h2", {}, "Points"), detail, points.el];
  let segments = null;
  if (task.n_segments > 1) {
    segments = pagedTable({
      id: "segments", sort: "id",
      fetchPage: (q) => api(`/tasks/${id}/segments?sort=${encodeURIComponent(q.sort)}&limit=${q.limit}&offset=${q.offset}`),
      columns: [
        { title: "id", sort: "id", cell: (g) => g.id, num: true },
        { title: "name", sort: "name", cell: (g) => g.name },
        { title: "evaluated", sort: "evaluated", cell: (g) => g.n_evaluated, num: true },
        { title: "running", sort: "running", cell: (g) => g.n_leased, num: true },
        { title: "failed", sort: "failed", cell: (g) => g.n_failed, num: true },
        { title: "best loss", sort: "best_loss", cell: (g) => fmt(g.best_loss), num: true },
        { title: "best params", cell: (g) => g.best_params ? Object.entries(g.best_params).map(([k, x]) => `${k}=${fmt(x)}`).join("  ") : "–" },
        { title: "finished", sort: "finished", cell: (g) => g.finished ? "yes" : "no" },
        { title: "MLflow", cell: (g) => runLink(runs.segments[g.id]) },
      ],
    });
    parts.splice(3, 0, h("h2", {}, "Segments"), segments.el);
  }
  main.replaceChildren(...parts);
  if (pointId) pointDetail(detail, id, Number(pointId), runs).catch(showError);
  let lastSeen = null, runsCheckedAt = 0;
  poll(async () => {
    const t = await api(`/tasks/${id}`);
    if (v !== view) return;
    const best = await api(`/tasks/${id}/best`);
    renderHead(head, t, best);
    const seen = `${t.state}/${t.counts.evaluated}/${t.counts.failed}/${t.counts.leased}`;
    if (seen !== lastSeen) {          // something changed: refresh tables and plots
      lastSeen = seen;
      Object.assign(runs, await api(`/tasks/${id}/runs`).catch(() => runs));
      await points.load();
      if (segments) await segments.load();
      await Promise.all(kinds.map((k) => drawPlot(boxes[k], id, k)));
    } else if (runs.mlflow && Date.now() - runsCheckedAt > RUNS_RECHECK_MS
               && shown.some((p) => !LIVE.has(p.state) && !runs.points[p.id])) {
      // the MLflow runs are made after the points end (later still when MLflow was down): a
      // point shown without its run is looked up again every few seconds, with no reload
      runsCheckedAt = Date.now();
      const before = Object.keys(runs.points).length;
      Object.assign(runs, await api(`/tasks/${id}/runs`).catch(() => runs));
      if (Object.keys(runs.points).length !== before) {
        await points.load();
        if (segments) await segments.load();   // the segments' runs may have come too
      }
    }
  });
}

function runLink(run) {
  if (!run) return "–";
  return run.url ? h("a", { href: run.url, target: "_blank", rel: "noopener", class: "mlflow" }, "run") : h("span", { class: "muted", title: run.run_id }, run.run_id.slice(0, 8));
}

function renderHead(head, t, best) {
  const c = t.counts;
  const b = best[0] || {};
  const bestText = best.length > 1 ? `${best.filter((x) => x.loss !== null).length} of ${best.length} segments have a best point`
    : b.point_id ? `point ${b.point_id}: loss ${fmt(b.loss)}, ${Object.entries(b.params || {}).map(([k, x]) => `${k}=${fmt(x)}`).join(", ")}` : "none yet";
  head.replaceChildren(...[
    h("h1", {}, `Task ${t.id}${t.name ? " " + t.name : ""} `, state(t.state)),
    t.message ? h("p", { class: "muted" }, t.message) : null,
    t.waiting_for ? h("p", { class: "error" }, `waiting for an agent: ${t.waiting_for}`) : null,
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "progress"), h("div", { class: "v", id: "progress" }, progressBar(t))),
      ...[["evaluated", c.evaluated], ["running", c.leased], ["waiting", c.ready], ["failed", c.failed], ["jobs", c.jobs]].map(([k, x]) =>
        h("div", { class: "card", "data-count": k }, h("div", { class: "muted" }, k), h("div", { class: "v" }, x))),
      h("div", { class: "card", id: "best" }, h("div", { class: "muted" }, "best point"), h("div", {}, bestText))),
    h("p", { class: "muted" }, `optimizer ${t.spec.optimizer || (t.spec.steeringExec ? "external" : "default")}, `,
      `${t.n_segments} segment${t.n_segments > 1 ? "s" : ""}, created ${when(t.created_at)}, updated ${when(t.updated_at)}`),
  ].filter(Boolean));
}

async function pointDetail(box, taskId, pointId, runs) {
  let offset = 0, found = null;
  while (!found) {   // the point's own record: the points page it is on
    const page = await api(`/tasks/${taskId}/points?limit=1000&offset=${offset}`);
    found = page.items.find((p) => p.id === pointId);
    offset += page.items.length;
    if (!page.items.length || offset >= page.total) break;
  }
  if (!found) { box.replaceChildren(h("p", { class: "error" }, `task ${taskId} has no point ${pointId}`)); return; }
  const p = found;
  const logs = await api(`/tasks/${taskId}/artifacts?kind=log&point_id=${pointId}`);
  const logBox = h("div", { id: "logs" });
  const run = runs.points[p.id];
  box.replaceChildren(h("div", { class: "detail", "data-point": p.id },
    h("h2", {}, `Point ${p.id} (serial ${p.serial}${p.segment ? ", segment " + p.segment : ""}) `, state(p.state),
      " ", h("a", { href: `#/task/${taskId}` }, "close")),
    h("p", {}, `loss ${fmt(p.loss)}, attempts ${p.attempts}, site ${p.site || "–"}, evaluated ${when(p.evaluated_at)}`),
    p.error ? h("p", { class: "error" }, p.error) : null,
    h("table", { id: "point-params" }, h("tbody", {}, Object.entries(p.params).map(([k, x]) => h("tr", {}, h("th", {}, k), h("td", {}, fmt(x)))))),
    p.metrics ? h("pre", {}, JSON.stringify(p.metrics, null, 2)) : null,
    p.intermediate.length ? h("p", { class: "muted" }, `${p.intermediate.length} intermediate values, last ${fmt(p.intermediate[p.intermediate.length - 1].value)}`) : null,
    h("p", {}, "MLflow: ", run ? runLink(run) : "no run (the server has no MLflow, or it has not synced yet)"),
    h("p", {}, "logs: ", logs.items.length ? logs.items.map((a) => h("button", { class: "log", onclick: () => showLog(logBox, a) }, a.name)) : "none"),
    logBox));
  box.scrollIntoView();
}

async function showLog(box, artifact) {
  const r = await api(`/artifacts/${artifact.id}`, { raw: true });
  const text = await r.text();
  box.replaceChildren(h("pre", { class: "log-text" }, text.length > 200000 ? text.slice(-200000) : text));
}

// ---- workflows -----------------------------------------------------------------------------

async function workflowsPage(main) {
  const body = h("tbody");
  main.replaceChildren(h("h1", {}, "Your workflows"), h("table", { id: "workflows" },
    h("thead", {}, h("tr", {}, ["id", "name", "state", "nodes", "updated"].map((x) => h("th", {}, x)))), body));
  poll(async () => {
    const page = await api("/workflows?limit=100");
    body.replaceChildren(...page.items.map((w) => h("tr", { class: "clickable", onclick: () => { location.hash = `#/workflow/${w.id}`; } },
      h("td", {}, h("a", { href: `#/workflow/${w.id}` }, w.id)), h("td", {}, w.name), h("td", {}, state(w.state)),
      h("td", {}, Object.entries(w.counts).map(([k, n]) => `${n} ${k}`).join(", ")), h("td", {}, when(w.updated_at)))));
    if (!page.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no workflows yet: phpo workflow submit …")));
  });
}

// the nodes a definition node waits for: its `after` list and every nodes.<name> its values name
function depsOf(def, names) {
  const deps = new Set(def.after || []);
  const own = { ...def }; delete own.nodes; delete own.name;
  for (const m of JSON.stringify(own).matchAll(/nodes\.([A-Za-z_][A-Za-z0-9_]*)/g)) if (names.has(m[1]) && m[1] !== def.name) deps.add(m[1]);
  return [...deps].filter((d) => names.has(d));
}

function layers(defs) {
  const names = new Set(defs.map((d) => d.name));
  const deps = Object.fromEntries(defs.map((d) => [d.name, depsOf(d, names)]));
  const level = {};
  const depth = (n, seen = new Set()) => {
    if (level[n] !== undefined) return level[n];
    if (seen.has(n)) return 0;
    seen.add(n);
    level[n] = deps[n].length ? 1 + Math.max(...deps[n].map((d) => depth(d, seen))) : 0;
    return level[n];
  };
  defs.forEach((d) => depth(d.name));
  return { level, deps };
}

const NODE_W = 190, NODE_H = 54, GAP_X = 70, GAP_Y = 26, CHILD = 18;

function drawDag(wf) {
  const defs = (wf.definition && wf.definition.nodes) || wf.nodes.map((n) => ({ name: n.name }));
  const records = Object.fromEntries(wf.nodes.map((n) => [n.name, n]));
  const { level, deps } = layers(defs);
  const cols = [];
  defs.forEach((d) => { (cols[level[d.name]] = cols[level[d.name]] || []).push(d.name); });
  // a node's box grows with its children (a loop's iterations, a fan-out's instances)
  const rowsOf = (rec) => {
    if (!rec || !rec.children.length) return [];
    if (rec.kind === "loop") {
      const it = {};
      rec.children.forEach((c) => { (it[c.iteration || 0] = it[c.iteration || 0] || []).push(c); });
      return Object.entries(it).map(([i, cs]) => ({ label: `#${i}`, nodes: cs }));
    }
    return [{ label: rec.fan_out ? "items" : "nodes", nodes: rec.children }];
  };
  const height = (name) => NODE_H + rowsOf(records[name]).length * (CHILD + 4);
  const pos = {};
  let H = 0;
  cols.forEach((names, ci) => {
    let y = 10;
    (names || []).forEach((n) => { pos[n] = { x: 10 + ci * (NODE_W + GAP_X), y }; y += height(n) + GAP_Y; });
    H = Math.max(H, y);
  });
  const W = 20 + cols.length * (NODE_W + GAP_X);
  const g = svg("svg", { class: "dag", id: "dag", width: W, height: H + 10, viewBox: `0 0 ${W} ${H + 10}` });
  g.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a949f" }))));
  for (const d of defs) for (const dep of deps[d.name]) {
    const a = pos[dep], b = pos[d.name];
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    g.append(svg("path", { class: "edge", "data-from": dep, "data-to": d.name, d: `M${x1},${y1} C${x1 + 35},${y1} ${x2 - 35},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  }
  for (const d of defs) {
    const rec = records[d.name] || { name: d.name, kind: d.kind, state: "waiting", children: [] };
    const p = pos[d.name];
    const node = svg("g", { class: "node", "data-name": d.name, "data-state": rec.state, "data-kind": rec.kind, transform: `translate(${p.x},${p.y})` });
    node.append(svg("rect", { class: `fill-${rec.state}`, width: NODE_W, height: height(d.name), rx: 6 }),
      svg("text", { x: 10, y: 20, "font-weight": 600 }, `${d.name}`),
      svg("text", { x: 10, y: 38 }, `${rec.kind} · ${rec.state}${rec.progress ? ` · ${rec.progress.evaluated}/${rec.progress.total}` : ""}`),
      svg("title", {}, rec.message || `${rec.path || d.name}: ${rec.state}`));
    if (rec.task_id) {
      const link = svg("a", { href: `#/task/${rec.task_id}` }, svg("text", { x: NODE_W - 10, y: 20, "text-anchor": "end" }, `task ${rec.task_id}`));
      node.append(link);
    }
    if (rec.workflow_id) node.append(svg("a", { href: `#/workflow/${rec.workflow_id}` }, svg("text", { x: NODE_W - 10, y: 20, "text-anchor": "end" }, `wf ${rec.workflow_id}`)));
    rowsOf(rec).forEach((row, ri) => {
      const y = NODE_H + ri * (CHILD + 4) - 6;
      const it = svg("g", { class: "iteration", "data-label": row.label, transform: `translate(8,${y})` });
      it.append(svg("text", { x: 0, y: 13 }, row.label));
      const w = Math.max(14, Math.min(44, (NODE_W - 50) / row.nodes.length - 3));
      row.nodes.forEach((c, k) => {
        const cg = svg("g", { class: "child", "data-path": c.path, "data-state": c.state });
        cg.append(svg("rect", { class: `fill-${c.state}`, x: 32 + k * (w + 3), y: 0, width: w, height: CHILD, rx: 3 }),
          svg("title", {}, `${c.path}: ${c.state}`));
        if (w > 30) cg.append(svg("text", { x: 35 + k * (w + 3), y: 13, "font-size": 10 }, c.name.slice(0, 5)));
        it.append(cg);
      });
      node.append(it);
    });
    g.append(node);
  }
  return g;
}

async function workflowPage(main, id) {
  const v = view;
  const head = h("div");
  const graph = h("div", { id: "graph" });
  const list = h("div");
  main.replaceChildren(head, graph, h("h2", {}, "Node instances"), list);
  poll(async () => {
    const wf = await api(`/workflows/${id}`);
    if (v !== view) return;
    head.replaceChildren(...[h("h1", {}, `Workflow ${wf.id} ${wf.name} `, state(wf.state)),
      wf.message ? h("p", { class: "muted" }, wf.message) : null,
      h("p", { class: "muted" }, Object.entries(wf.counts).map(([k, n]) => `${n} ${k}`).join(", ")),
      wf.parent_node_id ? h("p", { class: "muted" }, "a sub-workflow") : null].filter(Boolean));
    graph.replaceChildren(drawDag(wf));
    const rows = [];
    const walk = (n, depth) => {
      rows.push(h("tr", { "data-path": n.path }, h("td", { style: `padding-left:${0.6 + depth * 1.2}em` }, n.path), h("td", {}, n.kind), h("td", {}, state(n.state)),
        h("td", {}, n.task_id ? h("a", { href: `#/task/${n.task_id}` }, `task ${n.task_id}`) : n.workflow_id ? h("a", { href: `#/workflow/${n.workflow_id}` }, `workflow ${n.workflow_id}`) : ""),
        h("td", {}, n.message || ""), h("td", {}, Object.keys(n.results || {}).length ? JSON.stringify(n.results).slice(0, 120) : "")));
      n.children.forEach((c) => walk(c, depth + 1));
    };
    wf.nodes.forEach((n) => walk(n, 0));
    list.replaceChildren(h("table", { id: "nodes" }, h("thead", {}, h("tr", {}, ["node", "kind", "state", "", "message", "results"].map((x) => h("th", {}, x)))), h("tbody", {}, rows)));
  });
}

// ---- routing -------------------------------------------------------------------------------

async function route() {
  clearInterval(timer); view++;
  const main = document.getElementById("main");
  if (!token()) { showLogin(); return; }
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/");
  try {
    if (!document.getElementById("who").textContent) await whoami();
    if (parts[0] === "task" && parts[1]) await taskPage(main, Number(parts[1]), parts[2] === "point" ? parts[3] : null);
    else if (parts[0] === "workflows") await workflowsPage(main);
    else if (parts[0] === "workflow" && parts[1]) await workflowPage(main, Number(parts[1]));
    else await tasksPage(main);
  } catch (e) {
    if (e.status === 401) return;
    main.replaceChildren(h("p", { class: "error", id: "page-error" }, e.message));
  }
}

function start() {
  // ?token=... (the link `phpo ui` prints): keep it for this tab, then drop it from the address
  // so that it stays out of the history, bookmarks and screenshots
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? `?${q}` : "") + location.hash);
  }
  document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showLogin("logged out"); });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && token()) route(); });
  route();
}

start();
