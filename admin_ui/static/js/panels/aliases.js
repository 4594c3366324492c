// Aliases & fallbacks: names clients send as their model that TokenHub maps to weighted variants (with
// stickiness and a fallback chain), and each model's own fallback chain (tried first when it fails).
import { api, seg } from "../api.js";
import {
  Badge,
  ConfirmDialog,
  Dialog,
  ErrorBox,
  Field,
  fieldError,
  FormError,
  html,
  Loading,
  PageHead,
  Pager,
  Table,
  useAction,
  useForm,
  useLoad,
} from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";
import { listOf } from "./models/model_dialog.js";

const PAGE = 50;
const STICKY = [
  { value: "", label: "none (each request draws)" },
  { value: "request", label: "request" },
  { value: "api_key", label: "api_key" },
  { value: "round_robin", label: "round_robin" },
];
const FIELDS = ["name", "variants", "sticky_by", "fallbacks", "enabled"];

/** The model ids offered as suggestions in the variant and fallback inputs. */
function ModelIds({ ids }) {
  return html`<datalist id="model-ids">${ids.map((id) => html`<option value=${id} />`)}</datalist>`;
}

function VariantRows({ variants, onChange, error }) {
  const update = (i, patch) => onChange(variants.map((v, j) => (j === i ? { ...v, ...patch } : v)));
  return html`<fieldset class=${`variants ${error ? "invalid" : ""}`}>
    <legend>Variants</legend>
    ${variants.map(
      (v, i) => html`<div class="row variant" key=${i}>
        <label for=${`variant-model-${i}`}>Model ${i + 1}</label>
        <input id=${`variant-model-${i}`} list="model-ids" value=${v.model_id}
          onInput=${(e) => update(i, { model_id: e.target.value })} />
        <label for=${`variant-weight-${i}`}>Weight ${i + 1}</label>
        <input id=${`variant-weight-${i}`} type="number" min="1" value=${v.weight}
          onInput=${(e) => update(i, { weight: e.target.value === "" ? "" : Number(e.target.value) })} />
        <button type="button" class="ghost" aria-label=${`Remove variant ${i + 1}`}
          onClick=${() => onChange(variants.filter((_, j) => j !== i))} disabled=${variants.length <= 1}>✕</button>
      </div>`,
    )}
    <button type="button" onClick=${() => onChange([...variants, { model_id: "", weight: 1 }])}>Add variant</button>
    ${error && html`<small class="field-error" role="alert">${error}</small>`}
  </fieldset>`;
}

