// Talking to the trainyard API: the token, JSON calls, the error shape, artifact bytes.

const TOKEN_KEY = "trainyard.token";

// sessionStorage: the token lives as long as the tab, and is never written to disk by us.
export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer of the API: {"error": {"code", "message", "field"?, "details"?}}. */
export class ApiError extends Error {
  constructor(status, body) {
    const problem = (body && body.error) || {};
    super(problem.message || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "http_error";
    this.field = problem.field || null;
    this.details = problem.details || [];
  }

  /** One line for people: "422 validation_error (epochs): epochs: Input should be ...". */
  describe() {
    const where = this.field ? ` (field: ${this.field})` : "";
    return `${this.status} ${this.code}${where}: ${this.message}`;
  }
}

// The app listens here to ask for a new token when the API refuses the stored one.
const unauthorizedListeners = new Set();

export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

export function authHeaders(token = getToken()) {
  return { Authorization: `Bearer ${token}` };
}

/** Turn a non-2xx response into an ApiError (whatever its body), telling the app on 401. */
export async function errorOf(response, { quiet = false } = {}) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // not JSON (a proxy's page): the status alone must do
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401 && !quiet) {
    for (const listener of unauthorizedListeners) listener(error);
  }
  return error;
}

/**
 * Call the API and return its JSON. `body` is JSON unless it is FormData (uploads).
 * With an explicit `token` (the sign-in check), a 401 is only thrown, not broadcast.
 */
export async function api(path, options = {}) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** The response of a successful call (any 2xx); a non-2xx one is thrown as an ApiError. */
async function request(path, { method = "GET", body, signal, token } = {}) {
  const headers = { ...authHeaders(token ?? getToken()), Accept: "application/json" };
  let payload;
  if (body instanceof FormData) {
    payload = body; // the browser sets the multipart boundary
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, signal, cache: "no-store" });
  if (!response.ok) throw await errorOf(response, { quiet: token !== undefined });
  return response;
}

const INFERENCE_WAIT_MS = 120_000; // how long a samples or predict call follows its 202

/**
 * POST to an inference route (samples, predict) and return its answer. A 202 means the
 * inference worker has not answered yet: its `poll` URL (InferencePending) is asked again,
 * less and less often, until it answers 200 (the same body), an error (thrown as an
 * ApiError, the worker's message in it) or `waitMs` has passed. `onPending(pending)` is
 * told each time it is still pending.
 */
export async function inference(path, options = {}) {
  const { body, signal, onPending, waitMs = INFERENCE_WAIT_MS } = options;
  const deadline = Date.now() + waitMs;
  let response = await request(path, { method: "POST", body, signal });
  let delay = 100;
  while (response.status === 202) {
    const pending = await response.json();
    if (onPending) onPending(pending);
    if (Date.now() + delay > deadline) {
      const seconds = Math.round(waitMs / 1000);
      throw new Error(`no answer after ${seconds} s (request ${pending.request_id})`);
    }
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 1000);
    response = await request(pending.poll, { signal });
  }
  return response.json();
}

/** Resolve after `ms`, or reject at once when `signal` aborts (the user left the page). */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/** A query string from the non-empty values of `params`. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export function jobPath(jobId, suffix = "") {
  return `/v1/jobs/${encodeURIComponent(jobId)}${suffix}`;
}

/** GET /v1/jobs/{id}/artifacts/{path}: the path's segments escaped one by one. */
export function artifactPath(jobId, path) {
  const escaped = path.split("/").map(encodeURIComponent).join("/");
  return jobPath(jobId, `/artifacts/${escaped}`);
}

/** An artifact's bytes through the API, with the token (an <img src> could not send it). */
export async function fetchArtifact(jobId, path, { signal } = {}) {
  const response = await fetch(artifactPath(jobId, path), {
    headers: authHeaders(),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await errorOf(response);
  return response.blob();
}

/** "jobs/abc/samples/step-00000015.png" -> "samples/step-00000015.png". */
export function relativeToJob(jobId, key) {
  const prefix = `jobs/${jobId}/`;
  return key.startsWith(prefix) ? key.slice(prefix.length) : key;
}
