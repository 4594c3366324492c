"""schemathesis against the live server: every operation of /openapi.json, with valid and invalid inputs, each
response checked — no 500, every other 5xx one of the documented upstream/readiness ones, and every status,
content type and body as the document says (errors in the endpoint's documented error shape).

Bounded: a few examples per operation and mode, no Hypothesis deadline, no example database; the whole run
takes 30-50 s on two busy cores. The server is the suite's usual one (tests/conftest.py) in front of the fake
provider; schemathesis' blocking HTTP client runs on a worker thread so the server keeps serving on the loop.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from tests.conftest import ADMIN_TOKEN, Hub

# Per operation and generation mode; FUZZ_EXAMPLES=200 runs a deeper search (with fresh random examples).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "4"))
# The live event stream never ends, so a blocking client cannot read it; it takes no input to vary
# (tests/test_observability_events.py drives it).
SKIPPED = {("GET", "/admin/v1/events"), ("HEAD", "/admin/v1/events")}
# Upstream and readiness outcomes the document lists as 5xx; a 500 is always a bug.
DOCUMENTED_5XX = {502, 503, 504}


def _server_error(ctx: Any, response: Any, case: Any) -> None:
    status = response.status_code
    if status >= 500 and status not in DOCUMENTED_5XX:
        raise AssertionError(f"{status}: {response.text[:300]}")


def _fuzz(document: dict[str, Any], base_url: str, api_key: str) -> tuple[list[str], int]:
    """Runs every operation; returns the failures (one line each) and how many requests were made."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        token = ADMIN_TOKEN if operation.path.startswith("/admin/v1") else api_key
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                calls += _run(operation, mode, base_url, {"Authorization": f"Bearer {token}"})
            except Unsatisfiable:  # nothing to make invalid: no body, and no path parameter with a constraint
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:  # one line per failing operation, then the next one
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:1500]}")
    return failures, calls


def _run(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> int:
    """One operation in one generation mode; returns the number of requests made, raises the first failure."""
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,  # in CI the same examples every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, headers=headers, timeout=15, allow_redirects=False)
        checks = [_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
        case.validate_response(response, checks=checks, headers=headers)

    run()
    return calls


async def test_every_operation_survives_schemathesis(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    resp = await hub.client.get("/openapi.json")
    document = await resp.json()
    base_url = str(hub.client.make_url("")).rstrip("/")
    failures, calls = await asyncio.to_thread(_fuzz, document, base_url, key)
    assert failures == [], "\n\n".join(failures)
    operations = sum(len(methods) for methods in document["paths"].values()) - len(SKIPPED)
    assert calls >= operations  # every operation ran
