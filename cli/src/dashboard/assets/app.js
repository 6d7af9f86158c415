// Tandem's dashboard: renders the snapshots the server sends on
// /api/live (server-sent events), keeps a few minutes of each worker's
// readings for sparklines, follows an open workflow on its own stream
// (/api/workflows/ID/live), and calls the write actions with the token the
// user typed (kept in this browser's localStorage only).
"use strict";

const HISTORY = 180; // samples kept per series (3 minutes at 1 s)
const history = new Map(); // series name -> numbers
let last = null;
let lastCompleted = null;

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (v) => `<td class="num${v ? "" : " zero"}">${esc(v ?? 0)}</td>`;
const pct = (r) => (r == null ? "–" : `${Math.round(r * 100)} %`);
const bytes = (n) => (n == null ? "–" : n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`);
const age = (ms) => (ms == null ? "–" : ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`);
const micros = (us) => (us == null ? "–" : us < 1000 ? `${us} µs` : age(Math.round(us / 1000)));
const clock = (ms) => (ms == null ? "–" : new Date(ms).toLocaleTimeString());
const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
const stClass = (status) => `st-${String(status ?? "").replace(/[^a-z-]/g, "")}`;
// A node's states, in the order the graph's legend and bars show them.
const STATES = ["waiting", "queued", "delayed", "running", "retrying", "succeeded", "failed", "cancelled", "expired", "expired-record"];
const GRAPH_MAX = 80; // nodes drawn one by one; above, the graph is summarised by layer
const ROWS_MAX = 300; // node rows shown at once; filters narrow the rest
const taskLink = (id) => (id ? `<a class="task" href="#task/${esc(id)}">${esc(id)}</a>` : "");

function push(name, value) {
  const series = history.get(name) || [];
  series.push(value);
  if (series.length > HISTORY) series.shift();
  history.set(name, series);
  return series;
}

function points(series, width, height) {
  const max = Math.max(1e-9, ...series);
  const step = series.length > 1 ? width / (series.length - 1) : width;
  return series.map((v, i) => `${(i * step).toFixed(1)},${(height - (v / max) * height).toFixed(1)}`).join(" ");
}

function spark(name, value) {
  const series = push(name, value);
  return `<svg class="spark" viewBox="0 0 90 18" preserveAspectRatio="none"><polyline points="${points(series, 90, 18)}"/></svg>`;
}

function renderWorkers(snap) {
  $("workers").tBodies[0].innerHTML = snap.workers.map((w) => {
    const key = `${w.host}/${w.member}`;
    const gpu = w.gpu_utilization != null;
    return `<tr data-member="${esc(w.member)}">
      <td>${esc(w.host)}</td><td>${esc(w.member)}</td>
      <td title="${esc(w.device)}">${esc(w.device_name || w.device)}</td>
      <td>${esc(w.role)}</td><td class="health-${esc(w.health)}">${esc(w.health)}</td>
      <td>${gpu ? pct(w.gpu_utilization) + " " + spark(key + "/util", w.gpu_utilization) : "–"}</td>
      <td>${gpu ? bytes(w.gpu_memory_used) + " / " + bytes(w.memory_total) : "–"}</td>
      <td>${gpu ? esc(w.gpu_temperature_c) + " °C " + spark(key + "/temp", w.gpu_temperature_c) : "–"}</td>
      <td>${gpu ? Math.round(w.gpu_power_w) + " W " + spark(key + "/power", w.gpu_power_w) : "–"}</td>
      <td class="num running">${esc(w.active)}</td>
      <td class="num">${Number(w.tasks_per_s).toFixed(1)}</td>
      <td class="num done">${esc(w.succeeded + w.failed)}</td>
    </tr>`;
  }).join("") || `<tr><td colspan="12">no live workers</td></tr>`;
}

