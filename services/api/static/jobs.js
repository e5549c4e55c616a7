// The job list (filters, paging, auto-refresh, ETAs), the submit form and data set uploads.

import { api, jobPath, query } from "./api.js";
import {
  clearFieldErrors,
  el,
  formatDuration,
  formatNumber,
  formatTime,
  fromTemplate,
  httpLine,
  say,
  showFormError,
  statusBadge,
  warningBadge,
} from "./dom.js";

const REFRESH_MS = 2500;
const PAGE_SIZE = 20;
const PENDING_LOOKUPS = 10; // queued jobs whose "why it waits" is fetched per refresh
const BUILTIN_DATASETS = ["mnist-5k", "mnist", "fashion-mnist", "fake"];
// Used only if /openapi.json cannot be read; the schema is the source of truth.
const FALLBACK_MODELS = {
  classifier: ["book_cnn", "book_mlp"],
  gan: ["conv_gan", "book_conv_gan", "book_mlp_gan"],
  cgan: ["conv_cgan", "book_cgan"],
};
const SPEC_SCHEMAS = { classifier: "ClassifierSpec", gan: "GanSpec", cgan: "CganSpec" };
const TEXT_FIELDS = ["model", "dataset", "mode", "name"];
const NUMBER_FIELDS = ["epochs", "batch_size", "lr", "max_steps", "sample_every"];
const FLAG_FIELDS = ["amp", "channels_last", "compile"]; // opt-in speed flags, sent only when on

/** The jobs page. `params` are the hash's query (status, task, limit). */
export function renderJobs(main, params, signal) {
  main.replaceChildren(fromTemplate("tpl-jobs"));
  setupSubmitForm(main.querySelector("#submit-form"), main, signal);
  setupUpload(main, signal);
  new JobList(main, params, signal).start();
}

// --- the list

class JobList {
  constructor(root, params, signal) {
    this.signal = signal;
    this.tbody = root.querySelector("#jobs-table tbody");
    this.empty = root.querySelector("#jobs-empty");
    this.error = root.querySelector("#list-error");
    this.updated = root.querySelector("#list-updated");
    this.moreButton = root.querySelector("#more");
    this.statusFilter = root.querySelector("#filter-status");
    this.taskFilter = root.querySelector("#filter-task");
    this.filters = { status: params.get("status") || "", task: params.get("task") || "" };
    const limit = Number.parseInt(params.get("limit"), 10) || PAGE_SIZE;
    this.pageSize = Math.min(200, Math.max(1, limit));
    this.jobs = [];
    this.nextCursor = null;
    this.rates = new Map(); // job id -> {step, time, rate}: steps/s seen between refreshes
    this.pending = new Map(); // job id -> PendingInfo of a queued job
    this.busy = false;
  }

