// PERG Stream lineage view: per metric a line over a lineage's versions with the 95% interval
// as a band and the noise floor as a second (hatched) band where measured; accepted versions
// drawn as diamonds, each point's gate verdict written beside it; a point opens its run on
// click, Enter or Space. Uses the helpers of dashboard.js (el, svg, fmt, getJSON, showError).
"use strict";

const LINEAGE_LABELS = { BR: "Breakage rate", AFR: "Alignment failure rate",
  RER: "Robustness error rate", PVR: "Performance variation rate (secondary)" };
const VERDICT_MARKS = { pass: "✓ pass", fail: "✗ fail" };
const lineageView = { name: null };

function interval(lo, hi) {
  return lo === null || lo === undefined ? "" : ` [${fmt(lo)}–${fmt(hi)}]`;
}

function pointLabel(version, metric, value, lo, hi) {
  return `${version.version ?? version.run_id}: ${metric} ${fmt(value)}${interval(lo, hi)}`
    + `, gate ${version.verdict ?? "not gated"}${version.accepted ? ", accepted" : ""}`
    + ` — opens run ${version.run_id}`;
}

function band(points, cls, fill) {
  // one polygon per run of consecutive versions that have both bounds
  const shapes = [];
  let strip = [];
  const flush = () => {
    if (strip.length) {
      const upper = strip.map((p) => `${p.x},${p.hi}`);
      const lower = strip.slice().reverse().map((p) => `${p.x},${p.lo}`);
      const width = strip.length === 1 ? 6 : 0;  // a lone version: a short bar
      shapes.push(width
        ? svg("rect", { class: cls, x: strip[0].x - width, y: strip[0].hi, width: 2 * width,
          height: Math.max(1, strip[0].lo - strip[0].hi), fill })
        : svg("polygon", { class: cls, points: [...upper, ...lower].join(" "), fill }));
    }
    strip = [];
  };
  for (const p of points) {
    if (p === null) flush();
    else strip.push(p);
  }
  flush();
  return shapes;
}

function lineageChart(metric, versions) {
  const [left, right, top, height] = [44, 24, 18, 170];
  const bottom = 46;
  const step = versions.length > 1 ? Math.max(70, 560 / (versions.length - 1)) : 70;
  const width = left + right + step * Math.max(1, versions.length - 1);
  const highs = versions.flatMap((v) => [v[metric], v[`${metric}_hi`],
    metric === "BR" ? v.noise_BR_hi : null]).filter((x) => x !== null && x !== undefined);
  const unit = Math.max(10, ...highs) > 50 ? 20 : 10;
  const scale = Math.ceil(Math.max(10, ...highs) / unit) * unit;
  const y = (value) => top + height - (value / scale) * height;
  const x = (i) => left + (versions.length > 1 ? i * step : step / 2);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${top + height + bottom}`, role: "group",
    "aria-label": `${LINEAGE_LABELS[metric]} over the versions`, "data-metric": metric });
  const hatch = svg("pattern", { id: `hatch-${metric}`, width: 6, height: 6,
    patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" });
  hatch.append(svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch" }));
  const defs = svg("defs");
  defs.append(hatch);
  chart.append(defs);
  for (let tick = 0; tick <= scale; tick += unit) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right / 2, y1: y(tick),
      y2: y(tick) }));
    chart.append(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end" }, String(tick)));
  }
  const at = (lo, hi, i) => (lo === null || lo === undefined || hi === null || hi === undefined
    ? null : { x: x(i), lo: y(lo), hi: y(hi) });
  if (metric === "BR") {
    chart.append(...band(versions.map((v, i) => at(v.noise_BR_lo, v.noise_BR_hi, i)),
      "band-noise", `url(#hatch-${metric})`));
  }
  chart.append(...band(versions.map((v, i) => at(v[`${metric}_lo`], v[`${metric}_hi`], i)),
    "band-interval", null));
  const line = versions.map((v, i) => (v[metric] === null ? null : `${x(i)},${y(v[metric])}`))
    .filter((p) => p !== null);
  if (line.length > 1) chart.append(svg("polyline", { class: "trend", points: line.join(" ") }));
  versions.forEach((v, i) => {
    const value = v[metric];
    chart.append(svg("text", { x: x(i), y: top + height + 16, "text-anchor": "middle" },
      v.version ?? v.run_id));
    if (value === null || value === undefined) {
      chart.append(svg("text", { x: x(i), y: top + height - 4, "text-anchor": "middle",
        class: "muted-text" }, "no value"));
      return;
    }
    const [lo, hi] = [v[`${metric}_lo`] ?? null, v[`${metric}_hi`] ?? null];
    const point = svg("g", { class: "point", tabindex: "0", role: "link",
      "aria-label": pointLabel(v, metric, value, lo, hi), "data-run": v.run_id,
      "data-metric": metric, "data-value": String(value), "data-lo": lo === null ? "" : String(lo),
      "data-hi": hi === null ? "" : String(hi), "data-accepted": String(v.accepted),
      "data-verdict": v.verdict ?? "" });
    const [px, py] = [x(i), y(value)];
    point.append(v.accepted
      ? svg("path", { class: "mark accepted", d: `M${px} ${py - 8}L${px + 8} ${py}L${px} ${py + 8}`
        + `L${px - 8} ${py}Z` })
      : svg("circle", { class: "mark", cx: px, cy: py, r: 5 }));
    point.append(svg("title", {}, pointLabel(v, metric, value, lo, hi)));
    chart.append(point);
    const notes = [v.verdict ? VERDICT_MARKS[v.verdict] : null, v.accepted ? "accepted" : null]
      .filter((n) => n);
    if (notes.length) {
      chart.append(svg("text", { x: px, y: top + height + 30, "text-anchor": "middle",
        class: `verdict ${v.verdict ?? ""}` }, notes.join(", ")));
    }
    point.addEventListener("click", () => openRun(v.run_id));
    point.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openRun(v.run_id);
      }
    });
  });
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right / 2, y1: y(0),
    y2: y(0) }));
  return el("figure", { class: "lineage-chart" }, el("figcaption", {}, LINEAGE_LABELS[metric]),
    chart);
}

