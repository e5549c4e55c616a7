// Sweeps: the caller's sweeps (#/sweeps) and one sweep (#/sweeps/{id}): its trials in a
// sortable table with the best one marked, the metric against each parameter (one scatter per
// parameter, a log axis for log-scale ones), the ticked trials' curves overlaid, and cancel.
// A sweep that is not finished is polled every POLL_MS; so are its ticked, unfinished trials.

import { api, jobPath, query } from "./api.js";
import { LineChart, svg, ticks as linearTicks } from "./chart.js";
import { TERMINAL, el, formatNumber, formatTime, fromTemplate, say, statusBadge } from "./dom.js";

const POLL_MS = 2000;
const PLOT = { width: 300, height: 190, top: 10, right: 12, bottom: 34, left: 50 };

// --- reading a sweep (SweepPublic): tolerant of where its spec's fields sit

function specOf(sweep) {
  return sweep.spec || sweep;
}

/** {name, direction} of the metric the sweep optimises. */
export function metricOf(sweep) {
  const metric = sweep.metric || specOf(sweep).metric || {};
  return { name: metric.name || "value", direction: metric.direction || "maximize" };
}

function spaceOf(sweep) {
  return specOf(sweep).space || {};
}

/** The parameter names: the space's, in its order, then any others the trials carry. */
function paramNames(sweep) {
  const names = Object.keys(spaceOf(sweep));
  for (const trial of sweep.trials || []) {
    for (const name of Object.keys(trial.params || {})) if (!names.includes(name)) names.push(name);
  }
  return names;
}

function baseOf(sweep) {
  return specOf(sweep).base || {};
}

function sweepName(sweep) {
  return sweep.name || specOf(sweep).name || "";
}

/** Still changing: running, or cancelled with trials that have not stopped yet. */
function isLive(sweep) {
  return sweep.status === "running"
    || (sweep.trials || []).some((t) => !TERMINAL.has(trialStatus(t)));
}

/** A trial's job status; "waiting" while it waits for room in the queue (no job yet). */
function trialStatus(trial) {
  return trial.status || "waiting";
}

function hasValue(trial) {
  return trial.value !== null && trial.value !== undefined && Number.isFinite(Number(trial.value));
}

function bestOf(sweep) {
  const best = sweep.best || sweep.best_trial || null;
  if (!best) return null;
  return { ...best, trial: best.trial ?? best.number };
}

function isBest(sweep, trial) {
  const best = bestOf(sweep);
  if (!best) return false;
  return best.job_id ? best.job_id === trial.job_id : best.trial === trial.number;
}

/** "lr 0.01 · seed 3": a trial's parameters in one line. */
function paramsText(params) {
  return Object.entries(params || {}).map(([k, v]) => `${k} ${formatValue(v)}`).join(" · ");
}

/** A parameter as given: 0.01, not 0.01000 (parameters are round numbers, or exact). */
function formatValue(value) {
  if (typeof value === "number") {
    return Number.isInteger(value) ? formatNumber(value) : String(Number(value.toPrecision(6)));
  }
  if (value === null || value === undefined) return "—";
  return String(value);
}

/** An ApiError's one line, or a network error's message. */
function describe(error) {
  return error.describe ? error.describe() : error.message;
}

