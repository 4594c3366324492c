// Tenants: the list (create one), and a tenant's pipeline editor — the ordered stages its requests run
// through, each with its options (a form from the stage's option schema, or JSON). Saving sends the whole
// definition; the server validates it and names the step at fault (stage_index), shown next to that step.
import { api, seg } from "../api.js";
import { href, navigate } from "../router.js";
import {
  ConfirmDialog,
  ErrorBox,
  Field,
  fieldError,
  FormError,
  html,
  Loading,
  Notice,
  PageHead,
  Pager,
  Table,
  useAction,
  useForm,
  useLoad,
  when,
} from "../ui.js";
import { useEffect, useState } from "../../vendor/preact-htm.js";
import { StageOptions } from "./tenants/stage_options.js";

const PAGE = 50;
let nextKey = 0; // a stable key per step while it is moved around

function withKeys(stages) {
  return stages.map((s) => ({ key: ++nextKey, stage: s.stage, with: s.with || {} }));
}

function definitionOf(steps) {
  return steps.map((s) => (Object.keys(s.with).length ? { stage: s.stage, with: s.with } : { stage: s.stage }));
}

/** The option a server message names: "stages[1] (rate_limit): rps: Input should be …" → "rps". */
function optionNamed(message) {
  const match = /^invalid pipeline: stages\[\d+\] \([^)]*\): ([A-Za-z0-9_]+):/.exec(message || "");
  return match ? match[1] : "";
}

function CreateTenant({ onCreated }) {
  const [values, set, reset] = useForm({ id: "", name: "" });
  const create = useAction(async () => {
    const made = await api.post("/tenants", { id: values.id.trim(), name: values.name.trim() });
    reset();
    onCreated(made.id);
  });
  const submit = (e) => {
    e.preventDefault();
    create.run();
  };
  return html`<form class="card" onSubmit=${submit} novalidate aria-label="create tenant">
    <h2>New tenant</h2>
    <div class="form-grid">
      <${Field} label="Tenant id" name="tenant-id" value=${values.id} onInput=${set("id")}
        error=${fieldError(create.error, "id")} />
      <${Field} label="Tenant name" name="tenant-name" value=${values.name} onInput=${set("name")}
        error=${fieldError(create.error, "name")} />
    </div>
    <${FormError} error=${create.error} fields=${["id", "name"]} />
    <button type="submit" class="primary" disabled=${create.busy}>Create tenant</button>
  </form>`;
}

function StepCard({ step, index, count, spec, error, onMove, onRemove, onOptions }) {
  const [jsonError, setJsonError] = useState("");
  const option = error ? optionNamed(error.message) : "";
  const name = step.stage;
  return html`<li class=${`stage-step card ${error || jsonError ? "invalid" : ""}`} aria-label=${`stage ${index + 1}: ${name}`}>
    <header class="row">
      <span class="step-index">${index + 1}</span>
      <h3>${name}</h3>
      ${spec?.required && html`<span class="badge">required</span>`}
      <span class="muted step-summary">${spec?.summary || "unknown stage"}</span>
      <span class="row nowrap step-actions">
        <button type="button" onClick=${() => onMove(-1)} disabled=${index === 0} aria-label=${`Move ${name} up`}>↑</button>
        <button type="button" onClick=${() => onMove(1)} disabled=${index === count - 1} aria-label=${`Move ${name} down`}>↓</button>
        <button type="button" class="danger" onClick=${onRemove} aria-label=${`Remove ${name}`}>Remove</button>
      </span>
    </header>
    ${error && html`<div class="error" role="alert">${error.message}</div>`}
    ${jsonError && html`<div class="error" role="alert">${jsonError}</div>`}
    ${spec?.after?.length ? html`<small class="muted">after: ${spec.after.join(", ")}</small>` : ""}
    <${StageOptions}
      stageName=${name}
      idPrefix=${`step-${step.key}`}
      schema=${spec?.options || {}}
      value=${step.with}
      onChange=${onOptions}
      onJsonError=${setJsonError}
      optionError=${(opt) => (opt === option ? error.message : "")}
    />
  </li>`;
}

