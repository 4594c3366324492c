// A stage's options as a form built from its JSON schema (GET /pipelines/stages), with a JSON textarea for
// what a form cannot show (objects, lists) or when the operator prefers it. Unset options are left out of
// the definition, so the stage's default applies.
import { Field, html } from "../../ui.js";
import { useState } from "../../../vendor/preact-htm.js";

/** {kind: "enum"|"number"|"integer"|"boolean"|"string"|"json"|"other", choices?} of one option's schema. */
export function optionKind(schema) {
  const variants = schema.anyOf ? schema.anyOf.filter((v) => v.type !== "null") : [schema];
  const one = variants.length === 1 ? variants[0] : null;
  if (!one) return { kind: "other" };
  if (one.enum) return { kind: "enum", choices: one.enum };
  if (["number", "integer", "boolean", "string"].includes(one.type)) return { kind: one.type, range: one };
  if (one.$ref || one.type === "object") return { kind: "json" }; // e.g. the policy stage's reward: its own JSON box
  return { kind: "other" };
}

/** Whether every option of the stage fits a form field. */
export function formable(options) {
  return Object.values(options || {}).every((s) => optionKind(s).kind !== "other");
}

function hintOf(schema, range) {
  const bits = [schema.description];
  if (schema.default !== undefined && schema.default !== null) bits.push(`default ${schema.default}`);
  const low = range?.minimum ?? range?.exclusiveMinimum;
  const high = range?.maximum ?? range?.exclusiveMaximum;
  if (low !== undefined || high !== undefined) bits.push(`range ${low ?? "…"}–${high ?? "…"}`);
  return bits.filter(Boolean).join("; ");
}

/** What an input holds, as the option's value ("" = unset; text that is not a number is kept for the server). */
function parse(kind, text) {
  if (text === "") return undefined;
  if (kind === "number" || kind === "integer") {
    const n = Number(text);
    return Number.isFinite(n) ? n : text;
  }
  if (kind === "boolean") return text === "true";
  if (kind === "json") {
    try {
      return JSON.parse(text);
    } catch {
      return text; // not JSON: sent as it is, and the server's refusal shows next to the option
    }
  }
  return text;
}

function OptionField({ id, name, schema, value, onChange, error }) {
  const { kind, choices, range } = optionKind(schema);
  const label = schema.title || name;
  const shown =
    value === undefined || value === null ? "" : kind === "json" && typeof value === "object" ? JSON.stringify(value) : String(value);
  const set = (text) => onChange(parse(kind, text));
  const hint = hintOf(schema, range);
  if (kind === "enum" || kind === "boolean") {
    const values = kind === "enum" ? choices : ["true", "false"];
    const options = [{ value: "", label: "(default)" }, ...values.map((v) => ({ value: String(v), label: String(v) }))];
    return html`<${Field} label=${label} name=${id} type="select" options=${options} value=${shown} onInput=${set}
      hint=${hint} error=${error} />`;
  }
  if (kind === "json") {
    return html`<${Field} label=${label} name=${id} type="textarea" value=${shown} onInput=${set}
      hint=${`${hint ? `${hint}; ` : ""}JSON`} error=${error} placeholder="(default)" spellcheck="false" />`;
  }
  return html`<${Field} label=${label} name=${id} type=${kind === "string" ? "text" : "number"} step="any"
    value=${shown} onInput=${set} hint=${hint} error=${error} placeholder="(default)" />`;
}

/**
 * The options editor of one step. `idPrefix` keeps input ids unique on the page; `optionError(name)` is the
 * server's complaint about that option, if any; `onJsonError` reports a textarea that does not parse.
 */
export function StageOptions({ stageName, idPrefix, schema, value, onChange, optionError, onJsonError }) {
  const names = Object.keys(schema || {});
  const [asJson, setAsJson] = useState(!formable(schema));
  const [text, setText] = useState(JSON.stringify(value || {}, null, 2));
  const editJson = (next) => {
    setText(next);
    try {
      const parsed = next.trim() ? JSON.parse(next) : {};
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object");
      onJsonError("");
      onChange(parsed);
    } catch {
      onJsonError("the options must be a JSON object, e.g. {\"rps\": 5}");
    }
  };
  const toggle = () => {
    if (!asJson) setText(JSON.stringify(value || {}, null, 2));
    else onJsonError("");
    setAsJson(!asJson);
  };
  if (names.length === 0 && Object.keys(value || {}).length === 0) {
    return html`<p class="muted">No options.</p>`;
  }
  return html`<div class="stage-options">
    ${asJson
      ? html`<${Field} label="Options (JSON)" name=${`${idPrefix}-json`} type="textarea" value=${text}
          onInput=${editJson} spellcheck="false" />`
      : html`<div class="form-grid">
          ${names.map(
            (name) => html`<${OptionField}
              key=${name}
              id=${`${idPrefix}-${name}`}
              name=${name}
              schema=${schema[name]}
              value=${value?.[name]}
              error=${optionError(name)}
              onChange=${(v) => {
                const next = { ...(value || {}) };
                if (v === undefined) delete next[name];
                else next[name] = v;
                onChange(next);
              }}
            />`,
          )}
        </div>`}
    ${formable(schema) &&
    html`<button type="button" class="ghost small" onClick=${toggle}
      aria-label=${`Edit ${stageName} options as ${asJson ? "a form" : "JSON"}`}>
      ${asJson ? "Edit as form" : "Edit as JSON"}
    </button>`}
  </div>`;
}