function countsText(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`);
  return parts.length ? parts.join(", ") : "no trials yet";
}

// --- the list

/** The sweeps page: the caller's sweeps, refreshed while any of them runs. */
export function renderSweeps(main, signal) {
  main.replaceChildren(fromTemplate("tpl-sweeps"));
  const tbody = main.querySelector("#sweeps-table tbody");
  const empty = main.querySelector("#sweeps-empty");
  const error = main.querySelector("#sweeps-error");
  const updated = main.querySelector("#sweeps-updated");
  let busy = false;
  const load = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const page = await api("/v1/sweeps", { signal });
      const sweeps = Array.isArray(page) ? page : page.data || [];
      tbody.replaceChildren(...sweeps.map(sweepRow));
      empty.hidden = sweeps.length > 0;
      say(error, "");
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (problem) {
      if (signal.aborted) return;
      say(error, `Could not load sweeps: ${describe(problem)}`);
    } finally {
      busy = false;
    }
  };
  load();
  const timer = setInterval(load, POLL_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
}

function sweepRow(sweep) {
  const href = `#/sweeps/${encodeURIComponent(sweep.id)}`;
  const name = sweepName(sweep);
  const base = baseOf(sweep);
  const metric = metricOf(sweep);
  const best = bestOf(sweep);
  const n = sweep.n_trials ?? specOf(sweep).n_trials;
  const what = [base.task, base.model, base.dataset].filter(Boolean).join(" · ");
  return el("tr", { "data-sweep-id": sweep.id, "data-status": sweep.status },
    el("td", {}, el("a", { href }, el("code", { text: sweep.id })),
      name ? el("div", { class: "muted small", text: name }) : null),
    el("td", {}, statusBadge(sweep.status)),
    el("td", { text: what }),
    el("td", { class: "counts" }, countsText(sweep.counts),
      n ? el("div", { class: "muted small", text: `of ${n} trials` }) : null),
    el("td", {}, best && hasValue(best)
      ? el("span", {}, el("strong", { text: formatNumber(best.value) }),
        el("div", { class: "muted small",
          text: [metric.name, `trial ${best.trial}`, paramsText(best.params)]
            .filter(Boolean).join(" · ") }))
      : el("span", { class: "muted", text: "—" })),
    el("td", { class: "muted", text: formatTime(sweep.created_at) }));
}

// --- one sweep

/** The sweep page. */
export function renderSweep(main, sweepId, signal) {
  main.replaceChildren(fromTemplate("tpl-sweep"));
  new SweepPage(main, sweepId, signal).start();
}

class SweepPage {
  constructor(root, sweepId, signal) {
    this.root = root;
    this.sweepId = sweepId;
    this.signal = signal;
    this.sweep = null;
    this.sort = { key: "number", dir: 1 }; // the column and direction the table is sorted by
    this.ticked = new Set(); // job ids of the trials whose curves are drawn
    this.curves = new Map(); // job id -> {trial, events, lastId, done}
    this.curveCharts = null;
    this.timer = null;
    this.busy = false;
  }

  $(selector) {
    return this.root.querySelector(selector);
  }

  path(suffix = "") {
    return `/v1/sweeps/${encodeURIComponent(this.sweepId)}${suffix}`;
  }

  async start() {
    this.$("#sweep-id").textContent = this.sweepId;
    document.title = `sweep ${this.sweepId} — trainyard`;
    this.$("#sweep-cancel").addEventListener("click", () => this.cancel());
    await this.refresh();
    this.timer = setInterval(() => this.refresh(), POLL_MS);
    this.signal.addEventListener("abort", () => clearInterval(this.timer));
  }

  async refresh() {
    if (this.busy || (this.sweep && !isLive(this.sweep) && !this.curvesLive())) return;
    this.busy = true;
    try {
      if (!this.sweep || isLive(this.sweep)) {
        this.sweep = await api(this.path(), { signal: this.signal });
        say(this.$("#sweep-error"), "");
        this.render();
      }
      await this.refreshCurves();
    } catch (error) {
      if (this.signal.aborted) return;
      say(this.$("#sweep-error"), `Could not load the sweep: ${describe(error)}`);
      if (error.status === 404) clearInterval(this.timer);
    } finally {
      this.busy = false;
    }
  }

  render() {
    this.renderHead();
    this.renderTable();
    this.renderScatters();
    this.renderCurvesNote();
  }