function AliasDialog({ alias, onSaved, onClose }) {
  const editing = !!alias;
  const [values, set] = useForm({
    name: alias?.name || "",
    variants: alias ? alias.variants.map(({ model_id, weight }) => ({ model_id, weight })) : [{ model_id: "", weight: 1 }],
    sticky_by: alias?.sticky_by || "",
    fallbacks: (alias?.fallbacks || []).join(", "),
    enabled: alias ? alias.enabled : true,
  });
  const save = useAction(async () => {
    const body = {
      variants: values.variants.map((v) => ({ model_id: v.model_id.trim(), weight: v.weight })),
      sticky_by: values.sticky_by,
      fallbacks: listOf(values.fallbacks),
      enabled: values.enabled,
    };
    if (editing) await api.put(`/aliases/${seg(alias.name)}`, body);
    else await api.post("/aliases", { name: values.name.trim(), ...body });
    onSaved();
    onClose();
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  const err = (name) => fieldError(save.error, name);
  return html`<${Dialog} title=${editing ? `Edit alias ${alias.name}` : "Create alias"} onClose=${onClose}>
    <form onSubmit=${submit} novalidate aria-label=${editing ? "edit alias" : "create alias"}>
      ${!editing &&
      html`<${Field} label="Alias name" name="alias-name" value=${values.name} onInput=${set("name")} error=${err("name")}
        hint="what clients send as model" />`}
      <${VariantRows} variants=${values.variants} onChange=${set("variants")} error=${err("variants")} />
      <div class="form-grid">
        <${Field} label="Sticky by" name="alias-sticky" type="select" options=${STICKY} value=${values.sticky_by}
          onInput=${set("sticky_by")} error=${err("sticky_by")} />
        <${Field} label="Alias fallbacks" name="alias-fallbacks" value=${values.fallbacks} onInput=${set("fallbacks")}
          error=${err("fallbacks")} hint="model ids, comma-separated" list="model-ids" />
        <${Field} label="Enabled" name="alias-enabled" type="checkbox" value=${values.enabled} onInput=${set("enabled")} />
      </div>
      <${FormError} error=${save.error} fields=${FIELDS} />
      <div class="row dialog-actions">
        <button type="submit" class="primary" disabled=${save.busy}>${editing ? "Save alias" : "Create alias"}</button>
        <button type="button" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}

/** A model's fallback chain, edited in place as a comma-separated list. */
function FallbackEditor({ model, onSaved }) {
  const [text, setText] = useState(model.fallbacks.join(", "));
  const save = useAction(async () => {
    await api.patch(`/models/${seg(model.id)}`, { fallbacks: listOf(text) });
    onSaved();
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  return html`<form class=${`row inline-edit ${save.error ? "invalid" : ""}`} onSubmit=${submit} novalidate>
    <input value=${text} list="model-ids" aria-label=${`Fallbacks of ${model.id}`} onInput=${(e) => setText(e.target.value)} />
    <button type="submit" disabled=${save.busy || text === model.fallbacks.join(", ")}
      aria-label=${`Save fallbacks of ${model.id}`}>Save</button>
    ${save.error && html`<small class="field-error" role="alert">${save.error.message}</small>`}
  </form>`;
}

function AliasesPanel() {
  const [offset, setOffset] = useState(0);
  const [modelOffset, setModelOffset] = useState(0);
  const aliases = useLoad((signal) => api.get("/aliases", { limit: PAGE, offset }, { signal }), [offset]);
  const models = useLoad((signal) => api.get("/models", { limit: PAGE, offset: modelOffset }, { signal }), [modelOffset]);
  const ids = useLoad((signal) => api.get("/models", { limit: 1000 }, { signal })); // suggestions
  const [dialog, setDialog] = useState(null);
  const modelIds = (ids.data?.items || []).map((m) => m.id);
  const aliasRows = aliases.data?.items || [];
  const modelRows = models.data?.items || [];
  return html`<section>
    <${PageHead} title="Aliases & fallbacks">
      <button class="primary" onClick=${() => setDialog({ kind: "edit" })}>Create alias</button>
      <button onClick=${() => (aliases.reload(), models.reload())}>Refresh</button>
    <//>
    <${ErrorBox} error=${aliases.error} />
    <${Loading} when=${aliases.loading && !aliases.data} />
    <${Table}
      caption="Aliases"
      rowKey=${(a) => a.name}
      columns=${[
        { key: "name", label: "Alias" },
        {
          key: "variants",
          label: "Variants (share)",
          sort: false,
          render: (a) => a.variants.map((v) => `${v.model_id} ${Math.round(v.share * 100)}%`).join(" · "),
        },
        { key: "sticky_by", label: "Sticky by", render: (a) => a.sticky_by || "—" },
        { key: "fallbacks", label: "Fallbacks", sort: false, render: (a) => a.fallbacks.join(" → ") || "—" },
        { key: "enabled", label: "Enabled", render: (a) => html`<${Badge} state=${a.enabled ? "enabled" : "disabled"} />` },
        {
          key: "actions",
          label: "Actions",
          sort: false,
          render: (a) => html`<div class="row nowrap">
            <button onClick=${() => setDialog({ kind: "edit", alias: a })} aria-label=${`Edit alias ${a.name}`}>Edit</button>
            <button class="danger" onClick=${() => setDialog({ kind: "delete", alias: a })}
              aria-label=${`Delete alias ${a.name}`}>Delete</button>
          </div>`,
        },
      ]}
      rows=${aliasRows}
      empty="No alias yet."
    />
    ${aliases.data &&
    html`<${Pager} offset=${offset} limit=${PAGE} count=${aliasRows.length} total=${aliases.data.total} onPage=${setOffset} />`}

    <h2>Model fallback chains</h2>
    <p class="muted">When a model fails first, escalation tries its fallbacks in order before the scored list.</p>
    <${ModelIds} ids=${modelIds} />
    <${ErrorBox} error=${models.error} />
    <${Table}
      caption="Fallbacks per model"
      rowKey=${(m) => m.id}
      columns=${[
        { key: "id", label: "Model" },
        { key: "kind", label: "Kind" },
        {
          key: "fallbacks",
          label: "Fallbacks (in order)",
          sort: false,
          render: (m) => html`<${FallbackEditor} key=${`${m.id}:${m.fallbacks.join()}`} model=${m} onSaved=${models.reload} />`,
        },
      ]}
      rows=${modelRows}
      empty="No model registered."
    />
    ${models.data &&
    html`<${Pager} offset=${modelOffset} limit=${PAGE} count=${modelRows.length} total=${models.data.total}
      onPage=${setModelOffset} />`}

    ${dialog?.kind === "edit" &&
    html`<${AliasDialog} alias=${dialog.alias} onSaved=${aliases.reload} onClose=${() => setDialog(null)} />`}
    ${dialog?.kind === "delete" &&
    html`<${ConfirmDialog}
      title=${`Delete alias ${dialog.alias.name}?`}
      confirmLabel="Delete alias"
      onConfirm=${async () => {
        await api.del(`/aliases/${seg(dialog.alias.name)}`);
        aliases.reload();
      }}
      onClose=${() => setDialog(null)}
    >
      Requests naming it are then treated like requests naming an unknown model.
    <//>`}
  </section>`;
}

export default { id: "aliases", title: "Aliases & fallbacks", group: "Configure", view: AliasesPanel };
