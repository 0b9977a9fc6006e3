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
      el("span"));
    bar.firstChild.style.width = `${Math.min(100, 100 * share)}%`;  // CSSOM: allowed by the CSP
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
  for (const id of ["metric-run", "compare-reference", "compare-candidate", "explore-run"]) {
    fillSelect(id);
  }
  if (!explore.started && state.runs.length) startExplorer();
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
      ...["BR", "noise_BR", "AFR", "RER", "PVR", "NoPrefInvalid", "PrefInvalid", "MCValidDrop",
        "PDDF", "RER_relative_reduction"].map((metric) => metricCell(row, metric)))));
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
  const { ok, data: result } = await getJSON(`/api/compare?${query}`);
  showError("compare-error", ok ? "" : result.error);
  document.getElementById("changed").hidden = true;
  if (!ok) {
    note.textContent = "";
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
    changedCell(reference, candidate, c, "broke", c.worse),
    changedCell(reference, candidate, c, "repaired", c.better),
    el("td", { class: "num" }, c.p_adjusted === null ? "not tested"
      : c.p_adjusted.toPrecision(2) + (c.significant ? " *" : "")));
  }));
}

function changedCell(reference, candidate, cell, direction, count) {
  if (cell.p_value === null) return el("td", { class: "num" }, "–");
  const button = el("button", { type: "button", class: "link", "data-direction": direction,
    title: `open the ${count} rows that ${direction === "broke" ? "fail in the candidate only"
      : "fail in the reference only"}` }, String(count));
  button.addEventListener("click", () => showChanged({ reference, candidate,
    setting: cell.setting, method: cell.method, metric: cell.metric, direction }, 1));
  return el("td", { class: "num", "data-field": direction }, button);
}

// ---- shared helpers -------------------------------------------------------------------

async function getJSON(path) {
  try {
    const response = await fetch(path);
    let data;
    try {
      data = await response.json();
    } catch (error) {
      data = { error: `the sink answered ${response.status} without a readable body` };
    }
    return { ok: response.ok, status: response.status, data };
  } catch (error) {
    return { ok: false, status: 0, data: { error: "the sink is unreachable" } };
  }
}