  renderHead() {
    const sweep = this.sweep;
    const badge = this.$("#sweep-status");
    badge.className = `badge status-${sweep.status}`;
    badge.textContent = sweep.status;
    this.root.dataset.status = sweep.status;
    this.$("#sweep-name").textContent = sweepName(sweep);
    const base = baseOf(sweep);
    const spec = specOf(sweep);
    const metric = metricOf(sweep);
    const what = [base.task, base.model, base.dataset].filter(Boolean).join(" · ");
    const sampler = spec.sampler ? `${spec.sampler} sampler` : null;
    const pruner = spec.pruner ? `${spec.pruner.type || "pruner"} pruner` : "no pruning";
    const n = sweep.n_trials ?? spec.n_trials;
    this.$("#sweep-what").textContent = [what, sampler, n && `${n} trials`,
      spec.parallel && `${spec.parallel} at a time`, pruner,
      `${metric.direction} ${metric.name}`].filter(Boolean).join(" · ");
    this.$("#sweep-counts").textContent = countsText(sweep.counts);
    const best = bestOf(sweep);
    this.$("#sweep-best").replaceChildren(...(best && hasValue(best) ? [
      "best: trial ", el("a", { href: `#/jobs/${encodeURIComponent(best.job_id)}` },
        String(best.trial)), ` · ${metric.name} `,
      el("strong", { text: formatNumber(best.value) }),
      best.params ? ` · ${paramsText(best.params)}` : "",
    ] : [el("span", { class: "muted",
      text: isLive(sweep) ? "no trial has succeeded yet" : "no trial succeeded" })]));
    const cancel = this.$("#sweep-cancel");
    cancel.hidden = sweep.status !== "running" || Boolean(sweep.cancel_requested);
    const cancelling = sweep.cancel_requested && isLive(sweep) ? "cancelling its trials…" : "";
    say(this.$("#sweep-message"), cancelling || (sweep.status === "running" ? sweep.waiting : ""));
    this.$("#sweep-updated").textContent = isLive(sweep)
      ? `live · updated ${new Date().toLocaleTimeString()}`
      : `ended ${formatTime(sweep.finished_at)}`;
  }

  // --- the trial table

  columns() {
    const metric = metricOf(this.sweep);
    return [
      { key: "number", label: "trial", value: (t) => t.number },
      { key: "status", label: "status", value: trialStatus },
      ...paramNames(this.sweep).map((name) => ({
        key: `param:${name}`, label: name, param: name, value: (t) => (t.params || {})[name],
      })),
      { key: "value", label: metric.name, value: (t) => (hasValue(t) ? Number(t.value) : null) },
      { key: "reason", label: "reason", value: (t) => t.reason || t.error || "" },
    ];
  }

  renderTable() {
    const columns = this.columns();
    const table = this.$("#trials-table");
    const head = el("tr", {}, el("th", { class: "tick", title: "draw its curves" }, "curves"),
      ...columns.map((column) => this.headerCell(column)));
    table.tHead.replaceChildren(head);
    const column = columns.find((c) => c.key === this.sort.key) || columns[0];
    const trials = [...(this.sweep.trials || [])].sort((a, b) =>
      compareValues(column.value(a), column.value(b), this.sort.dir) || a.number - b.number);
    table.tBodies[0].replaceChildren(...trials.map((trial) => this.trialRow(trial, columns)));
    this.$("#trials-empty").hidden = trials.length > 0;
  }

  headerCell(column) {
    const sorted = column.key === this.sort.key;
    const arrow = sorted ? (this.sort.dir > 0 ? " ▲" : " ▼") : "";
    const button = el("button", { type: "button", class: "link sort", "data-key": column.key },
      `${column.label}${arrow}`);
    button.addEventListener("click", () => {
      this.sort = { key: column.key, dir: sorted ? -this.sort.dir : 1 };
      this.renderTable();
    });
    const sort = sorted ? (this.sort.dir > 0 ? "ascending" : "descending") : "none";
    return el("th", { "aria-sort": sort, "data-key": column.key }, button);
  }

  trialRow(trial, columns) {
    const best = isBest(this.sweep, trial);
    const tick = el("input", { type: "checkbox", "aria-label": `curves of trial ${trial.number}` });
    tick.checked = this.ticked.has(trial.job_id);
    tick.disabled = !trial.job_id;
    tick.addEventListener("change", () => this.toggle(trial, tick.checked));
    const cells = columns.map((column) => {
      const value = column.value(trial);
      if (column.key === "number") {
        const link = trial.job_id
          ? el("a", { href: `#/jobs/${encodeURIComponent(trial.job_id)}`, title: trial.job_id },
            `#${trial.number}`)
          : `#${trial.number}`;
        const mark = best ? el("span", { class: "badge best", text: "★ best" }) : null;
        return el("td", {}, link, mark);
      }
      if (column.key === "status") return el("td", {}, statusBadge(trialStatus(trial)));
      if (column.key === "reason") {
        return el("td", { class: "reason small", title: value, text: truncate(value, 120) });
      }
      const text = column.key === "value" ? formatNumber(value) : formatValue(value);
      return el("td", { class: "num", text });
    });
    return el("tr", {
      class: best ? "best" : null,
      "data-trial": trial.number,
      "data-job-id": trial.job_id || "",
      "data-status": trialStatus(trial),
      "data-best": best ? "true" : null,
    }, el("td", { class: "tick" }, tick), ...cells);
  }