function renderQueues(snap) {
  const priorities = ["critical", "high", "normal", "low"];
  const classes = [...new Set(snap.streams.map((s) => s.class))];
  $("matrix").tHead.innerHTML = `<tr><th>class</th>${priorities.map((p) => `<th>${p}: waiting / running / oldest</th>`).join("")}</tr>`;
  $("matrix").tBodies[0].innerHTML = classes.map((c) => `<tr><td>${esc(c)}</td>${priorities.map((p) => {
    const s = snap.streams.find((x) => x.class === c && x.priority === p) || {};
    return `<td class="num" data-cell="${c}:${p}"><span class="waiting">${esc(s.waiting ?? 0)}</span> / <span class="running">${esc(s.running ?? 0)}</span> / ${age(s.oldest_waiting_ms)}</td>`;
  }).join("")}</tr>`).join("");
  $("classes").tBodies[0].innerHTML = snap.classes.map((c) => `<tr data-class="${esc(c.class)}"><td>${esc(c.class)}</td>${num(c.delayed)}${num(c.retrying)}${num(c.dead_letters)}</tr>`).join("");
  const writable = !snap.read_only;
  $("paused").innerHTML = (snap.paused || []).map((t) => `<span class="paused" data-target="${esc(t)}">${esc(t)}${writable ? ` <button data-act="resume" data-target="${esc(t)}">resume</button>` : ""}</span>`).join(" ") || "nothing";
  document.querySelectorAll("#flow .writable").forEach((e) => { e.hidden = !writable; });
  // Throughput: completions between two snapshots, over their interval.
  if (lastCompleted && snap.completed_total >= lastCompleted.total) {
    const seconds = Math.max(0.001, (snap.at_ms - lastCompleted.at) / 1000);
    const rate = (snap.completed_total - lastCompleted.total) / seconds;
    $("rate").textContent = rate.toFixed(1);
    $("throughput").innerHTML = `<polyline points="${points(push("throughput", rate), 300, 50)}"/>`;
  }
  lastCompleted = { total: snap.completed_total, at: snap.at_ms };
}

function renderTasks(snap) {
  const state = $("state").value;
  const kind = $("kind").value.trim();
  const list = (snap.tasks[state] || []).filter((t) => !kind || t.kind === kind);
  $("task-list").tBodies[0].innerHTML = list.map((t) => `<tr>
    <td>${taskLink(t.id)}</td><td>${esc(t.class)}</td><td>${esc(t.kind)}</td><td>${esc(t.attempt)}</td>
    <td>${esc(t.worker)}</td><td>${esc(t.device)}</td><td>${esc(t.error_code)}</td></tr>`).join("")
    || `<tr><td colspan="7">no ${esc(state)} tasks${kind ? " of kind " + esc(kind) : ""}</td></tr>`;
}

function renderDead(snap) {
  const writable = !snap.read_only;
  $("token-box").hidden = !writable;
  $("dead-letters").tBodies[0].innerHTML = snap.dead_letters.map((d) => `<tr data-dead="${esc(d.id)}">
    <td>${esc(d.id)}</td><td>${esc(d.class)}</td><td>${taskLink(d.task_id)}</td><td>${esc(d.kind)}</td>
    <td title="${esc(d.message)}">${esc(d.reason)}</td><td class="num">${esc(d.attempts)}</td>
    <td>${writable ? `<button data-act="requeue" data-class="${esc(d.class)}" data-id="${esc(d.id)}">requeue</button>
      <button class="danger" data-act="purge" data-class="${esc(d.class)}" data-id="${esc(d.id)}">purge</button>` : ""}</td>
  </tr>`).join("") || `<tr><td colspan="7">no dead letters</td></tr>`;
}

