// Audit trail: every admin change (and refused attempt), newest first, filtered and paged on the server; a row
// opens its detail with the request body as the server stored it (secrets already replaced by [REDACTED]).
import { api } from "../api.js";
import { navigate } from "../router.js";
import { Dialog, ErrorBox, Field, html, Loading, PageHead, Pager, Table, useForm, useLoad, when } from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";

const PAGE = 50;
const FILTERS = ["action", "target", "status", "since", "until"];

function AuditPanel({ route }) {
  const query = route.query;
  const filters = Object.fromEntries(FILTERS.map((name) => [name, query[name] || ""]));
  const offset = Math.max(0, Number(query.offset) || 0);
  const filterKey = JSON.stringify(filters);
  const audit = useLoad(
    (signal) => api.get("/audit", { ...toApi(filters), limit: PAGE, offset }, { signal }),
    [filterKey, offset],
  );
  const [open, setOpen] = useState(null);
  const rows = audit.data?.logs || [];
  return html`<section>
    <${PageHead} title="Audit trail">
      <button onClick=${audit.reload}>Refresh</button>
    <//>
    <${AuditFilters} key=${filterKey} initial=${filters} onApply=${(values) => navigate("audit", [], values)} />
    <${ErrorBox} error=${audit.error} />
    <${Loading} when=${audit.loading && !audit.data} />
    <${Table}
      caption="Admin actions, newest first"
      rowKey=${(r) => r.id}
      rows=${rows}
      onRow=${setOpen}
      empty="No admin action matches."
      columns=${[
        { key: "timestamp", label: "Time", render: (r) => when(r.timestamp) },
        { key: "action", label: "Action" },
        { key: "method", label: "Method" },
        { key: "route", label: "Route", render: (r) => html`<code>${r.route}</code>` },
        { key: "target", label: "Target" },
        { key: "status", label: "Status", render: (r) => html`<span class=${`badge ${r.status < 400 ? "good" : "bad"}`}>${r.status}</span>` },
        { key: "client_ip", label: "Client IP" },
        { key: "actor", label: "Actor" },
      ]}
    />
    <${Pager} offset=${offset} limit=${PAGE} count=${rows.length} total=${audit.data?.total}
      onPage=${(o) => navigate("audit", [], { ...filters, offset: o || "" })} />
    ${open && html`<${AuditEntry} entry=${open} onClose=${() => setOpen(null)} />`}
  </section>`;
}

function toApi(filters) {
  const out = { ...filters };
  for (const name of ["since", "until"]) if (out[name]) out[name] = new Date(out[name]).toISOString();
  return out;
}

function AuditEntry({ entry, onClose }) {
  return html`<${Dialog} title=${`Audit entry ${entry.id}`} onClose=${onClose}>
    <dl class="fields">
      <dt>Time</dt><dd>${when(entry.timestamp)}</dd>
      <dt>Action</dt><dd>${entry.action}</dd>
      <dt>Request</dt><dd><code>${entry.method} ${entry.route}</code></dd>
      <dt>Target</dt><dd>${entry.target || "—"}</dd>
      <dt>Status</dt><dd>${entry.status}</dd>
      <dt>Actor</dt><dd>${entry.actor} from ${entry.client_ip || "?"}</dd>
      <dt>Request id</dt><dd><code>${entry.request_id}</code></dd>
    </dl>
    <h3>Body (secrets redacted)</h3>
    <pre class="audit-detail">${entry.detail === null || entry.detail === "" ? "no body" : JSON.stringify(entry.detail, null, 2)}</pre>
  <//>`;
}

function AuditFilters({ initial, onApply }) {
  const [values, set, reset] = useForm(initial);
  const submit = (e) => {
    e.preventDefault();
    onApply(values);
  };
  return html`<form class="card filters" onSubmit=${submit} aria-label="filter the audit trail">
    <div class="form-grid">
      <${Field} label="Action" name="action" value=${values.action} onInput=${set("action")}
        hint="handler name, e.g. create_api_key" />
      <${Field} label="Target" name="target" value=${values.target} onInput=${set("target")} hint="an id" />
      <${Field} label="Status" name="status" type="number" min="100" max="599" value=${values.status} onInput=${set("status")} />
      <${Field} label="Since" name="since" type="datetime-local" value=${values.since} onInput=${set("since")} />
      <${Field} label="Until" name="until" type="datetime-local" value=${values.until} onInput=${set("until")} />
    </div>
    <div class="row">
      <button type="submit" class="primary">Apply filters</button>
      <button type="button" onClick=${() => { reset(); onApply({}); }}>Clear</button>
    </div>
  </form>`;
}

export default { id: "audit", title: "Audit trail", group: "Security", view: AuditPanel };
