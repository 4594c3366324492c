"""JSON-Schema checks of an answer: the schema is checked when the request is decoded, the value after.

jsonschema (and its rpds/referencing dependencies, ~3 MiB of RSS) is imported by the first request that
carries an output schema, not at start-up: most servers never see one."""

from __future__ import annotations

from typing import Any

from pipeline.errors import InvalidRequest, OutputSchemaMismatch

__all__ = ["check_schema", "validate_output"]


def check_schema(schema: Any, field: str) -> Any:
    """The schema itself must be a JSON Schema object; a broken one is the client's 400, before any spend."""
    if not isinstance(schema, dict):
        raise InvalidRequest("output_schema must be a JSON Schema object", field=field)
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"output_schema is not a valid JSON Schema: {exc.message}", field=field) from None
    return schema


def validate_output(schema: Any, value: Any) -> None:
    """Raise OutputSchemaMismatch naming the first failing path and why."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise OutputSchemaMismatch(f"the answer does not match output_schema at {where}: {error.message}")