function renderAlerts(snap) {
  $("alert-list").tBodies[0].innerHTML = snap.alerts.map((a) => `<tr>
    <td>${esc(age(snap.at_ms - a.at_ms))} ago</td><td>${esc(a.alert)}</td><td>${esc(a.worker)}</td>
    <td class="num">${esc(a.value)}</td><td>${esc(a.message)}</td></tr>`).join("")
    || `<tr><td colspan="5">no alerts</td></tr>`;
  $("schedule-list").tBodies[0].innerHTML = snap.schedules.map((s) => `<tr>
    <td>${esc(s.name)}</td><td>${esc(s.class)}</td><td>${esc(s.kind)}</td>
    <td>${s.cron ? esc(s.cron + " " + (s.tz || "")) : "every " + age(s.every_ms)}</td>
    <td>${s.next_fire_ms ? esc(age(s.next_fire_ms - snap.at_ms)) : "–"}</td><td>${s.paused ? "paused" : "active"}</td></tr>`).join("")
    || `<tr><td colspan="6">no schedules</td></tr>`;
}

function renderWorkflows(snap) {
  $("workflow-list").tBodies[0].innerHTML = (snap.workflows || []).map((w) => `<tr data-workflow="${esc(w.id)}">
    <td><a class="task" href="#workflow/${esc(w.id)}">${esc(w.id)}</a></td>
    <td>${esc(w.sinks.join(", "))}${w.sinks_more ? ` +${esc(w.sinks_more)} more` : ""}</td>
    <td class="${stClass(w.status)}">${esc(w.status)}</td>
    <td class="num">${esc(w.finished)} / ${esc(w.nodes)}${w.failed ? ` (${esc(w.failed)} not succeeded)` : ""}</td>
    <td>${w.submitted_at_ms ? `${esc(age(Math.max(0, snap.at_ms - w.submitted_at_ms)))} ago` : "–"}</td>
    <td>${esc(age(w.took_ms))}${w.status === "running" ? " so far" : ""}</td></tr>`).join("")
    || `<tr><td colspan="6">no workflows</td></tr>`;
}

// The open workflow: its stream, and the last page it sent.
let workflowStream = null;
let workflowShown = null;

function legend() {
  return `<p class="legend">${STATES.slice(0, 8).map((s) => `<span><i class="${stClass(s)}"></i>${s}</span>`).join("")}</p>`;
}