  start() {
    this.statusFilter.value = this.filters.status;
    this.taskFilter.value = this.filters.task;
    // Filters live in the URL, so a filtered list can be bookmarked or shared.
    for (const select of [this.statusFilter, this.taskFilter]) {
      select.addEventListener("change", () => this.applyFilters());
    }
    this.moreButton.addEventListener("click", () => this.loadMore());
    this.refresh();
    const timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, REFRESH_MS);
    this.signal.addEventListener("abort", () => clearInterval(timer));
  }

  applyFilters() {
    const params = { status: this.statusFilter.value, task: this.taskFilter.value };
    if (this.pageSize !== PAGE_SIZE) params.limit = this.pageSize;
    location.hash = `#/${query(params)}`;
  }

  /** Reload as many rows as are shown, so pages added with "more" survive a refresh. */
  async refresh() {
    if (this.busy) return;
    const limit = Math.min(200, Math.max(this.pageSize, this.jobs.length));
    await this.load({ limit, ...this.filters }, (page) => page.data);
  }

  async loadMore() {
    if (!this.nextCursor || this.busy) return;
    const params = { limit: this.pageSize, cursor: this.nextCursor, ...this.filters };
    await this.load(params, (page) => [...this.jobs, ...page.data]);
  }

  async load(params, combine) {
    this.busy = true;
    try {
      const page = await api(`/v1/jobs${query(params)}`, { signal: this.signal });
      this.jobs = combine(page);
      this.nextCursor = page.next_cursor;
      this.trackRates();
      await this.lookupPending();
      this.render();
      say(this.error, "");
      this.updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (this.signal.aborted) return;
      // Keep the rows we have; say why they may be stale.
      say(this.error, `Could not load jobs: ${error.describe ? error.describe() : error.message}`);
    } finally {
      this.busy = false;
    }
  }

  /** Running jobs' step rates, smoothed over refreshes, for their ETAs. */
  trackRates() {
    const now = performance.now() / 1000;
    for (const job of this.jobs) {
      if (job.status !== "running") {
        this.rates.delete(job.id);
        continue;
      }
      const seen = this.rates.get(job.id);
      if (!seen || job.step < seen.step) {
        this.rates.set(job.id, { step: job.step, time: now, rate: null });
      } else if (job.step > seen.step) {
        const rate = (job.step - seen.step) / (now - seen.time);
        const smoothed = seen.rate === null ? rate : 0.5 * seen.rate + 0.5 * rate;
        this.rates.set(job.id, { step: job.step, time: now, rate: smoothed });
      }
    }
  }

  /** GET /v1/jobs/{id} of the first queued jobs: only it says why a job waits. */
  async lookupPending() {
    const queued = this.jobs.filter((job) => job.status === "queued").slice(0, PENDING_LOOKUPS);
    const found = await Promise.all(queued.map((job) =>
      api(jobPath(job.id), { signal: this.signal }).catch(() => null)));
    this.pending.clear();
    for (const job of found) if (job && job.pending) this.pending.set(job.id, job.pending);
  }

  render() {
    this.tbody.replaceChildren(...this.jobs.map((job) => this.row(job)));
    this.empty.hidden = this.jobs.length > 0;
    this.moreButton.hidden = !this.nextCursor;
  }

  row(job) {
    const spec = job.spec;
    const href = `#/jobs/${encodeURIComponent(job.id)}`;
    const link = el("a", { href }, el("code", { text: job.id }));
    const name = spec.name ? el("div", { class: "muted small", text: spec.name }) : null;
    const mode = spec.mode === "book" ? " (book)" : "";
    const what = `${spec.task} · ${spec.model} · ${spec.dataset}${mode}`;
    return el("tr", { "data-job-id": job.id, "data-status": job.status },
      el("td", {}, link, name),
      el("td", {}, statusBadge(job.status), ...(job.warnings || []).map(warningBadge)),
      el("td", { text: what }),
      el("td", {}, progressCell(job)),
      el("td", { class: "eta" }, ...this.outcome(job)),
      el("td", { class: "muted", text: formatTime(job.created_at) }));
  }

  /** What a person wants to know next: when it starts, when it ends, or how it ended. */
  outcome(job) {
    if (job.status === "queued") return queuedOutcome(this.pending.get(job.id), job);
    if (job.status === "running") {
      if (job.cancel_requested) return ["cancelling…"];
      return [runningEta(job, this.rates.get(job.id))];
    }
    if (job.status === "failed" || (job.status === "pruned" && job.error)) {
      const text = truncate(job.error, 90); // a pruned trial: the rule and the step
      return [el("span", { class: "error-text", title: job.error || "", text })];
    }
    if (job.status === "succeeded") return [succeededOutcome(job)];
    return [job.status];
  }
}

function progressCell(job) {
  if (!job.total_steps) {
    return el("span", { class: "muted", text: job.step ? `step ${job.step}` : "—" });
  }
  const bar = el("progress", { max: job.total_steps, value: Math.min(job.step, job.total_steps) });
  return el("span", { class: "progress-cell" }, bar, el("span", {
    class: "steps",
    text: `${job.step} / ${job.total_steps}`,
  }));
}

function queuedOutcome(pending, job) {
  // No queue yet: a new model/data shape whose memory probe is running (pending.reason).
  if (!pending) return [job.queue ? "waiting for a worker" : "being planned"];
  const parts = [];
  if (pending.eta_s !== null && pending.eta_s !== undefined) {
    parts.push(el("div", { text: `starts in ≈ ${formatDuration(pending.eta_s)}` }));
  }
  const where = pending.queue_position ? `#${pending.queue_position} in queue · ` : "";
  // The reason already counts the workers ("all 2 cpu workers are busy; ...").
  parts.push(el("div", { class: "muted small", text: `${where}${pending.reason}` }));
  return parts;
}

/** ETA from the step rate seen between refreshes, else the average since the job started. */
function runningEta(job, seen) {
  let rate = seen && seen.rate;
  if (!rate && job.started_at && job.step > 0) {
    rate = job.step / Math.max(1, (Date.now() - Date.parse(job.started_at)) / 1000);
  }
  if (!job.total_steps) return "starting…";
  if (!rate) return "measuring…";
  const left = (job.total_steps - job.step) / rate;
  return `≈ ${formatDuration(left)} left (${formatNumber(rate)} steps/s)`;
}

