// One shared connection to the admin event stream (GET /admin/v1/events, Server-Sent Events, authenticated by
// the session cookie). Panels subscribe to event types; the connection opens on first use and reconnects.

const listeners = new Map(); // type -> Set(fn)
const statusListeners = new Set();
let source = null;
let retryTimer = null;
let status = "closed";

const TYPES = ["connected", "route_success", "route_error", "health_change", "admin_action", "heartbeat", "dropped"];

function setStatus(next) {
  status = next;
  for (const fn of statusListeners) fn(status);
}

function dispatch(type, event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  for (const fn of listeners.get(type) || []) fn(data);
  for (const fn of listeners.get("*") || []) fn(data);
}

function open() {
  if (source) return;
  clearTimeout(retryTimer);
  source = new EventSource("/admin/v1/events");
  setStatus("connecting");
  for (const type of TYPES) source.addEventListener(type, (event) => dispatch(type, event));
  source.addEventListener("connected", () => setStatus("live"));
  source.addEventListener("dropped", () => reconnect(1000));
  source.onerror = () => {
    // The browser retries by itself unless the server refused (closed); then try again a little later.
    if (source && source.readyState === EventSource.CLOSED) reconnect(5000);
    else setStatus("connecting");
  };
}

function reconnect(delay) {
  close();
  setStatus("reconnecting");
  retryTimer = setTimeout(open, delay);
}

export function close() {
  if (source) source.close();
  source = null;
  setStatus("closed");
}

/** fn(data) for every event of `type` ("*" for all); returns the unsubscribe function. */
export function subscribe(type, fn) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(fn);
  open();
  return () => listeners.get(type).delete(fn);
}

/** fn(status) now and on every change: "connecting" | "live" | "reconnecting" | "closed". */
export function onStatus(fn) {
  statusListeners.add(fn);
  fn(status);
  return () => statusListeners.delete(fn);
}