// A small graph node by node: one column per layer, parents to the left,
// each column ordered by its parents' rows so that edges cross less.
function dag(wf) {
  const W = 156, H = 36, GX = 56, GY = 10, PAD = 6;
  const columns = [];
  for (const n of wf.nodes) (columns[n.layer] ||= []).push(n);
  const at = new Map();
  columns.forEach((column, x) => {
    const bary = (n) => {
      const rows = (n.after || []).map((p) => at.get(p)?.row).filter((r) => r != null);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
    };
    if (x > 0) column.sort((a, b) => bary(a) - bary(b));
    column.forEach((n, row) => at.set(n.name, { row, x }));
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  for (const column of columns) {
    for (const n of column) {
      const p = at.get(n.name);
      p.left = PAD + p.x * (W + GX);
      p.top = PAD + (p.row + (tallest - column.length) / 2) * (H + GY);
    }
  }
  const width = PAD * 2 + columns.length * (W + GX) - GX;
  const height = PAD * 2 + tallest * (H + GY) - GY;
  let edges = "";
  let boxes = "";
  for (const n of wf.nodes) {
    const c = at.get(n.name);
    for (const parent of n.after || []) {
      const p = at.get(parent);
      if (!p) continue;
      const x1 = p.left + W, y1 = p.top + H / 2, x2 = c.left, y2 = c.top + H / 2;
      edges += `<path class="edge" d="M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}"/>`;
    }
    boxes += `<g data-node="${esc(n.name)}"><title>${esc(n.name)} (${esc(n.kind)}): ${esc(n.status)}</title>
      <rect class="node ${stClass(n.status)}" x="${c.left}" y="${c.top}" width="${W}" height="${H}" rx="5"/>
      <text x="${c.left + 8}" y="${c.top + 15}">${esc(clip(n.name, 22))}</text>
      <text class="sub" x="${c.left + 8}" y="${c.top + 29}">${esc(clip(`${n.kind} · ${n.status}`, 26))}</text></g>`;
  }
  return `<svg id="wf-graph" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${edges}${boxes}</svg>`;
}

// A large graph summarised: one bar per layer, as tall as its nodes are
// many, coloured by its nodes' states (a long chain reads as a progress
// line, a wide fan-out as one tall bar).
function layerChart(wf) {
  const layers = wf.layers;
  const most = Math.max(1, ...layers.map((l) => l.nodes));
  const H = 120, TOP = 16, width = Math.max(600, Math.min(1300, layers.length * 24));
  const step = width / Math.max(1, layers.length);
  let bars = "";
  layers.forEach((layer, i) => {
    let y = TOP + H;
    const x = (i * step).toFixed(1), w = Math.max(1, step - (step > 4 ? 2 : 0)).toFixed(1);
    for (const state of STATES) {
      const count = layer.by_status[state] || 0;
      if (!count) continue;
      const h = Math.max(2, (count / most) * H);
      y -= h;
      bars += `<rect class="${stClass(state)}" x="${x}" y="${y.toFixed(1)}" width="${w}" height="${h.toFixed(1)}"><title>layer ${i}: ${count} ${state}</title></rect>`;
    }
    if (step >= 24) bars += `<text x="${x}" y="${(y - 3).toFixed(1)}">${layer.nodes}</text>`;
  });
  return `<svg id="wf-graph" width="${width}" height="${H + TOP + 18}" viewBox="0 0 ${width} ${H + TOP + 18}">${bars}
    <text x="0" y="${H + TOP + 14}">layer 0</text><text x="${width}" y="${H + TOP + 14}" text-anchor="end">layer ${layers.length - 1}</text>
    <text x="${width}" y="11" text-anchor="end">widest layer: ${most} node${most === 1 ? "" : "s"}</text></svg>`;
}

// The layers as a table, grouped into at most 40 rows.
function layerTable(wf) {
  const band = Math.ceil(wf.layers.length / 40);
  let rows = "";
  for (let i = 0; i < wf.layers.length; i += band) {
    const group = wf.layers.slice(i, i + band);
    const states = {};
    const kinds = new Set();
    let nodes = 0;
    for (const layer of group) {
      nodes += layer.nodes;
      for (const [state, count] of Object.entries(layer.by_status)) states[state] = (states[state] || 0) + count;
      layer.kinds.forEach((k) => kinds.add(k));
    }
    const name = group.length > 1 ? `${i}–${i + group.length - 1}` : `${i}`;
    rows += `<tr><td>${name}</td><td class="num">${nodes}</td>
      <td>${STATES.filter((s) => states[s]).map((s) => `<span class="chip"><i class="${stClass(s)}"></i>${s} ${states[s]}</span>`).join(" ")}</td>
      <td>${esc(clip([...kinds].join(", "), 60))}</td></tr>`;
  }
  return `<table id="wf-layers" class="legend"><thead><tr><th>layer</th><th>nodes</th><th>states</th><th>kinds</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function renderWorkflowNodes() {
  const wf = workflowShown;
  if (!wf) return;
  const state = $("wf-state").value;
  const find = $("wf-find").value.trim();
  const matching = wf.nodes.filter((n) => (!state || n.status === state) && (!find || n.name.includes(find)));
  const since = (ms) => (ms && wf.submitted_at_ms ? `+${age(Math.max(0, ms - wf.submitted_at_ms))}` : "–");
  const after = (list) => (list.length > 4 ? `${list.slice(0, 3).join(", ")} +${list.length - 3} more` : list.join(", ") || "–");
  $("wf-nodes").tBodies[0].innerHTML = matching.slice(0, ROWS_MAX).map((n) => `<tr data-node="${esc(n.name)}">
    <td><a class="task" href="#task/${esc(n.id)}">${esc(n.name)}</a></td><td class="num">${esc(n.layer)}</td>
    <td class="node-status ${stClass(n.status)}">${esc(n.status)}</td><td>${esc(n.kind)}</td><td>${esc(n.class)}</td>
    <td>${esc(after(n.after || []))}</td><td>${esc(n.worker ?? "–")}</td><td>${esc(n.device ?? "–")}</td>
    <td>${since(n.started_at_ms)}</td><td>${age(n.waited_ms)}</td><td>${micros(n.run_us)}</td>
    <td title="${esc(n.error_message)}">${esc(n.error_code ?? "")}</td></tr>`).join("")
    || `<tr><td colspan="12">no nodes${state ? ` ${esc(state)}` : ""}${find ? ` named like ${esc(find)}` : ""}</td></tr>`;
  const hidden = matching.length - Math.min(matching.length, ROWS_MAX);
  $("wf-more").textContent = [
    hidden ? `${hidden} more nodes: narrow by state or name.` : "",
    wf.nodes_omitted ? `${wf.nodes_omitted} nodes (succeeded or waiting) not listed: the layers count them.` : "",
  ].join(" ");
}

function renderWorkflow(wf) {
  workflowShown = wf;
  $("wf-status").textContent = wf.status;
  $("wf-status").className = stClass(wf.status);
  $("wf-cancel").hidden = wf.status !== "running" || !last || last.read_only;
  const took = wf.submitted_at_ms ? (wf.finished_at_ms ?? Date.now()) - wf.submitted_at_ms : null;
  const small = wf.nodes_total <= GRAPH_MAX && !wf.nodes_omitted;
  $("wf-body").innerHTML = `<p>on failure ${esc(wf.on_failure)} · submitted ${clock(wf.submitted_at_ms)} ·
    ${wf.finished_at_ms ? "took" : "running for"} ${took == null ? "–" : age(Math.max(0, took))} ·
    <span id="wf-progress">${esc(wf.nodes_finished)} of ${esc(wf.nodes_total)}</span> nodes finished · ${wf.layers.length} layers</p>
    ${legend()}<div class="graph">${small ? dag(wf) : layerChart(wf)}</div>${small ? "" : layerTable(wf)}`;
  renderWorkflowNodes();
  $("wf-result").textContent = JSON.stringify(wf.result, null, 2);
}

function closeWorkflow() {
  if (workflowStream) workflowStream.close();
  workflowStream = null;
  workflowShown = null;
  $("workflow-page").hidden = true;
}

function openWorkflow(id) {
  closeWorkflow();
  $("workflow-page").hidden = false;
  $("wf-id").textContent = id;
  $("wf-status").textContent = "loading…";
  $("wf-status").className = "";
  $("wf-cancel").dataset.id = id;
  $("wf-cancel").hidden = true;
  $("workflow-action").textContent = "";
  $("wf-body").innerHTML = "";
  $("wf-nodes").tBodies[0].innerHTML = "";
  $("wf-result").textContent = "";
  const stream = new EventSource(`/api/workflows/${encodeURIComponent(id)}/live`);
  workflowStream = stream;
  stream.addEventListener("workflow", (e) => {
    const wf = JSON.parse(e.data);
    renderWorkflow(wf);
    // Final: nothing will change; the server ends the stream too.
    if (wf.status !== "running") stream.close();
  });
  stream.addEventListener("missing", (e) => {
    $("wf-status").textContent = JSON.parse(e.data).error;
    stream.close();
  });
  stream.addEventListener("trouble", (e) => { $("workflow-action").textContent = JSON.parse(e.data).error; });
}

function render(snap) {
  if (snap.error) {
    $("status").textContent = `error: ${snap.error}`;
    $("status").classList.add("down");
    return;
  }
  last = snap;
  $("status").textContent = `live · ${new Date(snap.at_ms).toLocaleTimeString()}`;
  $("status").classList.remove("down");
  renderWorkers(snap);
  renderQueues(snap);
  renderTasks(snap);
  renderWorkflows(snap);
  renderDead(snap);
  renderAlerts(snap);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

async function openTask(id) {
  const page = $("task-page");
  page.hidden = false;
  const reply = await fetch(`/api/tasks/${encodeURIComponent(id)}`);
  const task = await reply.json();
  if (!reply.ok) {
    page.innerHTML = `<p class="error">${esc(task.error)}</p>`;
    return;
  }
  const attempts = (task.attempts || []).map((a) => `<tr>${["attempt", "worker", "device", "started_at_ms", "finished_at_ms", "outcome"].map((k) => `<td>${esc(a[k])}</td>`).join("")}</tr>`).join("");
  page.innerHTML = `<h3>task <span id="task-id">${esc(task.id)}</span>: <span id="task-status">${esc(task.status)}</span></h3>
    <p>kind ${esc(task.kind)} · class ${esc(task.submitted?.class)} · priority ${esc(task.submitted?.priority)}
    ${task.progress ? ` · progress ${pct(task.progress.fraction)} ${esc(task.progress.message)}` : ""}
    ${task.status === "running" || task.status === "queued" ? ` <button data-act="cancel" data-id="${esc(task.id)}">cancel</button>` : ""}</p>
    <h4>parameters</h4><pre>${esc(JSON.stringify(task.params, null, 2))}</pre>
    <h4>attempts</h4><table><thead><tr><th>attempt</th><th>worker</th><th>device</th><th>started</th><th>finished</th><th>outcome</th></tr></thead><tbody>${attempts}</tbody></table>
    ${task.split?.shards ? `<h4>shards</h4><p>${esc(task.split.shards_done)} of ${esc(task.split.shards)} done</p>` : ""}
    <h4>${task.error ? "error" : "result"}</h4><pre>${esc(JSON.stringify(task.error || task.result, null, 2))}</pre>`;
}

async function act(button) {
  const { act: action, id } = button.dataset;
  const target = action === "pause" ? $("pause-target").value.trim() : button.dataset.target;
  const path = action === "pause" || action === "resume" ? `/api/${action}/${encodeURIComponent(target)}`
    : action === "cancel" ? `/api/tasks/${encodeURIComponent(id)}/cancel`
    : action === "cancel-workflow" ? `/api/workflows/${encodeURIComponent(id)}/cancel`
    : `/api/dlq/${encodeURIComponent(button.dataset.class)}/${encodeURIComponent(id)}/${action}`;
  const token = $("token").value;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const reply = await fetch(path, { method: "POST", headers });
  const body = await reply.json().catch(() => ({}));
  const result = action === "cancel-workflow" ? $("workflow-action") : $("action-result");
  result.classList.toggle("error", !reply.ok);
  result.textContent = reply.ok ? `${action}: ${JSON.stringify(body)}` : `${action} refused (${reply.status}): ${body.error || ""}`;
}

function route() {
  const task = location.hash.match(/^#task\/(.+)$/);
  const workflow = location.hash.match(/^#workflow\/(.+)$/);
  if (task) openTask(decodeURIComponent(task[1]));
  else $("task-page").hidden = true;
  if (workflow) openWorkflow(decodeURIComponent(workflow[1]));
  else closeWorkflow();
}

$("token").value = localStorage.getItem("tandem-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("tandem-token", $("token").value));
$("state").addEventListener("change", () => last && renderTasks(last));
$("kind").addEventListener("input", () => last && renderTasks(last));
$("wf-state").addEventListener("change", renderWorkflowNodes);
$("wf-find").addEventListener("input", renderWorkflowNodes);
$("find-go").addEventListener("click", () => { location.hash = `#task/${$("find").value.trim()}`; });
document.addEventListener("click", (e) => {
  const button = e.target.closest("button[data-act]");
  if (button) act(button);
});
window.addEventListener("hashchange", route);
route();

// The snapshot the page came with, then the live ones.
const initial = $("initial");
if (initial) render(JSON.parse(initial.textContent));
const live = new EventSource("/api/live");
live.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
live.onerror = () => { $("status").textContent = "reconnecting…"; $("status").classList.add("down"); };
