"""The Router: the one routing decision, used by the policy stage, by plan orchestration and by the admin
simulator.

`decide` resolves the effective limits (request policy, tenant options, routing defaults, settings), an
alias to one of its variants, eligibility, the per-mode ranking (or the bandit's draws in thompson mode),
softmax exploration, the model hint and the fallback chain, and explains all of it in the reason. It reads
the current routing table, the health tracker and the bandit; it does no I/O. Its only side effects are
the skip counters and the draws of the live samplers, and a simulation turns both off (`observe=False`,
its own `bandit` view and `rng`).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.provider import Provider
from pipeline.context import Candidate, Policy, RoutingDecision
from pipeline.errors import BudgetExceeded, InvalidRequest, NoEligibleModel, NotFound, TokenHubError, VaultLocked
from pipeline.metrics import Metrics
from pipeline.model_ids import resolve_model_id
from pipeline.modes import Mode
from pipeline.objective import DEFAULT_REWARD, RewardConfig
from pipeline.settings import Settings
from pipeline.types import AliasInfo, ChatRequest, ModelInfo
from stages.aliases import AliasChooser
from stages.bandit import Bandit, thompson_order, token_bucket
from stages.expected_reward import Outlook, describe, expect
from stages.health import HealthTracker, ProviderHealth
from stages.model_disables import ModelDisables
from stages.routing_table import RoutingTable
from stages.scoring import (
    CLIENT_CONSTRAINTS,
    MEDIA_REASONS,
    MEDIA_TOKEN_SCHEMES,
    Constraints,
    ProviderStats,
    ScoreParts,
    estimate_input_tokens,
    exclusion_reason,
    media_input_tokens,
    model_kind,
    rank,
    requested_output,
    score_parts,
    softmax_probability,
    softmax_rank,
)
from store.config_store import ConfigSnapshot

__all__ = ["DEFAULT_OPTIONS", "Limits", "Router", "RoutingOptions", "media_needs", "model_inputs"]

_UNKNOWN_PROVIDER = ProviderHealth()  # never called yet: no latency, no errors
_NO_LIMITS = Constraints("normal", 0, 0, 0)  # no budget, weight or context to meet: what any request needs
_PIPELINE_LIMITS_KEPT = 64  # pipelines' resolved limits kept (one per tenant pipeline's policy options)


class RoutingOptions(BaseModel):
    """What a tenant's pipeline sets for routing (the policy stage's options). Validated like any stage's
    options; a plain model here because the Router, which the services build, must not import the stage
    machinery (that imports the services)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = Field(None, description="pin every request to this mode (overrides body and directives)")
    default_mode: Mode | None = Field(None, description="mode when the request names none")
    max_budget_usd: float | None = Field(None, ge=0, le=100, description="ceiling on the per-request budget")
    min_weight: int | None = Field(None, ge=0, le=10, description="floor on the model weight")
    reward: RewardConfig | None = Field(None, description="this tenant's routing objective (else the global one)")


