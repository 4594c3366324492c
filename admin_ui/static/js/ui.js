// Shared building blocks of the panels: data loading, errors, tables with server-side paging, forms, formats.
import { html, useCallback, useEffect, useRef, useState } from "../vendor/preact-htm.js";

export { html };

// ---------------------------------------------------------------- data loading

/** Runs `load(signal)` now and whenever `deps` change; returns {data, error, loading, reload}. */
export function useLoad(load, deps = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const ctl = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    load(ctl.signal).then(
      (data) => !ctl.signal.aborted && setState({ data, error: null, loading: false }),
      (error) => !ctl.signal.aborted && error.name !== "AbortError" && setState({ data: null, error, loading: false }),
    );
    return () => ctl.abort();
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}

/** Calls `fn` every `ms` while the page is visible. */
export function useInterval(fn, ms) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    const id = setInterval(() => document.visibilityState === "visible" && saved.current(), ms);
    return () => clearInterval(id);
  }, [ms]);
}

/** Wraps an async action: {run, busy, error}; `run` resolves to the action's result or undefined on error. */
export function useAction(fn) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async (...args) => {
    setBusy(true);
    setError(null);
    try {
      return await fn(...args);
    } catch (e) {
      setError(e);
      return undefined;
    } finally {
      setBusy(false);
    }
  };
  return { run, busy, error, setError };
}

// ---------------------------------------------------------------- errors and notices

export function ErrorBox({ error }) {
  if (!error) return null;
  return html`<div class="error" role="alert">
    <strong>${error.status ? `${error.status} ` : ""}${error.type || "error"}</strong>: ${error.message}
    ${error.field ? html` <span class="muted">(field <code>${error.field}</code>)</span>` : ""}
    ${error.requestId ? html` <span class="muted">request ${error.requestId}</span>` : ""}
  </div>`;
}

export function Loading({ when }) {
  return when ? html`<div class="muted" aria-busy="true">Loading…</div>` : null;
}

export function Notice({ children, kind = "info" }) {
  return html`<div class=${`notice ${kind}`} role="status">${children}</div>`;
}

// ---------------------------------------------------------------- tables

/**
 * A table. columns: [{key, label, render?(row), sort?: true, num?: true}]. Sorting applies to the rows shown
 * (a page the server sent); for rows the page holds in full, local-table.js's LocalTable sorts them all.
 */
export function Table({ columns, rows, rowKey, onRow, empty = "Nothing here yet.", caption }) {
  const [sort, setSort] = useState({ key: null, dir: 1 });
  const sorted = [...(rows || [])];
  if (sort.key) {
    sorted.sort((a, b) => compareValues(a[sort.key], b[sort.key]) * sort.dir);
  }
  const toggle = (key) => setSort((s) => ({ key, dir: s.key === key ? -s.dir : 1 }));
  return html`<div class="table-wrap">
    <table>
      ${caption ? html`<caption>${caption}</caption>` : ""}
      <thead>
        <${SortHeader} columns=${columns} sort=${sort} onSort=${toggle} />
      </thead>
      <tbody>
        ${sorted.length === 0
          ? html`<tr><td colspan=${columns.length} class="muted">${empty}</td></tr>`
          : sorted.map(
              (row, i) => html`<tr
                key=${rowKey ? rowKey(row) : i}
                class=${onRow ? "clickable" : ""}
                tabindex=${onRow ? 0 : undefined}
                onClick=${onRow ? () => onRow(row) : undefined}
                onKeyDown=${onRow ? (e) => e.key === "Enter" && onRow(row) : undefined}
              >
                ${columns.map(
                  (c) => html`<td class=${c.num ? "num" : ""} data-col=${c.key}>
                    ${c.render ? c.render(row) : fmt(row[c.key])}
                  </td>`,
                )}
              </tr>`,
            )}
      </tbody>
    </table>
  </div>`;
}

/** The header row of a sortable table: a button per column (unless `sort: false`) that calls onSort(key). */
export function SortHeader({ columns, sort, onSort }) {
  return html`<tr>
    ${columns.map(
      (c) => html`<th class=${c.num ? "num" : ""} aria-sort=${sortState(sort, c.key)}>
        ${c.sort === false
          ? c.label
          : html`<button class="th-sort" onClick=${() => onSort(c.key)}>
              ${c.label}${sort.key === c.key ? (sort.dir > 0 ? " ▲" : " ▼") : ""}
            </button>`}
      </th>`,
    )}
  </tr>`;
}

function sortState(sort, key) {
  if (sort.key !== key) return "none";
  return sort.dir > 0 ? "ascending" : "descending";
}

/** Numbers by value, nulls first, everything else as text; `numeric`: digits in text by value ("gpt-10"
 * after "gpt-9"). */
export function compareValues(a, b, numeric = false) {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric });
}

/** Server-side paging: offset/limit, and whether a next page exists (`total` when the server counts). */
export function Pager({ offset, limit, count, total, onPage }) {
  const hasNext = total !== undefined && total !== null ? offset + limit < total : count >= limit;
  return html`<nav class="pager" aria-label="pages">
    <button disabled=${offset <= 0} onClick=${() => onPage(Math.max(0, offset - limit))}>← Previous</button>
    <span class="muted">
      ${count ? `${offset + 1}–${offset + count}` : "0"}${total !== undefined && total !== null ? ` of ${total}` : ""}
    </span>
    <button disabled=${!hasNext} onClick=${() => onPage(offset + limit)}>Next →</button>
  </nav>`;
}