function PipelineEditor({ tenantId, onChanged }) {
  const loaded = useLoad((signal) => api.get(`/tenants/${seg(tenantId)}/pipeline`, undefined, { signal }), [tenantId]);
  const catalogue = useLoad((signal) => api.get("/pipelines/stages", undefined, { signal }));
  const [steps, setSteps] = useState(null);
  const [adding, setAdding] = useState("");
  const [saved, setSaved] = useState("");
  const [reverting, setReverting] = useState(false);
  const [custom, setCustom] = useState(false);
  useEffect(() => {
    if (!loaded.data) return;
    setSteps(withKeys(loaded.data.stages));
    setCustom(loaded.data.custom);
  }, [loaded.data]);
  const save = useAction(async () => {
    await api.put(`/tenants/${seg(tenantId)}/pipeline`, { stages: definitionOf(steps) });
    loaded.reload(); // the definition as saved (record added when left out) becomes what "discard" returns to
    setSaved("Saved: the tenant's next request runs through this pipeline.");
    onChanged();
  });
  const specs = Object.fromEntries((catalogue.data?.stages || []).map((s) => [s.stage, s]));
  const edit = (next) => {
    save.setError(null); // an index in an old error would point at the wrong step now
    setSaved("");
    setSteps(next);
  };
  const move = (i, by) => {
    const next = [...steps];
    [next[i], next[i + by]] = [next[i + by], next[i]];
    edit(next);
  };
  const present = new Set((steps || []).map((s) => s.stage));
  const addable = (catalogue.data?.stages || []).filter((s) => !present.has(s.stage)).map((s) => s.stage);
  const add = () => {
    const name = adding || addable[0];
    if (!name) return;
    const at = steps.findIndex((s) => s.stage === "dispatch"); // dispatch stays innermost
    const next = [...steps];
    next.splice(at < 0 ? next.length : at, 0, ...withKeys([{ stage: name }]));
    setAdding("");
    edit(next);
  };
  const stepError = (i) => (save.error && save.error.body?.error?.stage_index === i ? save.error : null);
  const general = save.error && save.error.body?.error?.stage_index === undefined ? save.error : null;
  if (loaded.error) return html`<${ErrorBox} error=${loaded.error} />`;
  if (!steps || !catalogue.data) return html`<${Loading} when=${true} />`;
  return html`<section aria-labelledby="pipeline-title">
    <header class="row">
      <h2 id="pipeline-title">Pipeline of ${tenantId}</h2>
      <span class="badge">${custom ? "custom" : "default"}</span>
    </header>
    <p class="muted">Outermost first: each stage runs around the ones below it. <code>record</code> comes first and
      <code>dispatch</code> last.</p>
    <${ErrorBox} error=${catalogue.error} />
    <ol class="stage-list">
      ${steps.map(
        (step, i) => html`<${StepCard}
          key=${step.key}
          step=${step}
          index=${i}
          count=${steps.length}
          spec=${specs[step.stage]}
          error=${stepError(i)}
          onMove=${(by) => move(i, by)}
          onRemove=${() => edit(steps.filter((_, j) => j !== i))}
          onOptions=${(opts) => edit(steps.map((s, j) => (j === i ? { ...s, with: opts } : s)))}
        />`,
      )}
    </ol>
    <div class="row">
      <label for="add-stage">Stage to add</label>
      <select id="add-stage" value=${adding || addable[0] || ""} onChange=${(e) => setAdding(e.target.value)}
        disabled=${!addable.length}>
        ${addable.map((name) => html`<option value=${name}>${name}</option>`)}
      </select>
      <button type="button" onClick=${add} disabled=${!addable.length}>Add stage</button>
    </div>
    <${ErrorBox} error=${general} />
    ${saved && html`<${Notice} kind="good">${saved}<//>`}
    <div class="row">
      <button class="primary" onClick=${() => save.run()} disabled=${save.busy}>Save pipeline</button>
      <button onClick=${() => edit(withKeys(loaded.data.stages))}>Discard changes</button>
      <button class="danger" onClick=${() => setReverting(true)} disabled=${!custom}>Revert to default</button>
    </div>
    ${reverting &&
    html`<${ConfirmDialog}
      title=${`Revert ${tenantId} to the default pipeline?`}
      confirmLabel="Revert to default"
      onConfirm=${async () => {
        await api.del(`/tenants/${seg(tenantId)}/pipeline`);
        setSaved("");
        loaded.reload();
        onChanged();
      }}
      onClose=${() => setReverting(false)}
    >
      The tenant's custom stages and options are deleted; its next request runs through the default pipeline.
    <//>`}
  </section>`;
}

function TenantsPanel({ route }) {
  const selected = route.path[0] || "";
  const [offset, setOffset] = useState(0);
  const list = useLoad((signal) => api.get("/tenants", { limit: PAGE, offset }, { signal }), [offset, selected]);
  const rows = list.data?.items || [];
  return html`<section>
    <${PageHead} title="Tenants">
      <button onClick=${list.reload}>Refresh</button>
    <//>
    <${ErrorBox} error=${list.error} />
    <${Loading} when=${list.loading && !list.data} />
    <${Table}
      caption="Tenants"
      rowKey=${(t) => t.id}
      columns=${[
        { key: "id", label: "Tenant", render: (t) => html`<a href=${href("tenants", [t.id])}>${t.id}</a>` },
        { key: "name", label: "Name" },
        { key: "custom_pipeline", label: "Pipeline", render: (t) => (t.custom_pipeline ? "custom" : "default") },
        { key: "created_at", label: "Created", render: (t) => when(t.created_at) },
      ]}
      rows=${rows}
    />
    ${list.data &&
    html`<${Pager} offset=${offset} limit=${PAGE} count=${rows.length} total=${list.data.total} onPage=${setOffset} />`}
    <${CreateTenant} onCreated=${(id) => navigate("tenants", [id])} />
    ${selected && html`<${PipelineEditor} key=${selected} tenantId=${selected} onChanged=${list.reload} />`}
  </section>`;
}

export default { id: "tenants", title: "Tenants", group: "Configure", view: TenantsPanel };
