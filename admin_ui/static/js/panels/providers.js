// Providers: the upstream APIs TokenHub routes to. Add, edit, enable/disable, delete; ask one which models it
// serves and register them; each provider's health and circuit breaker beside it. The API key is write-only:
// the server never returns it, the form only says where it is kept (cred_store).
import { api, seg } from "../api.js";
import { subscribe } from "../events.js";
import {
  Badge,
  compact,
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
import { useEffect, useState } from "../../vendor/preact-htm.js";
import { ModelDialog } from "./models/model_dialog.js";

const PAGE = 50;
const FIELDS = ["id", "type", "base_url", "api_key", "cred_store", "enabled"];
const CRED_STORES = [
  { value: "", label: "where keys go now (default)" },
  { value: "vault", label: "vault" },
  { value: "sealed", label: "sealed (data-dir key file)" },
  { value: "none", label: "none (no key)" },
];

function ProviderDialog({ provider, types, onSaved, onClose }) {
  const editing = !!provider;
  const [values, set] = useForm({
    id: provider?.id || "",
    type: provider?.type || types[0] || "openai",
    base_url: provider?.base_url || "",
    api_key: "",
    cred_store: "",
    enabled: provider ? provider.enabled : true,
  });
  const save = useAction(async () => {
    const body = compact({ ...values, id: undefined });
    body.enabled = values.enabled;
    if (editing) await api.patch(`/providers/${seg(provider.id)}`, body);
    else await api.post("/providers", { id: values.id, ...body });
    onSaved();
    onClose();
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  const err = (name) => fieldError(save.error, name);
  return html`<${Dialog} title=${editing ? `Edit provider ${provider.id}` : "Add provider"} onClose=${onClose}>
    <form onSubmit=${submit} novalidate aria-label=${editing ? "edit provider" : "add provider"}>
      <div class="form-grid">
        ${!editing &&
        html`<${Field} label="Provider id" name="provider-id" value=${values.id} onInput=${set("id")} error=${err("id")}
          required />`}
        <${Field} label="Type" name="provider-type" type="select" options=${types} value=${values.type}
          onInput=${set("type")} error=${err("type")} />
        <${Field} label="Base URL" name="provider-base-url" value=${values.base_url} onInput=${set("base_url")}
          error=${err("base_url")} placeholder="https://api.openai.com" />
        <${Field} label="API key" name="provider-api-key" type="password" autocomplete="off" value=${values.api_key}
          onInput=${set("api_key")} error=${err("api_key")}
          hint=${editing ? (provider.has_api_key ? "a key is stored; leave empty to keep it" : "no key stored") : "never shown again"} />
        <${Field} label="Key storage" name="provider-cred-store" type="select" options=${CRED_STORES}
          value=${values.cred_store} onInput=${set("cred_store")} error=${err("cred_store")} />
        <${Field} label="Enabled" name="provider-enabled" type="checkbox" value=${values.enabled}
          onInput=${set("enabled")} error=${err("enabled")} />
      </div>
      <${FormError} error=${save.error} fields=${FIELDS} />
      <div class="row dialog-actions">
        <button type="submit" class="primary" disabled=${save.busy}>${editing ? "Save" : "Add provider"}</button>
        <button type="button" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}

/** The provider's own model list, each with a button to register it. */
function Discovered({ providerId, providers, onClose }) {
  const found = useLoad((signal) => api.get(`/providers/${seg(providerId)}/discover`, undefined, { signal }), [providerId]);
  const [adding, setAdding] = useState(null);
  const models = found.data?.models || [];
  return html`<section class="card" aria-label=${`models of ${providerId}`}>
    <header class="row">
      <h2>Models ${providerId} serves</h2>
      <button class="ghost" onClick=${found.reload}>Ask again</button>
      <button class="ghost" onClick=${onClose}>Close</button>
    </header>
    <${Loading} when=${found.loading} />
    <${ErrorBox} error=${found.error} />
    ${found.data &&
    html`<p class="muted">${found.data.total} models, ${found.data.registered} registered.</p>
      <${Table}
        rowKey=${(m) => m.id}
        columns=${[
          { key: "id", label: "Upstream name" },
          { key: "owned_by", label: "Owner" },
          { key: "max_model_len", label: "Context", num: true, render: (m) => m.max_model_len || m.context_length || "—" },
          {
            key: "registered",
            label: "Registered",
            render: (m) => (m.registered ? html`as ${m.registered_as.join(", ")}` : html`<span class="muted">no</span>`),
          },
          {
            key: "add",
            label: "",
            sort: false,
            render: (m) => html`<button onClick=${() => setAdding(m)} aria-label=${`Add ${m.id} as a model`}>Add model</button>`,
          },
        ]}
        rows=${models}
        empty="The provider lists no model."
      />`}
    ${adding &&
    html`<${ModelDialog}
      providers=${providers}
      initial=${{
        id: adding.id,
        provider_id: providerId,
        upstream_model: adding.id,
        max_context_tokens: adding.max_model_len || adding.context_length || "",
      }}
      onSaved=${found.reload}
      onClose=${() => setAdding(null)}
    />`}
  </section>`;
}

/** A health badge; a provider that has had no traffic nor probe yet is not tracked. */
function tracked(state) {
  return state ? html`<${Badge} state=${state} />` : html`<span class="muted">no data yet</span>`;
}

function ProvidersPanel() {
  const [offset, setOffset] = useState(0);
  const list = useLoad((signal) => api.get("/providers", { limit: PAGE, offset }, { signal }), [offset]);
  const health = useLoad((signal) => api.get("/health", undefined, { signal }));
  const [dialog, setDialog] = useState(null); // {kind: "add"|"edit"|"delete", provider}
  const [discovering, setDiscovering] = useState(null);
  const toggle = useAction(async (p) => {
    await api.patch(`/providers/${seg(p.id)}`, { enabled: !p.enabled });
    list.reload();
  });
  useEffect(() => subscribe("health_change", health.reload), []);
  const byId = Object.fromEntries((health.data?.providers || []).map((h) => [h.provider_id, h]));
  const items = (list.data?.items || []).map((p) => ({
    ...p,
    state: byId[p.id]?.state || "",
    breaker: byId[p.id]?.breaker || "",
  }));
  const types = list.data?.types || [];
  const ids = items.map((p) => p.id);
  const reload = () => {
    list.reload();
    health.reload();
  };
  return html`<section>
    <${PageHead} title="Providers">
      <button class="primary" onClick=${() => setDialog({ kind: "add" })}>Add provider</button>
      <button onClick=${reload}>Refresh</button>
    <//>
    <${ErrorBox} error=${list.error || toggle.error} />
    <${Loading} when=${list.loading && !list.data} />
    <${Table}
      caption="Providers"
      rowKey=${(p) => p.id}
      columns=${[
        { key: "id", label: "Provider" },
        { key: "type", label: "Type" },
        { key: "base_url", label: "Base URL" },
        { key: "enabled", label: "Enabled", render: (p) => html`<${Badge} state=${p.enabled ? "enabled" : "disabled"} />` },
        { key: "cred_store", label: "Key", render: (p) => (p.has_api_key ? p.cred_store : "none") },
        { key: "source", label: "Source" },
        { key: "state", label: "Health", render: (p) => tracked(p.state) },
        { key: "breaker", label: "Breaker", render: (p) => tracked(p.breaker) },
        {
          key: "actions",
          label: "Actions",
          sort: false,
          render: (p) => html`<div class="row nowrap">
            <button onClick=${() => setDialog({ kind: "edit", provider: p })} aria-label=${`Edit ${p.id}`}>Edit</button>
            <button onClick=${() => toggle.run(p)} disabled=${toggle.busy} aria-label=${`${p.enabled ? "Disable" : "Enable"} ${p.id}`}>
              ${p.enabled ? "Disable" : "Enable"}
            </button>
            <button onClick=${() => setDiscovering(p.id)} aria-label=${`Discover models of ${p.id}`}>Discover models</button>
            <button class="danger" onClick=${() => setDialog({ kind: "delete", provider: p })} aria-label=${`Delete ${p.id}`}>
              Delete
            </button>
          </div>`,
        },
      ]}
      rows=${items}
      empty="No provider yet: add one."
    />
    ${list.data &&
    html`<${Pager} offset=${offset} limit=${PAGE} count=${items.length} total=${list.data.total} onPage=${setOffset} />`}
    ${discovering &&
    html`<${Discovered} key=${discovering} providerId=${discovering} providers=${ids} onClose=${() => setDiscovering(null)} />`}
    ${(dialog?.kind === "add" || dialog?.kind === "edit") &&
    html`<${ProviderDialog} provider=${dialog.provider} types=${types} onSaved=${reload} onClose=${() => setDialog(null)} />`}
    ${dialog?.kind === "delete" &&
    html`<${ConfirmDialog}
      title=${`Delete provider ${dialog.provider.id}?`}
      confirmLabel="Delete provider"
      onConfirm=${async () => {
        await api.del(`/providers/${seg(dialog.provider.id)}`);
        if (discovering === dialog.provider.id) setDiscovering(null);
        reload();
      }}
      onClose=${() => setDialog(null)}
    >
      Its models stay registered but are not routable until a provider with this id exists again.
    <//>`}
  </section>`;
}

export default { id: "providers", title: "Providers", group: "Configure", view: ProvidersPanel };
