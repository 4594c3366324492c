"""Configuration as code, applied: a validated document (config_file.py) becomes a declarative upsert of what it
names, checked against the configuration it will produce and written in ONE SQLite transaction on the store's
thread; then the request path's snapshot is swapped once. A document that fails any check changes nothing.

What the file does not name is left alone, unless it sets ``prune: true``: then providers, models and aliases
it does not name are removed (tenants and API keys never are). An API key is matched by name: created once
(its plaintext written to TOKENHUB_CONFIG_KEYS_FILE, never logged), afterwards only its scopes, budget and
limits follow the file. Every apply is audited (actor ``config-file``) and published as an ``admin_action``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from adapters.base import normalize_base_url
from admin_ui.aliases import alias_from_body, check_alias_against
from admin_ui.common import parse_duration
from admin_ui.config_file import ConfigDocument, check_pipelines, read_config_file, read_credentials_file
from admin_ui.models import check_model, model_from_body
from admin_ui.providers import key_to_write
from admin_ui.routing import routing_defaults
from pipeline.errors import ConfigFileInvalid, TokenHubError
from pipeline.services import Services
from pipeline.tenants import TenantPipelines
from pipeline.types import ModelInfo, ProviderInfo
from store import api_keys, audit
from store.config_store import DEFAULT_TENANT, ConfigSnapshot, ConfigStore
from store.vault import Vault

__all__ = ["KINDS", "ApplyTarget", "ConfigApplier", "NoConfigFile", "apply_document"]

log = structlog.get_logger("tokenhub.config_file")
KINDS = ("providers", "models", "aliases", "routing", "tenants", "api_keys")
Op = Callable[[], object]


@dataclass(slots=True)
class _Plan:
    """The writes a document needs, in order, and what they amount to."""

    ops: list[Op] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {k: {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0} for k in KINDS}
    )
    problems: list[dict[str, Any]] = field(default_factory=list)
    new_keys: dict[str, str] = field(default_factory=dict, repr=False)  # name -> plaintext, filled by the ops
    touched_keys: list[str] = field(default_factory=list)  # ids of existing keys whose limits changed
    warnings: list[str] = field(default_factory=list)

    def count(self, kind: str, outcome: str, op: Op | None = None) -> None:
        self.counts[kind][outcome] += 1
        if op is not None:
            self.ops.append(op)


@dataclass(frozen=True, slots=True)
class ApplyTarget:
    """What the apply writes to and must not break."""

    store: ConfigStore
    vault: Vault
    env_providers: frozenset[str]
    pipelines: dict[str, list[dict[str, Any]]]  # tenant id -> validated definition
    keys_file: Path | None  # None: a dry run (`tokenhub config check`), new keys are not saved anywhere


def apply_document(doc: ConfigDocument, target: ApplyTarget) -> dict[str, Any]:
    """Check ``doc`` against the stored configuration and write it, all on the store's thread (so no admin
    write interleaves). Raises ConfigFileInvalid, having written nothing."""
    store = target.store
    current = store.load_snapshot()
    plan = _Plan()
    _plan_providers(doc, current, target, plan)
    _plan_models_and_aliases(doc, current, target, plan)
    _plan_routing(doc, current, target, plan)
    _plan_tenants(doc, current, target, plan)
    _plan_api_keys(doc, current, target, plan)
    if doc.body.prune:
        _plan_prune(doc, current, target, plan)
    if plan.problems:
        raise ConfigFileInvalid(doc.file, plan.problems[:20])
    if plan.ops:

        def write_all() -> None:
            for op in plan.ops:
                op()
            if plan.new_keys and target.keys_file is not None:  # in the transaction: unsaved keys are not created
                _save_new_keys(target.keys_file, plan.new_keys)

        store.atomically(write_all)
    return {
        "file": doc.file,
        "source": doc.source,
        "changed": bool(plan.ops),
        "counts": plan.counts,
        "api_keys_created": sorted(plan.new_keys),
        "keys_file": str(target.keys_file) if plan.new_keys and target.keys_file else None,
        "warnings": plan.warnings,
        "touched_key_ids": plan.touched_keys,
    }


def _problem(plan: _Plan, doc: ConfigDocument, path: tuple[str | int, ...], exc: TokenHubError | str) -> None:
    if isinstance(exc, TokenHubError):
        plan.problems.extend(doc.problem((*path, exc.field) if exc.field else path, exc.message).problems)
    else:
        plan.problems.extend(doc.problem(path, exc).problems)


def _plan_providers(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    store = target.store
    records = {r["id"]: r for r in store.list_providers()}
    for index, body in enumerate(doc.body.providers):
        provider = ProviderInfo(
            body.id, body.type, normalize_base_url(body.base_url), body.enabled, autoload_models=body.autoload_models
        )
        record, stored = records.get(body.id), current.providers.get(body.id)
        cred_store = record["cred_store"] if record else "none"
        resolved = doc.provider_keys.get(body.id)
        moving = body.cred_store is not None and body.cred_store != cred_store
        wanted = resolved if resolved is not None and (moving or stored is None or stored.api_key != resolved) else None
        if wanted is not None and cred_store == "vault" and not moving and not target.vault.unlocked:
            # Sealed under the locked vault: it cannot be compared, and a restart must not be refused for it.
            plan.warnings.append(f"provider {body.id!r}: the vault is locked, its key was left as stored")
            wanted = None
        ref = "api_key_env" if body.api_key_env else "api_key_file" if body.api_key_file else "api_key"
        try:
            api_key = key_to_write(body.cred_store, wanted, cred_store, store.key_home, target.vault)
        except TokenHubError as exc:
            _problem(plan, doc, ("providers", index), exc)
            continue
        if api_key and store.key_home == "vault" and not target.vault.unlocked:
            _problem(
                plan,
                doc,
                ("providers", index, ref),
                f"provider {body.id!r}: its key goes into the vault, which is locked: unlock it (POST"
                " /admin/v1/vault/unlock) or set TOKENHUB_VAULT_PASSWORD, then apply again",
            )
            continue
        same = stored is not None and (stored.type, stored.base_url, stored.enabled, stored.autoload_models) == (
            provider.type,
            provider.base_url,
            provider.enabled,
            provider.autoload_models,
        )
        upsert = _bind(store.upsert_provider, provider, api_key=api_key)
        outcome = "created" if stored is None else "unchanged" if same and api_key is None else "updated"
        plan.count("providers", outcome, None if outcome == "unchanged" else upsert)


def _plan_models_and_aliases(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    """Models and aliases are checked against the configuration the file produces (what it names, plus what
    stays), so a model may fall back to, and an alias point at, a model declared in the same file."""
    store, body = target.store, doc.body
    prune = body.prune
    models = {m.id: _model(m) for m in body.models}
    aliases = {a.name: alias_from_body(a.name, a) for a in body.aliases}
    kept_providers = {p.id: p.type for p in current.providers.values() if not prune or p.id in target.env_providers}
    provider_types = {**kept_providers, **{p.id: p.type for p in body.providers}}
    future_models = {**({} if prune else current.models), **models}
    future_aliases = {**({} if prune else current.aliases), **aliases}
    for index, model in enumerate(models.values()):
        if model.provider_id not in provider_types:
            _problem(
                plan,
                doc,
                ("models", index, "provider_id"),
                f"provider {model.provider_id!r} does not exist: declare it under providers",
            )
            continue
        try:
            check_model(model, provider_types=provider_types, models=future_models, aliases=future_aliases)
        except TokenHubError as exc:
            _problem(plan, doc, ("models", index), exc)
            continue
        existing = current.models.get(model.id)
        outcome = "created" if existing is None else "unchanged" if _same_model(existing, model) else "updated"
        plan.count("models", outcome, None if outcome == "unchanged" else _bind(store.upsert_model, model))
    for index, alias in enumerate(aliases.values()):
        try:
            check_alias_against(alias, future_models)
        except TokenHubError as exc:
            _problem(plan, doc, ("aliases", index), exc)
            continue
        existing_alias = current.aliases.get(alias.name)
        outcome = "created" if existing_alias is None else "unchanged" if existing_alias == alias else "updated"
        plan.count("aliases", outcome, None if outcome == "unchanged" else _bind(store.upsert_alias, alias))


def _plan_prune(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    """What the file does not name goes, after every upsert: aliases (they name models), then models, then
    providers (the environment's stay: they are not the store's to remove)."""
    store, body = target.store, doc.body
    for name in sorted(set(current.aliases) - {a.name for a in body.aliases}):
        plan.count("aliases", "deleted", _bind(store.delete_alias, name))
    for model_id in sorted(set(current.models) - {m.id for m in body.models}):
        plan.count("models", "deleted", _bind(store.delete_model, model_id))
    for provider_id in sorted(set(current.providers) - {p.id for p in body.providers} - target.env_providers):
        plan.count("providers", "deleted", _bind(store.delete_provider, provider_id))


def _plan_routing(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    routing = doc.body.routing
    if routing is None:
        return
    wanted = routing_defaults(routing, current.routing)
    same = wanted == current.routing
    plan.count("routing", "unchanged" if same else "updated", None if same else _bind(target.store.set_routing, wanted))


def _plan_tenants(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    store = target.store
    for tenant in doc.body.tenants:
        existing = current.tenants.get(tenant.id)
        ops: list[Op] = []
        if existing is None:
            ops.append(_bind(store.create_tenant, tenant.id, tenant.name))
        elif existing.name != tenant.name:
            ops.append(_bind(store.rename_tenant, tenant.id, tenant.name))
        definition = target.pipelines.get(tenant.id)
        if definition is not None and current.pipelines.get(tenant.id) != definition:
            ops.append(_bind(store.set_pipeline, tenant.id, definition))
        outcome = "created" if existing is None else "updated" if ops else "unchanged"
        plan.count("tenants", outcome)
        plan.ops.extend(ops)


def _plan_api_keys(doc: ConfigDocument, current: ConfigSnapshot, target: ApplyTarget, plan: _Plan) -> None:
    store = target.store
    tenants = set(current.tenants) | {t.id for t in doc.body.tenants} | {DEFAULT_TENANT}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in api_keys.list_page(store.db, 1_000_000, 0)[0]:
        by_name.setdefault(record["name"], []).append(record)
    for index, key in enumerate(doc.body.api_keys):
        if key.tenant_id not in tenants:
            _problem(plan, doc, ("api_keys", index, "tenant_id"), f"tenant {key.tenant_id!r} does not exist")
            continue
        scopes = list(dict.fromkeys(key.scopes))
        limits = {
            "scopes": scopes,
            "monthly_budget_usd": key.monthly_budget_usd,
            "rate_limit_rpm": key.rate_limit_rpm,
            "rate_limit_tpm": key.rate_limit_tpm,
        }
        existing = by_name.get(key.name, [])
        if len(existing) > 1:
            _problem(
                plan,
                doc,
                ("api_keys", index, "name"),
                f"{len(existing)} API keys are named {key.name!r}: rename or revoke all but one so the file names one",
            )
            continue
        if existing:
            record = existing[0]
            if record["tenant_id"] != key.tenant_id:
                _problem(
                    plan,
                    doc,
                    ("api_keys", index, "tenant_id"),
                    f"API key {key.name!r} belongs to tenant {record['tenant_id']!r}; a key cannot move: revoke it"
                    " and apply again to create a new one",
                )
                continue
            changes = {k: v for k, v in limits.items() if record[k] != v}
            if changes:
                plan.touched_keys.append(record["id"])
            op = _bind(_update_key, store, record["id"], changes) if changes else None
            plan.count("api_keys", "updated" if changes else "unchanged", op)
            continue
        try:
            expires_at = time.time() + parse_duration(key.expires_in) if key.expires_in else None
        except TokenHubError as exc:
            _problem(plan, doc, ("api_keys", index, "expires_in"), exc.message)
            continue
        create = _bind(_create_key, plan, store, key.name, key.tenant_id, expires_at, limits)
        plan.count("api_keys", "created", create)


def _create_key(
    plan: _Plan, store: ConfigStore, name: str, tenant_id: str, expires_at: float | None, limits: dict[str, Any]
) -> None:
    plaintext, _ = api_keys.create(store.db, name=name, tenant_id=tenant_id, expires_at=expires_at, **limits)
    plan.new_keys[name] = plaintext


def _update_key(store: ConfigStore, key_id: str, changes: dict[str, Any]) -> None:
    api_keys.update(store.db, key_id, changes)  # store.db read now: the transaction's connection


def _save_new_keys(path: Path, new_keys: dict[str, str]) -> None:
    """Merge the new plaintexts into the keys file (JSON, name -> key), written whole with mode 0600. Runs
    inside the transaction: a file that cannot be written means the keys are not created."""
    try:
        existing = json.loads(path.read_text() or "{}") if path.exists() else {}
        if not isinstance(existing, dict):
            raise ValueError("not a JSON object")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            json.dump({**existing, **new_keys}, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        message = f"TOKENHUB_CONFIG_KEYS_FILE={path}: cannot save the new API keys ({reason}); nothing was changed"
        problem = {"line": None, "column": None, "path": "api_keys", "message": message}
        raise ConfigFileInvalid(str(path), [problem]) from None


def _model(body: Any) -> ModelInfo:
    return model_from_body(body)


def _same_model(stored: ModelInfo, wanted: ModelInfo) -> bool:
    return dataclasses.replace(stored, pricing_source=wanted.pricing_source) == wanted


def _bind(fn: Callable[..., object], *args: Any, **kwargs: Any) -> Op:
    return functools.partial(fn, *args, **kwargs)


class NoConfigFile(TokenHubError):
    status = 409
    type = "conflict"


class ConfigApplier:
    """Applies the configuration files to a starting or running TokenHub: at start (credentials file, then
    the config file), and on SIGHUP or POST /admin/v1/config/reload (the config file)."""

    def __init__(self, services: Services, pipelines: TenantPipelines) -> None:
        self._services = services
        self._pipelines = pipelines

    def apply_at_start(self) -> None:
        """Before serving, nothing else uses the store: run on this thread. A bad file raises (start-up is
        refused: a half-configured server is worse than one that says which line to fix)."""
        settings = self._services.settings
        documents: list[Callable[[], ConfigDocument | None]] = []
        if (credentials := settings.credentials_path) is not None:
            documents.append(functools.partial(read_credentials_file, credentials))
        if settings.config_file:
            documents.append(functools.partial(read_config_file, Path(settings.config_file)))
        store = self._services.config
        for read in documents:
            try:
                doc = read()
                if doc is None:
                    continue
                summary = apply_document(doc, self._target(doc))
            except ConfigFileInvalid as exc:
                audit.append(store.db, self._entry(exc.file, "start", 400, {"problems": exc.problems}))
                raise
            audit.append(store.db, self._entry(doc.file, "start", 200, summary))
            self._services.reload_config_blocking()
            self._pipelines.refresh()
            self._applied(summary, "start")

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Re-read TOKENHUB_CONFIG_FILE and apply it; ConfigFileInvalid (nothing changed) when it is bad."""
        settings, store = self._services.settings, self._services.config
        if not settings.config_file:
            raise NoConfigFile("no configuration file: start TokenHub with TOKENHUB_CONFIG_FILE set to reload one")
        path = Path(settings.config_file)
        try:
            doc = await asyncio.to_thread(read_config_file, path)
            summary = await store.call(apply_document, doc, self._target(doc))
        except ConfigFileInvalid as exc:
            await store.call(audit.append, store.db, self._entry(exc.file, trigger, 400, {"problems": exc.problems}))
            raise
        await store.call(audit.append, store.db, self._entry(doc.file, trigger, 200, summary))
        await self._services.reload_config()
        self._pipelines.refresh()
        return self._applied(summary, trigger)

    def _target(self, doc: ConfigDocument) -> ApplyTarget:
        services = self._services
        return ApplyTarget(
            store=services.config,
            vault=services.vault,
            env_providers=frozenset(services.env_providers),
            pipelines=check_pipelines(doc, self._pipelines.validate),
            keys_file=services.settings.config_keys_path,
        )

    def _entry(self, file: str, trigger: str, status: int, detail: dict[str, Any]) -> audit.AuditEntry:
        shown = {k: v for k, v in detail.items() if k != "touched_key_ids"}
        return audit.AuditEntry(
            timestamp=time.time(),
            actor="credentials-file" if file == str(self._services.settings.credentials_path) else "config-file",
            client_ip="",
            method=trigger.upper(),
            route="config-file",
            action="config_apply",
            target=file[-300:],
            detail=json.dumps(audit.redact(shown), separators=(",", ":"))[: audit.MAX_DETAIL_CHARS],
            status=status,
            request_id="",
        )

    def _applied(self, summary: dict[str, Any], trigger: str) -> dict[str, Any]:
        """Forget the in-memory limits of keys the file changed, log, publish; the summary as answered."""
        services = self._services
        for key_id in summary.pop("touched_key_ids"):
            services.key_limits.forget(key_id)
        changes = ", ".join(
            f"{kind} {outcome} {n}"
            for kind, c in summary["counts"].items()
            for outcome, n in c.items()
            if n and outcome != "unchanged"
        )
        log.info("config_applied", file=summary["file"], trigger=trigger, changes=changes or "none")
        for warning in summary["warnings"]:
            log.warning("config_apply_warning", file=summary["file"], warning=warning)
        if summary["api_keys_created"]:
            log.info("config_api_keys_created", names=summary["api_keys_created"], written_to=summary["keys_file"])
        services.events.publish(
            "admin_action", action="config_apply", resource=summary["source"], path=summary["file"], reason=changes
        )
        return summary