function showError(id, message) {
  const node = document.getElementById(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function text(value, attrs = {}) {
  // A model's text: shown as text only (textContent), direction from its own first letters.
  return el("pre", { class: "text", dir: "auto", ...attrs }, value ?? "");
}

function truncated(shown, chars) {
  return chars !== null && chars !== undefined && shown !== null && chars > shown.length
    ? el("p", { class: "muted" }, `first ${shown.length} of ${chars} characters`) : "";
}

function field(label, ...content) {
  return el("div", { class: "field" }, el("span", { class: "label" }, label), ...content);
}

function setPager(prefix, page, pages) {
  document.getElementById(`${prefix}-page`).textContent = pages ? `page ${page} of ${pages}` : "";
  document.getElementById(`${prefix}-prev`).disabled = !pages || page <= 1;
  document.getElementById(`${prefix}-next`).disabled = !pages || page >= pages;
}

// ---- what changed ---------------------------------------------------------------------

const changed = { query: null, page: 1, pages: 0 };

async function showChanged(query, page) {
  changed.query = query;
  const box = document.getElementById("changed");
  box.hidden = false;
  const params = new URLSearchParams({ ...query, page: String(page), page_size: "25" });
  const { ok, data } = await getJSON(`/api/changed?${params}`);
  const title = `${query.metric}: rows that ${query.direction === "broke"
    ? "fail in the candidate only" : "fail in the reference only (repaired)"} — ${query.setting} / ${query.method}`;
  document.getElementById("changed-title").textContent = title;
  const body = document.querySelector("#changed-rows tbody");
  if (!ok) {
    document.getElementById("changed-note").textContent = data.error;
    body.replaceChildren();
    setPager("changed", 0, 0);
    return;
  }
  changed.page = data.page;
  changed.pages = data.pages;
  document.getElementById("changed-note").textContent = data.total
    ? `${data.total} rows (${data.filter})` : `No rows: ${data.filter}.`;
  body.replaceChildren(...data.rows.map((row) => {
    const open = el("button", { type: "button" }, "open");
    open.addEventListener("click", () => openRow(query.candidate, row));
    return el("tr", { "data-row": String(row.row_id), "data-setting": row.setting,
      "data-method": row.method },
    el("td", { class: "num" }, String(row.row_id)), el("td", {}, row.setting),
    el("td", {}, row.method), el("td", {}, row.source),
    el("td", {}, row.reference.answer ?? "none"),
    el("td", { class: "num" }, row.reference.judge_rating ?? "–"),
    el("td", {}, row.candidate.answer ?? "none"),
    el("td", { class: "num" }, row.candidate.judge_rating ?? "–"),
    el("td", { class: "clip", dir: "auto" }, (row.candidate.response ?? "").slice(0, 160)),
    el("td", {}, open));
  }));
  setPager("changed", data.page, data.pages);
}

function openRow(run, row) {
  setExplorerForm({ run, setting: row.setting, method: row.method, row_id: String(row.row_id) });
  showRows(1).then(() => {
    const first = document.querySelector("#explore-rows details");
    if (first) {
      first.open = true;
      first.querySelector("summary").focus();
    }
  });
  document.getElementById("explorer-section").scrollIntoView();
}

// ---- per-row explorer -----------------------------------------------------------------

const OUTCOME_LABELS = {
  all: "all", broken: "broken (right without, wrong with the preference)",
  repaired: "repaired (wrong without, right with)", not_followed: "preference not followed",
  unresolved: "extraction unresolved", parse_fallback: "parse fallback",
  parse_failure: "parse failure", dead_lettered: "dead-lettered",
};
const FILTERS = ["setting", "method", "source", "subject", "preference", "row_id", "outcome"];
const explore = { started: false, page: 1, pages: 0, facetsOf: null };

function fillOptions(id, values, labels = {}) {
  const select = document.getElementById(id);
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "any"),
    ...values.map((v) => el("option", { value: v }, labels[v] ?? v)));
  if (values.includes(current)) select.value = current;
}

async function loadFacets(run) {
  if (explore.facetsOf === run) return true;
  const { ok, data } = await getJSON(`/api/runs/${encodeURIComponent(run)}/facets`);
  if (!ok) {
    showError("explore-error", data.error);
    return false;
  }
  fillOptions("explore-setting", data.settings);
  fillOptions("explore-method", data.methods);
  fillOptions("explore-source", data.sources);
  fillOptions("explore-subject", data.subjects);
  const outcome = document.getElementById("explore-outcome");
  const current = outcome.value;
  outcome.replaceChildren(...data.outcomes.map((v) => el("option", { value: v },
    OUTCOME_LABELS[v] ?? v)));
  if (current) outcome.value = current;
  explore.facetsOf = run;
  return true;
}

function setExplorerForm(values) {
  const run = document.getElementById("explore-run");
  if (values.run && !Array.from(run.options, (o) => o.value).includes(values.run)) {
    run.append(el("option", { value: values.run }, values.run));  // unknown: the API says so
  }
  if (values.run) run.value = values.run;
  for (const name of FILTERS) {
    const node = document.getElementById(`explore-${name === "row_id" ? "row" : name}`);
    const value = values[name] ?? "";
    if (node.tagName === "SELECT" && value
        && !Array.from(node.options, (o) => o.value).includes(value)) {
      node.append(el("option", { value }, value));  // shown as given; the API judges it
    }
    node.value = value || (name === "outcome" ? "all" : "");
  }
}

function explorerParams() {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = document.getElementById(`explore-${name === "row_id" ? "row" : name}`).value;
    if (value && !(name === "outcome" && value === "all")) params.set(name, value.trim());
  }
  return params;
}

