// Live: the request-flow graph and the last five minutes of traffic, from the admin event stream. The topology
// (providers, models, health) is loaded first so the graph is there before any traffic; the charts are seeded
// from the server's history (time series + request log) and then move with every route event.
import { api } from "../api.js";
import { axisUsd, Chart } from "../chart.js";
import { subscribe } from "../events.js";
import { Badge, ErrorBox, html, ms, PageHead, pct, usd } from "../ui.js";
import { useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { FlowGraph, TICK_MS } from "./live/graph.js";
import { RollingWindow, SECONDS } from "./live/window.js";

const REFRESH_MS = 1000; // charts and the description move once a second, whatever the traffic
const HEALTH_MS = 10_000;
const TOPOLOGY_ACTIONS = /provider|model|alias/; // admin changes that reshape the graph

async function loadTopology(signal) {
  const [providers, models, health] = await Promise.all([
    api.get("/providers", undefined, { signal }),
    api.get("/models", undefined, { signal }),
    api.get("/health", undefined, { signal }),
  ]);
  return { providers: providers.items, models: models.items, health: health.providers };
}

/** The seconds before the panel opened: counts, errors and cost from the time series (per-second roll-ups
 * summed over models), p50/p95 from the request log (the time series keeps sums, not percentiles). */
async function loadHistory(signal) {
  const start = Date.now() - SECONDS * 1000;
  const series = (metric) =>
    api.get("/tsdb/query", { metric, agg: "sum", step: 1000, start }, { signal }).then((r) => r.series);
  const sql =
    "SELECT epoch(date_trunc('second', timestamp))::BIGINT AS t, quantile_disc(latency_ms, 0.5) AS p50," +
    " quantile_disc(latency_ms, 0.95) AS p95 FROM request_log" +
    ` WHERE timestamp >= to_timestamp(${Math.floor(start / 1000)}) GROUP BY 1`;
  const [requests, errors, cost, latency] = await Promise.all([
    series("requests"),
    series("errors"),
    series("cost"),
    api.post("/analytics/query", { sql, max_rows: SECONDS + 1 }, { signal }),
  ]);
  const points = new Map();
  const at = (t) => points.get(t) || points.set(t, { t }).get(t);
  for (const [name, list] of [["count", requests], ["errors", errors], ["cost", cost]]) {
    for (const s of list) {
      for (const p of s.points) {
        const point = at(Math.floor(Date.parse(p.t) / 1000));
        point[name] = (point[name] || 0) + p.v;
      }
    }
  }
  for (const [t, p50, p95] of latency.rows) Object.assign(at(Number(t)), { p50, p95 });
  return [...points.values()];
}

function GraphDescription({ graph }) {
  if (!graph) return null;
  return html`<ul class="sr-only" aria-label="Request-flow graph">
    ${graph.nodes.map(
      (n) => html`<li key=${n.id} data-node=${n.id} data-kind=${n.kind} data-state=${n.state} data-requests=${n.requests}>
        ${n.kind} ${n.label}${n.state ? `: ${n.state}` : ""}, ${n.requests} requests in the last 5 minutes
      </li>`,
    )}
    ${graph.edges.map(
      (e) => html`<li key=${e.id} data-edge=${e.id} data-active=${e.active ? "yes" : "no"} data-total=${e.total}
        data-errors=${e.errors}>
        ${e.source} to ${e.target}: ${e.total} requests, ${e.errors} errors${e.active ? ", active now" : ""}
      </li>`,
    )}
  </ul>`;
}

function ProviderStates({ graph }) {
  const providers = (graph?.nodes || []).filter((n) => n.kind === "provider");
  if (!providers.length) return null;
  return html`<p class="row live-providers" aria-label="provider states">
    ${providers.map((p) => html`<span key=${p.id} data-provider=${p.label}>${p.label} <${Badge} state=${p.state} /></span>`)}
  </p>`;
}

function LivePanel() {
  const graphBox = useRef(null);
  const graphRef = useRef(null);
  const windowRef = useRef(null);
  const [error, setError] = useState(null);
  const [view, setView] = useState({ charts: null, totals: null, graph: null });

  useEffect(() => {
    const ctl = new AbortController();
    const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
    const graph = (graphRef.current = new FlowGraph(graphBox.current, { dark }));
    const rolling = (windowRef.current = new RollingWindow());

    const refreshTopology = () =>
      loadTopology(ctl.signal).then(
        (topology) => graph.setTopology(topology),
        (e) => e.name !== "AbortError" && setError(e),
      );
    let topologyTimer = null;
    const refreshSoon = () => {
      clearTimeout(topologyTimer);
      topologyTimer = setTimeout(refreshTopology, 300); // one reload for a burst of changes
    };
    refreshTopology();
    loadHistory(ctl.signal).then(
      (points) => rolling.seed(points),
      (e) => e.name !== "AbortError" && setError(e),
    );

    const onRoute = (event) => {
      rolling.add(event);
      // A provider's first calls set its health without a health_change event: read it once it has traffic.
      if (graph.providerState(event.provider_id) === "unknown") refreshSoon();
      graph.traffic(event);
    };
    const unsubscribe = [
      subscribe("route_success", onRoute),
      subscribe("route_error", onRoute),
      subscribe("health_change", (e) => {
        graph.setHealth(e.provider_id, e.new_state === "removed" ? null : e.new_state);
        refreshSoon(); // the breaker's state and a removed provider come with the next GET /health
      }),
      subscribe("admin_action", (e) => TOPOLOGY_ACTIONS.test(e.action || "") && refreshSoon()),
    ];

    const update = () => setView({ charts: rolling.series(), totals: rolling.totals(60), graph: graph.describe() });
    update();
    const ticker = setInterval(() => graph.tick(), TICK_MS);
    const refresher = setInterval(update, REFRESH_MS);
    const healthPoller = setInterval(refreshTopology, HEALTH_MS); // error rates and breakers move without events
    return () => {
      ctl.abort();
      unsubscribe.forEach((off) => off());
      clearInterval(ticker);
      clearInterval(refresher);
      clearInterval(healthPoller);
      clearTimeout(topologyTimer);
      graph.destroy();
      graphRef.current = windowRef.current = null;
    };
  }, []);

  const { charts, totals, graph } = view;
  return html`<section class="live">
    <${PageHead} title="Live">
      ${totals &&
      html`<p class="live-summary" role="status" data-requests-1m=${totals.requests} data-errors-1m=${totals.errors}>
        ${`${totals.requests} requests in the last minute · ${totals.errors} errors · p95 ${ms(totals.p95)}`}
        ${` · ${usd(totals.cost)}/min`}
      </p>`}
    <//>
    <${ErrorBox} error=${error} />
    <div class="card live-graph-card">
      <h2 id="flow-title">Request flow</h2>
      <p class="muted live-legend">clients → TokenHub → providers → models · green healthy · amber degraded or
        breaker half-open · red down or breaker open · grey disabled/unknown · edges pulse with traffic (red: errors)</p>
      <${ProviderStates} graph=${graph} />
      <div ref=${graphBox} class="live-graph" role="img" aria-labelledby="flow-title"></div>
      <${GraphDescription} graph=${graph} />
    </div>
    ${charts &&
    html`<div class="grid-2">
      <${Chart} title="Requests / s" series=${[{ label: "requests/s" }]} data=${[charts.xs, charts.rps]} />
      <${Chart} title="Error rate" series=${[{ label: "error rate", stroke: "#cf222e" }]}
        data=${[charts.xs, charts.errorRate]} yFormat=${(v) => (v == null ? "" : pct(v))} />
      <${Chart} title="Latency" series=${[{ label: "p50" }, { label: "p95", stroke: "#b7791f" }]}
        data=${[charts.xs, charts.p50, charts.p95]} yFormat=${(v) => (v == null ? "" : ms(v))} />
      <${Chart} title="Cost / min" series=${[{ label: "USD per minute", stroke: "#1f883d" }]}
        data=${[charts.xs, charts.costPerMin]} yFormat=${(v) => (v == null ? "" : axisUsd(v))} />
    </div>`}
  </section>`;
}

export default { id: "live", title: "Live", group: "Operate", view: LivePanel };
