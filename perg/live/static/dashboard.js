// PERG Stream live dashboard: server-sent events from /events (polling /api/snapshot as a
// fallback), a run table, a metric table and inline-SVG chart per run, and run comparison.
"use strict";

const METRICS = ["BR", "AFR", "RER"];
const SVG = "http://www.w3.org/2000/svg";
const state = { runs: [], metrics: [], agreement: [], selected: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

const fmt = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(1));

function metricCell(row, metric) {
  const value = row[metric];
  const cell = el("td", {
    class: "num",
    "data-metric": metric,
    "data-value": value === null ? "" : String(value),
  }, fmt(value));
  const lo = row[metric + "_lo"];
  const hi = row[metric + "_hi"];
  if (value !== null && lo !== undefined && lo !== null) {
    cell.append(" ", el("span", { class: "interval" }, `[${fmt(lo)}, ${fmt(hi)}]`));
  }
  return cell;
}

// done, cancelled (its stored results are partial) or running, as GET /api/runs says
function runState(run) {
  const shown = run.state || (run.done ? "done" : "running");
  return shown === "cancelled" ? "cancelled (partial)" : shown;
}

function renderRuns() {
  const body = document.querySelector("#runs tbody");
  body.replaceChildren(...state.runs.map((run) => {
    const share = run.expected_results ? run.results_stored / run.expected_results : 0;
    const bar = el("span", { class: "progress", title: `${(100 * share).toFixed(1)} %` },
      el("span", { style: `width: ${Math.min(100, 100 * share)}%` }));
    return el("tr", { "data-run": run.run_id },
      el("td", {}, run.run_id), el("td", {}, run.model), el("td", {}, run.protocol),
      el("td", {}, run.created_at),
      el("td", { "data-field": "results" }, bar, ` ${run.results_stored} / ${run.expected_results}`),
      el("td", { class: "num" }, `${run.baselines_stored} / ${run.n_rows}`),
      el("td", { class: "num" }, String(run.retries)),
      el("td", { class: "num" }, String(run.dead_letters)),
      el("td", { "data-field": "state" }, runState(run)));
  }));
  document.getElementById("no-runs").hidden = state.runs.length > 0;
  for (const id of ["metric-run", "compare-reference", "compare-candidate"]) fillSelect(id);
}

function fillSelect(id) {
  const select = document.getElementById(id);
  const current = select.value;
  const ids = state.runs.map((run) => run.run_id);
  if (ids.join("\n") === Array.from(select.options, (o) => o.value).join("\n")) return;
  select.replaceChildren(...ids.map((run) => el("option", { value: run }, run)));
  if (ids.includes(current)) select.value = current;
  else if (ids.length) select.value = id === "compare-reference" && ids.length > 1
    ? ids[ids.length - 2] : ids[ids.length - 1];
}

function selectedRows() {
  const run = document.getElementById("metric-run").value;
  return state.metrics.filter((row) => row.run_id === run);
}

function renderMetrics() {
  const all = document.getElementById("all-sources").checked;
  const rows = selectedRows().filter((row) => all || row.source === "full");
  document.querySelector("#metrics tbody").replaceChildren(...rows.map((row) =>
    el("tr", { "data-setting": row.setting, "data-method": row.method, "data-source": row.source },
      el("td", {}, row.setting), el("td", {}, row.method), el("td", {}, row.source),
      el("td", { class: "num", "data-metric": "n_rows" }, String(row.n_rows)),
      el("td", { class: "num", "data-metric": "n_qstar" }, String(row.n_qstar)),
      ...["BR", "noise_BR", "AFR", "RER", "PVR"].map((metric) => metricCell(row, metric)))));
  renderChart(selectedRows().filter((row) => row.source === "full"));
  renderAgreement();
}

function renderAgreement() {
  const run = document.getElementById("metric-run").value;
  const row = state.agreement.find((a) => a.run_id === run);
  document.getElementById("agreement").textContent = !row ? ""
    : `Answer extraction: rules vs ${row.extractor} disagree on ${row.n_disagree} of `
      + `${row.n_answers} answers (${row.disagree_rate?.toFixed(1) ?? "-"}%); correctness `
      + `differs on ${row.n_correctness_differs}.`;
}

