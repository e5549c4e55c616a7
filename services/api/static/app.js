// The dashboard's entry point: sign-in, sign-out and the hash routes
//   #/            the job list (?status=&task=&limit=)
//   #/jobs/{id}   one job
//   #/sweeps      the caller's sweeps
//   #/sweeps/{id} one sweep: its trials, the metric against each parameter, curves
// Each route gets an AbortController; leaving the route aborts its requests, streams and timers.

import { ApiError, api, clearToken, getToken, onUnauthorized, setToken } from "./api.js";
import { fromTemplate, say } from "./dom.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderSweep, renderSweeps } from "./sweeps.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let current = null; // the AbortController of the route on screen

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  return {
    parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    params: new URLSearchParams(search),
  };
}

function route() {
  if (current) current.abort();
  current = new AbortController();
  const { parts, params } = parseHash();
  if (parts[0] === "signout") {
    clearToken();
    history.replaceState(null, "", "#/");
    showSignIn("Signed out.");
    return;
  }
  if (!getToken()) {
    showSignIn("");
    return;
  }
  nav.hidden = false;
  document.title = "trainyard";
  // Each view gets its own container: replies that arrive after the user moved on update the
  // detached old view, never the new one.
  const view = document.createElement("div");
  main.replaceChildren(view);
  if (parts[0] === "jobs" && parts[1]) renderJob(view, parts[1], current.signal);
  else if (parts[0] === "sweeps" && parts[1]) renderSweep(view, parts[1], current.signal);
  else if (parts[0] === "sweeps") renderSweeps(view, current.signal);
  else renderJobs(view, params, current.signal);
}

function showSignIn(message) {
  if (current) current.abort();
  nav.hidden = true;
  document.title = "sign in — trainyard";
  main.replaceChildren(fromTemplate("tpl-signin"));
  const form = document.getElementById("signin-form");
  const error = document.getElementById("signin-error");
  say(error, message);
  error.classList.toggle("info", message === "Signed out.");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    signIn(form.elements.token.value.trim(), error);
  });
  form.elements.token.focus();
}

/** Try the token on a cheap call before keeping it, so a typo is caught here. */
async function signIn(token, errorNode) {
  errorNode.classList.remove("info");
  if (!token) {
    say(errorNode, "Enter a token.");
    return;
  }
  try {
    await api("/v1/jobs?limit=1", { token });
  } catch (error) {
    say(errorNode, signInProblem(error));
    return;
  }
  setToken(token);
  route();
}

function signInProblem(error) {
  if (error instanceof ApiError && error.status === 401) {
    return `Sign-in failed: the API refused this token (401 ${error.code}: ${error.message}).`;
  }
  if (error instanceof ApiError) return `Sign-in failed: ${error.describe()}`;
  return `Sign-in failed: the API could not be reached (${error.message}).`;
}

// A token that stops working (rotated, revoked) sends the user back to sign in.
onUnauthorized((error) => {
  clearToken();
  showSignIn(`Signed out: the API refused the token (401 ${error.code}: ${error.message}).`);
});

window.addEventListener("hashchange", route);
route();