DEFAULT_OPTIONS = RoutingOptions()


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective routing policy of one request, after every layer has had its say."""

    mode: str
    max_budget_usd: float  # 0 = no budget filter
    max_latency_ms: int
    min_weight: int
    objective: RewardConfig = DEFAULT_REWARD


class Router:
    def __init__(
        self,
        table: Callable[[], RoutingTable],
        *,
        health: HealthTracker,
        bandit: Bandit,
        settings: Settings,
        metrics: Metrics,
        rng: random.Random | None = None,
        disables: ModelDisables | None = None,
    ) -> None:
        self._table = table  # read at every decision: the services swap the table on reload
        self._health = health
        self._disables = disables or ModelDisables(disable_secs=0)  # models out of provider quota
        self._bandit = bandit
        self.settings = settings  # public: SIGHUP swaps it for the re-read one
        self._skips = metrics.provider_skips
        self.temperature = settings.exploration_temp
        self._rng = rng or random.Random(settings.bandit_seed or None)
        self._pipeline_limits: dict[int, tuple[RoutingOptions, Settings, Limits]] = {}  # for _limits_snapshot
        self._limits_snapshot: ConfigSnapshot | None = None

    def limits(self, policy: Policy, options: RoutingOptions = DEFAULT_OPTIONS) -> Limits:
        """Request policy, then the tenant's options (a pinned mode wins, a budget ceiling caps), then the
        stored routing defaults, then the settings."""
        return self._limits(policy, options, self._table().snapshot)

    def _limits(self, policy: Policy, options: RoutingOptions, snapshot: ConfigSnapshot) -> Limits:
        if policy.mode or policy.max_budget_usd or policy.max_latency_ms or policy.min_weight:
            return self._resolve_limits(policy, options, snapshot)
        # Most requests set no policy of their own: theirs is the pipeline's, resolved once per snapshot. Keyed
        # by the options' identity (the entry holds them, so the id is not reused while it is kept).
        kept = self._pipeline_limits
        if snapshot is not self._limits_snapshot or len(kept) >= _PIPELINE_LIMITS_KEPT:
            kept.clear()  # a new configuration (nothing kept holds an old snapshot), or options made per call
            self._limits_snapshot = snapshot
        settings = self.settings
        found = kept.get(id(options))
        if found is not None and found[0] is options and found[1] is settings:
            return found[2]
        limits = self._resolve_limits(policy, options, snapshot)
        kept[id(options)] = (options, settings, limits)
        return limits

    def _resolve_limits(self, policy: Policy, options: RoutingOptions, snapshot: ConfigSnapshot) -> Limits:
        routing, settings = snapshot.routing, self.settings
        mode = options.mode or policy.mode or options.default_mode or routing.mode or settings.default_mode
        budget = policy.max_budget_usd or routing.max_budget_usd or settings.default_max_budget_usd
        if options.max_budget_usd is not None:
            budget = min(budget, options.max_budget_usd) if budget else options.max_budget_usd
        latency_ms = policy.max_latency_ms or routing.max_latency_ms or settings.default_max_latency_ms
        objective = options.reward or routing.reward or DEFAULT_REWARD
        return Limits(mode, budget, latency_ms, max(policy.min_weight, options.min_weight or 0), objective)

    def decide(
        self,
        request: ChatRequest,
        policy: Policy,
        options: RoutingOptions = DEFAULT_OPTIONS,
        *,
        request_id: str = "",
        api_key_id: str = "",
        key_budget_usd: float = 0.0,
        key_left_usd: float = 0.0,
        only_models: frozenset[str] | None = None,
        directives: Mapping[str, Any] | None = None,
        aliases: AliasChooser | None = None,
        bandit: Bandit | None = None,
        rng: random.Random | None = None,
        observe: bool = True,
        explore: bool = True,
    ) -> RoutingDecision:
        """The ranked candidates for `request` and why. `aliases` holds the caller's round-robin counters
        (a fresh chooser when None); `bandit` and `rng` replace the live samplers (simulation); `observe`
        False leaves the skip counters alone; `explore` False keeps the ranked order (plan vote ranking).
        `key_budget_usd` / `key_left_usd`: the API key's monthly budget and what is left of it (0 = none): a
        model whose estimated cost does not fit is not eligible."""
        table = self._table()
        snapshot = table.snapshot
        limits = self._limits(policy, options, snapshot)
        hint, alias = request.model_hint, None
        found = snapshot.aliases.get(hint) if hint else None
        if found is not None and found.enabled:  # before eligibility: the variant is then an ordinary hint
            alias = found
            hint = (aliases or AliasChooser()).choose(found, request_id=request_id, api_key_id=api_key_id).model_id
        tokens = estimate_input_tokens(request.messages, request.estimated_input_tokens)
        max_tokens, n = requested_output(request.parameters)
        inputs, url_inputs = media_needs(request)
        constraints = Constraints(
            limits.mode,
            limits.max_budget_usd,
            limits.min_weight,
            tokens,
            request.max_item_tokens,
            max_tokens=max_tokens,
            n=n,
            key_budget_usd=key_left_usd,
            provider_tokens=_provider_tokens(request, tokens, table) if inputs else None,
            inputs=inputs,
            url_inputs=url_inputs,
        )
        kind = model_kind(request.operation)
        if kind != "chat" and hint:
            eligible, exclusions = self._named(hint, request.operation, table, constraints, observe)
        else:
            eligible, exclusions = self._eligible(request.operation, table, constraints, only_models, observe)
        if not eligible:
            raise _no_eligible(exclusions, constraints, key_budget_usd)

        candidates = rank(eligible, constraints, self._stats)
        bandit = bandit or self._bandit
        bucket = token_bucket(tokens)
        outlook = expect(candidates, bandit, bucket, limits.objective, self._stats)
        propensity = 1.0
        if limits.mode == "thompson":  # the bandit's draws decide the order; the scores above stay for explanation
            priors = [outlook.expectation(c.model.id).reward for c in candidates]
            candidates, propensity = thompson_order(candidates, bandit, bucket, limits.objective, priors)
        hint_id = _resolve_hint(hint, snapshot)
        hint_note = _apply_hint(hint_id, candidates, exclusions, snapshot) if hint_id else ""
        explored = 0
        if explore and hint_note != "hint" and limits.mode != "thompson" and len(candidates) > 1 and self.temperature:
            explored = softmax_rank(len(candidates), self.temperature, (rng or self._rng).random())
            propensity = softmax_probability(len(candidates), self.temperature, explored)
            if explored:
                candidates.insert(0, candidates.pop(explored))
        fallbacks, chain_note = _place_fallbacks(candidates, hint_id, hint_note == "hint", alias, exclusions, snapshot)
        first = candidates[0]
        chosen_by_policy = hint_note != "hint" and not (fallbacks and first.model.id == fallbacks[0])
        if fallbacks and first.model.id == fallbacks[0]:
            how = "first of the fallback chain"
        elif explored:
            how = f"explored at rank {explored + 1} (softmax, temperature {self.temperature:g})"
        else:
            how = "ranked first"
        # The reason's text is rendered later, from values fixed now (the first candidate's expectation is worked
        # out then from the outlook's values, the exclusions as they are)
        reason = functools.partial(
            _reason,
            first,
            hint_note,
            how,
            len(candidates),
            limits.mode,
            outlook,
            f"{alias.name} -> {hint}" if alias is not None else "",
            chain_note,
            _describe_directives(directives) if directives else "",
            tuple(sorted(exclusions.items())) if exclusions else (),
        )
        return RoutingDecision(
            mode=limits.mode,
            candidates=candidates,
            estimated_input_tokens=tokens,
            render_reason=reason,
            exclusions=exclusions,
            deadline=time.monotonic() + limits.max_latency_ms / 1000,
            latency_budget_ms=limits.max_latency_ms,
            fallbacks=fallbacks,
            alias_from=alias.name if alias is not None else "",
            model_hint=hint if alias is not None else "",
            objective=limits.objective,
            cost_ref_usd=outlook.cost_ref_usd,
            latency_ref_ms=outlook.latency_ref_ms,
            propensity=propensity if chosen_by_policy else None,
            outlook=outlook,
        )

    def unavailable(self, model: ModelInfo) -> str | None:
        """Why `model` can serve no request right now, whatever the request's budget, context or weight (the
        admin's engine view), with the reason names of eligibility; None when it can."""
        table = self._table()
        supports = _supports(table.adapters, "embeddings" if model.kind == "embedding" else "chat")
        return self._exclusion(model, _NO_LIMITS, table, supports)

    def unreadable(self, model: ModelInfo, request: ChatRequest) -> str | None:
        """Why `model` cannot read `request`'s media (a MEDIA_REASONS name), None when it can (escalation
        checks the models it picks outside a decision with this)."""
        inputs, url_inputs = media_needs(request)
        return _unreadable(model, inputs, url_inputs, self._table()) if inputs else None

    def _exclusion(
        self, model: ModelInfo, constraints: Constraints, table: RoutingTable, supports: Callable[[str], bool] | None
    ) -> str | None:
        """Eligibility's reason (scoring.exclusion_reason), naming a provider whose key waits in the locked
        vault `vault_locked` rather than `no_adapter`, and a model disabled for its provider's quota
        `quota_exhausted`; before them, whether an enabled model can read the request's media (a property of
        the model, whatever its health or price)."""
        if (
            constraints.inputs
            and model.enabled
            and (media := _unreadable(model, constraints.inputs, constraints.url_inputs, table))
        ):
            return media
        if model.enabled and (disabled := self._disables.reason(model.id)):
            return disabled
        reason = exclusion_reason(
            model, constraints, table.adapters.__contains__, self._health.unavailable_reason, supports
        )
        return "vault_locked" if reason == "no_adapter" and model.provider_id in table.vault_locked else reason

    def last_resort(
        self, request: ChatRequest, decision: RoutingDecision, tried: set[str], only_models: frozenset[str] | None
    ) -> list[Candidate]:
        """The last-resort pass's candidates, once every eligible one failed (routing.md §8 step 6): every
        other enabled model that can take the request, ignoring health, budget and weight, ranked for the
        decision's mode. Still excluded: models of another kind, without a provider, outside a plan step's
        pin, disabled for their quota, unable to read the request's media, or whose window cannot hold the
        input; and a named embedding model is never replaced (vectors of two models do not compare)."""
        kind = model_kind(request.operation)
        if kind != "chat" and request.model_hint:
            return []
        table = self._table()
        max_tokens, n = requested_output(request.parameters)
        tokens = decision.estimated_input_tokens
        constraints = Constraints(decision.mode, 0, 0, tokens, request.max_item_tokens, max_tokens=max_tokens, n=n)
        supports = _supports(table.adapters, request.operation)
        inputs, url_inputs = media_needs(request)
        models = [
            model
            for model in table.snapshot.models.values()
            if model.kind == kind
            and model.id not in tried
            and (only_models is None or model.id in only_models)
            and self._disables.reason(model.id) is None
            and not (inputs and _unreadable(model, inputs, url_inputs, table))
            and exclusion_reason(model, constraints, table.adapters.__contains__, _health_ignored, supports) is None
        ]
        return rank(models, constraints, self._stats) if models else []

    def explain(self, decision: RoutingDecision) -> list[ScoreParts]:
        """Each candidate's objectives, raw and normalised, in the decision's order (for the simulator)."""
        constraints = Constraints(decision.mode, 0, 0, decision.estimated_input_tokens)
        models = [c.model for c in decision.candidates]
        parts = {p.model.id: p for p in score_parts(models, constraints, self._stats)}
        return [parts[model.id] for model in models]

    def _stats(self, provider_id: str) -> ProviderStats:
        """A provider's latency and error rate. Read-only: looking a provider up must not create a health entry
        (simulation touches nothing); a decision runs without yielding, so the tracker cannot change under it."""
        h = self._health.known(provider_id) or _UNKNOWN_PROVIDER
        return ProviderStats(h.avg_latency_ms, h.error_rate)

    def _eligible(
        self,
        operation: str,
        table: RoutingTable,
        constraints: Constraints,
        only_models: frozenset[str] | None,
        observe: bool,
    ) -> tuple[list[ModelInfo], dict[str, str]]:
        """TokenHub chooses: every model of the operation's kind (within a plan step's pin) is a candidate."""
        kind = model_kind(operation)
        supports = _supports(table.adapters, operation)
        eligible: list[ModelInfo] = []
        exclusions: dict[str, str] = {}
        models = table.snapshot.models
        for model in models.values():
            if model.kind != kind:
                continue  # another operation's model: not a candidate at all (and no skip metric per request)
            if only_models is not None and model.id not in only_models:
                continue  # a plan step pinned to other models: not a candidate at all
            reason = self._exclusion(model, constraints, table, supports)
            if reason is None:
                eligible.append(model)
            else:
                exclusions[model.id] = reason
                if observe:
                    self._skips.labels(provider=model.provider_id, reason=reason).inc()
        if not eligible and models and all(m.kind != kind for m in models.values()):  # only other kinds exist
            raise NoEligibleModel(
                f"no model of kind {kind!r} is registered: add one with POST /admin/v1/models"
                f' {{..., "kind": "{kind}"}}',
                client_constraint=False,
            )
        return eligible, exclusions

    def _named(
        self, hint: str, operation: str, table: RoutingTable, constraints: Constraints, observe: bool
    ) -> tuple[list[ModelInfo], dict[str, str]]:
        """Outside chat a named model is the caller's choice and a requirement: it is forwarded to that
        model's provider whatever its kind, and no other model answers in its place (embeddings of two
        models are not comparable)."""
        models = table.snapshot.models
        model_id = resolve_model_id(hint.strip(), models)
        if model_id is None:  # the edge answers 404 first; this covers a model deleted since
            raise NotFound(f"model {hint!r} does not exist", field="model")
        model = models[model_id]
        reason = self._exclusion(model, constraints, table, _supports(table.adapters, operation))
        if reason is None:
            return [model], {}
        if reason == "unsupported_operation":
            raise InvalidRequest(
                f"model {model_id!r} is served by provider {model.provider_id!r}, which cannot do {operation}",
                field="model",
            )
        if observe:
            self._skips.labels(provider=model.provider_id, reason=reason).inc()
        return [], {model_id: reason}


