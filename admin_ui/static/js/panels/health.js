// Health: TokenHub's readiness and each provider's state and circuit breaker, refreshed every 5 s.
import { api } from "../api.js";
import { Badge, ErrorBox, html, Loading, ms, PageHead, pct, Table, useInterval, useLoad } from "../ui.js";

function HealthPanel() {
  const health = useLoad((signal) => api.get("/health", undefined, { signal }));
  useInterval(health.reload, 5000);
  const ready = health.data?.readiness;
  const providers = health.data?.providers || [];
  return html`<section>
    <${PageHead} title="Health">
      <button onClick=${health.reload}>Refresh</button>
    <//>
    ${ready &&
    html`<p>TokenHub: <${Badge} state=${ready.status} /> ${ready.routable_models} of ${ready.models} models routable
      ${ready.reason ? html`<span class="muted"> — ${ready.reason}: ${ready.fix}</span>` : ""}</p>`}
    <${ErrorBox} error=${health.error} />
    <${Loading} when=${health.loading && !health.data} />
    <${Table}
      caption="Providers"
      rowKey=${(p) => p.provider_id}
      columns=${[
        { key: "provider_id", label: "Provider" },
        { key: "state", label: "State", render: (p) => html`<${Badge} state=${p.state} />` },
        { key: "breaker", label: "Breaker", render: (p) => html`<${Badge} state=${p.breaker} />` },
        { key: "total_requests", label: "Requests", num: true },
        { key: "error_rate", label: "Error rate", num: true, render: (p) => pct(p.error_rate) },
        { key: "avg_latency_ms", label: "Avg latency", num: true, render: (p) => ms(p.avg_latency_ms) },
        { key: "unavailable", label: "Why skipped" },
        { key: "last_error", label: "Last error" },
      ]}
      rows=${providers}
      empty="No provider yet: add one under Providers."
    />
  </section>`;
}

export default { id: "health", title: "Health", group: "Operate", view: HealthPanel };
