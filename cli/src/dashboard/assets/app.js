// Tandem's dashboard: renders the snapshots the server sends on
// /api/live (server-sent events), keeps a few minutes of each worker's
// readings for sparklines, and calls the write actions with the token the
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
  const path = action === "pause" || action === "resume" ? `/api/${action}/${encodeURIComponent(target)}` : action === "cancel" ? `/api/tasks/${encodeURIComponent(id)}/cancel` : `/api/dlq/${encodeURIComponent(button.dataset.class)}/${encodeURIComponent(id)}/${action}`;
  const token = $("token").value;
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const reply = await fetch(path, { method: "POST", headers });
  const body = await reply.json().catch(() => ({}));
  const result = $("action-result");
  result.classList.toggle("error", !reply.ok);
  result.textContent = reply.ok ? `${action}: ${JSON.stringify(body)}` : `${action} refused (${reply.status}): ${body.error || ""}`;
}

function route() {
  const match = location.hash.match(/^#task\/(.+)$/);
  if (match) openTask(decodeURIComponent(match[1]));
  else $("task-page").hidden = true;
}

$("token").value = localStorage.getItem("tandem-token") || "";
$("token").addEventListener("change", () => localStorage.setItem("tandem-token", $("token").value));
$("state").addEventListener("change", () => last && renderTasks(last));
$("kind").addEventListener("input", () => last && renderTasks(last));
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
