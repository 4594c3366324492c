// Analyst console: read-only SQL over the request log and the time series (POST /analytics/query, sandboxed
// by the server), the schema beside the editor, the result as a sortable paged table, a chart and a CSV file.
//
// Paging: the server runs the query once and caps the answer (TOKENHUB_ANALYTICS_QUERY_MAX_ROWS rows and a
// byte limit, `truncated` says so); the page sorts and pages those rows itself. Wrapping the SQL in
// LIMIT/OFFSET per page would re-run a whole aggregation for every page, give inconsistent pages while
// new requests arrive (and for any query without a total order), and the chart and the CSV need the whole
// answer anyway.
import { api } from "../api.js";
import { Chart, colour } from "../chart.js";
import { LocalTable } from "../local-table.js";
import { ErrorBox, Field, fmt, html, Loading, Notice, PageHead, useAction, useLoad } from "../ui.js";
import { useMemo, useRef, useState } from "../../vendor/preact-htm.js";
import { chartOf, isNumericType, toCsv } from "./console/result.js";

const MAX_ROWS = 10_000; // the server's default cap; it applies its own if lower
const STORAGE = "tokenhub.console.sql";

export const EXAMPLES = [
  {
    name: "Cost by tenant this month",
    sql: `SELECT tenant_id, count(*) AS requests, sum(cost_usd) AS cost_usd
FROM request_log
WHERE timestamp >= date_trunc('month', now())
GROUP BY tenant_id
ORDER BY cost_usd DESC`,
  },
  {
    name: "Slowest providers (p95)",
    sql: `SELECT provider_id, count(*) AS requests,
  quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms
FROM request_log
WHERE status < 400 AND provider_id <> '' AND timestamp >= now() - INTERVAL 1 DAY
GROUP BY provider_id
ORDER BY p95_ms DESC`,
  },
  {
    name: "Models by reward",
    sql: `SELECT model_id, count(reward) AS scored, avg(reward) AS avg_reward, avg(feedback_score) AS avg_feedback
FROM request_log
WHERE model_id <> ''
GROUP BY model_id
ORDER BY avg_reward DESC NULLS LAST`,
  },
  {
    name: "Errors by class today",
    sql: `SELECT error_class, count(*) AS errors, min(status) AS min_status, max(status) AS max_status
FROM request_log
WHERE status >= 400 AND timestamp >= date_trunc('day', now())
GROUP BY error_class
ORDER BY errors DESC`,
  },
  {
    name: "Tokens per key",
    sql: `SELECT api_key_id, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
  sum(input_tokens + output_tokens) AS total_tokens
FROM request_log
GROUP BY api_key_id
ORDER BY total_tokens DESC`,
  },
  {
    name: "Requests per minute (last hour)",
    sql: `SELECT time_bucket(INTERVAL 1 MINUTE, ts) AS minute, sum(value) AS requests
FROM tsdb_points
WHERE metric = 'requests' AND ts >= now() - INTERVAL 1 HOUR
GROUP BY minute
ORDER BY minute`,
  },
];

function Schema({ onPick }) {
  const schema = useLoad((signal) => api.get("/analytics/schema", undefined, { signal }));
  return html`<aside aria-label="schema">
    <h2>Schema</h2>
    <${ErrorBox} error=${schema.error} />
    <${Loading} when=${schema.loading} />
    ${(schema.data?.tables || []).map(
      (t, i) => html`<details open=${i === 0} key=${t.name}>
        <summary>${t.name}</summary>
        <ul aria-label=${`${t.name} columns`}>
          ${t.columns.map(
            (c) => html`<li key=${c.name}>
              <button title="insert into the query" onClick=${() => onPick(c.name)}>${c.name}</button>
              <span class="muted">${c.type.toLowerCase()}${c.nullable ? "?" : ""}</span>
            </li>`,
          )}
        </ul>
      </details>`,
    )}
  </aside>`;
}

