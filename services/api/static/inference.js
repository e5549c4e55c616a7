// Using a finished job's model: a GAN's "sample" panel (POST /v1/jobs/{id}/samples, the grid
// shown) and a classifier's image drop (POST /v1/jobs/{id}/predict, the class probabilities
// as bars). Both follow a 202 by polling (api.js `inference`) and show the API's one error
// shape. Only a succeeded job has a model to use.

import { fetchArtifact, inference, jobPath, query } from "./api.js";
import { clearFieldErrors, el, formatNumber, say, showFormError } from "./dom.js";

const SHOWN_CLASSES = 10; // bars per image: the most probable classes
const SHOWN_IMAGES = 32; // rows of an .npz batch's answer

/**
 * Set up the panel of `page` (a JobPage: its jobId, job, signal and classCount) for its
 * succeeded job. `card` is the section #use-card of the job template.
 */
export function setupInference(page, card) {
  const job = page.job;
  card.hidden = false;
  const hasBest = Boolean(job.result && job.result.best);
  for (const select of card.querySelectorAll("select[name=checkpoint]")) {
    const best = select.querySelector("option[value=best]");
    best.disabled = !hasBest;
    best.title = hasBest ? `step ${job.result.best.step}` : "this job kept no best checkpoint";
  }
  if (job.spec.task === "classifier") new PredictPanel(page, card).start();
  else new SamplePanel(page, card).start();
}

/** What the checkpoint select says, as the API takes it ("final", "best"). */
function checkpointOf(form) {
  return form.elements.checkpoint.value || "final";
}

/** A whole number as a number; anything else as typed, so the API names the field. */
function numberOr(raw) {
  const text = raw.trim();
  return /^[0-9]+$/.test(text) ? Number(text) : text;
}

class SamplePanel {
  constructor(page, card) {
    this.page = page;
    this.card = card;
    this.form = card.querySelector("#use-sample-form");
    this.seq = 0; // the newest request wins
    this.url = null; // the object URL of the grid shown
  }

  $(selector) {
    return this.card.querySelector(selector);
  }

  async start() {
    this.$("#use-sample").hidden = false;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sample();
    });
    this.page.signal.addEventListener("abort", () => {
      if (this.url) URL.revokeObjectURL(this.url);
    });
    if (this.page.job.spec.task !== "cgan") return;
    const field = this.$("#use-label-field");
    field.hidden = false;
    const classes = await this.page.classCount();
    const select = this.form.elements.label;
    for (let label = 0; label < (classes || 0); label += 1) {
      select.append(el("option", { value: String(label), text: String(label) }));
    }
  }

  body() {
    const f = this.form.elements;
    const body = { n: numberOr(f.n.value), seed: numberOr(f.seed.value),
      checkpoint: checkpointOf(this.form) };
    if (this.page.job.spec.task === "cgan" && f.label.value !== "") {
      body.labels = [Number(f.label.value)];
    }
    return body;
  }

  async sample() {
    const seq = ++this.seq;
    const button = this.$("#use-sample-button");
    const status = this.$("#use-sample-status");
    const errorBox = this.$("#use-sample-error");
    clearFieldErrors(this.form);
    say(errorBox, "");
    button.disabled = true;
    say(status, "sampling…");
    const signal = this.page.signal;
    try {
      const answer = await inference(jobPath(this.page.jobId, "/samples"), {
        body: this.body(),
        signal,
        onPending: () => say(status, "sampling… (the inference worker is busy: waiting)"),
      });
      if (seq !== this.seq) return;
      const blob = await fetchArtifact(this.page.jobId, answer.grid.path, { signal });
      if (seq !== this.seq || signal.aborted) return;
      this.show(answer, blob);
      say(status, "");
    } catch (error) {
      if (signal.aborted || seq !== this.seq) return;
      say(status, "");
      showFormError(this.form, errorBox, error);
    } finally {
      if (seq === this.seq) button.disabled = false;
    }
  }

  show(answer, blob) {
    const img = this.$("#use-grid");
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = URL.createObjectURL(blob);
    img.src = this.url;
    img.dataset.key = answer.grid.key;
    img.dataset.n = String(answer.n);
    img.hidden = false;
    const [n, c, h, w] = answer.images.shape;
    const labels = answer.labels && answer.labels.length
      ? (new Set(answer.labels).size === 1 ? ` · label ${answer.labels[0]}` : " · labels cycle")
      : "";
    this.$("#use-grid-caption").textContent = `${n} samples of ${c}×${h}×${w} · checkpoint ` +
      `${answer.checkpoint} (step ${answer.step}) · seed ${answer.seed}${labels}`;
    const links = this.$("#use-sample-files");
    links.replaceChildren(...[answer.grid, answer.images].map((link) => el("li", {},
      el("code", { text: link.path }), " ",
      el("a", { href: link.url, class: "url", target: "_blank", rel: "noopener noreferrer",
        title: link.url, text: "presigned URL" }))));
    this.$("#use-sample-result").hidden = false;
  }
}

