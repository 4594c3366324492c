// Vault: whether provider keys are sealed and readable now, unlock (the first unlock sets the password), lock,
// and rotate the password. Refusals show the server's words (a wrong password, too many attempts).
import { api } from "../api.js";
import { Badge, ErrorBox, Field, html, Loading, Notice, PageHead, useAction, useForm, useLoad } from "../ui.js";
import { useState } from "../../vendor/preact-htm.js";

function VaultPanel() {
  const vault = useLoad((signal) => api.get("/vault", undefined, { signal }));
  const [notice, setNotice] = useState("");
  const lock = useAction(() => api.post("/vault/lock"));
  const status = vault.data;
  const after = (text) => {
    setNotice(text);
    vault.reload();
  };
  return html`<section>
    <${PageHead} title="Vault">
      <button onClick=${vault.reload}>Refresh</button>
    <//>
    <${ErrorBox} error=${vault.error} />
    <${Loading} when=${vault.loading && !vault.data} />
    ${notice && html`<${Notice} kind="good">${notice}<//>`}
    ${status &&
    html`<div class="card">
        <h2>Status</h2>
        <dl class="fields">
          <dt>Enabled</dt><dd>${status.enabled ? "yes" : "no (provider keys are sealed with the key file)"}</dd>
          <dt>State</dt><dd data-field="vault-state"><${Badge} state=${status.locked ? "locked" : "unlocked"} /></dd>
          <dt>Password set</dt><dd>${status.initialized ? "yes" : "no: the first unlock sets it"}</dd>
          <dt>Auto-lock</dt>
          <dd>${status.auto_lock_secs ? `after ${Math.round(status.auto_lock_secs / 60)} min unused` : "off"}
            ${status.auto_lock_in_secs !== null && status.auto_lock_in_secs !== undefined
              ? html` <span class="muted">(in ${Math.round(status.auto_lock_in_secs)} s)</span>`
              : ""}</dd>
          <dt>Sealed providers unavailable</dt>
          <dd>${status.locked_providers.length ? status.locked_providers.join(", ") : "none"}</dd>
          <dt>Secrets</dt><dd>${status.secrets?.length ? status.secrets.map((s) => html`<code>${s}</code> `) : "none"}</dd>
        </dl>
        ${!status.locked &&
        html`<div class="row">
          <button class="danger" disabled=${lock.busy}
            onClick=${async () => (await lock.run()) && after("The vault is locked.")}>Lock the vault</button>
        </div>`}
        <${ErrorBox} error=${lock.error} />
      </div>
      ${status.enabled && status.locked && html`<${Unlock} initialized=${status.initialized} onDone=${after} />`}
      ${status.enabled && status.initialized && html`<${Rotate} onDone=${after} />`}`}
  </section>`;
}

function Unlock({ initialized, onDone }) {
  const [values, set, reset] = useForm({ password: "", confirm: "" });
  const [mismatch, setMismatch] = useState("");
  const unlock = useAction(() => api.post("/vault/unlock", { password: values.password }));
  const submit = async (e) => {
    e.preventDefault();
    setMismatch(!initialized && values.password !== values.confirm ? "The two passwords differ." : "");
    if (!initialized && values.password !== values.confirm) return;
    const done = await unlock.run();
    reset();
    if (done) onDone(done.initialized ? "The vault password is set and the vault is unlocked." : "The vault is unlocked.");
  };
  return html`<form class="card" onSubmit=${submit} aria-label="unlock the vault">
    <h2>${initialized ? "Unlock" : "Set the vault password"}</h2>
    <div class="form-grid">
      <${Field} label="Vault password" name="vault-password" type="password" autocomplete="current-password"
        value=${values.password} onInput=${set("password")} required />
      ${!initialized &&
      html`<${Field} label="Repeat the password" name="vault-password-confirm" type="password"
        autocomplete="new-password" value=${values.confirm} onInput=${set("confirm")} error=${mismatch} required />`}
    </div>
    <${ErrorBox} error=${unlock.error} />
    <button type="submit" class="primary" disabled=${unlock.busy || !values.password}>Unlock</button>
  </form>`;
}

function Rotate({ onDone }) {
  const [values, set, reset] = useForm({ old_password: "", new_password: "", confirm: "" });
  const [mismatch, setMismatch] = useState("");
  const rotate = useAction(() =>
    api.post("/vault/rotate", { old_password: values.old_password, new_password: values.new_password }),
  );
  const submit = async (e) => {
    e.preventDefault();
    const differs = values.new_password !== values.confirm;
    setMismatch(differs ? "The two new passwords differ." : "");
    if (differs) return;
    const done = await rotate.run();
    if (done) {
      reset();
      onDone(`The vault password is changed; ${done.resealed_secrets} secret(s) re-sealed.`);
    }
  };
  return html`<form class="card" onSubmit=${submit} aria-label="change the vault password">
    <h2>Change the password</h2>
    <div class="form-grid">
      <${Field} label="Current password" name="old-password" type="password" autocomplete="current-password"
        value=${values.old_password} onInput=${set("old_password")} required />
      <${Field} label="New password" name="new-password" type="password" autocomplete="new-password"
        value=${values.new_password} onInput=${set("new_password")} hint="8 characters or more" required />
      <${Field} label="Repeat the new password" name="new-password-confirm" type="password" autocomplete="new-password"
        value=${values.confirm} onInput=${set("confirm")} error=${mismatch} required />
    </div>
    <${ErrorBox} error=${rotate.error} />
    <button type="submit" disabled=${rotate.busy}>Change password</button>
  </form>`;
}

export default { id: "vault", title: "Vault", group: "Security", view: VaultPanel };
