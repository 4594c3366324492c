// The "add model" dialog, shared by the Models panel and the Providers panel's discovered models (prefilled
// with the discovered name as the upstream model). The server validates; its errors show next to the field.
import { api } from "../../api.js";
import { compact, Dialog, Field, fieldError, FormError, html, useAction, useForm } from "../../ui.js";

const FIELDS = [
  "id",
  "provider_id",
  "kind",
  "weight",
  "input_per_1k",
  "output_per_1k",
  "max_context_tokens",
  "max_output_tokens",
  "upstream_model",
  "fallbacks",
];

/** A comma-separated list as the API's array (empty entries dropped). */
export function listOf(text) {
  return String(text || "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

export function ModelDialog({ initial = {}, providers = [], onSaved, onClose }) {
  const [values, set] = useForm({
    id: "",
    provider_id: providers[0] || "",
    kind: "chat",
    weight: 5,
    input_per_1k: "",
    output_per_1k: "",
    max_context_tokens: "",
    max_output_tokens: "",
    upstream_model: "",
    fallbacks: "",
    ...initial,
  });
  const save = useAction(async () => {
    const body = compact({ ...values, fallbacks: undefined });
    const fallbacks = listOf(values.fallbacks);
    if (fallbacks.length) body.fallbacks = fallbacks;
    const saved = await api.post("/models", body);
    onSaved(saved.model);
    onClose();
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  const err = (name) => fieldError(save.error, name);
  return html`<${Dialog} title="Add model" onClose=${onClose}>
    <form onSubmit=${submit} novalidate aria-label="add model">
      <div class="form-grid">
        <${Field} label="Model id" name="model-id" value=${values.id} onInput=${set("id")} error=${err("id")}
          hint="what clients send as model" required />
        <${Field} label="Provider" name="model-provider" type=${providers.length ? "select" : "text"}
          options=${providers} value=${values.provider_id} onInput=${set("provider_id")} error=${err("provider_id")} />
        <${Field} label="Kind" name="model-kind" type="select" options=${["chat", "embedding"]} value=${values.kind}
          onInput=${set("kind")} error=${err("kind")} />
        <${Field} label="Weight (0-10)" name="model-weight" type="number" value=${values.weight}
          onInput=${set("weight")} error=${err("weight")} />
        <${Field} label="Input $/1k tokens" name="model-input" type="number" step="any" value=${values.input_per_1k}
          onInput=${set("input_per_1k")} error=${err("input_per_1k")} />
        <${Field} label="Output $/1k tokens" name="model-output" type="number" step="any"
          value=${values.output_per_1k} onInput=${set("output_per_1k")} error=${err("output_per_1k")} />
        <${Field} label="Context window (tokens)" name="model-context" type="number" value=${values.max_context_tokens}
          onInput=${set("max_context_tokens")} error=${err("max_context_tokens")} hint="0 = unknown" />
        <${Field} label="Max output tokens" name="model-max-output" type="number" value=${values.max_output_tokens}
          onInput=${set("max_output_tokens")} error=${err("max_output_tokens")} hint="0 = unknown" />
        <${Field} label="Upstream name" name="model-upstream" value=${values.upstream_model}
          onInput=${set("upstream_model")} error=${err("upstream_model")} hint="what the provider is sent (empty: the id)" />
        <${Field} label="Fallbacks" name="model-fallbacks" value=${values.fallbacks} onInput=${set("fallbacks")}
          error=${err("fallbacks")} hint="model ids, comma-separated, tried in order" />
      </div>
      <${FormError} error=${save.error} fields=${FIELDS} />
      <div class="row dialog-actions">
        <button type="submit" class="primary" disabled=${save.busy}>Add model</button>
        <button type="button" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}
