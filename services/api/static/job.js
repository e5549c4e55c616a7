// One job: live progress and curves (fed by its event stream), the sample-grid timeline and
// a side-by-side comparison, memory, result and artifacts; once it succeeded, its model to use
// (inference.js).

import { api, fetchArtifact, jobPath, query, relativeToJob } from "./api.js";
import { LineChart } from "./chart.js";
import {
  TERMINAL,
  el,
  formatBytes,
  formatDuration,
  formatNumber,
  formatTime,
  fromTemplate,
  say,
  warningBadge,
} from "./dom.js";
import { setupInference } from "./inference.js";
import { follow } from "./sse.js";

const POLL_MS = 3000; // the job record (status, queue position) while it is not finished

// Which metrics each task's charts draw. `from`: the event kind carrying the metric;
// a chart's `x` is the step, or the epoch (1-based) for per-epoch figures.
const GAN_CHARTS = [
  {
    title: "losses (BCE)",
    x: "step",
    series: [
      { key: "d_loss", label: "D loss", from: "step" },
      { key: "g_loss", label: "G loss", from: "step" },
    ],
  },
  {
    title: "discriminator outputs",
    x: "step",
    yRange: [0, 1],
    series: [
      { key: "d_real", label: "mean D(real)", from: "step" },
      { key: "d_fake", label: "mean D(G(z))", from: "step" },
    ],
  },
];
const CHARTS = {
  classifier: [
    {
      title: "loss (BCE)",
      x: "step",
      series: [
        { key: "loss", label: "training loss", from: "step" },
        { key: "test_loss", label: "held-out loss (per epoch)", from: "epoch" },
      ],
    },
    {
      title: "held-out accuracy per epoch",
      x: "epoch",
      yRange: [0, 1],
      series: [{ key: "test_accuracy", label: "test accuracy", from: "epoch" }],
    },
  ],
  gan: GAN_CHARTS,
  cgan: GAN_CHARTS,
};

// Sample quality (GANs, docs/quality.md): the charts are made from the first `quality` event,
// with the series it carries: `fd` in the reference classifier's features and its figures
// (labelled data), or `fid` in Inception-v3's (unlabelled data: no classifier figures).
function qualityCharts(event) {
  const has = (series) => series.key in event.metrics;
  const metric = event.info.metric || ("fid" in event.metrics ? "fid" : "fd");
  const name = metric.toUpperCase();
  const distance = {
    title: `${name} per step (lower is better)`,
    x: "step",
    best: true, // the best step is marked on it
    series: [
      { key: metric, label: `${name} of the samples`, from: "quality" },
      { key: "fd_floor", label: "real vs real", from: "quality" },
    ].filter(has),
  };
  const named = {
    title: "named by the reference classifier with p ≥ 0.9",
    x: "step",
    yRange: [0, 1],
    series: [
      { key: "confident", label: "samples", from: "quality" },
      { key: "confident_real", label: "real test images", from: "quality" },
      { key: "label_agreement", label: "agreement with the requested label", from: "quality" },
    ].filter(has),
  };
  return named.series.length ? [distance, named] : [distance];
}

// Every built-in data set has 10 classes (shared/zoo.py); an upload says how many it has.
const BUILTIN_DATASETS = new Set(["mnist-5k", "mnist", "fashion-mnist", "fake"]);
const BUILTIN_CLASSES = 10;

const SAMPLE_NOTES = {
  classifier: "64 test images, tinted red where the prediction is wrong.",
  gan: "The generator's images for the same fixed latent seeds at every step.",
  cgan: "The same fixed seeds at every step, one row per label.",
};

