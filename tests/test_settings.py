"""Settings from TOKENHUB_* variables: defaults, overrides, loud errors naming the variable, hidden secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.modes import ROUTING_MODES
from pipeline.settings import SettingsError, load_settings, unknown_variables

ADMIN = "adm-s3cr3t-token-value-42-0123456789"
OPENAI = "sk-live-very-secret-key-0042"


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.listen_addr == ":8080"
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.data_dir == Path("./data")
    assert settings.sqlite_path == Path("./data") / "tokenhub.sqlite"
    assert settings.analytics_path == str(Path("./data") / "tokenhub.duckdb")
    assert settings.default_mode == "normal"
    assert settings.rate_limit_rps == 60.0
    assert settings.rate_limit_burst == 120
    assert settings.trusted_proxies == ()
    assert settings.admin_token == ""
    assert settings.openai_api_key == ""


def test_load_settings_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENHUB_RATE_LIMIT_BURST", "7")
    assert load_settings().rate_limit_burst == 7


def test_env_overrides_parse() -> None:
    env = {
        "TOKENHUB_LISTEN_ADDR": "127.0.0.1:9090",
        "TOKENHUB_LOG_LEVEL": "debug",
        "TOKENHUB_DATA_DIR": "/srv/tokenhub",
        "TOKENHUB_DEFAULT_MODE": "cheap",
        "TOKENHUB_DEFAULT_MAX_BUDGET_USD": "0.25",
        "TOKENHUB_DEFAULT_MAX_LATENCY_MS": "5000",
        "TOKENHUB_PROVIDER_TIMEOUT_SECS": "2.5",
        "TOKENHUB_PROVIDER_MAX_RETRIES": "0",
        "TOKENHUB_RATE_LIMIT_RPS": "12.5",
        "TOKENHUB_RATE_LIMIT_BURST": "30",
        "TOKENHUB_TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.1 ,::1 ",
        "TOKENHUB_MAX_BODY_BYTES": "2048",
        "TOKENHUB_RECORD_QUEUE_SIZE": "50",
        "TOKENHUB_SHUTDOWN_DRAIN_SECS": "0",
    }
    s = load_settings(env)
    assert (s.host, s.port) == ("127.0.0.1", 9090)
    assert s.log_level == "debug"
    assert s.data_dir == Path("/srv/tokenhub")
    assert s.sqlite_path == Path("/srv/tokenhub/tokenhub.sqlite")
    assert s.analytics_path == "/srv/tokenhub/tokenhub.duckdb"
    assert s.default_mode == "cheap"
    assert s.default_max_budget_usd == 0.25
    assert s.default_max_latency_ms == 5000
    assert s.provider_timeout_secs == 2.5
    assert s.provider_max_retries == 0
    assert s.rate_limit_rps == 12.5
    assert s.rate_limit_burst == 30
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1", "::1")
    assert s.max_body_bytes == 2048
    assert s.record_queue_size == 50
    assert s.shutdown_drain_secs == 0.0


def test_ipv6_listen_addr() -> None:
    s = load_settings({"TOKENHUB_LISTEN_ADDR": "[::1]:8443"})
    assert (s.host, s.port) == ("::1", 8443)


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_string_means_default(blank: str) -> None:
    env = {
        "TOKENHUB_LISTEN_ADDR": blank,
        "TOKENHUB_RATE_LIMIT_RPS": blank,
        "TOKENHUB_DEFAULT_MODE": blank,
        "TOKENHUB_DATA_DIR": blank,
    }
    s = load_settings(env)
    assert s.port == 8080
    assert s.rate_limit_rps == 60.0
    assert s.default_mode == "normal"
    assert s.data_dir == Path("./data")


def test_explicit_overrides_win_and_none_is_ignored() -> None:
    s = load_settings({"TOKENHUB_RATE_LIMIT_RPS": "5"}, rate_limit_rps=9.0, listen_addr=None)
    assert s.rate_limit_rps == 9.0
    assert s.listen_addr == ":8080"


def test_values_are_stripped() -> None:
    assert load_settings({"TOKENHUB_DEFAULT_MODE": "  planning \n"}).default_mode == "planning"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOKENHUB_RATE_LIMIT_RPS", "0"),
        ("TOKENHUB_RATE_LIMIT_RPS", "abc"),
        ("TOKENHUB_RATE_LIMIT_RPS", "-3"),
        ("TOKENHUB_RATE_LIMIT_BURST", "1.5"),
        ("TOKENHUB_LISTEN_ADDR", "nope"),
        ("TOKENHUB_LISTEN_ADDR", ":0"),
        ("TOKENHUB_LISTEN_ADDR", ":70000"),
        ("TOKENHUB_LISTEN_ADDR", "localhost:http"),
        ("TOKENHUB_DEFAULT_MODE", "turbo"),
        ("TOKENHUB_TRUSTED_PROXIES", "not-an-ip"),
        ("TOKENHUB_TRUSTED_PROXIES", "10.0.0.1, 300.1.1.1"),
        ("TOKENHUB_DEFAULT_MAX_BUDGET_USD", "-1"),
        ("TOKENHUB_DEFAULT_MAX_BUDGET_USD", "101"),
        ("TOKENHUB_DEFAULT_MAX_LATENCY_MS", "0"),
        ("TOKENHUB_PROVIDER_TIMEOUT_SECS", "0"),
        ("TOKENHUB_PROVIDER_MAX_RETRIES", "11"),
        ("TOKENHUB_LOG_LEVEL", "verbose"),
        ("TOKENHUB_MAX_BODY_BYTES", "0"),
        ("TOKENHUB_RECORD_QUEUE_SIZE", "many"),
        ("TOKENHUB_HEALTH_PROBE_DISABLED", "TRUE"),  # the original's rule is exactly "true"
        ("TOKENHUB_HEALTH_PROBE_DISABLED", "1"),
        ("TOKENHUB_HEALTH_PROBE_DISABLED", "yes"),
        ("TOKENHUB_PRICING_REFRESH_ENABLED", "maybe"),
        ("TOKENHUB_PRICING_REFRESH_INTERVAL_SECS", "0"),
        ("TOKENHUB_PRICING_REFRESH_INTERVAL_SECS", "10"),
        ("TOKENHUB_TSDB_RETENTION_DAYS", "800000"),
        ("TOKENHUB_ANALYTICS_MEMORY_LIMIT_MIB", "1"),
        ("TOKENHUB_VAULT_KDF_ALLOW_WEAK", "perhaps"),
    ],
)
def test_invalid_value_raises_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({variable: value})
    message = str(info.value)
    assert f"{variable}={value.strip()}" in message
    assert message.startswith("invalid configuration:")


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_invalid_mode_lists_the_valid_modes() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"TOKENHUB_DEFAULT_MODE": "turbo"})
    assert all(mode in str(info.value) for mode in ROUTING_MODES)


def test_every_invalid_variable_is_reported() -> None:
    env = {"TOKENHUB_RATE_LIMIT_RPS": "0", "TOKENHUB_LISTEN_ADDR": "nope", "TOKENHUB_MAX_MESSAGES": "x"}
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    for variable in env:
        assert variable in message


def test_secrets_never_appear_in_errors() -> None:
    env = {
        "TOKENHUB_ADMIN_TOKEN": ADMIN,
        "TOKENHUB_OPENAI_API_KEY": OPENAI,
        "TOKENHUB_RATE_LIMIT_RPS": "0",
        "TOKENHUB_DEFAULT_MODE": "turbo",
    }
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    rendered = f"{info.value!s} {info.value!r}"
    assert "TOKENHUB_RATE_LIMIT_RPS" in rendered
    assert ADMIN not in rendered
    assert OPENAI not in rendered


def test_secret_values_with_invalid_type_are_hidden() -> None:
    # Overrides bypass the environment's string typing, so a secret field can fail validation itself.
    with pytest.raises(SettingsError) as info:
        load_settings({}, admin_token=["not", ADMIN], openai_api_key={"k": OPENAI})
    message = str(info.value)
    assert "TOKENHUB_ADMIN_TOKEN=<hidden>" in message
    assert "TOKENHUB_OPENAI_API_KEY=<hidden>" in message
    assert ADMIN not in message
    assert OPENAI not in message


def test_secrets_never_appear_in_repr() -> None:
    s = load_settings({"TOKENHUB_ADMIN_TOKEN": ADMIN, "TOKENHUB_OPENAI_API_KEY": OPENAI})
    assert s.admin_token == ADMIN
    assert s.openai_api_key == OPENAI
    for text in (repr(s), str(s)):
        assert ADMIN not in text
        assert OPENAI not in text
        assert "rate_limit_rps" in text  # the repr is not simply empty


def test_health_probe_switch_and_pricing_refresh_settings() -> None:
    s = load_settings({})
    assert s.health_probe_disabled is False
    assert (s.pricing_refresh_enabled, s.pricing_refresh_interval_secs, s.pricing_url) == (True, 3600.0, "")
    assert load_settings({"TOKENHUB_HEALTH_PROBE_DISABLED": "true"}).health_probe_disabled is True
    assert load_settings({"TOKENHUB_HEALTH_PROBE_DISABLED": "false"}).health_probe_disabled is False
    s = load_settings(
        {
            "TOKENHUB_PRICING_REFRESH_ENABLED": "false",
            "TOKENHUB_PRICING_REFRESH_INTERVAL_SECS": "600",
            "TOKENHUB_PRICING_URL": "/srv/prices.json",
        }
    )
    assert (s.pricing_refresh_enabled, s.pricing_refresh_interval_secs, s.pricing_url) == (
        False,
        600.0,
        "/srv/prices.json",
    )
    assert load_settings({"TOKENHUB_PRICING_URL": "https://h.example/p.json"}).pricing_url == "https://h.example/p.json"


def test_a_pricing_url_of_another_scheme_is_refused_without_echoing_it() -> None:
    url = "ftp://user:pr1c3-t0ken@h.example/p.json"
    with pytest.raises(SettingsError) as info:
        load_settings({"TOKENHUB_PRICING_URL": url})
    message = str(info.value)
    assert "TOKENHUB_PRICING_URL=<hidden>" in message and "http(s) URL or a local file path" in message
    assert "pr1c3-t0ken" not in message


def test_a_short_admin_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"TOKENHUB_ADMIN_TOKEN": "short-but-secret-token"})
    message = str(info.value)
    assert "TOKENHUB_ADMIN_TOKEN=<hidden>" in message and "at least 32 characters" in message
    assert "short-but-secret-token" not in message
    assert load_settings({"TOKENHUB_ADMIN_TOKEN": "x" * 32}).admin_token == "x" * 32


def test_db_dsn_file_uri_form() -> None:
    s = load_settings({"TOKENHUB_DB_DSN": "file:/x/y.sqlite?_pragma=1", "TOKENHUB_DATA_DIR": "/elsewhere"})
    assert s.sqlite_path == Path("/x/y.sqlite")


def test_db_dsn_plain_path_and_duckdb_memory() -> None:
    s = load_settings({"TOKENHUB_DB_DSN": "/var/lib/th.db", "TOKENHUB_DUCKDB_PATH": ":memory:"})
    assert s.sqlite_path == Path("/var/lib/th.db")
    assert s.analytics_path == ":memory:"


def test_unknown_variables_lists_typos() -> None:
    env = {
        "TOKENHUB_RATE_LIMT_RPS": "5",
        "TOKENHUB_ADMINTOKEN": "x",
        "TOKENHUB_RATE_LIMIT_RPS": "5",
        "TOKENHUB_LISTEN_ADDR": ":1",
        "PATH": "/usr/bin",
        "tokenhub_rate_limit_rps": "5",
    }
    assert unknown_variables(env) == ["TOKENHUB_ADMINTOKEN", "TOKENHUB_RATE_LIMT_RPS"]


def test_unknown_variables_empty_for_known_only() -> None:
    assert unknown_variables({"TOKENHUB_DATA_DIR": "/d", "HOME": "/root"}) == []


def test_unknown_variables_are_ignored_by_load_settings() -> None:
    assert load_settings({"TOKENHUB_RATE_LIMT_RPS": "0"}).rate_limit_rps == 60.0
