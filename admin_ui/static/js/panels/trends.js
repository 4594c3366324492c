// Trends: cost per model, latency percentiles per provider, error rate, tokens per tenant and requests per
// model over a chosen range, per hour or day (UTC). The range lives in the URL, so a view can be shared.
import { api } from "../api.js";
import { axisUsd, Chart, shortNumber } from "../chart.js";
import { LocalTable } from "../local-table.js";
import { navigate } from "../router.js";
import { ErrorBox, Field, html, Loading, ms, PageHead, pct, usd, useLoad } from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const STEP = { hour: HOUR, day: DAY };
const PRESETS = [
  { id: "24h", label: "Last 24 hours", span: DAY, bucket: "hour" },
  { id: "7d", label: "Last 7 days", span: 7 * DAY, bucket: "hour" },
  { id: "30d", label: "Last 30 days", span: 30 * DAY, bucket: "day" },
  { id: "90d", label: "Last 90 days", span: 90 * DAY, bucket: "day" },
];
const MAX_SERIES = 8; // more lines than this are unreadable: the busiest are drawn, the table has them all

/** The range the URL asks for: a preset (default 24h) or custom start/end (local datetime inputs). */
function rangeOf(query) {
  if (query.range === "custom" && query.start && query.end) {
    const start = Date.parse(query.start), end = Date.parse(query.end);
    if (Number.isFinite(start) && Number.isFinite(end)) {
      return { id: "custom", start, end, bucket: query.bucket === "day" ? "day" : "hour" };
    }
  }
  const preset = PRESETS.find((p) => p.id === query.range) || PRESETS[0];
  const end = Date.now();
  return { id: preset.id, start: end - preset.span, end, bucket: preset.bucket };
}

async function loadTrends(range, signal) {
  const query = { bucket: range.bucket, start: new Date(range.start).toISOString(), end: new Date(range.end).toISOString() };
  const [trends, requests, retention] = await Promise.all([
    api.get("/analytics/trends", query, { signal }),
    api.get("/tsdb/query", { metric: "requests", agg: "sum", step: STEP[range.bucket], start: range.start, end: range.end }, { signal }),
    api.get("/tsdb/retention", undefined, { signal }),
  ]);
  const requestRows = requests.series.flatMap((s) =>
    s.points.map((p) => ({ t: p.t, model_id: s.model_id, provider_id: s.provider_id, requests: p.v })),
  );
  return { ...trends, requests_per_model: requestRows, retention_days: retention.retention_days };
}

/** Every bucket start in the range (unix s), so an hour without traffic is a gap or zero, not skipped. */
function buckets(range) {
  const step = STEP[range.bucket];
  const xs = [];
  for (let t = Math.floor(range.start / step) * step; t <= range.end; t += step) xs.push(t / 1000);
  return xs;
}

/** rows → [xs, ys per key] with `value(row)` at its bucket; keys ordered by their total, busiest first. */
function pivot(rows, xs, keyOf, value, fill) {
  const index = new Map(xs.map((x, i) => [x, i]));
  const columns = new Map();
  const totals = new Map();
  for (const row of rows) {
    const i = index.get(Date.parse(row.t) / 1000);
    if (i === undefined) continue;
    const key = keyOf(row);
    if (!columns.has(key)) columns.set(key, xs.map(() => fill));
    const v = value(row);
    columns.get(key)[i] = v;
    totals.set(key, (totals.get(key) || 0) + (v || 0));
  }
  const keys = [...columns.keys()].sort((a, b) => totals.get(b) - totals.get(a)).slice(0, MAX_SERIES);
  return { keys, data: [xs, ...keys.map((k) => columns.get(k))] };
}