function lineageTable(versions) {
  const cell = (v, metric, lo, hi) => el("td", { class: "num", "data-metric": metric },
    v[metric] === null || v[metric] === undefined ? "–" : fmt(v[metric]),
    lo ? el("span", { class: "interval" }, interval(v[lo], v[hi])) : "");
  return versions.map((v) => {
    const open = el("button", { type: "button", class: "link" }, v.run_id);
    open.addEventListener("click", () => openRun(v.run_id));
    return el("tr", { "data-run": v.run_id },
      el("td", {}, v.version ?? "–"), el("td", {}, open), el("td", {}, v.state),
      cell(v, "BR", "BR_lo", "BR_hi"), cell(v, "noise_BR", "noise_BR_lo", "noise_BR_hi"),
      cell(v, "AFR", "AFR_lo", "AFR_hi"), cell(v, "RER", "RER_lo", "RER_hi"), cell(v, "PVR"),
      el("td", { "data-field": "verdict" }, v.verdict ? VERDICT_MARKS[v.verdict] : "not gated"),
      el("td", { "data-field": "accepted" }, v.accepted ? `◆ accepted ${v.accepted_at}` : ""));
  });
}

function openRun(run) {
  // the run's metrics above and its rows below
  const metricRun = document.getElementById("metric-run");
  if (Array.from(metricRun.options, (o) => o.value).includes(run)) {
    metricRun.value = run;
    renderMetrics();
  }
  explore.facetsOf = null;
  setExplorerForm({ run });
  showRows(1);
  document.getElementById("explorer-section").scrollIntoView();
}

async function showLineage(name) {
  const charts = document.getElementById("lineage-charts");
  const body = document.querySelector("#lineage-table tbody");
  showError("lineage-error", "");
  lineageView.name = name;
  const url = new URL(window.location.href);
  url.searchParams.set("lineage", name);
  window.history.replaceState(null, "", url);
  const { ok, data } = await getJSON(`/api/lineages/${encodeURIComponent(name)}`);
  if (!ok) {
    showError("lineage-error", data.error);
    charts.replaceChildren();
    body.replaceChildren();
    return;
  }
  charts.replaceChildren(...data.metrics.map((metric) => lineageChart(metric, data.versions)));
  body.replaceChildren(...lineageTable(data.versions));
}

async function startLineages() {
  const select = document.getElementById("lineage-name");
  const { ok, data } = await getJSON("/api/lineages");
  if (!ok) {
    showError("lineage-error", data.error);
    return;
  }
  select.replaceChildren(...data.map((l) => el("option", { value: l.lineage },
    `${l.lineage} (${l.versions} versions, ${l.accepted} accepted)`)));
  const asked = new URLSearchParams(window.location.search).get("lineage");
  document.getElementById("no-lineages").hidden = data.length > 0 || asked !== null;
  if (asked !== null) {
    if (!data.some((l) => l.lineage === asked)) {
      select.append(el("option", { value: asked }, asked));  // unknown: the API says so
    }
    select.value = asked;
    showLineage(asked);
  } else if (data.length) {
    showLineage(data[0].lineage);
  }
}

document.getElementById("lineage-name").addEventListener("change",
  (event) => showLineage(event.target.value));
startLineages();