  // --- the metric against each parameter

  renderScatters() {
    const sweep = this.sweep;
    const metric = metricOf(sweep);
    const space = spaceOf(sweep);
    const done = (sweep.trials || []).filter(hasValue);
    const box = this.$("#scatters");
    box.replaceChildren(...paramNames(sweep).map((name) =>
      scatter(name, space[name] || {}, metric, done, (t) => isBest(sweep, t))));
    this.$("#scatters-note").textContent = done.length
      ? `${done.length} trial${done.length === 1 ? "" : "s"} with a ${metric.name}; ` +
        "the best one is the larger orange dot."
      : `No trial has a ${metric.name} yet.`;
  }

  // --- the ticked trials' curves

  toggle(trial, on) {
    if (on) this.ticked.add(trial.job_id);
    else this.ticked.delete(trial.job_id);
    this.buildCurveCharts();
    this.renderCurvesNote();
    if (on) this.loadCurve(trial).catch((error) => this.curveProblem(trial, error));
  }

  curvesLive() {
    return [...this.ticked].some((id) => !(this.curves.get(id) || {}).done);
  }

  trialOf(jobId) {
    return (this.sweep.trials || []).find((t) => t.job_id === jobId);
  }

  /** The metric events of the ticked trials: all of them once, then what came since. */
  async refreshCurves() {
    const pending = [...this.ticked].map((id) => this.trialOf(id)).filter(Boolean)
      .filter((trial) => !(this.curves.get(trial.job_id) || {}).done);
    await Promise.all(pending.map((trial) =>
      this.loadCurve(trial).catch((error) => this.curveProblem(trial, error))));
  }

  async loadCurve(trial) {
    const jobId = trial.job_id;
    const known = this.curves.get(jobId) || { lastId: null, done: false, loading: false };
    if (known.loading) return;
    known.loading = true;
    this.curves.set(jobId, known);
    try {
      // Terminal before the read: then what the read returns is all there will be.
      const finished = TERMINAL.has(trialStatus(trial));
      const path = `${jobPath(jobId, "/metrics")}${query({ after: known.lastId })}`;
      const events = (await api(path, { signal: this.signal })).data;
      for (const event of events) this.feed(trial, event);
      if (events.length) known.lastId = events[events.length - 1].id || known.lastId;
      known.done = finished;
    } finally {
      known.loading = false;
    }
  }

  curveProblem(trial, error) {
    if (this.signal.aborted) return;
    say(this.$("#curves-error"),
      `Could not load the curves of trial ${trial.number}: ${describe(error)}`);
  }

  /** The curve charts for the ticked trials: one series per trial, in trial order. */
  buildCurveCharts() {
    const box = this.$("#curves");
    const trials = [...this.ticked].map((id) => this.trialOf(id)).filter(Boolean)
      .sort((a, b) => a.number - b.number);
    if (!trials.length) {
      this.curveCharts = null;
      box.replaceChildren();
      return;
    }
    const metric = metricOf(this.sweep);
    const gan = baseOf(this.sweep).task !== "classifier";
    const series = trials.map((t) => ({ key: t.job_id, label: `trial ${t.number}` }));
    const accuracy = /accuracy/.test(metric.name);
    this.curveCharts = {
      // A classifier's metric comes with each epoch's evaluation; a GAN's with each scoring.
      metric: new LineChart({ title: `${metric.name} per ${gan ? "step" : "epoch"}`,
        series, xLabel: gan ? "step" : "epoch", yRange: accuracy ? [0, 1] : null }),
      loss: new LineChart({ title: `training ${gan ? "G loss" : "loss"} per step`, series,
        xLabel: "step" }),
      gan,
      metricName: metric.name,
    };
    this.curveCharts.metric.node.dataset.chart = "metric";
    this.curveCharts.loss.node.dataset.chart = "loss";
    box.replaceChildren(this.curveCharts.metric.node, this.curveCharts.loss.node);
    // Redraw what is already loaded into the new charts.
    for (const trial of trials) {
      for (const event of (this.curves.get(trial.job_id) || {}).events || []) {
        this.draw(trial.job_id, event);
      }
    }
  }

