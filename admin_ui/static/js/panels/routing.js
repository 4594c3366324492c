// Routing: the stored routing defaults (PUT /routing-config, the server's refusals next to the fields) and the
// simulator (POST /routing/simulate): what the live Router would do with a request, every candidate's score
// and why the others were excluded — without sending anything or changing any state.
import { api } from "../api.js";
import {
  ErrorBox,
  Field,
  fieldError,
  FormError,
  html,
  Loading,
  Notice,
  PageHead,
  useAction,
  useForm,
  useLoad,
  usd,
} from "../ui.js";
import { useEffect, useState } from "../../vendor/preact-htm.js";

const CONFIG_FIELDS = ["default_mode", "default_max_budget_usd", "default_max_latency_ms"];

/** The routing modes, from the policy stage's option schema (the server's own list). */
function modesOf(catalogue) {
  const policy = (catalogue?.stages || []).find((s) => s.stage === "policy");
  const mode = policy?.options?.mode;
  const choice = (mode?.anyOf || [mode]).find((t) => t && t.enum);
  return choice ? choice.enum : [];
}

function RoutingConfig({ modes }) {
  const config = useLoad((signal) => api.get("/routing-config", undefined, { signal }));
  const [values, set, , setAll] = useFormWithReset({
    default_mode: "",
    default_max_budget_usd: 0,
    default_max_latency_ms: 0,
  });
  const [ready, setReady] = useState(false);
  useEffect(() => {
    if (!config.data) return;
    setAll(pick(config.data, CONFIG_FIELDS));
    setReady(true); // the form shows only once filled, so loading never overwrites what was typed
  }, [config.data]);
  const save = useAction(async () => {
    const body = {
      default_mode: values.default_mode,
      default_max_budget_usd: numberOr(values.default_max_budget_usd),
      default_max_latency_ms: numberOr(values.default_max_latency_ms),
    };
    const saved = await api.put("/routing-config", body);
    config.reload();
    return saved;
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  const err = (name) => fieldError(save.error, name);
  const effective = config.data?.effective;
  return html`<section class="card" aria-labelledby="routing-defaults">
    <h2 id="routing-defaults">Defaults</h2>
    <${ErrorBox} error=${config.error} />
    <${Loading} when=${config.loading && !config.data} />
    ${ready &&
    html`<form onSubmit=${submit} novalidate aria-label="routing defaults">
      <div class="form-grid">
        <${Field} label="Default mode" name="default-mode" type="select"
          options=${[{ value: "", label: "environment default" }, ...modes]} value=${values.default_mode}
          onInput=${set("default_mode")} error=${err("default_mode")} />
        <${Field} label="Default max budget (USD)" name="default-budget" type="number" step="any"
          value=${values.default_max_budget_usd} onInput=${set("default_max_budget_usd")}
          error=${err("default_max_budget_usd")} hint="0 = environment default; at most 100" />
        <${Field} label="Default max latency (ms)" name="default-latency" type="number"
          value=${values.default_max_latency_ms} onInput=${set("default_max_latency_ms")}
          error=${err("default_max_latency_ms")} hint="0 = environment default; at most 300000" />
      </div>
      <${FormError} error=${save.error} fields=${CONFIG_FIELDS} />
      <div class="row">
        <button type="submit" class="primary" disabled=${save.busy}>Save defaults</button>
        ${effective &&
        html`<span class="muted" data-testid="effective-routing">
          Requests get: mode <strong>${effective.mode || "—"}</strong>, budget ${usd(effective.max_budget_usd)},
          latency ${effective.max_latency_ms || "—"} ms</span>`}
      </div>
    </form>`}
  </section>`;
}

/** useForm plus a setter for every value at once (the loaded configuration). */
function useFormWithReset(initial) {
  const [values, set, reset] = useForm(initial);
  const setAll = (next) => Object.entries(next).forEach(([k, v]) => set(k)(v));
  return [values, set, reset, setAll];
}

function pick(obj, keys) {
  return Object.fromEntries(keys.map((k) => [k, obj[k]]));
}

/** A number from an input, or the raw text when it is not one (the server names what is wrong). */
function numberOr(value, empty = 0) {
  if (value === "" || value === undefined || value === null) return empty;
  const n = Number(value);
  return Number.isFinite(n) ? n : value;
}

function simulateBody(v) {
  const common = { tenant_id: v.tenant_id.trim() || "default" };
  if (v.seed !== "") common.seed = numberOr(v.seed);
  const policy = {
    max_budget_usd: numberOr(v.max_budget_usd),
    max_latency_ms: numberOr(v.max_latency_ms),
    min_weight: numberOr(v.min_weight),
  };
  if (v.message.trim()) {
    // a /v1/chat body: the text's size and any directives in it count as on a real request
    return {
      ...common,
      request: { messages: [{ role: "user", content: v.message }], model_hint: v.model_hint.trim() },
      policy: { ...policy, ...(v.mode ? { mode: v.mode } : {}) },
    };
  }
  return { ...common, ...policy, mode: v.mode, model_hint: v.model_hint.trim(), token_count: numberOr(v.token_count) };
}

const SIM_FIELDS = {
  message: ["request"],
  mode: ["mode", "policy.mode"],
  max_budget_usd: ["max_budget_usd", "policy.max_budget_usd"],
  max_latency_ms: ["max_latency_ms", "policy.max_latency_ms"],
  min_weight: ["min_weight", "policy.min_weight"],
  model_hint: ["model_hint", "request.model_hint"],
  token_count: ["token_count"],
  tenant_id: ["tenant_id"],
  seed: ["seed"],
};

function Simulator({ modes }) {
  const [values, set] = useForm({
    message: "",
    mode: "",
    max_budget_usd: "",
    max_latency_ms: "",
    min_weight: "",
    model_hint: "",
    token_count: "",
    tenant_id: "default",
    seed: "",
  });
  const [result, setResult] = useState(null);
  const sim = useAction(() => api.post("/routing/simulate", simulateBody(values)));
  const submit = async (e) => {
    e.preventDefault();
    setResult((await sim.run()) || null);
  };
  const err = (name) => SIM_FIELDS[name].map((f) => fieldError(sim.error, f)).find(Boolean) || "";
  return html`<section class="card" aria-labelledby="simulator">
    <h2 id="simulator">Simulator</h2>
    <p class="muted">What the router would do with a request right now. Nothing is sent and nothing is learned.</p>
    <form onSubmit=${submit} novalidate aria-label="simulate a request">
      <${Field} label="Message" name="sim-message" type="textarea" value=${values.message} onInput=${set("message")}
        error=${err("message")} hint="optional: its size (and any directives) count as on a real request" />
      <div class="form-grid">
        <${Field} label="Mode" name="sim-mode" type="select" options=${[{ value: "", label: "default" }, ...modes]}
          value=${values.mode} onInput=${set("mode")} error=${err("mode")} />
        <${Field} label="Max budget (USD)" name="sim-budget" type="number" step="any" value=${values.max_budget_usd}
          onInput=${set("max_budget_usd")} error=${err("max_budget_usd")} />
        <${Field} label="Max latency (ms)" name="sim-latency" type="number" value=${values.max_latency_ms}
          onInput=${set("max_latency_ms")} error=${err("max_latency_ms")} />
        <${Field} label="Min weight" name="sim-min-weight" type="number" value=${values.min_weight}
          onInput=${set("min_weight")} error=${err("min_weight")} />
        <${Field} label="Model hint" name="sim-hint" value=${values.model_hint} onInput=${set("model_hint")}
          error=${err("model_hint")} hint="a model id or alias" />
        <${Field} label="Input tokens" name="sim-tokens" type="number" value=${values.token_count}
          onInput=${set("token_count")} error=${err("token_count")} hint="without a message; empty = 500" />
        <${Field} label="Tenant" name="sim-tenant" value=${values.tenant_id} onInput=${set("tenant_id")}
          error=${err("tenant_id")} />
        <${Field} label="Seed" name="sim-seed" type="number" value=${values.seed} onInput=${set("seed")}
          error=${err("seed")} hint="the same seed, the same random draws" />
      </div>
      <${FormError} error=${sim.error} fields=${Object.values(SIM_FIELDS).flat()} />
      <button type="submit" class="primary" disabled=${sim.busy}>Simulate</button>
    </form>
    ${result && html`<${SimulationResult} result=${result} />`}
  </section>`;
}

function SimulationResult({ result }) {
  const candidates = result.candidates || [];
  const excluded = Object.entries(result.exclusions || {});
  const chosen = result.decision?.model_id;
  return html`<div class="sim-result" aria-live="polite">
    ${chosen
      ? html`<${Notice} kind="good">
          Chosen: <strong data-testid="chosen-model">${chosen}</strong>
          ${` on ${result.decision.provider_id}, estimated ${usd(result.decision.estimated_cost_usd)} — mode ${result.mode}, ${result.estimated_input_tokens} input tokens (${result.token_bucket}).`}
          <div class="muted">${result.decision.reason}</div>
        <//>`
      : html`<${Notice} kind="warn">${result.error}<//>`}
    <div class="table-wrap">
      <table>
        <caption>Candidates</caption>
        <thead>
          <tr>
            <th class="num">Rank</th><th>Model</th><th>Provider</th><th>Status</th><th class="num">Score</th>
            <th class="num">Est. cost</th><th class="num">Latency</th><th class="num">Error rate</th>
            <th class="num">Weight</th><th>Score parts (cost · latency · failure · weight)</th>
          </tr>
        </thead>
        <tbody>
          ${candidates.map(
            (c) => html`<tr key=${c.model_id} class=${c.model_id === chosen ? "chosen" : ""}
              aria-current=${c.model_id === chosen ? "true" : undefined}>
              <td class="num">${c.rank}</td>
              <td>${c.model_id}</td>
              <td>${c.provider_id}</td>
              <td>${c.model_id === chosen ? html`<strong>★ chosen</strong>` : "eligible"}</td>
              <td class="num">${c.score.toFixed(4)}</td>
              <td class="num">${usd(c.estimated_cost_usd)}</td>
              <td class="num">${Math.round(c.latency_ms)} ms</td>
              <td class="num">${(c.error_rate * 100).toFixed(1)} %</td>
              <td class="num">${c.weight}</td>
              <td class="muted">
                ${["cost", "latency", "failure", "weight"].map((k) => c.components[k].toFixed(2)).join(" · ")}
                ${c.bandit_sample !== undefined ? ` · sample ${c.bandit_sample.toFixed(3)}` : ""}
              </td>
            </tr>`,
          )}
          ${excluded.map(
            ([id, reason]) => html`<tr key=${`x-${id}`} class="excluded">
              <td class="num">—</td><td>${id}</td><td></td><td class="nowrap-cell">excluded: <code>${reason}</code></td>
              <td colspan="6"></td>
            </tr>`,
          )}
          ${candidates.length + excluded.length === 0 &&
          html`<tr><td colspan="10" class="muted">No model is registered.</td></tr>`}
        </tbody>
      </table>
    </div>
    ${result.fallbacks?.length ? html`<p class="muted">Fallback chain: ${result.fallbacks.join(" → ")}</p>` : ""}
  </div>`;
}

function RoutingPanel() {
  const catalogue = useLoad((signal) => api.get("/pipelines/stages", undefined, { signal }));
  const modes = modesOf(catalogue.data);
  return html`<section>
    <${PageHead} title="Routing" />
    <${ErrorBox} error=${catalogue.error} />
    <${RoutingConfig} modes=${modes} />
    <${Simulator} modes=${modes} />
  </section>`;
}

export default { id: "routing", title: "Routing", group: "Configure", view: RoutingPanel };