function succeededOutcome(job) {
  const metrics = (job.result && job.result.metrics) || {};
  const took = job.started_at && job.finished_at
    ? `took ${formatDuration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)}`
    : "done";
  if (metrics.test_accuracy !== undefined) {
    return `${took} · accuracy ${(metrics.test_accuracy * 100).toFixed(1)} %`;
  }
  return took;
}

function truncate(text, length) {
  if (!text) return "";
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

// --- the submit form

function setupSubmitForm(form, root, signal) {
  const errorBox = root.querySelector("#submit-error");
  const okBox = root.querySelector("#submit-ok");
  let models = FALLBACK_MODELS;
  const fillModels = () => {
    const choices = models[form.elements.task.value] || [];
    form.elements.model.replaceChildren(el("option", { value: "", text: "default" }),
      ...choices.map((m) => el("option", { value: m, text: m })));
  };
  form.elements.task.addEventListener("change", fillModels);
  fillModels();
  modelsFromSchema(signal).then((found) => {
    models = found;
    fillModels();
  }).catch(() => {}); // keep the fallback list
  loadDatasets(root, signal);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    say(okBox, "");
    errorBox.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body: specFromForm(form), signal });
      showQueued(okBox, job);
      if (form.elements.open.checked) location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      if (!signal.aborted) showFormError(form, errorBox, error);
    } finally {
      button.disabled = false;
    }
  });
}

/** The models each task accepts, from the API's own schema. */
async function modelsFromSchema(signal) {
  const response = await fetch("/openapi.json", { signal });
  const schemas = (await response.json()).components.schemas;
  const out = {};
  for (const [task, name] of Object.entries(SPEC_SCHEMAS)) {
    out[task] = schemas[name].properties.model.enum;
  }
  return out;
}

/**
 * The spec as JSON: empty fields are left out (the API's defaults apply). A number field
 * that is not a number is sent as typed, so the API, the one validator, names the field.
 */
function specFromForm(form) {
  const spec = { task: form.elements.task.value };
  for (const name of TEXT_FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) spec[name] = value;
  }
  for (const name of NUMBER_FIELDS) {
    const raw = form.elements[name].value.trim();
    if (!raw) continue;
    const number = Number(raw);
    spec[name] = Number.isFinite(number) ? number : raw;
  }
  for (const name of FLAG_FIELDS) {
    if (form.elements[name].checked) spec[name] = true;
  }
  return spec;
}

function showQueued(okBox, job) {
  okBox.replaceChildren("Queued job ",
    el("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, el("code", { text: job.id })), ".");
  okBox.hidden = false;
}

// --- data sets

async function loadDatasets(root, signal) {
  const options = root.querySelector("#dataset-options");
  const tbody = root.querySelector("#datasets-table tbody");
  let uploaded = [];
  try {
    uploaded = (await api("/v1/datasets", { signal })).data;
  } catch {
    uploaded = []; // the form still offers the built-in ones
  }
  if (signal.aborted) return;
  options.replaceChildren(...BUILTIN_DATASETS.map((id) => el("option", { value: id })),
    ...uploaded.map((d) => el("option", { value: d.id, label: d.name || d.id })));
  tbody.replaceChildren(...uploaded.map((d) => el("tr", {},
    el("td", {}, el("code", { text: d.id })),
    el("td", { text: d.name || "" }),
    el("td", { text: formatNumber(d.num_images) }),
    el("td", { text: d.image.join("×") }),
    el("td", { text: d.num_classes ? d.classes.join(", ") : "unlabelled" }))));
  root.querySelector("#datasets-table").hidden = uploaded.length === 0;
  root.querySelector("#datasets-empty").hidden = uploaded.length > 0;
}

function setupUpload(root, signal) {
  const form = root.querySelector("#upload-form");
  const errorBox = root.querySelector("#upload-error");
  const okBox = root.querySelector("#upload-ok");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    say(okBox, "");
    const body = new FormData();
    for (const file of form.elements.files.files) body.append("files", file);
    const name = form.elements.name.value.trim();
    if (name) body.append("name", name);
    try {
      const d = await api("/v1/datasets", { method: "POST", body, signal });
      say(okBox, `Uploaded ${d.id}: ${formatNumber(d.num_images)} images of ${d.image.join("×")}` +
        (d.num_classes ? `, ${d.num_classes} classes` : ", unlabelled"));
      form.reset();
      loadDatasets(root, signal);
    } catch (error) {
      if (signal.aborted) return;
      errorBox.replaceChildren(el("strong", { text: error.message }),
        error.status ? httpLine(error) : null);
      errorBox.hidden = false;
    }
  });
}