// ---------------------------------------------------------------- forms

/** A labelled input; `type` "checkbox" | "number" | "text" | "password" | "select" | "textarea". */
export function Field({ label, name, type = "text", value, onInput, options, error, hint, ...rest }) {
  const id = `f-${name}`;
  let control;
  if (type === "checkbox") {
    control = html`<input id=${id} name=${name} type="checkbox" checked=${!!value}
      onChange=${(e) => onInput(e.target.checked)} ...${rest} />`;
  } else if (type === "select") {
    control = html`<select id=${id} name=${name} value=${value} onChange=${(e) => onInput(e.target.value)} ...${rest}>
      ${options.map((o) =>
        typeof o === "string" ? html`<option value=${o}>${o}</option>` : html`<option value=${o.value}>${o.label}</option>`,
      )}
    </select>`;
  } else if (type === "textarea") {
    control = html`<textarea id=${id} name=${name} value=${value} onInput=${(e) => onInput(e.target.value)} ...${rest} />`;
  } else {
    control = html`<input id=${id} name=${name} type=${type} value=${value ?? ""}
      onInput=${(e) => onInput(type === "number" ? numberOrEmpty(e.target.value) : e.target.value)} ...${rest} />`;
  }
  return html`<div class=${`field ${error ? "invalid" : ""}`}>
    <label for=${id}>${label}</label>
    ${control}
    ${hint ? html`<small class="muted">${hint}</small>` : ""}
    ${error ? html`<small class="field-error" role="alert">${error}</small>` : ""}
  </div>`;
}

function numberOrEmpty(text) {
  return text === "" ? "" : Number(text);
}

/** A form's state: [values, set(name)(value), reset]. */
export function useForm(initial) {
  const [values, setValues] = useState(initial);
  const set = (name) => (value) => setValues((v) => ({ ...v, [name]: value }));
  return [values, set, () => setValues(initial)];
}

/** The fields of `values` that are set (empty strings dropped), for a POST/PATCH body. */
export function compact(values) {
  return Object.fromEntries(Object.entries(values).filter(([, v]) => v !== "" && v !== undefined && v !== null));
}

/** A dialog on top of the page, closed by Escape or its close button. */
export function Dialog({ title, onClose, children }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    const close = () => onClose();
    dialog.addEventListener("close", close);
    return () => dialog.removeEventListener("close", close);
  }, []);
  return html`<dialog ref=${ref} aria-label=${title}>
    <header class="dialog-head">
      <h2>${title}</h2>
      <button class="ghost" aria-label="close" onClick=${() => ref.current.close()}>✕</button>
    </header>
    ${children}
  </dialog>`;
}

// ---------------------------------------------------------------- formats

export function fmt(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString() : value.toFixed(3);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function usd(value) {
  if (value === null || value === undefined) return "—";
  const v = Number(value);
  return v !== 0 && Math.abs(v) < 0.01 ? `$${v.toPrecision(2)}` : `$${v.toFixed(2)}`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  const v = Number(value);
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

export function pct(value) {
  return value === null || value === undefined ? "—" : `${(Number(value) * 100).toFixed(1)} %`;
}

export function when(value) {
  if (!value) return "—";
  const d = typeof value === "number" ? new Date(value * (value < 1e12 ? 1000 : 1)) : new Date(value);
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

/** A state shown as a coloured badge: healthy/ok/enabled green, degraded/half_open amber, else red. */
export function Badge({ state }) {
  const s = String(state ?? "unknown").toLowerCase();
  const kind = ["healthy", "ok", "enabled", "closed", "unlocked", "completed", "true", "active"].includes(s)
    ? "good"
    : ["degraded", "half_open", "half-open", "running", "unknown"].includes(s)
      ? "warn"
      : "bad";
  return html`<span class=${`badge ${kind}`}>${s}</span>`;
}

export function PageHead({ title, children }) {
  return html`<header class="page-head">
    <h1>${title}</h1>
    <div class="actions">${children}</div>
  </header>`;
}

// ---- added by ui-config
/** The server's message when ApiError `error` concerns field `name` ("name", "name.x" or "name[0]"). */
export function fieldError(error, name) {
  const field = error?.field || "";
  if (!field) return "";
  return field === name || field.startsWith(`${name}.`) || field.startsWith(`${name}[`) ? error.message : "";
}

/** An ErrorBox for `error` unless one of the form's `fields` already shows it next to its input. */
export function FormError({ error, fields = [] }) {
  if (!error || fields.some((name) => fieldError(error, name))) return null;
  return html`<${ErrorBox} error=${error} />`;
}

/** A yes/no question in a Dialog: `onConfirm` runs the action; its error stays in the dialog. */
export function ConfirmDialog({ title, children, confirmLabel = "Confirm", danger = true, onConfirm, onClose }) {
  const action = useAction(async () => {
    await onConfirm();
    onClose();
  });
  return html`<${Dialog} title=${title} onClose=${onClose}>
    <div>${children}</div>
    <${ErrorBox} error=${action.error} />
    <div class="row dialog-actions">
      <button class=${danger ? "danger" : "primary"} disabled=${action.busy} onClick=${() => action.run()}>
        ${confirmLabel}
      </button>
      <button onClick=${onClose}>Cancel</button>
    </div>
  </${Dialog}>`;
}
