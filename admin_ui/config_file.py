"""Configuration as code, read and validated: the file TOKENHUB_CONFIG_FILE names (YAML or JSON) declares the
objects the admin API takes, checked with the admin API's own body models; the credentials file
(TOKENHUB_CREDENTIALS_FILE) declares providers with their keys and models. Every problem is reported with the
line it is on. `config_apply.py` writes a valid document; docs/config-file.md describes the format.

Reading is blocking (files, the environment): callers on the event loop run it in a thread.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, JsonValue, ValidationError, model_validator

from admin_ui.aliases import AliasIn
from admin_ui.api_keys import ApiKeyIn
from admin_ui.common import Body
from admin_ui.models import ModelIn
from admin_ui.providers import ProviderIn
from admin_ui.routing import RoutingIn
from admin_ui.tenants import TenantIn
from pipeline.errors import ConfigFileInvalid, PipelineConfigError

__all__ = [
    "ConfigDocument",
    "CredentialsFileUnsafe",
    "check_pipelines",
    "read_config_file",
    "read_credentials_file",
]

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_PROBLEMS = 20
PathPart = str | int
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]


class FileProvider(ProviderIn):
    """POST /providers' body, but the key only by reference: a config file is meant to be committed."""

    api_key_env: EnvName | None = None
    api_key_file: Annotated[str, Field(min_length=1, max_length=4096)] | None = None

    @model_validator(mode="after")
    def _key_by_reference(self) -> FileProvider:
        if self.api_key is not None:
            raise ValueError("api_key is never written in the file: use api_key_env: NAME or api_key_file: PATH")
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        return self


class FileTenant(TenantIn):
    """POST /tenants' body plus the tenant's pipeline (PUT /tenants/{id}/pipeline's body)."""

    pipeline: JsonValue = None


class ConfigFileBody(Body):
    providers: list[FileProvider] = Field(default_factory=list)
    models: list[ModelIn] = Field(default_factory=list)
    aliases: list[AliasIn] = Field(default_factory=list)
    routing: RoutingIn | None = None
    tenants: list[FileTenant] = Field(default_factory=list)
    api_keys: list[ApiKeyIn] = Field(default_factory=list)
    prune: bool = False  # remove providers, models and aliases the file does not name


class CredentialsBody(Body):
    """The spec's credentials file: providers with their key inline (the file is 0600), and models."""

    providers: list[ProviderIn] = Field(default_factory=list)
    models: list[ModelIn] = Field(default_factory=list)


class CredentialsFileUnsafe(RuntimeError):
    """Group or others may read the credentials file: start-up is refused."""


@dataclass(frozen=True, slots=True)
class Lines:
    """Where each node of the file is: a path like ("providers", 2, "base_url") -> (line, column), 1-based."""

    root: yaml.Node | None

    def of(self, path: Sequence[PathPart]) -> tuple[int, int] | None:
        node, found = self.root, None
        if node is None:
            return None
        found = node.start_mark
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = next((kv for kv in node.value if getattr(kv[0], "value", None) == str(part)), None)
                if match is None:
                    break
                found, node = match[0].start_mark, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                found = node.start_mark
            else:
                break
        return found.line + 1, found.column + 1


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A file that parsed and passed the body models. ``provider_keys`` holds the keys it resolved (provider
    id -> key): they exist only in memory, never in a message."""

    file: str
    body: ConfigFileBody
    lines: Lines
    provider_keys: dict[str, str] = field(default_factory=dict, repr=False)
    source: str = "config-file"  # or "credentials-file"

    def problem(self, path: Sequence[PathPart], message: str) -> ConfigFileInvalid:
        return ConfigFileInvalid(self.file, [_problem(self.lines, path, message)])


def read_config_file(
    path: Path, *, resolve_secrets: bool = True, environ: dict[str, str] | None = None
) -> ConfigDocument:
    """Parse and validate; raises ConfigFileInvalid with every problem located. ``resolve_secrets=False``
    checks the references' form only (an offline check without the keys at hand)."""
    data, lines = _parse(path)
    try:
        body = ConfigFileBody.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, lines, exc) from None
    doc = ConfigDocument(str(path), body, lines)
    problems = _duplicates(doc)
    keys: dict[str, str] = {}
    if resolve_secrets:
        env = os.environ if environ is None else environ
        for index, provider in enumerate(body.providers):
            try:
                key = _resolve_key(provider, path.parent, env)
            except ValueError as exc:
                ref = "api_key_env" if provider.api_key_env else "api_key_file"
                problems.append(_problem(lines, ("providers", index, ref), str(exc)))
                continue
            if key is not None:
                keys[provider.id] = key
    if problems:
        raise ConfigFileInvalid(str(path), problems[:MAX_PROBLEMS])
    return ConfigDocument(str(path), body, lines, keys)