async function showRows(page, extra = null) {
  const run = document.getElementById("explore-run").value;
  const box = document.getElementById("explore-rows");
  showError("explore-error", "");
  if (!run) return;
  const params = extra ?? explorerParams();
  params.set("page", String(page));
  const url = new URL(window.location.href);
  url.search = new URLSearchParams({ run, ...Object.fromEntries(params) }).toString();
  window.history.replaceState(null, "", url);
  if (!(await loadFacets(run))) {
    box.replaceChildren();
    setPager("explore", 0, 0);
    document.getElementById("explore-note").textContent = "";
    return;
  }
  const { ok, data } = await getJSON(`/api/runs/${encodeURIComponent(run)}/rows?${params}`);
  if (!ok) {
    showError("explore-error", data.error);
    document.getElementById("explore-note").textContent = "";
    box.replaceChildren();
    setPager("explore", 0, 0);
    return;
  }
  explore.page = data.page;
  explore.pages = data.pages;
  document.getElementById("explore-note").textContent =
    `${data.total} ${data.kind === "dead_letters" ? "dead-lettered messages" : "rows"} `
    + `(${data.filter}); page ${data.page} of ${data.pages}`;
  document.getElementById("explore-note").dataset.total = String(data.total);
  box.replaceChildren(...data.rows.map(data.kind === "dead_letters" ? deadLetterView
    : (row) => rowView(row)));
  setPager("explore", data.page, data.pages);
}

function badges(row) {
  const out = [];
  if (row.base_correct && !row.pref_correct) out.push(["broken", "broken"]);
  if (!row.base_correct && row.pref_correct) out.push(["repaired", "repaired"]);
  if (row.followed === false) out.push(["not-followed", "not followed"]);
  if (row.unresolved) out.push(["unresolved", "unresolved"]);
  if (row.parse_fallback) out.push(["fallback", "parse fallback"]);
  if (row.parse_failure) out.push(["failure", "parse failure"]);
  return out.map(([cls, label]) => el("span", { class: `badge ${cls}` }, label));
}

function letter(answer, gold) {
  if (answer === null || answer === undefined) return "none";
  return answer === gold ? `${answer} ✓` : `${answer} ✗`;
}