  feed(trial, event) {
    const known = this.curves.get(trial.job_id);
    if (!known.events) known.events = [];
    if (event.kind === "rewind") {
      known.events = known.events.filter((e) => e.step <= event.step);
      if (this.curveCharts) {
        this.curveCharts.metric.rewind(event.step);
        this.curveCharts.loss.rewind(event.step);
      }
      return;
    }
    if (!["step", "epoch", "quality"].includes(event.kind)) return;
    known.events.push(event);
    if (this.ticked.has(trial.job_id)) this.draw(trial.job_id, event);
  }

  draw(jobId, event) {
    const charts = this.curveCharts;
    if (!charts) return;
    const name = charts.metricName;
    const lossKey = charts.gan ? "g_loss" : "loss";
    if (event.kind === "step" && lossKey in event.metrics) {
      charts.loss.add(jobId, event.step, event.metrics[lossKey], event.step);
    }
    if (name in event.metrics && event.kind !== "step") {
      const x = charts.gan ? event.step : event.epoch + 1;
      charts.metric.add(jobId, x, event.metrics[name], event.step);
    }
  }

  renderCurvesNote() {
    const note = this.$("#curves-note");
    note.textContent = this.ticked.size
      ? `${this.ticked.size} trial${this.ticked.size === 1 ? "" : "s"} drawn.`
      : "Tick trials in the table to overlay their curves.";
    // Charts for trials ticked before the first render (or after the sweep changed).
    const drawn = this.curveCharts ? this.curveCharts.metric.series.length : 0;
    const wanted = [...this.ticked].filter((id) => this.trialOf(id)).length;
    if (drawn !== wanted) this.buildCurveCharts();
  }

  async cancel() {
    const button = this.$("#sweep-cancel");
    button.disabled = true;
    try {
      this.sweep = await api(this.path("/cancel"), { method: "POST", signal: this.signal });
      this.render();
    } catch (error) {
      if (!this.signal.aborted) {
        say(this.$("#sweep-error"), `Could not cancel: ${describe(error)}`);
      }
    } finally {
      button.disabled = false;
    }
  }
}

/** Sort order of two cells: numbers as numbers, text as text, empty cells last either way. */
function compareValues(a, b, dir) {
  const emptyA = a === null || a === undefined || a === "";
  const emptyB = b === null || b === undefined || b === "";
  if (emptyA || emptyB) return emptyA === emptyB ? 0 : emptyA ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return (a - b) * dir;
  return String(a).localeCompare(String(b), "en", { numeric: true }) * dir;
}

function truncate(text, length) {
  if (!text) return "";
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

// --- scatter plots (inline SVG, as chart.js draws lines)

function svgText(attrs, text) {
  const node = svg("text", attrs);
  node.textContent = text;
  return node;
}

function svgTitle(text) {
  const node = svg("title");
  node.textContent = text;
  return node;
}


/** Powers of ten in [lo, hi] (both > 0); the ends themselves when none falls inside. */
function logTicks(lo, hi) {
  const out = [];
  for (let p = Math.ceil(Math.log10(lo) - 1e-9); 10 ** p <= hi * (1 + 1e-9); p += 1) {
    out.push(10 ** p);
  }
  return out.length ? out : [lo, hi];
}

function padded(lo, hi, pad) {
  if (hi === lo) {
    const half = Math.abs(lo) * 0.1 || 1;
    return [lo - half, hi + half];
  }
  return [lo - (hi - lo) * pad, hi + (hi - lo) * pad];
}

function tickText(v) {
  return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0)
    ? v.toExponential(0) : String(Number(v.toPrecision(6)));
}