function when(t) {
  return new Date(t).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

function Trend({ title, rows, xs, keyOf, value, fill = 0, yFormat, columns, labelOf = (k) => k }) {
  const { keys, data } = pivot(rows, xs, keyOf, value, fill);
  const newestFirst = [...rows].sort((a, b) => b.t.localeCompare(a.t));
  return html`<section class="trend" aria-label=${title}>
    ${keys.length
      ? html`<${Chart} title=${title} series=${keys.map((k) => ({ label: labelOf(k) }))} data=${data} yFormat=${yFormat}
          summary=${rows.length ? "" : "no data"} />`
      : html`<h2>${title}</h2><p class="muted">No data in this range.</p>`}
    ${rows.length > 0 && html`<${LocalTable} caption=${`${title}: per bucket`} columns=${[{ key: "t", label: "Bucket", render: when }, ...columns]}
      rows=${newestFirst} pageSize=${10} />`}
  </section>`;
}

function RangeBar({ range, query }) {
  const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const [custom, setCustom] = useState({
    start: query.start || local(range.start),
    end: query.end || local(range.end),
    bucket: range.bucket,
  });
  const apply = (e) => {
    e.preventDefault();
    navigate("trends", [], { range: "custom", ...custom });
  };
  return html`<div class="range-bar">
    <div role="group" aria-label="range presets" class="row">
      ${PRESETS.map(
        (p) => html`<button aria-pressed=${range.id === p.id ? "true" : "false"}
          onClick=${() => navigate("trends", [], { range: p.id })}>${p.label}</button>`,
      )}
    </div>
    <form class="row" onSubmit=${apply} aria-label="custom range">
      <${Field} label="From" name="trend-start" type="datetime-local" value=${custom.start} required
        onInput=${(v) => setCustom({ ...custom, start: v })} />
      <${Field} label="To" name="trend-end" type="datetime-local" value=${custom.end} required
        onInput=${(v) => setCustom({ ...custom, end: v })} />
      <${Field} label="Per" name="trend-bucket" type="select" value=${custom.bucket} options=${["hour", "day"]}
        onInput=${(v) => setCustom({ ...custom, bucket: v })} />
      <button type="submit" aria-pressed=${range.id === "custom" ? "true" : "false"}>Show range</button>
    </form>
  </div>`;
}

function TrendsPanel({ route }) {
  const range = rangeOf(route.query);
  const key = JSON.stringify([route.query.range, route.query.start, route.query.end, route.query.bucket]);
  const trends = useLoad((signal) => loadTrends(range, signal), [key]);
  const xs = buckets(range);
  const d = trends.data;
  return html`<section>
    <${PageHead} title="Trends">
      <button onClick=${trends.reload}>Refresh</button>
    <//>
    <${RangeBar} key=${key} range=${range} query=${route.query} />
    <p class="muted">${when(range.start)} – ${when(range.end)}, per ${range.bucket} (UTC buckets, shown in local time).
      ${d && ` Requests per model come from the time series, which keeps ${d.retention_days} days.`}</p>
    <${ErrorBox} error=${trends.error} />
    <${Loading} when=${trends.loading && !d} />
    ${d &&
    html`<div class="grid-2">
      <${Trend} title="Cost per model" rows=${d.cost_per_model} xs=${xs} keyOf=${(r) => r.model_id} value=${(r) => r.cost_usd}
        yFormat=${axisUsd}
        columns=${[
          { key: "model_id", label: "Model" },
          { key: "provider_id", label: "Provider" },
          { key: "requests", label: "Requests", num: true },
          { key: "cost_usd", label: "Cost", num: true, render: usd },
        ]} />
      <${Trend} title="Latency per provider" rows=${d.latency_per_provider.flatMap((r) => [
        { ...r, q: "p50", v: r.p50_latency_ms },
        { ...r, q: "p95", v: r.p95_latency_ms },
      ])} xs=${xs} keyOf=${(r) => `${r.provider_id} ${r.q}`} value=${(r) => r.v} fill=${null}
        yFormat=${(v) => (v == null ? "" : ms(v))}
        columns=${[
          { key: "provider_id", label: "Provider" },
          { key: "q", label: "Percentile" },
          { key: "requests", label: "Requests", num: true },
          { key: "v", label: "Latency", num: true, render: ms },
        ]} />
      <${Trend} title="Error rate" rows=${d.error_rate} xs=${xs} keyOf=${() => "error rate"} value=${(r) => r.error_rate}
        fill=${null} yFormat=${(v) => (v == null ? "" : pct(v))}
        columns=${[
          { key: "requests", label: "Requests", num: true },
          { key: "errors", label: "Errors", num: true },
          { key: "error_rate", label: "Error rate", num: true, render: pct },
        ]} />
      <${Trend} title="Tokens per tenant" rows=${d.tokens_per_tenant} xs=${xs} keyOf=${(r) => r.tenant_id}
        value=${(r) => r.total_tokens} yFormat=${(v) => (v == null ? "" : shortNumber(v))}
        columns=${[
          { key: "tenant_id", label: "Tenant" },
          { key: "input_tokens", label: "Input", num: true },
          { key: "output_tokens", label: "Output", num: true },
          { key: "total_tokens", label: "Total", num: true },
        ]} />
      <${Trend} title="Requests per model" rows=${d.requests_per_model} xs=${xs}
        keyOf=${(r) => `${r.model_id || "(no model)"}`} value=${(r) => r.requests}
        yFormat=${(v) => (v == null ? "" : shortNumber(v))}
        columns=${[
          { key: "model_id", label: "Model", render: (v) => v || "(no model)" },
          { key: "provider_id", label: "Provider" },
          { key: "requests", label: "Requests", num: true },
        ]} />
    </div>`}
  </section>`;
}

export default { id: "trends", title: "Trends", group: "Analyze", view: TrendsPanel };