function rowView(row) {
  const summary = el("summary", {},
    `row ${row.row_id} · ${row.setting} · ${row.method} · ${row.source}`
    + `${row.subject ? " · " + row.subject : ""} — no preference ${letter(row.nopref_answer,
      row.gold_option)}, with preference ${letter(row.answer, row.gold_option)} `
    + `(gold ${row.gold_option}) `, ...badges(row));
  const options = row.options
    ? el("ol", { class: "options", type: "A" }, ...row.options.map((option, i) => {
      const gold = String.fromCharCode(65 + i) === row.gold_option;
      return el("li", { class: gold ? "gold" : "", dir: "auto" }, option,
        gold ? el("strong", {}, " ← gold") : "");
    }))
    : el("p", { class: "muted" }, row.question_note ?? "");
  const stage2 = !row.stage2 ? "" : el("div", { class: "stage2" },
    el("h4", {}, row.stage2.kind === "aligner" ? "Pref-Aligner stage 2" : "Self-critique"),
    field("input", row.stage2.kind === "aligner"
      ? el("span", { class: "muted" }, "the no-preference response above")
      : el("span", { class: "muted" }, "the first answer (not stored; only its rewrite is)")),
    field("output", text(row.stage2.output)));
  const usage = el("table", { class: "usage" },
    el("thead", {}, el("tr", {}, el("th", {}, ""), el("th", {}, "tokens in"),
      el("th", {}, "tokens out"), el("th", {}, "latency s"), el("th", {}, "retries"),
      el("th", {}, "model calls"))),
    el("tbody", {},
      el("tr", {}, el("td", {}, "no preference"), el("td", { class: "num" }, row.nopref_tokens_in ?? "–"),
        el("td", { class: "num" }, row.nopref_tokens_out ?? "–"),
        el("td", { class: "num" }, row.nopref_latency_s?.toFixed(3) ?? "–"),
        el("td", { class: "num" }, row.nopref_retries ?? "–"), el("td", { class: "num" }, "1")),
      el("tr", {}, el("td", {}, "with preference"), el("td", { class: "num" }, row.tokens_in ?? "–"),
        el("td", { class: "num" }, row.tokens_out ?? "–"),
        el("td", { class: "num" }, row.latency_s?.toFixed(3) ?? "–"),
        el("td", { class: "num" }, row.retries ?? "–"),
        el("td", { class: "num" }, row.model_calls ?? "–"))));
  return el("details", { class: "row", "data-row": String(row.row_id),
    "data-setting": row.setting, "data-method": row.method },
  summary,
  field("question", row.question === null ? el("span", { class: "muted" }, "–")
    : el("p", { class: "question", dir: "auto", "data-field": "question" }, row.question)),
  field("options", options),
  field("no-preference response", text(row.nopref_response, { "data-field": "nopref_response" }),
    truncated(row.nopref_response, row.nopref_response_chars)),
  field("its letter", el("span", { "data-field": "nopref_answer" },
    `${letter(row.nopref_answer, row.gold_option)} (${row.nopref_extraction ?? "–"})`)),
  field("preference", el("p", { dir: "auto", "data-field": "preference" }, row.preference ?? "")),
  field("response with the preference", text(row.response, { "data-field": "response" }),
    truncated(row.response, row.response_chars)),
  field("its letter", el("span", { "data-field": "answer" },
    `${letter(row.answer, row.gold_option)} (${row.extraction ?? "–"})`)),
  stage2,
  field("judge", el("span", { "data-field": "judge_rating" },
    `rating ${row.judge_rating ?? "none"} (${row.judge_outcome ?? "–"})`)),
  field("judge's reply", text(row.judge_raw, { "data-field": "judge_raw" }),
    truncated(row.judge_raw, row.judge_raw_chars)),
  field("finish reason", el("span", {}, row.finish_reason ?? "–")),
  usage);
}

function deadLetterView(row) {
  return el("details", { class: "row dead", "data-row": String(row.row_id ?? "") },
    el("summary", {}, `row ${row.row_id ?? "?"} · ${row.setting ?? "?"} · ${row.method ?? "?"}`
      + ` · stage ${row.stage ?? "?"} — dead-lettered by ${row.service}`),
    field("reason", text(row.reason)),
    field("where", el("span", {}, `${row.topic} partition ${row.partition} offset ${row.offset}`
      + `, ${row.original_size ?? "?"} bytes, at ${row.failed_at}`)));
}

function startExplorer() {
  explore.started = true;
  const query = new URLSearchParams(window.location.search);
  const values = Object.fromEntries(query);
  if (values.run) {
    setExplorerForm(values);
    showRows(Number(values.page) || 1, new URLSearchParams(
      Object.entries(values).filter(([k]) => k !== "run" && k !== "page" && k !== "token")));
  } else {
    loadFacets(document.getElementById("explore-run").value);
  }
}

document.getElementById("explore-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showRows(1);
});
document.getElementById("explore-run").addEventListener("change", () => {
  explore.facetsOf = null;
  loadFacets(document.getElementById("explore-run").value);
});
document.getElementById("explore-prev").addEventListener("click", () => showRows(explore.page - 1));
document.getElementById("explore-next").addEventListener("click", () => showRows(explore.page + 1));
document.getElementById("changed-prev").addEventListener("click",
  () => showChanged(changed.query, changed.page - 1));
document.getElementById("changed-next").addEventListener("click",
  () => showChanged(changed.query, changed.page + 1));
setPager("explore", 0, 0);

document.getElementById("metric-run").addEventListener("change", renderMetrics);
document.getElementById("all-sources").addEventListener("change", renderMetrics);
document.getElementById("compare-form").addEventListener("submit", compareRuns);
connect();