/**
 * The metric of each finished trial against parameter `name`. `range` is its entry of the
 * space ({type, low, high, log} or {type: "choice", values}): a log-scale parameter gets a log
 * axis, a choice one an axis of its values in order.
 */
function scatter(name, range, metric, trials, isBest) {
  const { width, height, top, right, bottom, left } = PLOT;
  const values = trials.map((t) => (t.params || {})[name]);
  const numeric = values.every((v) => typeof v === "number");
  const choice = range.type === "choice" || !numeric;
  const log = !choice && Boolean(range.log) && values.every((v) => v > 0);
  const scale = choice ? "category" : log ? "log" : "linear";
  const plotW = width - left - right;
  const plotH = height - top - bottom;

  let sx;
  let xTicks;
  if (choice) {
    const categories = (range.values || []).map(String);
    for (const v of values) if (!categories.includes(String(v))) categories.push(String(v));
    const slot = plotW / Math.max(1, categories.length);
    sx = (v) => left + slot * (categories.indexOf(String(v)) + 0.5);
    xTicks = categories.map((c) => [c, sx(c)]);
  } else {
    const ends = [...values, range.low, range.high]
      .filter((v) => typeof v === "number" && (!log || v > 0));
    let lo = Math.min(...ends);
    let hi = Math.max(...ends);
    if (!Number.isFinite(lo)) [lo, hi] = [0, 1];
    if (log) {
      const [l0, l1] = padded(Math.log10(lo), Math.log10(hi), 0.05);
      sx = (v) => left + ((Math.log10(v) - l0) / (l1 - l0)) * plotW;
      xTicks = logTicks(10 ** l0, 10 ** l1).map((v) => [tickText(v), sx(v)]);
    } else {
      const [x0, x1] = padded(lo, hi, 0.05);
      sx = (v) => left + ((v - x0) / (x1 - x0)) * plotW;
      xTicks = linearTicks(x0, x1).map((v) => [tickText(v), sx(v)]);
    }
  }
  const ys = trials.map((t) => Number(t.value));
  const [y0, y1] = ys.length ? padded(Math.min(...ys), Math.max(...ys), 0.08) : [0, 1];
  const sy = (v) => height - bottom - ((v - y0) / (y1 - y0)) * plotH;

  const title = `${metric.name} against ${name}${log ? " (log scale)" : ""}`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title,
    class: "chart-svg scatter-svg" });
  chart.append(svgTitle(title));
  const axes = svg("g", { class: "axes" });
  for (const v of ys.length ? linearTicks(y0, y1) : []) {
    axes.append(svg("line", { x1: left, x2: width - right, y1: sy(v), y2: sy(v), class: "grid" }));
    axes.append(svgText({ x: left - 6, y: sy(v) + 4, "text-anchor": "end" }, tickText(v)));
  }
  for (const [label, x] of xTicks) {
    if (x < left - 1 || x > width - right + 1) continue;
    axes.append(svgText({ x, y: height - bottom + 14, "text-anchor": "middle" }, label));
  }
  axes.append(svgText({ x: left + plotW / 2, y: height - 4, "text-anchor": "middle",
    class: "axis-name" }, `${name}${log ? " (log)" : ""}`));
  chart.append(axes);
  if (!trials.length) {
    chart.append(svgText({ x: width / 2, y: height / 2, "text-anchor": "middle",
      class: "chart-empty" }, "no values yet"));
  }
  // The best last, so it is drawn on top.
  const ordered = [...trials].sort((a, b) => Number(isBest(a)) - Number(isBest(b)));
  for (const trial of ordered) {
    const best = isBest(trial);
    const v = (trial.params || {})[name];
    const dot = svg("circle", { cx: sx(v).toFixed(1), cy: sy(Number(trial.value)).toFixed(1),
      r: best ? 6 : 4, class: best ? "dot best" : "dot", "data-trial": trial.number });
    dot.append(svgTitle(`trial ${trial.number}: ${name} ${formatValue(v)}, ` +
      `${metric.name} ${formatNumber(trial.value)}`));
    chart.append(dot);
  }
  const figure = el("figure", { class: "chart scatter", "data-param": name, "data-scale": scale,
    "data-points": trials.length }, el("figcaption", { text: title }), chart);
  return figure;
}