def media_needs(request: ChatRequest) -> tuple[frozenset[str], frozenset[str]]:
    """(the capabilities the request's media need, those of them given by URL); empty for text."""
    media = [part for m in request.messages if m.parts for part in m.media]
    if not media:
        return frozenset(), frozenset()
    return frozenset(p.capability for p in media), frozenset(p.capability for p in media if p.url)


def model_inputs(model: ModelInfo, adapter: Provider) -> frozenset[str]:
    """What `model` reads besides text: its own capabilities, else its provider type's default, within what
    the type's payload can carry."""
    caps = adapter.capabilities
    own = caps.default_inputs if model.capabilities is None else model.capabilities
    return own & caps.inputs


def _unreadable(
    model: ModelInfo, inputs: frozenset[str], url_inputs: frozenset[str], table: RoutingTable
) -> str | None:
    adapter = table.adapters.get(model.provider_id)
    if adapter is None:
        return None  # eligibility names the missing adapter
    if lacking := sorted(inputs - model_inputs(model, adapter)):
        return f"lacks_{lacking[0]}"
    if unfetched := sorted(url_inputs - adapter.capabilities.url_inputs):
        return f"no_{unfetched[0]}_by_url"
    return None


def _provider_tokens(request: ChatRequest, tokens: int, table: RoutingTable) -> dict[str, int] | None:
    """Input tokens per provider, each counting the media its own way (`tokens` counts them the dearest way)."""
    if request.estimated_input_tokens > 0:
        return None  # the client's own estimate stands
    media = media_input_tokens(request.messages)
    per_scheme = {s: tokens - media + media_input_tokens(request.messages, s) for s in MEDIA_TOKEN_SCHEMES}
    return {pid: per_scheme.get(a.capabilities.media_tokens, tokens) for pid, a in table.adapters.items()}


