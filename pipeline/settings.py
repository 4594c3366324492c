"""Settings from ``TOKENHUB_*`` environment variables, validated once at start-up.

A bad value stops start-up with a message naming the variable (the original silently fell back to the
default; a typo in production config should be loud, not ignored).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.admin_token import MIN_ADMIN_TOKEN_CHARS
from pipeline.modes import ROUTING_MODES

__all__ = [
    "CLIENT_VARIABLES",
    "HOT_SETTINGS",
    "MAX_TSDB_RETENTION_DAYS",
    "PREFIX",
    "Settings",
    "SettingsError",
    "load_settings",
    "provider_key_variable",
    "read_env_file",
    "unknown_variables",
]

PREFIX = "TOKENHUB_"
# Read by the command-line clients (`tokenhub admin`, `tokenhub backup`), not by the server: not typos.
CLIENT_VARIABLES = frozenset({"TOKENHUB_URL"})
MAX_TSDB_RETENTION_DAYS = 3650  # also the bound of PUT /admin/v1/tsdb/retention

# pricing_url may carry credentials (user:token@host, ?token=...): never echoed in an error.
SECRET_SETTINGS = frozenset(
    {"admin_token", "openai_api_key", "anthropic_api_key", "vllm_api_key", "vault_password", "pricing_url"}
    | {"database_url", "redis_url"}  # URLs that may carry a password
)


# What SIGHUP re-reads and applies without a restart (spec config.md section 5); the rest needs a restart.
HOT_SETTINGS = (
    "log_level",
    "rate_limit_rps",
    "rate_limit_burst",
    "admin_rate_limit_rps",
    "admin_rate_limit_burst",
    "default_mode",
    "default_max_budget_usd",
    "default_max_latency_ms",
)
# `tokenhub config export` names a provider's key TOKENHUB_PROVIDER_<ID>_KEY: not a setting, not a typo.
_PROVIDER_KEY_VARIABLE = re.compile(rf"^{PREFIX}PROVIDER_[A-Z0-9_]+_KEY$")


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen_addr: str = Field(":8080", description="host:port to bind; ':8080' = all interfaces")
    log_level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    data_dir: Path = Path("./data")
    db_dsn: str = Field("", description="SQLite path; default <data dir>/tokenhub.sqlite")
    duckdb_path: str = Field("", description="DuckDB path; default <data dir>/tokenhub.duckdb; ':memory:' ok")
    admin_token: str = Field("", repr=False)
    default_mode: str = "normal"
    default_max_budget_usd: float = Field(0.05, ge=0, le=100)
    default_max_latency_ms: int = Field(120_000, gt=0, le=300_000)
    exploration_temp: float = Field(0.3, ge=0, le=100, description="softmax exploration over ranks; 0 = off")
    # Interactive defaults: a silent provider is left in seconds and a fallback still fits the 120 s deadline
    # (docs/streaming.md#timeouts).
    provider_timeout_secs: float = Field(20.0, gt=0, description="one provider call (a stream: until its headers)")
    provider_max_retries: int = Field(2, ge=0, le=10)
    rate_limit_rps: float = Field(60.0, gt=0)
    rate_limit_burst: int = Field(120, gt=0)
    trusted_proxies: tuple[str, ...] = ()
    trust_x_real_ip: bool = Field(
        False, description="believe X-Real-IP from a trusted proxy (only one that sets it, replacing the client's)"
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_messages: int = Field(1000, gt=0)
    record_queue_size: int = Field(10_000, gt=0)
    shutdown_drain_secs: float = Field(30.0, ge=0)
    tsdb_retention_days: int = Field(
        7, ge=1, le=MAX_TSDB_RETENTION_DAYS, description="time-series points kept; PUT /tsdb/retention"
    )
    request_log_retention_days: int = Field(90, ge=1, le=36500, description="request-log rows kept")
    audit_retention_days: int = Field(90, ge=1, le=36500, description="admin audit rows kept")
    analytics_query_timeout_secs: float = Field(10.0, gt=0, le=300, description="analyst SQL time limit")
    analytics_query_max_rows: int = Field(10_000, gt=0, le=1_000_000, description="analyst SQL row cap")
    analytics_query_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1024**3, description="analyst SQL result cap (bytes of JSON, about)"
    )
    analytics_memory_limit_mib: int = Field(256, ge=64, le=1024 * 1024, description="DuckDB memory_limit")
    analytics_cache_mib: int = Field(
        4, ge=0, le=1024 * 1024, description="table blocks DuckDB keeps cached between writes (store/block_cache.py)"
    )
    analytics_temp_limit_mib: int = Field(
        4096, ge=0, le=1024 * 1024, description="DuckDB max_temp_directory_size (spill to disk); 0 = no spilling"
    )
    events_heartbeat_secs: float = Field(15.0, gt=0, le=3600, description="SSE heartbeat event interval")
    stream_first_token_secs: float = Field(10.0, gt=0, description="a stream fails over if no token comes by then")
    stream_idle_secs: float = Field(10.0, gt=0, description="a stream silent this long has broken (rescued or ended)")
    max_stream_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, description="bytes of answer text one stream may carry; past it, an error event"
    )
    model_disable_secs: float = Field(
        3600.0, ge=0, description="a model disabled for its provider's quota error comes back after this; 0 = never"
    )
    breaker_cooldown_secs: float = Field(15.0, gt=0, description="an open circuit breaker half-opens after this")
    health_probe_interval_secs: float = Field(15.0, ge=0, description="proactive provider probes; 0 = off")
    health_probe_disabled: bool = Field(False, description="exactly 'true' turns the proactive prober off")
    pricing_refresh_enabled: bool = Field(True, description="refresh prices from TOKENHUB_PRICING_URL, if set")
    pricing_refresh_interval_secs: float = Field(3600.0, ge=60, le=7 * 86400, description="price refresh period")
    pricing_url: str = Field("", repr=False, description="LiteLLM price table: http(s) URL or local file; '' = off")
    bandit_half_life_requests: float = Field(
        200.0, ge=1, le=100_000, description="Thompson evidence loses half its weight every this many observations"
    )
    bandit_refresh_secs: float = Field(300.0, gt=0, description="rebuild the posteriors from the request log")
    bandit_seed: int = Field(0, ge=0, description="seed of the bandit's sampler; 0 = random")
    # --- durable orchestration (docs/temporal.md) ---
    temporal_enabled: bool = Field(False, description="run non-streaming /v1/chat and /v1/plan as Temporal workflows")
    temporal_host: str = Field("localhost:7233", min_length=1, description="Temporal frontend host:port")
    temporal_namespace: str = Field("tokenhub", min_length=1, description="Temporal namespace (must exist)")
    temporal_task_queue: str = Field("tokenhub-tasks", min_length=1, description="task queue of the in-process worker")
    openai_api_key: str = Field("", repr=False)
    openai_base_url: str = "https://api.openai.com"
    anthropic_api_key: str = Field("", repr=False)
    anthropic_base_url: str = "https://api.anthropic.com"
    vllm_endpoints: tuple[str, ...] = Field((), description="comma-separated base URLs of one vLLM deployment")
    vllm_api_key: str = Field("", repr=False)
    vllm_probe_interval_secs: float = Field(15.0, gt=0)
    # --- provider base URLs and model autoload (docs/providers.md) ---
    provider_dns_check: bool = Field(False, description="admin create/patch: 400 when a base URL's host won't resolve")
    container: Literal["auto", "true", "false"] = Field(
        "auto", description="send localhost base URLs to host.docker.internal: auto = when in a container"
    )
    model_autoload_interval_secs: float = Field(
        3600.0, ge=0, le=7 * 86400, description="list autoload_models providers at start and this often; 0 = off"
    )
    # --- security (docs/security.md) ---
    admin_rate_limit_rps: float = Field(30.0, gt=0, description="per-IP rate for /admin/v1/*")
    admin_rate_limit_burst: int = Field(60, gt=0, description="per-IP burst for /admin/v1/*")
    admin_session_ttl_secs: float = Field(
        8 * 3600.0, ge=60, le=30 * 86400, description="how long an admin UI sign-in lasts (the cookie's life)"
    )
    feedback_rate_limit_rps: float = Field(10.0, gt=0, description="per-IP and per-key rate for /v1/feedback")
    feedback_rate_limit_burst: int = Field(100, gt=0, description="per-IP and per-key burst for /v1/feedback")
    feedback_window_secs: float = Field(
        7 * 86400.0, ge=60, le=90 * 86400, description="how long after a request its answer may be rated"
    )
    idempotency_window_secs: float = Field(
        86400.0, ge=1, le=30 * 86400, description="how long an Idempotency-Key's answer is replayed"
    )
    idempotency_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, le=16 * 1024**3, description="memory for stored answers (LRU); 0 = no replays"
    )
    idempotency_wait_secs: float = Field(
        120.0, ge=0, le=3600, description="a repeat waits this long for the first request still running, then 409"
    )
    budget_reserve_output_tokens: int = Field(
        4096, ge=1, le=1_000_000, description="output tokens reserved per choice when neither request nor model caps it"
    )
    cors_origins: tuple[str, ...] = Field((), description="comma list of allowed browser origins, or '*'")
    max_content_chars: int = Field(2_000_000, gt=0, description="characters of content in one message")
    max_total_content_chars: int = Field(6_000_000, gt=0, description="characters of content in one request")
    max_json_depth: int = Field(64, ge=2, le=1000, description="nesting depth of a JSON body")
    max_header_bytes: int = Field(8190, ge=1024, le=65536, description="one request line or header field")
    max_headers: int = Field(128, ge=16, le=1024, description="header fields per request")
    lane_enabled: bool = Field(True, description="serve the chat routes straight from the socket (edge/lane.py)")
    vault_enabled: bool = True
    vault_password: str = Field("", repr=False, description="unlocks the vault at start-up; disables auto-lock")
    vault_auto_lock_secs: float = Field(1800.0, ge=0, description="lock after this long unused; 0 = never")
    vault_unlock_attempts_per_min: int = Field(5, gt=0, le=1000, description="per IP, unlock and rotate")
    # Argon2id cost for new vaults and rotations; lower them only in tests (an existing vault keeps its own).
    vault_kdf_time_cost: int = Field(3, ge=1, le=100)
    vault_kdf_memory_kib: int = Field(65536, ge=64, le=4 * 1024 * 1024)
    vault_kdf_parallelism: int = Field(4, ge=1, le=64)
    # Below OWASP's Argon2id floor start-up is refused unless this is set (the test suite sets it).
    vault_kdf_allow_weak: bool = False
    host_api_key_enabled: bool = Field(
        True, description="create the host-local API key at start and write it to <data dir>/.host-api-key"
    )
    docs_dir: str = Field("", description="the documentation site (`make docs`) served at /docs/; '' = ./site")
    # --- tracing (docs/observability.md#tracing) ---
    otel_enabled: bool = Field(False, description="OpenTelemetry spans exported over OTLP/HTTP (the `otel` extra)")
    otel_endpoint: str = Field("http://localhost:4318", description="OTLP/HTTP collector; spans go to <it>/v1/traces")
    otel_service_name: str = Field("tokenhub", min_length=1, max_length=200, description="service.name of the spans")
    # --- backups (docs/backup.md): read by `tokenhub backup` ---
    backup_dir: Path = Field(Path("./backups"), description="where `tokenhub backup` puts backups (--to)")
    backup_keep: int = Field(7, ge=0, le=100_000, description="newest backups kept by `tokenhub backup`; 0 = all")
    # --- configuration files (docs/config-file.md) ---
    config_file: str = Field("", description="YAML/JSON config as code, applied at start, on SIGHUP and reload")
    config_keys_file: str = Field("", description="keys the config file created; default <data dir>/config-keys.json")
    credentials_file: str = Field("~/.tokenhub/credentials", description="bootstrap providers and models (mode 0600)")
    env_file: str = Field("", description="KEY=VALUE settings read at start and on SIGHUP; the environment wins")
    # --- scaling out (docs/scaling.md): all empty = one process, embedded SQLite + DuckDB, no services ---
    redis_url: str = Field("", repr=False, description="redis://host:6379/0: shared hot state across replicas")
    redis_prefix: str = Field(
        "tokenhub", min_length=1, max_length=100, description="prefix of every Redis key (one per cluster)"
    )
    redis_timeout_ms: float = Field(250.0, gt=0, le=10_000, description="one Redis round trip; past it Redis is down")
    shared_sync_ms: float = Field(
        200.0, ge=20, le=10_000, description="how often a replica pushes and pulls shared learning and health"
    )
    shared_budget_on_outage: Literal["closed", "open"] = Field(
        "closed", description="Redis down: 'closed' refuses requests with a budget, 'open' checks budgets locally"
    )
    database_url: str = Field("", repr=False, description="postgresql://...: the configuration store; '' = SQLite")
    log_export_dir: str = Field("", description="closed Parquet segments of the request log go here; '' = off")
    log_export_segment_secs: float = Field(300.0, ge=1, le=86400, description="one exported segment's time span")
    log_export_replica_id: str = Field(
        "", max_length=100, description="this replica's name in segment file names; '' = host name + data dir hash"
    )
    workers: int = Field(1, ge=1, le=64, description="processes serving the port (SO_REUSEPORT); >1 needs Redis")
    worker_index: int = Field(-1, ge=-1, le=63, description="set by the supervisor for its workers; -1 = not one")
    # --- `tokenhub healthcheck` (docs/deploy/docker.md) ---
    healthcheck_url: str = Field("", description="URL the healthcheck probes; '' = /healthz on TOKENHUB_LISTEN_ADDR")

    @field_validator("default_mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in ROUTING_MODES:
            raise ValueError(f"must be one of {', '.join(ROUTING_MODES)}")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (or empty for the SQLite file in the data directory)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL (or empty: no shared state)")
        return value

    @field_validator("health_probe_disabled", mode="before")
    @classmethod
    def _exactly_true(cls, value: Any) -> Any:
        # The original's rule: exactly "true" disables. Anything else that is not "false" is a typo
        # ("TRUE", "1", "yes") that would silently keep probing: refuse it.
        if isinstance(value, str) and value not in ("true", "false"):
            raise ValueError("must be exactly 'true' or 'false'")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, value: str) -> str:
        if value and len(value) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`), or unset to"
                " have one generated"
            )
        return value

    @field_validator("pricing_url")
    @classmethod
    def _pricing_source(cls, value: str) -> str:
        scheme, sep, _rest = value.partition("://")
        if sep and scheme.lower() not in ("http", "https"):
            raise ValueError("expected an http(s) URL or a local file path")
        return value

    @field_validator("docs_dir")
    @classmethod
    def _docs_dir(cls, value: str) -> str:
        # The default (./site) may be absent: /docs/ is then a 404. A folder named on purpose must exist.
        if value and not Path(value).is_dir():
            raise ValueError("not a directory (build the site with `make docs`, or unset it)")
        return value

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint(cls, value: str) -> str:
        if "://" not in value:  # the original's form, host:port
            value = "http://" + value
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("expected the collector's OTLP/HTTP base URL, e.g. 'http://otel-collector:4318'")
        return value

    @field_validator("healthcheck_url")
    @classmethod
    def _healthcheck_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("expected an http(s) URL, e.g. 'http://127.0.0.1:8080/healthz'")
        return value

    @field_validator("listen_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT or :PORT, e.g. ':8080' or '127.0.0.1:8080'")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # raises ValueError with a clear message
        return tuple(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        for entry in value:
            if entry != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", entry):
                raise ValueError(f"{entry!r} is not an origin like 'https://app.example.com' (or '*')")
        if "*" in value and len(value) > 1:
            raise ValueError("'*' allows every origin: list origins or use '*' alone")
        return tuple(value)

    @field_validator("vllm_endpoints", mode="before")
    @classmethod
    def _endpoints(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value:
            if not entry.startswith(("http://", "https://")):
                raise ValueError(f"{entry!r} is not an http(s) URL")
        return tuple(value)

    @property
    def host(self) -> str:
        host = self.listen_addr.rpartition(":")[0].strip("[]")
        return host or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen_addr.rpartition(":")[2])

    @property
    def owns_analytics(self) -> bool:
        """This process opens the DuckDB file: a single server, or worker 0 of `serve --workers N`."""
        return self.worker_index <= 0

    @property
    def sqlite_path(self) -> Path:
        if not self.db_dsn:
            return self.data_dir / "tokenhub.sqlite"
        # Accept the original's DSN form "file:/data/tokenhub.sqlite?_pragma=..." (prefix and query ignored).
        return Path(self.db_dsn.removeprefix("file:").split("?", 1)[0])

    @property
    def analytics_path(self) -> str:
        return self.duckdb_path or str(self.data_dir / "tokenhub.duckdb")

    @property
    def config_keys_path(self) -> Path:
        return Path(self.config_keys_file) if self.config_keys_file else self.data_dir / "config-keys.json"

    @property
    def docs_path(self) -> Path:
        return Path(self.docs_dir or "site")

    @property
    def credentials_path(self) -> Path | None:
        return Path(self.credentials_file).expanduser() if self.credentials_file else None


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read ``TOKENHUB_*`` variables (empty = default), apply explicit overrides (CLI flags), validate."""
    env = os.environ if environ is None else environ
    env_file = overrides.get("env_file") or env.get(PREFIX + "ENV_FILE", "").strip()
    if env_file:
        env = {**read_env_file(Path(env_file)), **env}  # the process environment wins
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = env.get(PREFIX + name.upper(), "")
        if raw.strip():
            values[name] = raw.strip()
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            shown = values.get(name, "")
            shown = "<hidden>" if name in SECRET_SETTINGS else shown
            lines.append(f"{PREFIX}{name.upper()}={shown!s}: {err['msg']}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` prefix, blank lines, ``#`` comments and quotes allowed), as a shell
    or docker compose's env_file reads them; TOKENHUB_ENV_FILE names it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"{PREFIX}ENV_FILE={path}: cannot read it ({exc.strerror})") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise SettingsError(f"{PREFIX}ENV_FILE={path}, line {number}: expected NAME=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def provider_key_variable(provider_id: str) -> str:
    """The variable `tokenhub config export` names for a provider's key: TOKENHUB_PROVIDER_<ID>_KEY."""
    return f"{PREFIX}PROVIDER_{re.sub(r'[^A-Z0-9]', '_', provider_id.upper())}_KEY"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """TOKENHUB_* variables that this version does not read (likely typos), for a start-up warning."""
    env = os.environ if environ is None else environ
    known = {PREFIX + name.upper() for name in Settings.model_fields} | CLIENT_VARIABLES
    return sorted(k for k in env if k.startswith(PREFIX) and k not in known and not _PROVIDER_KEY_VARIABLE.match(k))
