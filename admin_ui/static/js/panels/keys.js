// API keys: the server-paged list with spend against budget, and create / edit / rotate / enable / disable /
// mark paid / revoke. A new or rotated secret is shown once, in a dialog; closing it drops it from the page.
import { api, seg } from "../api.js";
import { navigate } from "../router.js";
import {
  Badge,
  Dialog,
  ErrorBox,
  Field,
  html,
  Loading,
  Notice,
  PageHead,
  Pager,
  Table,
  compact,
  useAction,
  useForm,
  useLoad,
  usd,
  when,
} from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";

const PAGE = 25;
const SCOPES = ["chat", "plan", "embeddings"];

function KeysPanel({ route }) {
  const offset = Math.max(0, Number(route.query.offset) || 0);
  const keys = useLoad((signal) => api.get("/apikeys", { limit: PAGE, offset }, { signal }), [offset]);
  // One dialog at a time: {kind: "create" | "edit" | "rotate" | "revoke" | "secret", key, secret}
  const [dialog, setDialog] = useState(null);
  const close = () => setDialog(null);
  const done = () => {
    setDialog(null);
    keys.reload();
  };
  const toggle = useAction((key) => api.patch(`/apikeys/${seg(key.id)}`, { enabled: !key.enabled }));
  const paid = useAction((key) => api.post(`/apikeys/${seg(key.id)}/paid`));
  const act = (action) => async (key) => (await action.run(key)) && keys.reload();
  const rows = keys.data?.keys || [];
  return html`<section>
    <${PageHead} title="API keys">
      <button class="primary" onClick=${() => setDialog({ kind: "create" })}>New key</button>
      <button onClick=${keys.reload}>Refresh</button>
    <//>
    <${ErrorBox} error=${keys.error || toggle.error || paid.error} />
    <${Loading} when=${keys.loading && !keys.data} />
    <${Table}
      caption="Keys"
      rowKey=${(k) => k.id}
      rows=${rows}
      empty="No API key yet: create one to send traffic."
      columns=${[
        {
          key: "name",
          label: "Name",
          render: (k) => html`<span class="key-name">${k.name}</span><br /><code>${k.key_prefix}…</code>`,
        },
        { key: "tenant_id", label: "Tenant" },
        { key: "scopes", label: "Scopes", render: (k) => k.scopes.join(", ") },
        { key: "enabled", label: "State", render: (k) => html`<${Badge} state=${keyState(k)} />` },
        { key: "current_spend_usd", label: "Spend this month", render: (k) => html`<${SpendBar} apiKey=${k} />` },
        { key: "rate_limit_rpm", label: "Limits", render: limits },
        { key: "last_used_at", label: "Last used", render: (k) => when(k.last_used_at) },
        { key: "expires_at", label: "Expires", render: (k) => when(k.expires_at) },
        {
          key: "actions",
          label: "Actions",
          sort: false,
          render: (k) => html`<div class="row key-actions">
            <button onClick=${() => setDialog({ kind: "edit", key: k })} aria-label=${`Edit ${k.name}`}>Edit</button>
            <button onClick=${() => act(toggle)(k)} aria-label=${`${k.enabled ? "Disable" : "Enable"} ${k.name}`}>
              ${k.enabled ? "Disable" : "Enable"}
            </button>
            <button onClick=${() => setDialog({ kind: "rotate", key: k })} aria-label=${`Rotate ${k.name}`}>Rotate</button>
            ${k.monthly_budget_usd > 0 &&
            html`<button onClick=${() => act(paid)(k)} aria-label=${`Mark budget paid for ${k.name}`}>Paid</button>`}
            <button class="danger" onClick=${() => setDialog({ kind: "revoke", key: k })} aria-label=${`Revoke ${k.name}`}>
              Revoke
            </button>
          </div>`,
        },
      ]}
    />
    <${Pager} offset=${offset} limit=${PAGE} count=${rows.length} total=${keys.data?.total}
      onPage=${(o) => navigate("keys", [], { offset: o || "" })} />
    ${dialog?.kind === "create" && html`<${CreateKey} onClose=${close}
      onCreated=${(secret) => setDialog({ kind: "secret", secret })} />`}
    ${dialog?.kind === "edit" && html`<${EditKey} apiKey=${dialog.key} onClose=${close} onSaved=${done} />`}
    ${dialog?.kind === "rotate" && html`<${Confirm}
      title=${`Rotate ${dialog.key.name}`}
      verb="Rotate"
      onClose=${close}
      run=${() => api.post(`/apikeys/${seg(dialog.key.id)}/rotate`)}
      onDone=${(secret) => setDialog({ kind: "secret", secret })}
    >
      <p>A new secret replaces the current one; the current secret is refused from the next request on.</p>
    <//>`}
    ${dialog?.kind === "revoke" && html`<${Confirm}
      title=${`Revoke ${dialog.key.name}`}
      verb="Revoke"
      danger
      onClose=${close}
      run=${() => api.del(`/apikeys/${seg(dialog.key.id)}`)}
      onDone=${done}
    >
      <p>The key <code>${dialog.key.key_prefix}…</code> stops working at once. This cannot be undone.</p>
    <//>`}
    ${dialog?.kind === "secret" && html`<${SecretOnce} secret=${dialog.secret} onClose=${done} />`}
  </section>`;
}

function keyState(key) {
  if (key.expires_at && key.expires_at * 1000 < Date.now()) return "expired";
  return key.enabled ? "enabled" : "disabled";
}

function limits(key) {
  const rpm = key.rate_limit_rpm ? `${key.rate_limit_rpm.toLocaleString()} rpm` : "— rpm";
  const tpm = key.rate_limit_tpm ? `${key.rate_limit_tpm.toLocaleString()} tpm` : "— tpm";
  return html`<span class="nowrap">${rpm}</span><br /><span class="nowrap">${tpm}</span>`;
}

/** Month-to-date spend as a bar against the budget (a <meter>: its colour turns at 80 % and 100 %). */
function SpendBar({ apiKey }) {
  const spent = apiKey.current_spend_usd || 0;
  const budget = apiKey.monthly_budget_usd || 0;
  if (!budget) return html`<span>${usd(spent)} <span class="muted">(no budget)</span></span>`;
  return html`<div class="spend">
    <meter min="0" max=${budget} low=${budget * 0.8} high=${budget * 0.999} optimum="0" value=${Math.min(spent, budget)}
      aria-label=${`spend of ${apiKey.name}`}>${usd(spent)}</meter>
    <span>${usd(spent)} of ${usd(budget)}</span>
  </div>`;
}

/** The fields a create or edit form shares; `error` is the server's, shown next to the field it names. */
function KeyFields({ values, set, error, tenants }) {
  const fieldError = (name) => (error && error.field && error.field.split(".")[0] === name ? error.message : "");
  const scopes = values.scopes;
  const toggleScope = (scope) => (on) =>
    set("scopes")(on ? [...scopes, scope] : scopes.filter((s) => s !== scope));
  return html`<div class="form-grid">
    <${Field} label="Name" name="name" value=${values.name} onInput=${set("name")} error=${fieldError("name")} required />
    ${tenants &&
    html`<${Field} label="Tenant" name="tenant_id" type="select" value=${values.tenant_id} onInput=${set("tenant_id")}
      options=${tenants.map((t) => ({ value: t.id, label: t.name ? `${t.name} (${t.id})` : t.id }))}
      error=${fieldError("tenant_id")} />`}
    <${Field} label=${tenants ? "Expires in" : "New expiry (from now)"} name="expires_in" value=${values.expires_in}
      onInput=${set("expires_in")} hint="e.g. 720h, 30d, 1h30m; empty = never" error=${fieldError("expires_in")} />
    <${Field} label="Monthly budget (USD)" name="monthly_budget_usd" type="number" min="0" step="0.01"
      value=${values.monthly_budget_usd} onInput=${set("monthly_budget_usd")} hint="0 = no budget"
      error=${fieldError("monthly_budget_usd")} />
    <${Field} label="Requests per minute" name="rate_limit_rpm" type="number" min="0" step="1"
      value=${values.rate_limit_rpm} onInput=${set("rate_limit_rpm")} hint="0 = no limit"
      error=${fieldError("rate_limit_rpm")} />
    <${Field} label="Tokens per minute" name="rate_limit_tpm" type="number" min="0" step="1"
      value=${values.rate_limit_tpm} onInput=${set("rate_limit_tpm")} hint="0 = no limit"
      error=${fieldError("rate_limit_tpm")} />
  </div>
  <fieldset class=${`scopes ${fieldError("scopes") ? "invalid" : ""}`}>
    <legend>Scopes</legend>
    ${SCOPES.map(
      (scope) => html`<label class="check">
        <input type="checkbox" name="scopes" value=${scope} checked=${scopes.includes(scope)}
          onChange=${(e) => toggleScope(scope)(e.target.checked)} /> ${scope}
      </label>`,
    )}
    ${fieldError("scopes") && html`<small class="field-error" role="alert">${fieldError("scopes")}</small>`}
  </fieldset>`;
}

/** The numbers as numbers ("" from an emptied input means 0: no budget / no limit). */
function numbers(values) {
  const out = { ...values };
  for (const name of ["monthly_budget_usd", "rate_limit_rpm", "rate_limit_tpm"]) out[name] = Number(out[name] || 0);
  return out;
}

function CreateKey({ onClose, onCreated }) {
  const tenants = useLoad((signal) => api.get("/tenants", undefined, { signal }));
  const [values, set] = useForm({
    name: "",
    tenant_id: "default",
    expires_in: "",
    monthly_budget_usd: 0,
    rate_limit_rpm: 0,
    rate_limit_tpm: 0,
    scopes: ["chat", "plan"],
  });
  const create = useAction(async () => {
    const body = numbers(compact(values));
    body.scopes = values.scopes;
    const created = await api.post("/apikeys", body);
    onCreated(created.key);
  });
  const submit = (e) => {
    e.preventDefault();
    create.run();
  };
  return html`<${Dialog} title="New API key" onClose=${onClose}>
    <form onSubmit=${submit} aria-label="new API key">
      <${ErrorBox} error=${tenants.error} />
      <${KeyFields} values=${values} set=${set} error=${create.error} tenants=${tenants.data?.items || [{ id: "default" }]} />
      <${ErrorBox} error=${create.error} />
      <div class="row">
        <button type="submit" class="primary" disabled=${create.busy}>Create key</button>
        <button type="button" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}

