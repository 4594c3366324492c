// One request of the log (GET /logs/{id}): every field, the attempts in order, the routing reason, the plan
// steps (rows whose parent_request_id is this request) and the client's feedback.
import { api, seg } from "../../api.js";
import { href, navigate } from "../../router.js";
import { ErrorBox, fmt, html, Loading, ms, PageHead, Table, useLoad, usd, when } from "../../ui.js";

export function shortId(id) {
  return id.length > 24 ? `${id.slice(0, 15)}…${id.slice(-4)}` : id;
}

export function StatusBadge({ status }) {
  return html`<span class=${`badge ${status < 400 ? "good" : status < 500 ? "warn" : "bad"}`}>${status}</span>`;
}

// The row's fields in reading order, with how each is shown; the ones given a section of their own are left out.
const FIELDS = [
  ["timestamp", "Time", (v) => when(v)],
  ["request_id", "Request id", (v) => html`<code>${v}</code>`],
  ["client_request_id", "Client request id", (v) => (v ? html`<code>${v}</code>` : "—")],
  ["status", "Status", (v) => html`<${StatusBadge} status=${v} />`],
  ["endpoint", "Endpoint"],
  ["mode", "Mode"],
  ["tenant_id", "Tenant"],
  ["api_key_id", "API key id", (v) => (v ? html`<a href=${href("requests", [], { api_key_id: v })}><code>${v}</code></a>` : "—")],
  ["model_id", "Model"],
  ["provider_id", "Provider"],
  ["error_class", "Error class"],
  ["error_message", "Error"],
  ["latency_ms", "Latency", ms],
  ["ttft_ms", "Time to first token", (v) => (v ? ms(v) : "—")],
  ["input_tokens", "Input tokens"],
  ["output_tokens", "Output tokens"],
  ["cost_usd", "Cost", usd],
  ["escalations", "Failovers"],
  ["reward", "Routing reward", (v) => (v === null ? "—" : Number(v).toFixed(3))],
];

export function RequestDetail({ requestId }) {
  const detail = useLoad((signal) => api.get(`/logs/${seg(requestId)}`, undefined, { signal }), [requestId]);
  const row = detail.data?.request;
  return html`<section>
    <${PageHead} title="Request">
      <a class="button" href=${href("requests")}>← Request log</a>
      <button onClick=${detail.reload}>Refresh</button>
    <//>
    <p><code class="wrap">${requestId}</code></p>
    <${ErrorBox} error=${detail.error} />
    <${Loading} when=${detail.loading && !detail.data} />
    ${row &&
    html`
      ${row.parent_request_id &&
      html`<p class="notice">A step of plan request
        <a href=${href("requests", [row.parent_request_id])}><code>${shortId(row.parent_request_id)}</code></a>.</p>`}
      <div class="grid-2">
        <div class="card">
          <h2>Fields</h2>
          <dl class="fields">
            ${FIELDS.map(
              ([name, label, show]) => html`<dt>${label}</dt>
                <dd data-field=${name}>${show ? show(row[name]) : fmt(row[name])}</dd>`,
            )}
          </dl>
        </div>
        <div>
          <div class="card">
            <h2>Routing reason</h2>
            <p class="routing-reason">${row.routing_reason || "—"}</p>
          </div>
          <div class="card">
            <h2>Feedback</h2>
            ${row.feedback_score === null || row.feedback_score === undefined
              ? html`<p class="muted">No feedback for this request.</p>`
              : html`<dl class="fields">
                  <dt>Score</dt><dd data-field="feedback_score">${Number(row.feedback_score).toFixed(2)}</dd>
                  <dt>Comment</dt><dd data-field="feedback_comment">${row.feedback_comment || "—"}</dd>
                </dl>`}
          </div>
        </div>
      </div>
      <${Table}
        caption=${`Attempts (${detail.data.attempts.length})`}
        rows=${detail.data.attempts.map((a, i) => ({ ...a, n: i + 1 }))}
        empty="No model was tried (refused before routing)."
        columns=${[
          { key: "n", label: "#", num: true },
          { key: "model_id", label: "Model" },
          { key: "provider_id", label: "Provider" },
          {
            key: "outcome",
            label: "Outcome",
            render: (a) => html`<span class=${`badge ${a.outcome === "ok" ? "good" : "bad"}`}>${a.outcome}</span>`,
          },
        ]}
      />
      ${(detail.data.steps.length > 0 || row.endpoint === "plan") &&
      html`<${Table}
        caption=${`Plan steps (${detail.data.steps.length})`}
        rows=${detail.data.steps}
        rowKey=${(s) => s.request_id}
        onRow=${(s) => navigate("requests", [s.request_id])}
        empty="This plan recorded no step."
        columns=${[
          { key: "timestamp", label: "Time", render: (s) => when(s.timestamp) },
          {
            key: "request_id",
            label: "Step",
            render: (s) => html`<a href=${href("requests", [s.request_id])}><code>${shortId(s.request_id)}</code></a>`,
          },
          { key: "mode", label: "Mode" },
          { key: "model_id", label: "Model" },
          { key: "status", label: "Status", render: (s) => html`<${StatusBadge} status=${s.status} />` },
          { key: "latency_ms", label: "Latency", num: true, render: (s) => ms(s.latency_ms) },
          { key: "cost_usd", label: "Cost", num: true, render: (s) => usd(s.cost_usd) },
        ]}
      />`}
    `}
  </section>`;
}