def _health_ignored(provider_id: str) -> None:
    """The last resort calls providers whatever their health says."""
    return None


def _supports(adapters: Mapping[str, Provider], operation: str) -> Callable[[str], bool] | None:
    """Whether a provider can do the operation, from its type's capabilities (None for chat: every provider
    chats)."""
    if operation != "embeddings":
        return None

    def embeds(provider_id: str) -> bool:
        adapter = adapters.get(provider_id)
        return adapter is not None and adapter.capabilities.embeddings

    return embeds


def _resolve_hint(hint: str, snapshot: ConfigSnapshot) -> str:
    """The registered id the (alias-resolved) hint names, else the hint as given, stripped ("" for none)."""
    hint = hint.strip()
    return (resolve_model_id(hint, snapshot.models) or hint) if hint else ""


def _apply_hint(hint: str, candidates: list[Candidate], exclusions: dict[str, str], snapshot: ConfigSnapshot) -> str:
    """Move the eligible hinted model (`hint`: from _resolve_hint) to the front. Returns "hint" when honoured,
    a note when not."""
    models = snapshot.models
    for index, candidate in enumerate(candidates):
        if candidate.model.id == hint:
            candidates.insert(0, candidates.pop(index))
            return "hint"
    other = models.get(hint)  # registered, but maybe of another kind (an embedding model named for chat)
    other_kind = other is not None and other.kind != candidates[0].model.kind
    why = exclusions.get(hint) or (f"{other.kind} model" if other is not None and other_kind else "not registered")
    return f"model_hint {hint!r} ignored ({why})"


