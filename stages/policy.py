"""policy: eligibility and multi-objective ranking; the decision names the ranked candidates and why."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pipeline.context import Candidate, RequestContext, RoutingDecision
from pipeline.errors import BudgetExceeded, InvalidRequest, NoEligibleModel, NotFound, TokenHubError, VaultLocked
from pipeline.model_ids import resolve_model_id
from pipeline.modes import Mode
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import AliasInfo, ApiKeyInfo, ModelInfo
from stages.aliases import AliasChooser
from stages.auth import key_budget_left
from stages.bandit import Bandit, thompson_order, token_bucket
from stages.scoring import (
    CLIENT_CONSTRAINTS,
    Constraints,
    ProviderStats,
    estimate_input_tokens,
    exclusion_reason,
    model_kind,
    rank,
    requested_output,
)

if TYPE_CHECKING:
    from pipeline.services import Services


class PolicyOptions(StageOptions):
    mode: Mode | None = Field(None, description="pin every request to this mode (overrides body and directives)")
    default_mode: Mode | None = Field(None, description="mode when the request names none")
    max_budget_usd: float | None = Field(None, ge=0, le=100, description="ceiling on the per-request budget")
    min_weight: int | None = Field(None, ge=0, le=10, description="floor on the model weight")


class Policy:
    def __init__(self, services: Services, options: PolicyOptions) -> None:
        self._services = services
        self._options = options
        self._aliases = AliasChooser()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        ctx.decision = self.decide(ctx)
        await call_next(ctx)

    def decide(self, ctx: RequestContext, bandit: Bandit | None = None) -> RoutingDecision:
        """The routing decision for `ctx`; `bandit` overrides the live one (simulation draws from a copy)."""
        services, opts = self._services, self._options
        routing, settings = services.snapshot.routing, services.settings
        policy = ctx.policy
        mode = opts.mode or policy.mode or opts.default_mode or routing.mode or settings.default_mode
        budget = policy.max_budget_usd or routing.max_budget_usd or settings.default_max_budget_usd
        if opts.max_budget_usd is not None:
            budget = min(budget, opts.max_budget_usd) if budget else opts.max_budget_usd
        latency_ms = policy.max_latency_ms or routing.max_latency_ms or settings.default_max_latency_ms
        min_weight = max(policy.min_weight, opts.min_weight or 0)
        request = ctx.request
        alias = self._resolve_alias(ctx)  # before eligibility: the chosen variant is then an ordinary hint
        tokens = estimate_input_tokens(request.messages, request.estimated_input_tokens)
        key_left = key_budget_left(services.key_ledger, ctx.api_key, time.time())  # 429 once spent (plan steps)
        max_tokens, n = requested_output(request.parameters)
        constraints = Constraints(
            mode,
            budget,
            min_weight,
            tokens,
            request.max_item_tokens,
            max_tokens=max_tokens,
            n=n,
            key_budget_usd=key_left,
        )

        health, adapters, skips = services.health, services.adapters, services.metrics.provider_skips
        kind = model_kind(request.operation)
        # Every adapter chats; another operation needs the adapter method that does it.
        supports = None if kind == "chat" else (lambda provider_id: hasattr(adapters.get(provider_id), "embed"))
        eligible, exclusions = [], {}
        only = ctx.only_models
        for model in services.snapshot.models.values():
            if model.kind != kind:
                continue  # another operation's model: not a candidate at all (and no skip metric per request)
            if only is not None and model.id not in only:
                continue  # a plan step pinned to other models: not a candidate at all
            reason = exclusion_reason(model, constraints, adapters.__contains__, health.unavailable_reason, supports)
            if reason == "no_adapter" and model.provider_id in services.vault_locked_providers:
                reason = "vault_locked"  # its provider key waits in the locked vault
            if reason is None:
                eligible.append(model)
            else:
                exclusions[model.id] = reason
                skips.labels(provider=model.provider_id, reason=reason).inc()
        if kind != "chat" and request.model_hint:
            eligible = self._pinned(request.model_hint, kind, eligible, exclusions, constraints, ctx.api_key)
        models = services.snapshot.models
        if not eligible and models and all(m.kind != kind for m in models.values()):  # only other kinds exist
            raise NoEligibleModel(
                f"no model of kind {kind!r} is registered: add one with POST /admin/v1/models"
                f' {{..., "kind": "{kind}"}}',
                client_constraint=False,
            )
        if not eligible:
            raise _no_eligible(exclusions, constraints, ctx.api_key)

        def stats(provider_id: str) -> ProviderStats:
            h = health.get(provider_id)
            return ProviderStats(h.avg_latency_ms, h.error_rate)

        candidates = rank(eligible, constraints, stats)
        if mode == "thompson":  # the bandit's draws decide the order; the scores above stay for explanation
            candidates = thompson_order(candidates, bandit or services.bandit, token_bucket(tokens))
        hint_note = self._apply_hint(ctx.request.model_hint, candidates, exclusions)
        fallbacks, chain_note = self._place_fallbacks(
            candidates, ctx.request.model_hint, hint_note == "hint", alias, exclusions
        )
        first = candidates[0]
        code = "routed-hint-exact" if hint_note == "hint" else f"routed-weight-{first.model.weight}"
        how = "ranked first" if not fallbacks or first.model.id != fallbacks[0] else "first of the fallback chain"
        reason = (
            f"{code}: {first.model.id} {how} of {len(candidates)} eligible in {mode} mode"
            f" (score {first.score:.3f}, est ${first.estimated_cost_usd:.6f}, weight {first.model.weight})"
        )
        if ctx.alias_from:
            reason += f"; alias {ctx.alias_from} -> {ctx.request.model_hint}"
        if hint_note and hint_note != "hint":
            reason += f"; {hint_note}"
        if chain_note:
            reason += f"; {chain_note}"
        if ctx.directives_applied:
            reason += "; " + _describe_directives(ctx.directives_applied)
        if exclusions:
            reason += "; excluded " + ", ".join(f"{m} ({why})" for m, why in sorted(exclusions.items()))
        return RoutingDecision(
            mode=mode,
            candidates=candidates,
            estimated_input_tokens=tokens,
            reason=reason,
            exclusions=exclusions,
            deadline=time.monotonic() + latency_ms / 1000,
            latency_budget_ms=latency_ms,
            fallbacks=fallbacks,
        )

    def _resolve_alias(self, ctx: RequestContext) -> AliasInfo | None:
        """An enabled alias named as the model is replaced by one of its variants (a disabled or unknown
        name is left alone). Snapshot lookup and a hash: no I/O."""
        hint = ctx.request.model_hint
        alias = self._services.snapshot.aliases.get(hint) if hint else None
        if alias is None or not alias.enabled:
            return None
        api_key = ctx.api_key
        sticky = ctx.client_request_id or ctx.request_id  # a client resending its own id keeps its variant
        variant = self._aliases.choose(alias, request_id=sticky, api_key_id=api_key.id if api_key else "")
        ctx.alias_from = alias.name
        ctx.request.model_hint = variant.model_id
        return alias

    def _place_fallbacks(
        self, candidates: list[Candidate], hint: str, hinted: bool, alias: AliasInfo | None, exclusions: dict[str, str]
    ) -> tuple[tuple[str, ...], str]:
        """Put the explicit fallback chain right after the first choice, before the rest of the scored list.
        The chain is the alias's, else the named model's, else the top-ranked model's. A named model that
        cannot serve still lends its chain, which then goes first. Returns (ids placed, a note for the reason)."""
        models = self._services.snapshot.models
        hint_id = resolve_model_id(hint.strip(), models) if hint.strip() else None
        named = models.get(hint_id) if hint_id else None
        chain = (alias.fallbacks if alias is not None else ()) or (named.fallbacks if named is not None else ())
        start = 1 if hinted else 0
        placed = _move_after(candidates, chain, start) if chain else ()
        if not placed and start == 0:  # nothing usable in the named chain: the scored winner's own chain
            chain, start = candidates[0].model.fallbacks, 1
            placed = _move_after(candidates, chain, start) if chain else ()
        if not chain:
            return (), ""
        head = candidates[0].model.id if start else (hint_id or hint)
        skipped = [f"{m}: {exclusions.get(m, 'not eligible')}" for m in chain if m not in placed and m != head]
        note = f"fallbacks after {head}: {', '.join(placed) or 'none eligible'}"
        return placed, note + (f" (skipped {', '.join(skipped)})" if skipped else "")

    def _pinned(
        self,
        hint: str,
        kind: str,
        eligible: list[ModelInfo],
        exclusions: dict[str, str],
        c: Constraints,
        key: ApiKeyInfo | None,
    ) -> list[ModelInfo]:
        """Outside chat a named model is a requirement, not a preference: embeddings of two models are not
        comparable, so no other model may answer in its place."""
        models = self._services.snapshot.models
        model_id = resolve_model_id(hint.strip(), models)
        if model_id is None:  # the edge answers 404 first; this covers a model deleted since
            raise NotFound(f"model {hint!r} does not exist", field="model")
        model = models[model_id]
        if model.kind != kind:
            raise InvalidRequest(
                f"model {model_id!r} is a {model.kind} model; this request needs a model of kind {kind!r}"
                " (or send model 'auto')",
                field="model",
            )
        chosen = [m for m in eligible if m.id == model_id]
        if not chosen:
            raise _no_eligible({model_id: exclusions.get(model_id, "not eligible")}, c, key)
        return chosen

    def _apply_hint(self, hint: str, candidates: list[Candidate], exclusions: dict[str, str]) -> str:
        """Move an eligible hinted model to the front. Returns "hint" when honoured, a note when not."""
        hint = hint.strip()
        if not hint:
            return ""
        models = self._services.snapshot.models
        hint = resolve_model_id(hint, models) or hint
        for index, candidate in enumerate(candidates):
            if candidate.model.id == hint:
                candidates.insert(0, candidates.pop(index))
                return "hint"
        other = models.get(hint)  # registered, but maybe of another kind (an embedding model named for chat)
        other_kind = other is not None and other.kind != candidates[0].model.kind
        why = exclusions.get(hint) or (f"{other.kind} model" if other is not None and other_kind else "not registered")
        return f"model_hint {hint!r} ignored ({why})"


def _move_after(candidates: list[Candidate], chain: tuple[str, ...], start: int) -> tuple[str, ...]:
    """Move the eligible models of `chain`, in chain order, to position `start` (in place); their ids."""
    pool = {c.model.id: c for c in candidates[start:]}
    placed = [pool.pop(model_id) for model_id in chain if model_id in pool]
    if placed:
        candidates[start:] = placed + [c for c in candidates[start:] if c.model.id in pool]
    return tuple(c.model.id for c in placed)


def _describe_directives(applied: dict[str, Any]) -> str:
    settings = " ".join(f"{k}={v}" for k, v in applied.items() if k != "ignored")
    ignored = applied.get("ignored") or []
    return f"@@tokenhub {settings}" + (f" (ignored: {', '.join(ignored)})" if ignored else "")


def _no_eligible(exclusions: dict[str, str], c: Constraints, key: ApiKeyInfo | None) -> TokenHubError:
    if key is not None and "key_budget_exceeded" in exclusions.values():
        # A model could serve it, but not within what the key has left this month: the key's 429.
        left = c.key_budget_usd
        return BudgetExceeded(
            budget_usd=key.monthly_budget_usd, spent_usd=key.monthly_budget_usd - left, too_costly=True
        )
    if "vault_locked" in exclusions.values():  # unlocking the vault may be all it takes: say so
        locked = sorted(m for m, why in exclusions.items() if why == "vault_locked")
        return VaultLocked(
            f"the vault is locked: {', '.join(locked)} need a provider key kept in it; an admin unlocks it"
            " (POST /admin/v1/vault/unlock)",
            exclusions=exclusions,
        )
    if not exclusions:
        return NoEligibleModel(
            "no models are registered: add a provider and a model through /admin/v1 (see GET /healthz)",
            client_constraint=False,
        )
    details = ", ".join(f"{m}: {why}" for m, why in sorted(exclusions.items()))
    client = all(why in CLIENT_CONSTRAINTS for why in exclusions.values())
    hint = (
        f" (budget ${c.max_budget_usd:g}, ~{c.input_tokens} input tokens, min_weight {c.min_weight})" if client else ""
    )
    return NoEligibleModel(
        f"no eligible model for this request{hint}: {details}", client_constraint=client, exclusions=exclusions
    )


SPEC = StageSpec(
    name="policy",
    factory=Policy,
    options=PolicyOptions,
    summary="Filters models by budget, context, weight and health, ranks them for the mode, applies model_hint.",
    required=True,
    after=("auth", "directives"),
)