function EditKey({ apiKey, onClose, onSaved }) {
  const [values, set] = useForm({
    name: apiKey.name,
    expires_in: "",
    monthly_budget_usd: apiKey.monthly_budget_usd,
    rate_limit_rpm: apiKey.rate_limit_rpm,
    rate_limit_tpm: apiKey.rate_limit_tpm,
    scopes: apiKey.scopes,
  });
  const [noExpiry, setNoExpiry] = useState(false);
  const save = useAction(async () => {
    const body = numbers(compact(values));
    body.scopes = values.scopes;
    if (noExpiry) body.expires_in = null;
    await api.patch(`/apikeys/${seg(apiKey.id)}`, body);
    onSaved();
  });
  const submit = (e) => {
    e.preventDefault();
    save.run();
  };
  return html`<${Dialog} title=${`Edit ${apiKey.name}`} onClose=${onClose}>
    <form onSubmit=${submit} aria-label="edit API key">
      <p class="muted">Expires: ${when(apiKey.expires_at)}. Changes apply from the next request.</p>
      <${KeyFields} values=${values} set=${set} error=${save.error} />
      ${apiKey.expires_at &&
      html`<${Field} label="Remove the expiry" name="no_expiry" type="checkbox" value=${noExpiry} onInput=${setNoExpiry} />`}
      <${ErrorBox} error=${save.error} />
      <div class="row">
        <button type="submit" class="primary" disabled=${save.busy}>Save</button>
        <button type="button" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}

/** A question before a change that cannot be taken back; `run` does it, `onDone(result.key)` follows. */
function Confirm({ title, verb, danger, run, onDone, onClose, children }) {
  const action = useAction(async () => onDone((await run())?.key));
  return html`<${Dialog} title=${title} onClose=${onClose}>
    ${children}
    <${ErrorBox} error=${action.error} />
    <div class="row">
      <button class=${danger ? "danger" : "primary"} disabled=${action.busy} onClick=${() => action.run()}>${verb}</button>
      <button onClick=${onClose}>Cancel</button>
    </div>
  <//>`;
}

/** The plaintext key, once. It lives only in this dialog's props: closing it drops the last reference. */
function SecretOnce({ secret, onClose }) {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
      setCopied("Copied to the clipboard.");
    } catch {
      setCopied("The browser refused the clipboard: select the key and copy it.");
    }
  };
  return html`<${Dialog} title="Your new API key" onClose=${onClose}>
    <${Notice} kind="warn">
      <strong>You will not see this key again.</strong> Store it now (a secrets manager, your deployment's
      environment): TokenHub keeps only its digest.
    <//>
    <label for="new-key-secret">API key</label>
    <div class="row secret-row">
      <input id="new-key-secret" class="secret" readonly value=${secret} onFocus=${(e) => e.target.select()} />
      <button onClick=${copy}>Copy</button>
    </div>
    ${copied && html`<p class="muted" role="status">${copied}</p>`}
    <div class="row">
      <button class="primary" onClick=${onClose}>I have stored it</button>
    </div>
  <//>`;
}

export default { id: "keys", title: "API keys", group: "Security", view: KeysPanel };
