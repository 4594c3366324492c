"""Durable orchestration on Temporal (docs/temporal.md): non-streaming /v1/chat and /v1/plan as workflows.

`wire` holds the small values workflows and activities exchange, `workflows` the deterministic workflow code
(sandbox-safe: no clock, no I/O), `activities` the steps (each runs the same stages as the direct path),
`step_cache` makes them idempotent, `breaker` and `runtime` decide when to use Temporal and fall back when not.
"""