def _place_fallbacks(
    candidates: list[Candidate],
    hint_id: str,
    hinted: bool,
    alias: AliasInfo | None,
    exclusions: dict[str, str],
    snapshot: ConfigSnapshot,
) -> tuple[tuple[str, ...], str]:
    """Put the explicit fallback chain right after the first choice, before the rest of the scored list.
    The chain is the alias's, else the named model's (`hint_id`: from _resolve_hint), else the first
    candidate's. A named model that cannot serve still lends its chain, which then goes first. Returns (ids
    placed, a note for the reason)."""
    named = snapshot.models.get(hint_id) if hint_id else None
    chain = (alias.fallbacks if alias is not None else ()) or (named.fallbacks if named is not None else ())
    start = 1 if hinted else 0
    placed = _move_after(candidates, chain, start) if chain else ()
    if not placed and start == 0:  # nothing usable in the named chain: the first candidate's own chain
        chain, start = candidates[0].model.fallbacks, 1
        placed = _move_after(candidates, chain, start) if chain else ()
    if not chain:
        return (), ""
    head = candidates[0].model.id if start else hint_id
    skipped = [f"{m}: {exclusions.get(m, 'not eligible')}" for m in chain if m not in placed and m != head]
    note = f"fallbacks after {head}: {', '.join(placed) or 'none eligible'}"
    return placed, note + (f" (skipped {', '.join(skipped)})" if skipped else "")