def read_credentials_file(path: Path) -> ConfigDocument | None:
    """The spec's bootstrap file of providers (keys inline) and models, as a document to apply; None when
    it does not exist. Refused (CredentialsFileUnsafe) when group or others may access it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsFileUnsafe(f"TOKENHUB_CREDENTIALS_FILE={path}: cannot read it ({exc.strerror})") from None
    if mode & 0o077:
        raise CredentialsFileUnsafe(
            f"TOKENHUB_CREDENTIALS_FILE={path} holds provider keys but its mode is {stat.filemode(mode)}"
            f" ({mode & 0o777:o}): run `chmod 600 {path}` (or unset the variable)"
        )
    data, lines = _parse(path)
    try:
        creds = CredentialsBody.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, lines, exc) from None
    body = ConfigFileBody.model_construct(
        providers=[FileProvider.model_construct(**p.model_dump(exclude={"api_key"})) for p in creds.providers],
        models=list(creds.models),
        aliases=[],
        routing=None,
        tenants=[],
        api_keys=[],
        prune=False,
    )
    keys = {p.id: p.api_key for p in creds.providers if p.api_key}
    doc = ConfigDocument(str(path), body, lines, keys, source="credentials-file")
    if problems := _duplicates(doc):
        raise ConfigFileInvalid(str(path), problems)
    return doc


def check_pipelines(doc: ConfigDocument, validate: Callable[[Any], Sequence[Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each tenant's pipeline, validated as PUT /tenants/{id}/pipeline does (``validate`` is
    TenantPipelines.validate, or parse_definition offline): tenant id -> the definition to store."""
    definitions: dict[str, list[dict[str, Any]]] = {}
    problems = []
    for index, tenant in enumerate(doc.body.tenants):
        if tenant.pipeline is None:
            continue
        try:
            steps = validate(tenant.pipeline)
        except PipelineConfigError as exc:
            problems.append(_problem(doc.lines, ("tenants", index, "pipeline"), f"invalid pipeline: {exc}"))
            continue
        definitions[tenant.id] = [step.as_data() for step in steps]
    if problems:
        raise ConfigFileInvalid(doc.file, problems)
    return definitions


def _parse(path: Path) -> tuple[Any, Lines]:
    """The file's data and the node marks for line numbers. JSON is read by json (its own rules), its
    marks taken from the YAML parser, which reads JSON too."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigFileInvalid(str(path), [_at(None, "", f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigFileInvalid(str(path), [_at(None, "", f"larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileInvalid(str(path), [_at(None, "", "not UTF-8 text")]) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as exc:
            raise ConfigFileInvalid(
                str(path), [_at((exc.lineno, exc.colno), "", f"malformed JSON: {exc.msg}")]
            ) from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            root = None  # valid JSON the YAML parser does not take (tabs): errors then name paths only
    else:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = (mark.line + 1, mark.column + 1) if mark else None
            raise ConfigFileInvalid(str(path), [_at(where, "", f"malformed YAML: {exc.problem or exc}")]) from None
        except yaml.YAMLError as exc:
            raise ConfigFileInvalid(str(path), [_at(None, "", f"malformed YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileInvalid(
            str(path), [_at((1, 1), "", "expected a mapping of providers, models, aliases, routing, tenants, api_keys")]
        )
    return data, Lines(root)


def _resolve_key(provider: FileProvider, base: Path, env: Any) -> str | None:
    """The key a reference points at; ValueError naming the provider and the reference, never the key."""
    if provider.api_key_env:
        value = env.get(provider.api_key_env, "").strip()
        if not value:
            raise ValueError(
                f"provider {provider.id!r}: environment variable {provider.api_key_env} is not set or empty"
            )
        return str(value)
    if provider.api_key_file:
        key_path = Path(provider.api_key_file).expanduser()
        key_path = key_path if key_path.is_absolute() else base / key_path
        try:
            value = key_path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ValueError(f"provider {provider.id!r}: cannot read api_key_file {key_path}: {reason}") from None
        if not value:
            raise ValueError(f"provider {provider.id!r}: api_key_file {key_path} is empty")
        return value
    return None


def _duplicates(doc: ConfigDocument) -> list[dict[str, Any]]:
    problems = []
    for kind, attr in (
        ("providers", "id"),
        ("models", "id"),
        ("aliases", "name"),
        ("tenants", "id"),
        ("api_keys", "name"),
    ):
        seen: set[str] = set()
        for index, item in enumerate(getattr(doc.body, kind)):
            key = getattr(item, attr)
            if key in seen:
                problems.append(_problem(doc.lines, (kind, index, attr), f"{key!r} appears twice in {kind}"))
            seen.add(key)
    return problems


def _invalid(path: Path, lines: Lines, exc: ValidationError) -> ConfigFileInvalid:
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_PROBLEMS]:
        message = err["msg"].removeprefix("Value error, ")
        problems.append(_problem(lines, err["loc"], message))
    return ConfigFileInvalid(str(path), problems)


def _problem(lines: Lines, path: Sequence[PathPart], message: str) -> dict[str, Any]:
    return _at(lines.of(path), _dotted(path), message)


def _at(where: tuple[int, int] | None, path: str, message: str) -> dict[str, Any]:
    line, column = where or (None, None)
    return {"line": line, "column": column, "path": path, "message": message}


def _dotted(path: Sequence[PathPart]) -> str:
    """("providers", 2, "base_url") -> "providers[2].base_url"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
