// Small DOM and formatting helpers. Server-provided text only ever goes in as text nodes
// (textContent), never as HTML, so a job name cannot inject markup.

/** Create an element; `children` are nodes or strings (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A clone of a <template>'s content, from index.html. */
export function fromTemplate(id) {
  return document.getElementById(id).content.cloneNode(true);
}

/** Show `text` in `node` (hidden when empty). */
export function say(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

export function clear(node) {
  node.replaceChildren();
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 717295616 -> "684.1 MiB". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(Number(bytes))) return "—";
  let value = Number(bytes);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** 83 -> "1 m 23 s"; rounded to what a person needs. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
}

/** A metric for people: 4 significant digits, no exponent for ordinary values. */
export function formatNumber(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
  const n = Number(value);
  if (Number.isInteger(n)) return n.toLocaleString("en");
  if (Math.abs(n) >= 1e5 || (Math.abs(n) < 1e-3 && n !== 0)) return n.toExponential(3);
  return n.toPrecision(4);
}

/** An ISO time as local time; the date too when it is not today. */
export function formatTime(iso) {
  if (!iso) return "—";
  const when = new Date(iso);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay ? when.toLocaleTimeString() : when.toLocaleString();
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);

/** A status badge; the class colours it, the text says it. */
export function statusBadge(status) {
  return el("span", { class: `badge status-${status}`, text: status });
}

// Training-health warnings (JobPublic.warnings, `warning` events), in a few words each.
const WARNING_LABELS = {
  d_wins: "D wins outright",
  mode_collapse: "mode collapse",
  chance_accuracy: "accuracy at chance",
};

/** A warning badge; its title is the warning's whole message. */
export function warningBadge(warning) {
  return el("span", {
    class: "badge warning",
    "data-code": warning.code,
    title: warning.message,
    text: `⚠ ${WARNING_LABELS[warning.code] || warning.code}`,
  });
}

// --- API errors in forms

/**
 * An ApiError in `box`: the API's message, the field it names and every other problem (422
 * details); the inputs of `form` (if any) named by them are marked invalid.
 */
export function showFormError(form, box, error) {
  const lines = [el("strong", { text: error.message })];
  if (error.field) lines.push(el("div", { class: "field", text: `field: ${error.field}` }));
  const others = (error.details || []).slice(1);
  if (others.length) {
    lines.push(el("ul", {}, ...others.map((d) =>
      el("li", { text: d.field ? `${d.field}: ${d.message}` : d.message }))));
  }
  if (error.status) lines.push(httpLine(error));
  box.replaceChildren(...lines);
  box.hidden = false;
  for (const field of [error.field, ...(error.details || []).map((d) => d.field)]) {
    const input = field && form && form.elements[field];
    if (input && input.setAttribute) {
      input.setAttribute("aria-invalid", "true");
      input.classList.add("invalid");
    }
  }
}

/** "HTTP 422 validation_error", small, under an error's message. */
export function httpLine(error) {
  return el("div", { class: "muted small", text: `HTTP ${error.status} ${error.code}` });
}

/** Unmark the inputs showFormError marked. */
export function clearFieldErrors(form) {
  for (const input of form.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.classList.remove("invalid");
  }
}