function renderChart(rows) {
  const box = document.getElementById("chart");
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No results for this run yet."));
    return;
  }
  const top = Math.max(10, ...rows.flatMap((r) => METRICS.map((m) => r[m + "_hi"] ?? r[m] ?? 0)));
  const step = top > 50 ? 20 : 10;
  const scale = Math.ceil(top / step) * step;
  const group = 3 * 18 + 16;
  const [left, bottom, height] = [40, 60, 220];
  const width = left + rows.length * group + 20;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + bottom}`, role: "img" });
  const y = (value) => height - (value / scale) * (height - 10);
  for (let tick = 0; tick <= scale; tick += step) {
    chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: y(tick), y2: y(tick),
      "stroke-opacity": 0.2 }));
    chart.append(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, String(tick)));
  }
  rows.forEach((row, i) => {
    const x0 = left + i * group + 8;
    METRICS.forEach((metric, j) => {
      const value = row[metric];
      if (value === null || value === undefined) return;
      const x = x0 + j * 18;
      const bar = svg("rect", { class: `bar-${metric}`, x, y: y(value), width: 16,
        height: Math.max(0, height - y(value)), "data-setting": row.setting,
        "data-method": row.method, "data-metric": metric, "data-value": String(value) });
      bar.append(svg("title", {}, `${row.setting} / ${row.method} ${metric} ${fmt(value)}`));
      chart.append(bar);
      if (row[metric + "_lo"] !== null && row[metric + "_lo"] !== undefined) {
        chart.append(svg("line", { class: "whisker", x1: x + 8, x2: x + 8,
          y1: y(row[metric + "_lo"]), y2: y(row[metric + "_hi"]) }));
      }
    });
    const label = svg("text", { x: x0 + 27, y: height + 14, "text-anchor": "middle" }, row.method);
    const setting = svg("text", { x: x0 + 27, y: height + 28, "text-anchor": "middle",
      fill: "#66707c" }, row.setting);
    chart.append(label, setting);
  });
  METRICS.forEach((metric, j) => {
    chart.append(svg("rect", { class: `bar-${metric}`, x: left + j * 60, y: height + 42,
      width: 10, height: 10 }));
    chart.append(svg("text", { x: left + j * 60 + 14, y: height + 51 }, metric));
  });
  chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: height, y2: height }));
  box.replaceChildren(chart);
}

function applySnapshot(snapshot) {
  state.runs = snapshot.runs;
  state.metrics = snapshot.metrics;
  state.agreement = snapshot.agreement ?? [];
  renderRuns();
  renderMetrics();
}

function setConnection(text, live) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.dataset.state = live ? "live" : "polling";
}

async function poll() {
  try {
    const response = await fetch("/api/snapshot");
    if (response.ok) applySnapshot(await response.json());
    setConnection(response.ok ? "polling every 2 s" : `error ${response.status}`, false);
  } catch (error) {
    setConnection("sink unreachable, retrying", false);
  }
  setTimeout(poll, 2000);
}

function connect() {
  if (!window.EventSource) return poll();
  const source = new EventSource("/events");
  source.onopen = () => setConnection("live", true);
  source.onmessage = (event) => applySnapshot(JSON.parse(event.data));
  source.onerror = () => {
    source.close();
    poll();
  };
}

async function compareRuns(event) {
  event.preventDefault();
  const reference = document.getElementById("compare-reference").value;
  const candidate = document.getElementById("compare-candidate").value;
  const note = document.getElementById("compare-note");
  const body = document.querySelector("#compare tbody");
  const query = new URLSearchParams({ reference, candidate });
  const response = await fetch(`/api/compare?${query}`);
  const result = await response.json();
  if (!response.ok) {
    note.textContent = result.error;
    body.replaceChildren();
    return;
  }
  note.textContent = `${result.test}; alpha ${result.alpha}, ${result.correction} correction. `
    + (result.warnings.length ? `Warning: ${result.warnings.join("; ")}` : "");
  const cells = result.cells.filter((c) => c.source === "full");
  body.replaceChildren(...cells.map((c) => {
    const direction = c.significant ? (c.paired_delta > 0 ? "worse" : "better") : "";
    return el("tr", { "data-setting": c.setting, "data-method": c.method,
      "data-metric": c.metric, class: direction },
    el("td", {}, c.setting), el("td", {}, c.method), el("td", {}, c.metric),
    el("td", { class: "num" }, fmt(c.reference)), el("td", { class: "num" }, fmt(c.candidate)),
    el("td", { class: "num" }, fmt(c.delta)),
    el("td", { class: "num" }, fmt(c.paired_delta)),
    el("td", { class: "num" }, c.p_value === null ? "–" : String(c.n_shared)),
    el("td", { class: "num" }, c.p_adjusted === null ? "not tested"
      : c.p_adjusted.toPrecision(2) + (c.significant ? " *" : "")));
  }));
}

document.getElementById("metric-run").addEventListener("change", renderMetrics);
document.getElementById("all-sources").addEventListener("change", renderMetrics);
document.getElementById("compare-form").addEventListener("submit", compareRuns);
connect();
