// The admin API client: every call goes to /admin/v1 with the session cookie (sent by the browser, never
// visible here) and, for a change, the session's CSRF token. Errors become ApiError with the server's words.

const BASE = "/admin/v1";
const SAFE = new Set(["GET", "HEAD"]);
let csrfToken = "";
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || "";
    this.code = err.code || "";
    this.field = err.param || err.field || "";
    this.requestId = (body && body.request_id) || err.request_id || "";
    this.body = body;
  }
}

/** Called once by the app: what to do when the session is gone (401). */
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

export function setCsrfToken(token) {
  csrfToken = token || "";
}

function url(path, query) {
  const u = new URL(BASE + path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u.pathname + u.search;
}

export async function request(method, path, { query, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!SAFE.has(method)) headers["X-CSRF-Token"] = csrfToken;
  const resp = await fetch(url(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: { message: text.slice(0, 300) } };
  }
  if (!resp.ok) {
    const error = new ApiError(resp.status, data);
    // Only the session's own refusal signs out: a wrong vault password is a 401 too (type unlock_failed).
    if (resp.status === 401 && error.type === "unauthorized" && path !== "/session") onSignedOut(error);
    throw error;
  }
  return data;
}

export const api = {
  get: (path, query, opts) => request("GET", path, { query, ...opts }),
  post: (path, body, opts) => request("POST", path, { body: body ?? {}, ...opts }),
  put: (path, body, opts) => request("PUT", path, { body: body ?? {}, ...opts }),
  patch: (path, body, opts) => request("PATCH", path, { body: body ?? {}, ...opts }),
  del: (path, opts) => request("DELETE", path, opts),
};

/** Path segments are escaped one by one (model ids may hold "/"-free punctuation such as ":" or "@"). */
export function seg(value) {
  return encodeURIComponent(value).replace(/%2F/gi, "/");
}

export async function signIn(token) {
  const session = await request("POST", "/session", { body: { token } });
  setCsrfToken(session.csrf_token);
  return session;
}

export async function currentSession() {
  const session = await request("GET", "/session");
  setCsrfToken(session.csrf_token);
  return session;
}

export async function signOut() {
  try {
    await request("DELETE", "/session");
  } finally {
    setCsrfToken("");
  }
}