// Memory figures, named for what they measure. Host memory is never called GPU memory.
const MEMORY_LABELS = {
  peak_gpu_allocated_bytes: "peak GPU allocated",
  peak_gpu_reserved_bytes: "peak GPU reserved",
  current_gpu_allocated_bytes: "GPU allocated at the end",
  current_gpu_reserved_bytes: "GPU reserved at the end",
  gpu_total_bytes: "GPU total",
  peak_host_rss_bytes: "peak host RSS (host memory, not GPU)",
  predicted_peak_bytes: "predicted peak step tensor bytes (planner, before the run)",
};

/** The step's tensor peak is measured by the profiler on CPU, by the allocator on CUDA. */
function memoryLabel(key, device) {
  if (key === "peak_step_tensor_bytes") {
    return device && !device.startsWith("cpu")
      ? "peak step tensor bytes (torch.cuda allocator)"
      : "peak step tensor bytes (profiler)";
  }
  return MEMORY_LABELS[key] || key;
}

export function renderJob(main, jobId, signal) {
  main.replaceChildren(fromTemplate("tpl-job"));
  new JobPage(main, jobId, signal).start();
}

class JobPage {
  constructor(root, jobId, signal) {
    this.root = root;
    this.jobId = jobId;
    this.signal = signal;
    this.job = null;
    this.charts = [];
    this.qualityCharts = []; // made from the first quality event
    this.warnings = new Map(); // code -> HealthWarning: one badge each
    this.best = null; // {step, metric, value, path?}: the best-scoring step so far
    this.classes = null; // a promise of the data set's class count, asked for once
    this.samples = new Map(); // step -> artifact path of this job's sample grid
    this.sampleSteps = []; // sorted
    this.followLatest = true; // the slider tracks the newest grid until the user moves it
    this.showSeq = 0; // the newest image request wins when the slider moves fast
    this.compareSeq = 0;
    this.compare = null; // {jobId, samples: Map step -> path}
    this.blobUrls = new Map(); // "job/path" -> object URL, revoked when leaving the page
    this.step = 0;
    this.epoch = 0;
    this.totalSteps = null;
    this.imagesPerS = null;
    this.device = null;
    this.checkpoints = new Set(); // steps of committed checkpoints
    this.memoryFromFile = false;
    this.finished = false;
    this.inferenceReady = false; // the "use this model" panel is set up once
    signal.addEventListener("abort", () => {
      for (const url of this.blobUrls.values()) URL.revokeObjectURL(url);
    });
  }

  $(selector) {
    return this.root.querySelector(selector);
  }

  async start() {
    this.$("#job-id").textContent = this.jobId;
    try {
      this.job = await api(jobPath(this.jobId), { signal: this.signal });
    } catch (error) {
      if (!this.signal.aborted) say(this.$("#job-error"), `Cannot show this job: ${error.message}`);
      return;
    }
    this.step = this.job.step;
    this.totalSteps = this.job.total_steps;
    this.renderHead();
    this.setupCharts();
    this.setupSamples();
    this.setupQuality();
    this.setupCompare();
    this.setupCancel();
    this.$("#artifacts-refresh").addEventListener("click", () => this.loadArtifacts());
    this.renderMemory(this.job.result && this.job.result.memory, "the job's result");
    this.renderResult();
    this.setupUse();
    this.loadArtifacts();
    if (!TERMINAL.has(this.job.status)) this.poll();
    await this.followEvents();
  }

  // --- the job record

