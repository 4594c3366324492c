"""How a name a client sends maps to a registered model id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ID_PATTERN", "resolve_model_id"]

# What a provider, model or alias id may look like (the admin API's IdStr, and autoloaded model ids).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"  # and at most 128 characters


def resolve_model_id(name: str, models: Mapping[str, Any]) -> str | None:
    """The registered id `name` refers to: itself, or "provider/model" -> "model"; None when unknown."""
    if name in models:
        return name
    if "/" in name[1:] and (bare := name.split("/", 1)[1]) in models:
        return bare
    return None