function ResultChart({ result }) {
  const plan = useMemo(() => chartOf(result), [result]);
  const [picked, setPicked] = useState(null);
  if (!plan) return html`<p class="muted">No chart: it needs a time or text column and a numeric column.</p>`;
  if (plan.kind === "line") {
    return html`<${Chart} title=${`${plan.ys.map((y) => y.name).join(", ")} by ${plan.x.name}`}
      series=${plan.ys.map((y, i) => ({ label: y.name, stroke: colour(i) }))} data=${plan.data} />`;
  }
  const y = plan.ys.find((c) => c.name === picked) || plan.ys[0];
  return html`<div>
    ${plan.ys.length > 1 &&
    html`<${Field} label="Chart column" name="chart-column" type="select" value=${y.name}
      options=${plan.ys.map((c) => c.name)} onInput=${setPicked} />`}
    <${Chart} key=${y.name} title=${`${y.name} by ${plan.x.name}`} series=${[{ label: y.name }]}
      data=${[plan.data[0], plan.series[y.name]]} categories=${plan.categories}
      summary=${plan.clipped ? `(first ${plan.categories.length} rows)` : ""} />
  </div>`;
}

function download(result) {
  const blob = new Blob([toCsv(result)], { type: "text/csv;charset=utf-8" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `tokenhub-query-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}.csv`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function ConsolePanel() {
  const [sql, setSql] = useState(() => sessionStorage.getItem(STORAGE) || EXAMPLES[0].sql);
  const [result, setResult] = useState(null);
  const editor = useRef(null);
  const run = useAction(async (text) => {
    const query = (text ?? sql).trim();
    sessionStorage.setItem(STORAGE, query);
    setResult(await api.post("/analytics/query", { sql: query, max_rows: MAX_ROWS }));
  });
  const runNow = (text) => {
    setResult(null);
    run.run(text);
  };
  const onKey = (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      runNow();
    }
  };
  const insert = (name) => {
    const el = editor.current;
    const at = el ? el.selectionStart : sql.length;
    setSql(sql.slice(0, at) + name + sql.slice(el ? el.selectionEnd : at));
    el?.focus();
  };
  const example = (ex) => {
    setSql(ex.sql);
    runNow(ex.sql);
  };
  const columns = (result?.columns || []).map((c, i) => ({ key: i, label: c.name, num: isNumericType(c.type) }));
  return html`<section>
    <${PageHead} title="Analyst console" />
    <div class="console">
      <div>
        <div class="examples" role="group" aria-label="example queries">
          ${EXAMPLES.map((ex) => html`<button key=${ex.name} onClick=${() => example(ex)}>${ex.name}</button>`)}
        </div>
        <label for="sql">SQL <span class="muted">(one read-only SELECT over request_log and tsdb_points;
          Ctrl+Enter or ⌘+Enter runs it)</span></label>
        <textarea id="sql" ref=${editor} class="sql" spellcheck="false" value=${sql}
          onInput=${(e) => setSql(e.target.value)} onKeyDown=${onKey}></textarea>
        <div class="row">
          <button class="primary" disabled=${run.busy || !sql.trim()} onClick=${() => runNow()}>Run query</button>
          <button disabled=${!result || !result.rows.length} onClick=${() => download(result)}>Download CSV</button>
        </div>
        <${ErrorBox} error=${run.error} />
        <${Loading} when=${run.busy} />
        ${result &&
        html`<p class="result-meta muted" role="status">
            ${fmt(result.row_count)} rows in ${fmt(result.elapsed_ms)} ms
          </p>
          ${result.truncated &&
          html`<${Notice} kind="warn">Only the first ${fmt(result.row_count)} rows came back (the server's
            ${result.truncated_by === "bytes" ? "size" : "row"} limit): aggregate more or add a LIMIT.<//>`}
          <${LocalTable} caption="Result" columns=${columns} rows=${result.rows} pageSize=${50} />
          <${ResultChart} result=${result} />`}
      </div>
      <${Schema} onPick=${insert} />
    </div>
  </section>`;
}

export default { id: "console", title: "Analyst console", group: "Analyze", view: ConsolePanel };