class PredictPanel {
  constructor(page, card) {
    this.page = page;
    this.card = card;
    this.form = card.querySelector("#use-predict-form");
    this.seq = 0;
    this.file = null; // the last file asked about
    this.preview = null; // the object URL of the image shown
  }

  $(selector) {
    return this.card.querySelector(selector);
  }

  start() {
    this.$("#use-predict").hidden = false;
    const input = this.$("#use-predict-file");
    input.addEventListener("change", () => {
      if (!input.files.length) return;
      this.predict(input.files[0]);
      input.value = ""; // choosing the same file again asks again
    });
    // Another checkpoint: the last image again, with those weights.
    this.form.elements.checkpoint.addEventListener("change", () => {
      if (this.file) this.predict(this.file);
    });
    const zone = this.$("#use-predict-drop");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault(); // this is a drop target
      event.dataTransfer.dropEffect = "copy";
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) this.predict(file);
    });
    this.page.signal.addEventListener("abort", () => {
      if (this.preview) URL.revokeObjectURL(this.preview);
    });
  }

  async predict(file) {
    this.file = file;
    const seq = ++this.seq;
    const status = this.$("#use-predict-status");
    const errorBox = this.$("#use-predict-error");
    const signal = this.page.signal;
    say(errorBox, "");
    this.$("#use-predict-result").hidden = true;
    say(status, `classifying ${file.name}…`);
    const body = new FormData();
    body.append("file", file, file.name);
    const path = jobPath(this.page.jobId, "/predict") +
      query({ checkpoint: checkpointOf(this.form) });
    try {
      const answer = await inference(path, {
        body,
        signal,
        onPending: () => say(status, `classifying ${file.name}… (the inference worker is busy)`),
      });
      if (seq !== this.seq || signal.aborted) return;
      say(status, "");
      this.show(file, answer);
    } catch (error) {
      if (signal.aborted || seq !== this.seq) return;
      say(status, "");
      showFormError(null, errorBox, error);
    }
  }

  show(file, answer) {
    const img = this.$("#use-predict-img");
    if (this.preview) URL.revokeObjectURL(this.preview);
    this.preview = null;
    if (file.type.startsWith("image/")) {
      this.preview = URL.createObjectURL(file);
      img.src = this.preview;
      img.hidden = false;
    } else {
      img.hidden = true; // an .npz batch: nothing the browser can draw
    }
    const n = answer.predicted.length;
    const summary = this.$("#use-predict-summary");
    const top = answer.predicted_class[0];
    summary.dataset.predicted = top;
    summary.dataset.images = String(n);
    summary.textContent = n === 1
      ? `${file.name}: ${top} (p ${answer.probabilities[0][answer.predicted[0]].toFixed(3)}) ` +
        `· checkpoint ${answer.checkpoint} (step ${answer.step})`
      : `${file.name}: ${formatNumber(n)} images · checkpoint ${answer.checkpoint} ` +
        `(step ${answer.step}) · the first image's probabilities below`;
    this.$("#use-bars").replaceChildren(...bars(answer.classes, answer.probabilities[0]));
    const batch = this.$("#use-predict-batch");
    batch.hidden = n === 1;
    batch.replaceChildren(...answer.predicted_class.slice(0, SHOWN_IMAGES).map((name, i) =>
      el("li", { "data-class": name },
        `image ${i}: `, el("strong", { text: name }),
        ` (p ${answer.probabilities[i][answer.predicted[i]].toFixed(3)})`)));
    if (n > SHOWN_IMAGES) {
      batch.append(el("li", { class: "muted", text: `… and ${n - SHOWN_IMAGES} more` }));
    }
    this.$("#use-predict-result").hidden = false;
  }
}

/** One bar per class, most probable first (at most SHOWN_CLASSES), the top one marked. */
function bars(classes, row) {
  const order = row.map((p, k) => k).sort((a, b) => row[b] - row[a]).slice(0, SHOWN_CLASSES);
  return order.map((k, rank) => el("li", {
    class: rank === 0 ? "is-top" : null,
    "data-class": classes[k],
    "data-p": row[k].toFixed(6),
  },
  el("span", { class: "bar-label", text: classes[k] }),
  el("progress", { max: "1", value: String(row[k]), "aria-label": `p(${classes[k]})` }),
  el("span", { class: "bar-value", text: row[k].toFixed(3) })));
}
