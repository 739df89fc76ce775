// The console's only door to the server: JSON requests to /api/ with the session's
// token, errors as ApiError ({code, message, field} from the server), and the Live
// log's Server-Sent Events read with fetch (EventSource cannot send the
// Authorization header, and a token in the URL would end up in logs).

const TOKEN_KEY = "provisioning-console-token";

/** The token of this browser tab's session (sessionStorage only, never localStorage). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A refusal from the API: HTTP status, gRPC-style code, message, field. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "unknown";
    this.field = (body && body.field) || null;
  }
}

function headers(extra) {
  const result = { Accept: "application/json", ...extra };
  const current = token();
  if (current) result.Authorization = `Bearer ${current}`;
  return result;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return new ApiError(response.status, body);
}

/** Calls one route; resolves to the JSON reply, rejects with an ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** `?a=1&b=2` of the non-empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Follows a text/event-stream route: yields {event, data, id} for each event (data
 * parsed as JSON) until the stream ends or `signal` aborts it. Resolves the first
 * step only once the server answered, i.e. once the tail is subscribed.
 */
export async function* events(path, signal) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await failure(response);
  yield { event: "open", data: null, id: null };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") message.event = text;
        else if (field === "data") message.data += text;
        else if (field === "id") message.id = text;
      }
      if (message.data) yield { ...message, data: JSON.parse(message.data) };
    }
  }
}
