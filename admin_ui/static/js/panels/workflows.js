// Workflows: durable chats and plans on Temporal (docs/temporal.md), newest first, filtered by status and paged
// by the server's page token; one workflow opens with its activities (timing, model, cost).
import { api, seg } from "../api.js";
import { href, navigate } from "../router.js";
import { Badge, ErrorBox, Field, fmt, html, Loading, ms, Notice, PageHead, Table, usd, useLoad, when } from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";

const STATUSES = ["RUNNING", "COMPLETED", "FAILED", "CANCELED", "TERMINATED", "TIMED_OUT", "CONTINUED_AS_NEW"];
const PAGE = 50;

function Off() {
  return html`<${Notice} kind="warn">
    Durable orchestration is off: chats and plans run directly. Set <code>TOKENHUB_TEMPORAL_ENABLED=true</code>
    (and <code>TOKENHUB_TEMPORAL_HOST</code>) to run them as Temporal workflows.
  <//>`;
}

function WorkflowList({ route }) {
  const status = route.query.status || "";
  // Temporal pages forward only: keep the tokens that led here so "Newer" can go back.
  const [tokens, setTokens] = useState([""]);
  const token = tokens[tokens.length - 1];
  const list = useLoad(
    (signal) => api.get("/workflows", { status, limit: PAGE, page_token: token }, { signal }),
    [status, token],
  );
  const data = list.data;
  const rows = data?.workflows || [];
  const filter = (value) => {
    setTokens([""]);
    navigate("workflows", [], { status: value });
  };
  return html`<section>
    <${PageHead} title="Workflows">
      <button onClick=${list.reload}>Refresh</button>
    <//>
    ${data && data.temporal_enabled === false && html`<${Off} />`}
    <div class="row">
      <${Field} label="Status" name="wf-status" type="select" value=${status} onInput=${filter}
        options=${[{ value: "", label: "any" }, ...STATUSES.map((s) => ({ value: s, label: s.toLowerCase() }))]} />
    </div>
    <${ErrorBox} error=${list.error} />
    <${Loading} when=${list.loading && !data} />
    <${Table}
      caption="Workflows, newest first"
      rowKey=${(w) => `${w.workflow_id}/${w.run_id}`}
      rows=${rows}
      onRow=${(w) => navigate("workflows", [w.workflow_id])}
      empty="No workflow matches."
      columns=${[
        { key: "workflow_id", label: "Workflow", render: (w) => html`<a href=${href("workflows", [w.workflow_id])}>${w.workflow_id}</a>` },
        { key: "type", label: "Type" },
        { key: "status", label: "Status", render: (w) => html`<${Badge} state=${w.status.toLowerCase()} />` },
        { key: "start_time", label: "Started", render: (w) => when(w.start_time) },
        { key: "duration_ms", label: "Duration", num: true, render: (w) => ms(w.duration_ms) },
      ]}
    />
    <nav class="pager" aria-label="pages">
      <button disabled=${tokens.length < 2} onClick=${() => setTokens(tokens.slice(0, -1))}>← Newer</button>
      <button disabled=${!data?.next_page_token} onClick=${() => setTokens([...tokens, data.next_page_token])}>Older →</button>
    </nav>
  </section>`;
}

function WorkflowDetail({ id }) {
  const detail = useLoad((signal) => api.get(`/workflows/${seg(id)}`, undefined, { signal }), [id]);
  const history = useLoad((signal) => api.get(`/workflows/${seg(id)}/history`, undefined, { signal }), [id]);
  const d = detail.data;
  const activities = history.data?.activities || [];
  return html`<section>
    <${PageHead} title=${`Workflow ${id}`}>
      <a class="button" href=${href("workflows")}>← All workflows</a>
      <button onClick=${() => (detail.reload(), history.reload())}>Refresh</button>
    <//>
    ${d && d.temporal_enabled === false && html`<${Off} />`}
    <${ErrorBox} error=${detail.error || history.error} />
    <${Loading} when=${detail.loading && !d} />
    ${d &&
    d.workflow_id &&
    html`<dl class="card facts">
      ${["type", "status", "run_id", "start_time", "close_time", "duration_ms", "task_queue"].map(
        (k) => d[k] !== undefined && html`<dt>${k.replace(/_/g, " ")}</dt><dd>${k.endsWith("_time") ? when(d[k]) : fmt(d[k])}</dd>`,
      )}
    </dl>`}
    <${Table}
      caption="Activities"
      rowKey=${(a) => a.activity_id}
      rows=${activities}
      empty="No activity yet."
      columns=${[
        { key: "activity", label: "Activity" },
        { key: "status", label: "Status", render: (a) => html`<${Badge} state=${a.status} />` },
        { key: "attempt", label: "Attempt", num: true },
        { key: "duration_ms", label: "Duration", num: true, render: (a) => ms(a.duration_ms) },
        { key: "model", label: "Model" },
        { key: "cost_usd", label: "Cost", num: true, render: (a) => usd(a.cost_usd) },
        {
          key: "request_id",
          label: "Request",
          render: (a) => (a.request_id ? html`<a href=${href("requests", [a.request_id])}>${a.request_id}</a>` : "—"),
        },
      ]}
    />
  </section>`;
}

function WorkflowsPanel({ route }) {
  return route.path[0] ? html`<${WorkflowDetail} id=${route.path[0]} />` : html`<${WorkflowList} route=${route} />`;
}

export default { id: "workflows", title: "Workflows", group: "Operate", view: WorkflowsPanel };
