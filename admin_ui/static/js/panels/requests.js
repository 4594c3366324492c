// Request log: filters in the hash (linkable), keyset pages from the server (fast 900,000 rows down), and one
// request opened at #/requests/<request id> (its detail lives in requests/detail.js).
import { api } from "../api.js";
import { href, navigate } from "../router.js";
import { ErrorBox, Field, html, Loading, ms, PageHead, Table, useForm, useLoad, usd, when } from "../ui.js";
import { RequestDetail, shortId, StatusBadge } from "./requests/detail.js";
import { useState } from "../../vendor/preact-htm.js";

const PAGE = 50;
// The filters the form offers, by their query parameter on GET /logs.
const FILTERS = ["q", "model", "provider", "status", "outcome", "mode", "endpoint", "api_key_id", "tenant", "start", "end"];

function RequestsPanel({ route }) {
  if (route.path[0]) return html`<${RequestDetail} key=${route.path[0]} requestId=${route.path[0]} />`;
  return html`<${RequestLog} query=${route.query} />`;
}

function RequestLog({ query }) {
  const filters = Object.fromEntries(FILTERS.map((name) => [name, query[name] || ""]));
  const filterKey = JSON.stringify(filters);
  // The cursors of the pages before this one (the first page has none): "Newer" pops, "Older" pushes.
  const [pages, setPages] = useState({ filterKey, cursors: [] });
  const cursors = pages.filterKey === filterKey ? pages.cursors : [];
  const cursor = cursors[cursors.length - 1] || "";
  const logs = useLoad(
    (signal) => api.get("/logs", { ...toApi(filters), limit: PAGE, cursor }, { signal }),
    [filterKey, cursor],
  );
  const rows = logs.data?.logs || [];
  const first = cursors.length * PAGE;
  const apply = (values) => {
    setPages({ filterKey: "", cursors: [] });
    navigate("requests", [], values);
  };
  return html`<section>
    <${PageHead} title="Request log">
      <button onClick=${logs.reload}>Refresh</button>
    <//>
    <${Filters} key=${filterKey} initial=${filters} onApply=${apply} />
    <${ErrorBox} error=${logs.error} />
    <${Loading} when=${logs.loading && !logs.data} />
    <${Table}
      caption="Requests, newest first"
      rowKey=${(r) => r.request_id}
      rows=${rows}
      onRow=${(r) => navigate("requests", [r.request_id])}
      empty="No request matches."
      columns=${[
        { key: "timestamp", label: "Time", render: (r) => when(r.timestamp) },
        {
          key: "request_id",
          label: "Request",
          render: (r) => html`<a href=${href("requests", [r.request_id])}><code>${shortId(r.request_id)}</code></a>`,
        },
        { key: "endpoint", label: "Endpoint" },
        { key: "mode", label: "Mode" },
        { key: "model_id", label: "Model" },
        { key: "provider_id", label: "Provider" },
        { key: "status", label: "Status", render: (r) => html`<${StatusBadge} status=${r.status} />` },
        { key: "latency_ms", label: "Latency", num: true, render: (r) => ms(r.latency_ms) },
        { key: "cost_usd", label: "Cost", num: true, render: (r) => usd(r.cost_usd) },
        { key: "input_tokens", label: "Tokens in/out", num: true, render: (r) => `${r.input_tokens}/${r.output_tokens}` },
        { key: "escalations", label: "Failovers", num: true },
      ]}
    />
    <nav class="pager" aria-label="pages">
      <button disabled=${!cursors.length} onClick=${() => setPages({ filterKey, cursors: cursors.slice(0, -1) })}>
        ← Newer
      </button>
      <span class="muted">
        ${rows.length ? `${(first + 1).toLocaleString()}–${(first + rows.length).toLocaleString()}` : "0"}
        ${logs.data ? ` of ${logs.data.total.toLocaleString()}` : ""}
      </span>
      <button disabled=${!logs.data?.next_cursor}
        onClick=${() => setPages({ filterKey, cursors: [...cursors, logs.data.next_cursor] })}>Older →</button>
    </nav>
  </section>`;
}

/** The query parameters for the API: the time range from the browser's local time to UTC. */
function toApi(filters) {
  const out = { ...filters };
  for (const name of ["start", "end"]) if (out[name]) out[name] = new Date(out[name]).toISOString();
  return out;
}

function Filters({ initial, onApply }) {
  const [values, set, reset] = useForm(initial);
  const keys = useLoad((signal) => api.get("/apikeys", { limit: 1000 }, { signal }));
  const submit = (e) => {
    e.preventDefault();
    onApply(values);
  };
  const clear = () => {
    reset();
    onApply({});
  };
  const keyOptions = [{ value: "", label: "any" }, ...(keys.data?.keys || []).map((k) => ({ value: k.id, label: k.name }))];
  return html`<form class="card filters" onSubmit=${submit} aria-label="filter requests">
    <div class="form-grid">
      <${Field} label="Search" name="q" type="search" value=${values.q} onInput=${set("q")}
        placeholder="request id, client id, error text" />
      <${Field} label="Model" name="model" value=${values.model} onInput=${set("model")} />
      <${Field} label="Provider" name="provider" value=${values.provider} onInput=${set("provider")} />
      <${Field} label="Status" name="status" type="number" min="100" max="599" value=${values.status}
        onInput=${set("status")} />
      <${Field} label="Outcome" name="outcome" type="select" value=${values.outcome} onInput=${set("outcome")}
        options=${[{ value: "", label: "any" }, "ok", "error"]} />
      <${Field} label="Mode" name="mode" value=${values.mode} onInput=${set("mode")} />
      <${Field} label="Endpoint" name="endpoint" type="select" value=${values.endpoint} onInput=${set("endpoint")}
        options=${[{ value: "", label: "any" }, "chat", "chat_completions", "messages", "embeddings", "plan", "plan_step"]} />
      <${Field} label="API key" name="api_key_id" type="select" value=${values.api_key_id} onInput=${set("api_key_id")}
        options=${keyOptions} />
      <${Field} label="Tenant" name="tenant" value=${values.tenant} onInput=${set("tenant")} />
      <${Field} label="From" name="start" type="datetime-local" value=${values.start} onInput=${set("start")} />
      <${Field} label="To" name="end" type="datetime-local" value=${values.end} onInput=${set("end")} />
    </div>
    <div class="row">
      <button type="submit" class="primary">Apply filters</button>
      <button type="button" onClick=${clear}>Clear</button>
    </div>
  </form>`;
}

export default { id: "requests", title: "Request log", group: "Operate", view: RequestsPanel };
