// Server-Sent Events read with fetch(): EventSource cannot send the Authorization header,
// so the stream is parsed here, line by line, as the SSE spec says, and resumed with
// Last-Event-ID after a dropped connection.

import { authHeaders, errorOf } from "./api.js";

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 15000;

/**
 * Parse an SSE byte stream into messages {id, event, data}. The id is the last one seen (the
 * spec's "last event ID"); comments (the server's ": ping" heartbeats) are skipped.
 */
export async function* readMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const state = { lastId: null, event: "", data: [] };
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      let lines;
      if (done) {
        // A "\r" held back at the end was a line break after all; a line without any
        // line break is incomplete and dropped, as the spec says.
        lines = buffer.endsWith("\r") ? buffer.slice(0, -1).split(/\r\n|\r|\n/) : [];
      } else {
        let text = buffer + value;
        // A chunk may end between the "\r" and "\n" of one line break: keep the "\r" back,
        // or the "\n" that follows would count as an empty line and cut a message in two.
        const held = text.endsWith("\r") ? "\r" : "";
        if (held) text = text.slice(0, -1);
        lines = text.split(/\r\n|\r|\n/);
        buffer = lines.pop() + held;
      }
      for (const line of lines) {
        const message = parseLine(line, state);
        if (message) yield message;
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Apply one line to `state`; returns the message an empty line completes, if any. */
function parseLine(line, state) {
  if (line === "") {
    const message = state.data.length
      ? { id: state.lastId, event: state.event || "message", data: state.data.join("\n") }
      : null;
    state.event = "";
    state.data = [];
    return message;
  }
  if (line.startsWith(":")) return null; // a comment: a heartbeat
  const colon = line.indexOf(":");
  const field = colon === -1 ? line : line.slice(0, colon);
  let value = colon === -1 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (field === "data") state.data.push(value);
  else if (field === "event") state.event = value;
  else if (field === "id" && !value.includes("\0")) state.lastId = value;
  return null;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/**
 * Follow `url` until `onMessage` returns true (the terminal event), the server closes a
 * stream that `keepGoing()` says is over, or `signal` aborts. Network drops and 5xx answers
 * are retried with backoff, resuming after the last event id; 4xx answers are thrown.
 * `onState` hears "connecting", "live", "retrying in N s", "closed".
 */
export async function follow(url, { onMessage, onState = () => {}, keepGoing, signal }) {
  let lastEventId = null;
  let delay = RETRY_MIN_MS;
  while (!signal.aborted) {
    try {
      onState("connecting");
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastEventId) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const error = await errorOf(response);
        if (response.status < 500) throw error; // a bad token or an unknown job: no retry
        throw Object.assign(error, { retry: true });
      }
      onState("live");
      delay = RETRY_MIN_MS;
      for await (const message of readMessages(response.body)) {
        if (message.id) lastEventId = message.id;
        if (onMessage(message)) {
          onState("closed");
          return;
        }
      }
      // The server ended the stream without a terminal event: the job may have ended with
      // its status event trimmed off the stream, or the API restarted. Ask before resuming.
      if (!(await keepGoing())) {
        onState("closed");
        return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status && !error.retry) throw error;
    }
    onState(`reconnecting in ${Math.round(delay / 1000)} s`);
    await sleep(delay, signal);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}