def _move_after(candidates: list[Candidate], chain: tuple[str, ...], start: int) -> tuple[str, ...]:
    """Move the eligible models of `chain`, in chain order, to position `start` (in place); their ids."""
    pool = {c.model.id: c for c in candidates[start:]}
    placed = [pool.pop(model_id) for model_id in chain if model_id in pool]
    if placed:
        candidates[start:] = placed + [c for c in candidates[start:] if c.model.id in pool]
    return tuple(c.model.id for c in placed)


def _reason(
    first: Candidate,
    hint_note: str,
    how: str,
    eligible: int,
    mode: str,
    outlook: Outlook,
    alias: str,
    chain_note: str,
    directives: str,
    exclusions: tuple[tuple[str, str], ...],
) -> str:
    """The routing reason's text (RoutingDecision.render_reason), from the decision's values."""
    model = first.model
    code = "routed-hint-exact" if hint_note == "hint" else f"routed-weight-{model.weight}"
    parts = [
        f"{code}: {model.id} {how} of {eligible} eligible in {mode} mode"
        f" (score {first.score:.3f}, est ${first.estimated_cost_usd:.6f}, weight {model.weight})",
        describe(outlook.expectation(model.id), outlook.objective),
    ]
    if alias:
        parts.append(f"alias {alias}")
    if hint_note and hint_note != "hint":
        parts.append(hint_note)
    if chain_note:
        parts.append(chain_note)
    if directives:
        parts.append(directives)
    if exclusions:
        parts.append("excluded " + ", ".join(f"{m} ({why})" for m, why in exclusions))
    return "; ".join(parts)


def _describe_directives(applied: Mapping[str, Any]) -> str:
    settings = " ".join(f"{k}={v}" for k, v in applied.items() if k != "ignored")
    ignored = applied.get("ignored") or []
    return f"@@tokenhub {settings}" + (f" (ignored: {', '.join(ignored)})" if ignored else "")


def _no_eligible(exclusions: dict[str, str], c: Constraints, key_budget_usd: float) -> TokenHubError:
    if key_budget_usd and "key_budget_exceeded" in exclusions.values():
        # A model could serve it, but not within what the key has left this month: the key's 429.
        spent = key_budget_usd - c.key_budget_usd
        return BudgetExceeded(budget_usd=key_budget_usd, spent_usd=spent, too_costly=True)
    if "vault_locked" in exclusions.values():  # unlocking the vault may be all it takes: say so
        locked = sorted(m for m, why in exclusions.items() if why == "vault_locked")
        return VaultLocked(
            f"the vault is locked: {', '.join(locked)} need a provider key kept in it; an admin unlocks it"
            " (POST /admin/v1/vault/unlock)",
            exclusions=exclusions,
        )
    media = sorted({why for why in exclusions.values() if why in MEDIA_REASONS})
    if media and all(why in MEDIA_REASONS or why == "disabled" for why in exclusions.values()):
        return NoEligibleModel(_media_message(media), client_constraint=True, exclusions=exclusions)
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


_MEDIA_NAMES = {"vision": "images", "documents": "documents (PDF)", "audio": "audio"}


def _media_message(reasons: list[str]) -> str:
    """The 422 when no enabled model can read the request's media: which capability is missing, and what to do."""
    lacking = [r.removeprefix("lacks_") for r in reasons if r.startswith("lacks_")]
    by_url = [r.removeprefix("no_").removesuffix("_by_url") for r in reasons if r.endswith("_by_url")]
    parts = []
    if lacking:
        needs = ", ".join(f"{cap!r} ({_MEDIA_NAMES[cap]})" for cap in lacking)
        parts.append(
            f"no enabled model can read this request's input: it needs the capability {needs}; give a model it"
            ' with PATCH /admin/v1/models/{id} {"capabilities": [...]}'
        )
    if by_url:
        kinds = ", ".join(_MEDIA_NAMES[cap] for cap in by_url)
        parts.append(f"no enabled model's provider can fetch {kinds} by URL; send them as base64 data")
    return "; ".join(parts)
