// Models: the leaderboard — every model the router sees (stored and vLLM-discovered) with its traffic, learned
// reward, cost and latency over a chosen window, and whether it is eligible right now. Weight and prices are
// edited in place (PATCH on change; the server's refusal shows under the input); enable/disable; add.
import { api, seg } from "../api.js";
import {
  Badge,
  ConfirmDialog,
  ErrorBox,
  Field,
  html,
  Loading,
  ms,
  PageHead,
  Pager,
  pct,
  Table,
  useAction,
  useLoad,
  usd,
} from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";
import { ModelDialog } from "./models/model_dialog.js";

const PAGE = 50;
const WINDOWS = ["1h", "24h"];

/** A pulls-weighted mean of each model's posterior means over its token buckets (the bandit's view). */
function rewardsByModel(arms) {
  const acc = {};
  for (const arm of arms || []) {
    const a = (acc[arm.model_id] ||= { pulls: 0, sum: 0 });
    a.pulls += arm.pulls;
    a.sum += arm.mean * arm.pulls;
  }
  return Object.fromEntries(Object.entries(acc).map(([id, a]) => [id, a.pulls > 0 ? a.sum / a.pulls : null]));
}

async function loadBoard(offset, span, signal) {
  const [engine, stats, rewards, providers] = await Promise.all([
    api.get("/engine/models", { limit: PAGE, offset }, { signal }),
    api.get("/stats", undefined, { signal }),
    api.get("/rewards", { limit: 1 }, { signal }),
    api.get("/providers", { limit: 1000 }, { signal }), // the add form's choices
  ]);
  const traffic = Object.fromEntries((stats.by_model?.[span] || []).map((s) => [s.model_id, s]));
  const reward = rewardsByModel(rewards.arms);
  const rows = engine.models.map((m) => {
    const t = traffic[m.id] || {};
    return {
      ...m,
      requests: t.request_count || 0,
      error_rate: t.error_rate ?? null,
      cost: t.total_cost_usd ?? 0,
      p50: t.p50_latency_ms ?? null,
      p95: t.p95_latency_ms ?? null,
      reward: reward[m.id] ?? null,
    };
  });
  return { rows, total: engine.total, providers: providers.items.map((p) => p.id) };
}

/** One number edited in place: saved on change (Enter or leaving the field), the server's error under it. */
function InlineNumber({ model, name, label, step = "any", onSaved }) {
  const [value, setValue] = useState(model[name]);
  const save = useAction(async (next) => {
    await api.patch(`/models/${seg(model.id)}`, { [name]: next });
    onSaved();
  });
  const commit = () => {
    const next = value === "" ? NaN : Number(value);
    if (next === model[name]) return;
    save.run(Number.isFinite(next) ? next : value); // not a number: the server says what is wrong
  };
  return html`<div class=${`inline-edit ${save.error ? "invalid" : ""}`}>
    <input
      type="number"
      step=${step}
      value=${value}
      aria-label=${`${label} of ${model.id}`}
      aria-invalid=${save.error ? "true" : undefined}
      disabled=${save.busy}
      onInput=${(e) => setValue(e.target.value)}
      onChange=${commit}
      onKeyDown=${(e) => e.key === "Enter" && e.target.blur()}
    />
    ${save.error && html`<small class="field-error" role="alert">${save.error.message}</small>`}
  </div>`;
}

function ModelsPanel() {
  const [offset, setOffset] = useState(0);
  const [span, setSpan] = useState("24h");
  const [adding, setAdding] = useState(false);
  const [deleting, setDeleting] = useState(null);
  const board = useLoad((signal) => loadBoard(offset, span, signal), [offset, span]);
  const toggle = useAction(async (m) => {
    await api.patch(`/models/${seg(m.id)}`, { enabled: !m.enabled });
    board.reload();
  });
  const stored = (m) => m.source === "store";
  const editable = (name, label, step) => (m) =>
    stored(m)
      ? html`<${InlineNumber} key=${`${m.id}:${m[name]}`} model=${m} name=${name} label=${label} step=${step}
          onSaved=${board.reload} />`
      : m[name];
  const rows = board.data?.rows || [];
  return html`<section>
    <${PageHead} title="Models">
      <${Field} label="Traffic over" name="models-window" type="select" options=${WINDOWS} value=${span}
        onInput=${setSpan} />
      <button class="primary" onClick=${() => setAdding(true)}>Add model</button>
      <button onClick=${board.reload}>Refresh</button>
    <//>
    <${ErrorBox} error=${board.error || toggle.error} />
    <${Loading} when=${board.loading && !board.data} />
    <${Table}
      caption="Leaderboard"
      rowKey=${(m) => m.id}
      columns=${[
        { key: "id", label: "Model" },
        { key: "provider_id", label: "Provider" },
        {
          key: "eligible",
          label: "Routable",
          render: (m) => html`<${Badge} state=${m.eligible ? "ok" : m.unavailable || "no"} />`,
        },
        { key: "requests", label: "Requests", num: true },
        { key: "reward", label: "Reward", num: true, render: (m) => (m.reward === null ? "—" : m.reward.toFixed(3)) },
        { key: "error_rate", label: "Errors", num: true, render: (m) => pct(m.error_rate) },
        { key: "cost", label: "Cost", num: true, render: (m) => usd(m.cost) },
        { key: "p50", label: "p50 / p95", num: true, render: (m) => (m.p50 === null ? "—" : `${ms(m.p50)} / ${ms(m.p95)}`) },
        { key: "weight", label: "Weight", num: true, render: editable("weight", "Weight", "1") },
        { key: "input_per_1k", label: "In $/1k", num: true, render: editable("input_per_1k", "Input price") },
        { key: "output_per_1k", label: "Out $/1k", num: true, render: editable("output_per_1k", "Output price") },
        {
          key: "actions",
          label: "Actions",
          sort: false,
          render: (m) =>
            stored(m)
              ? html`<div class="row nowrap">
                  <button onClick=${() => toggle.run(m)} disabled=${toggle.busy}
                    aria-label=${`${m.enabled ? "Disable" : "Enable"} ${m.id}`}>${m.enabled ? "Disable" : "Enable"}</button>
                  <button class="danger" onClick=${() => setDeleting(m)} aria-label=${`Delete ${m.id}`}>Delete</button>
                </div>`
              : html`<span class="muted">discovered</span>`,
        },
      ]}
      rows=${rows}
      empty="No model yet: add one, or discover a provider's models under Providers."
    />
    ${board.data &&
    html`<${Pager} offset=${offset} limit=${PAGE} count=${rows.length} total=${board.data.total} onPage=${setOffset} />`}
    <p class="muted">
      Reward: the bandit's learned success estimate (0–1), averaged over token-size buckets by traffic. Traffic,
      cost and latency from the request log.
    </p>
    ${adding &&
    html`<${ModelDialog} providers=${board.data?.providers || []} onSaved=${board.reload} onClose=${() => setAdding(false)} />`}
    ${deleting &&
    html`<${ConfirmDialog}
      title=${`Delete model ${deleting.id}?`}
      confirmLabel="Delete model"
      onConfirm=${async () => {
        await api.del(`/models/${seg(deleting.id)}`);
        board.reload();
      }}
      onClose=${() => setDeleting(null)}
    >
      Requests naming it are no longer routed to it; aliases and fallback chains that name it skip it.
    <//>`}
  </section>`;
}

export default { id: "models", title: "Models", group: "Configure", view: ModelsPanel };