  async poll() {
    while (!this.signal.aborted && !TERMINAL.has(this.job.status)) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      if (this.signal.aborted) return;
      try {
        this.updateJob(await api(jobPath(this.jobId), { signal: this.signal }));
      } catch {
        // the stream keeps the page current; the next poll tries again
      }
    }
  }

  updateJob(job) {
    // Progress comes from the stream too; never move it backwards on an older record.
    if (job.step > this.step) this.step = job.step;
    if (job.total_steps) this.totalSteps = job.total_steps;
    this.job = job;
    this.renderHead();
  }

  renderHead() {
    const job = this.job;
    const spec = job.spec;
    document.title = `job ${job.id} · ${job.status} — trainyard`;
    const badge = this.$("#job-status");
    badge.className = `badge status-${job.status}`;
    badge.textContent = job.status;
    this.$("#job-name").textContent = spec.name || "";
    const parts = [spec.task, spec.model, spec.dataset, `${spec.mode} mode`,
      `batch ${spec.batch_size}`, `lr ${spec.lr}`, `${spec.epochs} epochs`];
    if (spec.max_steps) parts.push(`max ${spec.max_steps} steps`);
    for (const flag of ["amp", "channels_last", "compile"]) if (spec[flag]) parts.push(flag);
    this.$("#job-what").textContent = parts.join(" · ");
    this.addWarnings(job.warnings);
    this.renderProgress();
    this.renderPending();
    say(this.$("#job-error"), job.error ? `Error: ${job.error}` : "");
    const facts = [`attempts ${job.attempts}`, `created ${formatTime(job.created_at)}`];
    if (job.started_at) facts.push(`started ${formatTime(job.started_at)}`);
    if (job.finished_at) facts.push(`finished ${formatTime(job.finished_at)}`);
    if (job.worker) facts.push(`worker ${job.worker}`);
    // Where the API routes jobs by memory, the class and queue it chose.
    if (job.memory_class) facts.push(`memory class ${job.memory_class}`);
    if (job.queue) facts.push(`queue ${job.queue}`);
    if (this.device) facts.push(`device ${this.device}`);
    if (this.checkpoints.size) facts.push(`${this.checkpoints.size} checkpoints`);
    if (job.requeues) facts.push(`handed back ${job.requeues}×`);
    this.$("#job-facts").textContent = facts.join(" · ");
    this.$("#cancel").hidden = TERMINAL.has(job.status) || job.cancel_requested;
  }

  renderProgress() {
    const bar = this.$("#job-progress");
    const label = this.$("#job-step");
    label.dataset.step = String(this.step);
    if (this.totalSteps) {
      bar.max = this.totalSteps;
      bar.value = Math.min(this.step, this.totalSteps);
      label.textContent = `step ${this.step} / ${this.totalSteps} · epoch ${this.epoch + 1}`;
    } else {
      bar.removeAttribute("value"); // indeterminate until the worker says how many steps
      label.textContent = this.job.status === "queued" ? "queued" : `step ${this.step}`;
    }
    this.$("#job-eta").textContent = this.eta();
  }

  /** Running: the remaining images at the measured images/s. Queued: the API's estimate. */
  eta() {
    const job = this.job;
    if (job.status === "queued" && job.pending && job.pending.eta_s !== null &&
      job.pending.eta_s !== undefined) {
      return `starts in ≈ ${formatDuration(job.pending.eta_s)}`;
    }
    if (job.status !== "running" || !this.totalSteps || !this.imagesPerS) return "";
    const images = (this.totalSteps - this.step) * job.spec.batch_size;
    return `≈ ${formatDuration(images / this.imagesPerS)} left at ` +
      `${formatNumber(Math.round(this.imagesPerS))} images/s`;
  }

  renderPending() {
    const pending = this.job.status === "queued" ? this.job.pending : null;
    if (!pending) {
      say(this.$("#job-pending"), "");
      return;
    }
    if (!this.job.queue) { // being planned: no class, so no queue or workers to count yet
      say(this.$("#job-pending"), pending.reason);
      return;
    }
    const where = pending.queue_position ? `#${pending.queue_position} in the queue · ` : "";
    const workers = `${pending.workers_busy} of ${pending.workers_online} workers busy`;
    say(this.$("#job-pending"), `${where}${pending.reason} (${workers})`);
  }

  setupCancel() {
    const button = this.$("#cancel");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const path = jobPath(this.jobId, "/cancel");
        this.updateJob(await api(path, { method: "POST", signal: this.signal }));
        say(this.$("#job-message"), this.job.status === "cancelled"
          ? "Cancelled before it started."
          : "Cancel requested: the job stops at its next step.");
      } catch (error) {
        if (!this.signal.aborted) say(this.$("#job-message"), `Could not cancel: ${error.message}`);
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- the event stream: history first, then live

  async followEvents() {
    const stateNode = this.$("#stream-state");
    let received = 0;
    try {
      await follow(jobPath(this.jobId, "/events"), {
        signal: this.signal,
        onState: (state) => {
          stateNode.textContent = `· events: ${state}`;
        },
        onMessage: (message) => {
          // Counted for people and tests: after a resume it still equals the job's history.
          received += 1;
          stateNode.dataset.events = String(received);
          return this.onEvent(JSON.parse(message.data));
        },
        keepGoing: async () => {
          this.updateJob(await api(jobPath(this.jobId), { signal: this.signal }));
          return !TERMINAL.has(this.job.status);
        },
      });
    } catch (error) {
      if (this.signal.aborted) return;
      stateNode.textContent = `· events: ${error.message}`;
    }
    if (!this.signal.aborted) await this.finish();
  }

  /** Apply one event; true when it is the job's terminal status (the stream ends). */
  onEvent(event) {
    switch (event.kind) {
      case "step":
        this.onStep(event);
        break;
      case "epoch":
        this.feedCharts(event);
        break;
      case "sample":
        if (event.info.key) this.addSample(event.step, relativeToJob(this.jobId, event.info.key));
        break;
      case "quality":
        this.onQuality(event);
        break;
      case "warning":
        this.addWarnings([event.info]);
        break;
      case "log":
        this.onLog(event);
        break;
      case "checkpoint":
        this.checkpoints.add(event.step);
        this.renderHead();
        break;
      case "rewind":
        this.onRewind(event);
        break;
      case "memory":
        if (!this.memoryFromFile) {
          this.renderMemory({ ...event.metrics, note: event.info.note }, "the final memory event");
        }
        break;
      case "status":
        return this.onStatus(event);
      default:
        break;
    }
    return false;
  }

  onStep(event) {
    this.step = event.step;
    this.epoch = event.epoch;
    if (event.metrics.images_per_s) this.imagesPerS = event.metrics.images_per_s;
    this.feedCharts(event);
    this.renderProgress();
    if (!this.memoryFromFile) {
      const peaks = Object.fromEntries(Object.entries(event.metrics)
        .filter(([key]) => key.endsWith("_bytes")));
      if (Object.keys(peaks).length) this.renderMemory(peaks, "step events (peak so far)");
    }
  }

  /**
   * A restarted attempt resumed from `event.step`: what the page drew past it came from the
   * attempt that was lost (the new one logs those steps again), so it goes.
   */
  onRewind(event) {
    for (const { chart } of this.allCharts()) chart.rewind(event.step);
    if (this.best && this.best.step > event.step) this.showBest(null);
    for (const step of this.checkpoints) if (step > event.step) this.checkpoints.delete(step);
    const lost = this.sampleSteps.filter((step) => step > event.step);
    if (lost.length) {
      for (const step of lost) this.samples.delete(step);
      this.refreshSamples();
    }
    this.step = event.step;
    this.epoch = event.epoch;
    this.renderHead();
  }

  onLog(event) {
    if (event.info.total_steps) this.totalSteps = event.info.total_steps;
    if (event.info.device) this.device = event.info.device;
    if (event.info.stopped) say(this.$("#job-message"), `Stopped: ${event.info.stopped}`);
    if (event.info.quality_skipped) this.showQualityNote(event.info.quality_skipped);
    if (this.job.status === "queued") this.job.status = "running";
    this.renderHead();
  }

  onStatus(event) {
    const status = event.info.status;
    if (status) this.job.status = status;
    if (event.info.reason) say(this.$("#job-message"), event.info.reason);
    this.renderHead();
    return TERMINAL.has(status);
  }

  /** After the terminal status: the final record, result, memory report and artifacts. */
  async finish() {
    if (this.finished) return;
    this.finished = true;
    try {
      this.updateJob(await api(jobPath(this.jobId), { signal: this.signal }));
    } catch {
      return;
    }
    this.renderResult();
    this.setupUse();
    await Promise.all([this.loadMemoryFile(), this.loadArtifacts(), this.loadCompareOptions()]);
  }

  /** A succeeded job's model, to sample from (GANs) or to classify images with. */
  setupUse() {
    if (this.inferenceReady || this.job.status !== "succeeded") return;
    this.inferenceReady = true;
    setupInference(this, this.$("#use-card"));
  }

  // --- charts

  setupCharts() {
    const box = this.$("#charts");
    this.charts = (CHARTS[this.job.spec.task] || []).map((spec) => ({
      spec,
      chart: new LineChart({ title: spec.title, series: spec.series, xLabel: spec.x,
        yRange: spec.yRange || null }),
    }));
    box.replaceChildren(...this.charts.map(({ chart }) => chart.node));
  }

  allCharts() {
    return [...this.charts, ...this.qualityCharts];
  }

  feedCharts(event) {
    for (const { spec, chart } of this.allCharts()) {
      const x = spec.x === "epoch" ? event.epoch + 1 : event.step;
      for (const series of spec.series) {
        if (series.from === event.kind && series.key in event.metrics) {
          chart.add(series.key, x, event.metrics[series.key], event.step);
        }
      }
    }
  }

  // --- training health

  /** A badge per warning code in the header; the record's list and live events both add. */
  addWarnings(warnings) {
    const fresh = (warnings || []).filter((w) => w && w.code && !this.warnings.has(w.code));
    if (!fresh.length) return;
    for (const warning of fresh) this.warnings.set(warning.code, warning);
    this.$("#job-warnings").replaceChildren(...[...this.warnings.values()].map(warningBadge));
  }

  // --- sample quality (GANs): curves, the best step, the class entropy

  setupQuality() {
    const gan = this.job.spec.task !== "classifier";
    this.$("#quality").hidden = !gan;
    this.$("#quality-best").textContent = gan
      ? `no score yet: the first comes with the first sample grid (every ${
        this.job.spec.sample_every} steps)`
      : "";
  }

  onQuality(event) {
    if (!this.qualityCharts.length) {
      this.qualityCharts = qualityCharts(event).map((spec) => ({
        spec,
        chart: new LineChart({ title: spec.title, series: spec.series, xLabel: spec.x,
          yRange: spec.yRange || null }),
      }));
      this.$("#quality-charts").replaceChildren(...this.qualityCharts.map(({ chart }) =>
        chart.node));
    }
    this.feedCharts(event);
    const info = event.info;
    if (this.best && this.best.path) {
      this.showBest(this.best); // the job's result has the final word: mark it
    } else if (Number.isInteger(info.best_step)) {
      this.showBest({ step: info.best_step, metric: info.metric, value: info.best });
    }
    if ("class_entropy" in event.metrics) this.showEntropy(event.metrics.class_entropy);
  }

  /** "best: step 100, fd 12.3 — final/best.pt"; the path once the job has written it. */
  showBest(best) {
    this.best = best;
    const node = this.$("#quality-best");
    node.dataset.step = best ? String(best.step) : "";
    const where = best && best.path ? ` — ${best.path}` : " (so far)";
    node.textContent = best
      ? `best: step ${best.step}, ${best.metric} ${formatNumber(best.value)}${where}`
      : "";
    for (const { spec, chart } of this.qualityCharts) {
      if (spec.best) chart.mark(best ? best.step : null, "best");
    }
  }

  async showEntropy(value) {
    const node = this.$("#quality-entropy");
    const text = `class entropy ${value.toFixed(3)} nats`;
    node.textContent = `${text} (ideal ln K for K classes: every class equally often)`;
    const classes = await this.classCount();
    if (classes > 1) {
      node.textContent = `${text} (ideal ln ${classes} = ${Math.log(classes).toFixed(3)}: ` +
        "every class equally often)";
    }
  }

  /** The data set's number of classes: 10 for the built-in ones, else the upload's record. */
  classCount() {
    const dataset = this.job.spec.dataset;
    if (BUILTIN_DATASETS.has(dataset)) return Promise.resolve(BUILTIN_CLASSES);
    if (!this.classes) {
      this.classes = api(`/v1/datasets/${encodeURIComponent(dataset)}`, { signal: this.signal })
        .then((d) => d.num_classes, () => null);
    }
    return this.classes;
  }

  showQualityNote(reason) {
    say(this.$("#quality-note"), `Sample quality not measured: ${reason}`);
    if (!this.best) this.$("#quality-best").textContent = ""; // no "no score yet": none comes
  }

  // --- sample grids: a timeline and a side-by-side comparison

  setupSamples() {
    this.$("#samples-note").textContent = SAMPLE_NOTES[this.job.spec.task] || "";
    const slider = this.$("#sample-slider");
    slider.addEventListener("input", () => {
      this.followLatest = Number(slider.value) === this.sampleSteps.length - 1;
      this.showSample();
    });
    this.$("#sample-caption").textContent = "no sample grid yet";
  }

  addSample(step, path) {
    if (this.samples.has(step)) return; // the final grid is announced twice
    this.samples.set(step, path);
    this.refreshSamples();
  }

  /** The slider after the set of grids changed: the newest, or where the user left it. */
  refreshSamples() {
    this.sampleSteps = [...this.samples.keys()].sort((a, b) => a - b);
    const slider = this.$("#sample-slider");
    slider.max = String(Math.max(this.sampleSteps.length - 1, 0));
    slider.disabled = !this.sampleSteps.length;
    if (this.followLatest || Number(slider.value) > Number(slider.max)) slider.value = slider.max;
    if (!this.sampleSteps.length) { // a rewind took every grid shown so far
      this.showSeq += 1; // an image still loading is not shown
      this.$("#sample-img").hidden = true;
      this.$("#sample-label").textContent = "";
      this.$("#sample-caption").textContent = "no sample grid yet";
      return;
    }
    this.showSample();
  }

  currentSampleStep() {
    return this.sampleSteps[Number(this.$("#sample-slider").value)];
  }

  async showSample() {
    const index = Number(this.$("#sample-slider").value);
    const step = this.sampleSteps[index];
    if (step === undefined) return;
    const count = this.sampleSteps.length;
    this.$("#sample-label").textContent = `step ${step} (${index + 1} of ${count})`;
    const seq = ++this.showSeq;
    const url = await this.blobUrl(this.jobId, this.samples.get(step));
    if (seq !== this.showSeq || !url) return; // the slider moved on meanwhile
    const img = this.$("#sample-img");
    img.src = url;
    img.dataset.step = String(step);
    img.hidden = false;
    this.$("#sample-caption").textContent = `this job · step ${step}`;
    this.showCompare(step);
  }

  /** An artifact as an object URL, fetched once through the API with the token. */
  async blobUrl(jobId, path) {
    const key = `${jobId}/${path}`;
    if (!this.blobUrls.has(key)) {
      try {
        const blob = await fetchArtifact(jobId, path, { signal: this.signal });
        if (this.signal.aborted) return null;
        this.blobUrls.set(key, URL.createObjectURL(blob));
      } catch {
        return null; // e.g. the object is not written yet; the next event retries
      }
    }
    return this.blobUrls.get(key);
  }

  setupCompare() {
    const select = this.$("#compare-job");
    select.addEventListener("change", () => this.chooseCompare(select.value));
    this.loadCompareOptions();
  }

  /** The other jobs of this owner, for the comparison dropdown. */
  async loadCompareOptions() {
    const select = this.$("#compare-job");
    let jobs = [];
    try {
      jobs = (await api(`/v1/jobs${query({ limit: 100 })}`, { signal: this.signal })).data;
    } catch {
      return;
    }
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "(none)" }),
      ...jobs.filter((job) => job.id !== this.jobId).map((job) => el("option", {
        value: job.id,
        text: `${job.id} · ${job.spec.task}/${job.spec.model} · ${job.status}` +
          (job.spec.name ? ` · ${job.spec.name}` : ""),
      })));
    select.value = chosen;
  }

  async chooseCompare(otherId) {
    const figure = this.$("#grid-other");
    if (!otherId) {
      this.compare = null;
      figure.hidden = true;
      return;
    }
    const events = (await api(`${jobPath(otherId, "/metrics")}${query({ kind: "sample" })}`,
      { signal: this.signal })).data;
    const samples = new Map();
    for (const event of events) {
      if (event.info.key) samples.set(event.step, relativeToJob(otherId, event.info.key));
    }
    this.compare = { jobId: otherId, samples };
    figure.hidden = false;
    this.showCompare(this.currentSampleStep());
  }

  /** The compared job's grid at the same step, or the nearest one it has. */
  async showCompare(step) {
    if (!this.compare) return;
    const { jobId, samples } = this.compare;
    const img = this.$("#compare-img");
    const caption = this.$("#compare-caption");
    const steps = [...samples.keys()];
    if (!steps.length || step === undefined) {
      img.hidden = true;
      caption.textContent = `job ${jobId} has no sample grids yet`;
      return;
    }
    const nearest = steps.reduce((best, s) =>
      (Math.abs(s - step) < Math.abs(best - step) ||
        (Math.abs(s - step) === Math.abs(best - step) && s < best) ? s : best));
    const seq = ++this.compareSeq;
    const url = await this.blobUrl(jobId, samples.get(nearest));
    if (seq !== this.compareSeq || !url || !this.compare || this.compare.jobId !== jobId) return;
    img.src = url;
    img.dataset.step = String(nearest);
    img.hidden = false;
    caption.textContent = `job ${jobId} · step ${nearest}` +
      (nearest === step ? " (same step)" : ` (nearest to step ${step})`);
  }

  // --- memory, result, artifacts

  async loadMemoryFile() {
    try {
      const blob = await fetchArtifact(this.jobId, "memory.json", { signal: this.signal });
      this.memoryFromFile = true;
      this.renderMemory(JSON.parse(await blob.text()), "memory.json");
    } catch {
      // no report (failed or cancelled jobs): keep what the events said
    }
  }

  /** Each figure under its own name; the report's note verbatim. */
  renderMemory(report, source) {
    const tbody = this.$("#memory-table tbody");
    if (!report) {
      tbody.replaceChildren();
      this.$("#memory-device").textContent =
        "No memory figures yet: they come with the first logged step.";
      return;
    }
    const rows = Object.entries(report)
      .filter(([key, value]) => key.endsWith("_bytes") && value !== null && value !== undefined)
      .map(([key, value]) => el("tr", {},
        el("th", { text: memoryLabel(key, report.device) }),
        el("td", { text: formatBytes(value), title: `${formatNumber(value)} bytes` }),
        el("td", {}, el("code", { class: "muted", text: key }))));
    if (Number.isFinite(report.prediction_error)) {
      const percent = report.prediction_error * 100;
      rows.push(el("tr", {},
        el("th", { text: "prediction error ((predicted − measured) / measured)" }),
        el("td", { text: `${percent >= 0 ? "+" : ""}${percent.toFixed(1)} %` }),
        el("td", {}, el("code", { class: "muted", text: "prediction_error" }))));
    }
    tbody.replaceChildren(...rows);
    let device = "";
    if (report.device) {
      const named = report.device_name && report.device_name !== report.device;
      device = `device ${report.device}${named ? ` (${report.device_name})` : ""} · `;
    }
    this.$("#memory-device").textContent = `${device}from ${source}`;
    say(this.$("#memory-note"), report.note || "");
  }

  renderResult() {
    const tbody = this.$("#result-table tbody");
    const result = this.job.result;
    if (!result) {
      tbody.replaceChildren(el("tr", {}, el("td", {
        class: "muted",
        text: TERMINAL.has(this.job.status)
          ? `no result (${this.job.status})`
          : "when the job succeeds",
      })));
      return;
    }
    const shown = (key, value) =>
      key.endsWith("accuracy") ? `${(value * 100).toFixed(2)} %` : formatNumber(value);
    const rows = Object.entries(result.metrics || {}).map(([key, value]) =>
      el("tr", {}, el("th", { text: key }), el("td", { text: shown(key, value) })));
    rows.push(el("tr", {}, el("th", { text: "steps · epochs" }),
      el("td", { text: `${formatNumber(result.steps)} · ${formatNumber(result.epochs)}` })));
    rows.push(el("tr", {}, el("th", { text: "training time" }),
      el("td", { text: formatDuration(result.wall_s) })));
    const device = result.memory && result.memory.device ? ` on ${result.memory.device}` : "";
    rows.push(el("tr", {}, el("th", { text: "throughput" }),
      el("td", { text: `${formatNumber(Math.round(result.images_per_s))} images/s${device}` })));
    if (result.best) {
      const best = result.best;
      rows.push(el("tr", {}, el("th", { text: "best step" }), el("td", {
        text: `step ${best.step}, ${best.metric} ${shown(best.metric, best.value)} — ${best.path}`,
      })));
      if (best.metric !== "test_accuracy") this.showBest(best);
    }
    if (result.quality_note) this.showQualityNote(result.quality_note);
    tbody.replaceChildren(...rows);
  }

  async loadArtifacts() {
    const errorBox = this.$("#artifacts-error");
    let artifacts;
    try {
      artifacts = (await api(jobPath(this.jobId, "/artifacts"), { signal: this.signal })).data;
    } catch (error) {
      if (!this.signal.aborted) say(errorBox, `Could not list artifacts: ${error.message}`);
      return;
    }
    say(errorBox, "");
    artifacts.sort((a, b) => a.path.localeCompare(b.path));
    this.$("#artifacts-table tbody").replaceChildren(...artifacts.map((a) => this.artifactRow(a)));
    if (artifacts.some((a) => a.path === "confusion.png")) this.showConfusion();
  }

  artifactRow(artifact) {
    const button = el("button",
      { type: "button", class: "link", "data-path": artifact.path, text: "download" });
    button.addEventListener("click", () => this.download(artifact.path, button));
    const presigned = el("a", {
      href: artifact.url,
      class: "url",
      target: "_blank",
      rel: "noopener noreferrer",
      title: artifact.url,
      text: artifact.url,
    });
    return el("tr", { "data-path": artifact.path },
      el("td", {}, el("code", { text: artifact.path })),
      el("td", { text: formatBytes(artifact.size) }),
      el("td", {}, button),
      el("td", { class: "url-cell" }, presigned));
  }

  /** Through the API with the token: fetch, then save the blob under the file's name. */
  async download(path, button) {
    button.disabled = true;
    try {
      const blob = await fetchArtifact(this.jobId, path, { signal: this.signal });
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: path.split("/").pop() });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has started by then
    } catch (error) {
      if (this.signal.aborted) return;
      say(this.$("#artifacts-error"), `Download failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async showConfusion() {
    const url = await this.blobUrl(this.jobId, "confusion.png");
    if (!url) return;
    this.$("#confusion-img").src = url;
    this.$("#confusion").hidden = false;
  }
}
