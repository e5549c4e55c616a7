// Line charts as inline SVG: no library, redrawn at most once per animation frame however
// many events arrive (the stream replays a job's whole history at once).

import { el, formatNumber } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 520;
const HEIGHT = 200;
const MARGIN = { top: 10, right: 12, bottom: 26, left: 52 };
const MAX_DRAWN = 1000; // points per series drawn; the data keeps all of them
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706"];

/** A tick label: 0.5, not 0.5000 (ticks are round numbers). */
function formatTick(v) {
  return Math.abs(v) >= 1e5 ? v.toExponential(1) : String(Number(v.toPrecision(6)));
}

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

/** Round tick values spanning [lo, hi]: steps of 1, 2 or 5 times a power of ten. */
export function ticks(lo, hi, count = 4) {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  // k * step, trimmed to 12 digits: repeated addition would drift (0.30000000000000004).
  for (let k = Math.ceil(lo / step); k * step <= hi + step * 1e-9; k += 1) {
    out.push(Number((k * step).toPrecision(12)));
  }
  return out;
}

export class LineChart {
  /**
   * `series`: [{key, label}]; `yRange`: fixed [min, max] (probabilities, accuracy) or null
   * to fit the data; `xLabel` names the x axis ("step", "epoch").
   */
  constructor({ title, series, xLabel = "step", yRange = null }) {
    this.title = title;
    this.xLabel = xLabel;
    this.yRange = yRange;
    this.series = series.map((s, i) => ({ ...s, color: COLORS[i % COLORS.length], points: [] }));
    this.pending = false;
    this.marker = null; // {x, label}: a vertical line at one x (the best step)
    this.svg = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": title,
      class: "chart-svg",
    });
    this.legend = el("div", { class: "legend" });
    this.node = el("figure", { class: "chart" }, el("figcaption", { text: title }), this.svg,
      this.legend);
    this.node.dataset.points = "0";
    this.render();
  }

  /**
   * Add a point; a step at or before the last one (a resumed job) replaces the tail. `step`:
   * the job's step the point was logged at (its x, unless x is the epoch), for rewind().
   */
  add(key, x, y, step = x) {
    const series = this.series.find((s) => s.key === key);
    if (!series || !Number.isFinite(x) || !Number.isFinite(y)) return;
    while (series.points.length && series.points[series.points.length - 1][0] >= x) {
      series.points.pop();
    }
    series.points.push([x, y, step]);
    this.schedule();
  }

  /** Drop the points logged after `step`: a restarted job resumed from there. */
  rewind(step) {
    for (const series of this.series) {
      series.points = series.points.filter((point) => point[2] <= step);
    }
    if (this.marker && this.marker.x > step) this.mark(null);
    this.schedule();
  }

  /** Mark `x` with a dashed vertical line and `label` (null: no mark). */
  mark(x, label = "") {
    this.marker = x === null ? null : { x, label };
    this.node.dataset.mark = x === null ? "" : String(x); // tests and people can read it
    this.schedule();
  }

  get pointCount() {
    return this.series.reduce((sum, s) => sum + s.points.length, 0);
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    const all = this.series.flatMap((s) => s.points);
    this.node.dataset.points = String(all.length); // tests and people can read it
    this.svg.replaceChildren(svg("title"));
    this.svg.firstChild.textContent = this.title;
    this.renderLegend();
    if (!all.length) {
      const empty = svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle",
        class: "chart-empty" });
      empty.textContent = "no points yet";
      this.svg.append(empty);
      return;
    }
    const [x0, x1] = this.extent(all.map((p) => p[0]), null);
    const [y0, y1] = this.extent(all.map((p) => p[1]), this.yRange, 0.05);
    const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
    const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotWidth;
    const sy = (y) => HEIGHT - MARGIN.bottom - ((y - y0) / (y1 - y0)) * plotHeight;
    this.renderAxes(x0, x1, y0, y1, sx, sy);
    for (const s of this.series) this.renderSeries(s, sx, sy);
    if (this.marker && this.marker.x >= x0 && this.marker.x <= x1) this.renderMark(sx);
  }

  renderMark(sx) {
    const x = sx(this.marker.x);
    this.svg.append(svg("line", { x1: x, x2: x, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom,
      class: "mark" }));
    // Left of the line near the right edge, so the label stays inside the plot.
    const right = x > WIDTH - MARGIN.right - 60;
    const label = svg("text", { x: right ? x - 4 : x + 4, y: MARGIN.top + 10,
      "text-anchor": right ? "end" : "start", class: "mark-label" });
    label.textContent = this.marker.label;
    this.svg.append(label);
  }

  /** [min, max] of the values plus `pad` of the span each side; a single value gets a span. */
  extent(values, fixed, pad = 0) {
    if (fixed) return fixed;
    // A loop, not Math.min(...values): a long job has more points than a call takes arguments.
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of values) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (hi === lo) {
      const half = Math.abs(lo) * 0.1 || 1;
      return [lo - half, hi + half];
    }
    const margin = (hi - lo) * pad;
    return [lo - margin, hi + margin];
  }

  renderAxes(x0, x1, y0, y1, sx, sy) {
    const axes = svg("g", { class: "axes" });
    for (const v of ticks(y0, y1)) {
      axes.append(svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(v), y2: sy(v),
        class: "grid" }));
      const label = svg("text", { x: MARGIN.left - 6, y: sy(v) + 4, "text-anchor": "end" });
      label.textContent = formatTick(v);
      axes.append(label);
    }
    for (const v of ticks(x0, x1, 5).filter(Number.isInteger)) {
      const y = HEIGHT - MARGIN.bottom + 16;
      const label = svg("text", { x: sx(v), y, "text-anchor": "middle" });
      label.textContent = formatNumber(v);
      axes.append(label);
    }
    // Bottom-left, under the y labels: clear of the x ticks.
    const name = svg("text", { x: 4, y: HEIGHT - MARGIN.bottom + 16, class: "axis-name" });
    name.textContent = this.xLabel;
    axes.append(name);
    this.svg.append(axes);
  }

  renderSeries(series, sx, sy) {
    if (!series.points.length) return;
    // A long job's thousands of points would not show more in 500 pixels: draw every k-th
    // (and the last), so a redraw stays cheap.
    const stride = Math.ceil(series.points.length / MAX_DRAWN);
    const last = series.points.length - 1;
    const drawn = series.points.filter((_, i) => i % stride === 0 || i === last);
    const points = drawn.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`);
    this.svg.append(svg("polyline", { points: points.join(" "), fill: "none",
      stroke: series.color, "stroke-width": 2, "data-series": series.key }));
    // Markers when there are few points: one epoch is a single point, invisible as a line.
    if (series.points.length <= 30) {
      for (const [x, y] of series.points) {
        this.svg.append(svg("circle", { cx: sx(x), cy: sy(y), r: 3, fill: series.color }));
      }
    }
  }

  renderLegend() {
    this.legend.replaceChildren(...this.series.map((s) => {
      const last = s.points[s.points.length - 1];
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = s.color; // CSSOM, allowed by the page's CSP
      return el("span", { class: "legend-item" }, swatch, s.label,
        el("span", { class: "muted", text: last ? ` ${formatNumber(last[1])}` : "" }));
    }));
  }
}
